"""Sequential recommendation datasets with dense item indices.

A dataset is named by a bundled name (``amazon-beauty``, ``amazon-sports``) or a path:

- a directory with ``sequences.txt[.gz]`` (and optionally ``items.jsonl[.gz]``);
- a directory with one RecBole ``<name>.inter`` (and optionally ``<name>.item``), or the ``.inter`` file itself;
- an interactions table ``*.csv`` / ``*.tsv`` (optionally ``.gz``).

Items are re-indexed densely to ``0 .. n_items-1`` in the order of their dataset ids (numeric for integer ids), and
the mapping is kept so any output can be mapped back (:attr:`SequenceDataset.item_ids`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from genrec.data.formats import (
    DataFormatError,
    RawData,
    RawId,
    find_file,
    read_interactions,
    read_items_jsonl,
    read_recbole,
    read_sequences,
    recbole_item_file,
)

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED = ("amazon-beauty", "amazon-sports")


@dataclass
class SequenceDataset:
    """User interaction sequences over a densely indexed item catalogue.

    Attributes:
        name: bundled name or the path it was loaded from.
        user_ids: dataset user id of each user, in file order.
        item_ids: dataset item id of each dense item index.
        sequences: per user, (len,) int64 dense item indices in chronological order.
        items: per dense item index, its text fields (``None`` when the dataset has no item text).
        dropped: what loading filtered out, by reason (also logged).
    """

    name: str
    user_ids: list[RawId]
    item_ids: list[RawId]
    sequences: list[np.ndarray]
    items: list[dict] | None = None
    dropped: dict[str, int] | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_index(self) -> dict[RawId, int]:
        """Dataset item id -> dense index."""
        return {item: i for i, item in enumerate(self.item_ids)}

    def stats(self) -> dict:
        lengths = np.array([len(s) for s in self.sequences])
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "avg_seq_len": round(float(lengths.mean()), 4),
            "max_seq_len": int(lengths.max()),
            "min_seq_len": int(lengths.min()),
            "density": round(self.n_interactions / (self.n_users * self.n_items), 6),
            "has_text": self.items is not None,
            "dropped": dict(self.dropped or {}),
        }


def resolve(dataset: str | Path) -> Path:
    """The path behind a bundled name or a user path; raises ``FileNotFoundError`` naming both options."""
    if str(dataset) in BUNDLED:
        return BUNDLED_DIR / str(dataset)
    path = Path(dataset).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {str(dataset)!r} is neither a bundled dataset ({', '.join(BUNDLED)}) nor an existing path"
        )
    return path


def dataset_name(dataset: str | Path) -> str:
    """A short name for caches and run names: the bundled name or the path's stem."""
    if str(dataset) in BUNDLED:
        return str(dataset)
    path = Path(dataset)
    return path.name.split(".")[0] or "dataset"


def same_dataset(a: str | Path, b: str | Path) -> bool:
    """Whether two dataset names or paths are the same dataset: the same bundled name or resolved path (by name
    when one no longer exists where it was)."""
    try:
        return resolve(a).resolve() == resolve(b).resolve()
    except FileNotFoundError:
        return dataset_name(a) == dataset_name(b)


class DataFiles(NamedTuple):
    """The files a dataset path stands for, and their format."""

    format: Literal["sequences", "recbole", "table"]
    """``sequences`` (sequences.txt [+ items.jsonl]), ``recbole`` (atomic files) or ``table`` (a .csv / .tsv)."""
    interactions: Path
    items: Path | None
    """The item file (items.jsonl or <name>.item), if there is one."""

    def describe(self) -> str:
        kind = {"sequences": "sequences.txt", "recbole": "RecBole atomic files",
                "table": "interactions table"}[self.format]
        return f"{kind}: " + ", ".join(str(p) for p in (self.interactions, self.items) if p is not None)


def data_files(path: Path) -> DataFiles:
    """Which files a dataset folder or file holds and in which format; raises ``DataFormatError`` saying what a
    folder must hold when it holds none or several."""
    if path.is_dir():
        sequences = find_file(path, "sequences.txt")
        if sequences is not None:
            return DataFiles("sequences", sequences, find_file(path, "items.jsonl"))
        inter = sorted(path.glob("*.inter")) + sorted(path.glob("*.inter.gz"))
        if len(inter) == 1:
            return DataFiles("recbole", inter[0], recbole_item_file(inter[0]))
        if len(inter) > 1:
            raise DataFormatError(path, None, f"several RecBole .inter files: {[p.name for p in inter]}; name one")
        tables = sorted(p for p in path.iterdir() if p.name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")))
        if len(tables) == 1:
            return DataFiles("table", tables[0], None)
        raise DataFormatError(
            path, None, "expected sequences.txt, one RecBole <name>.inter, or one interactions .csv/.tsv in the folder"
        )
    name = path.name.removesuffix(".gz")
    if name.endswith(".inter"):
        return DataFiles("recbole", path, recbole_item_file(path))
    if name.endswith((".csv", ".tsv")):
        return DataFiles("table", path, None)
    if name.startswith("sequences"):
        return DataFiles("sequences", path, None)
    raise DataFormatError(path, None, "unknown format: expected a dataset folder, a .inter, .csv or .tsv file")


def dataset_fingerprint(dataset: str | Path) -> str:
    """sha256 of a dataset's resolved path and the bytes of its files: artifacts named by it are never shared by
    two datasets, nor by one dataset before and after its files change."""
    path = resolve(dataset).resolve()
    h = hashlib.sha256(str(path).encode())
    files = data_files(path)
    for file in (f for f in (files.interactions, files.items) if f is not None):
        h.update(b"\0" + file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _read(path: Path) -> tuple[RawData, Path | None]:
    """Reads whichever format ``path`` holds; also returns the items file it read, if any."""
    files = data_files(path)
    if files.format == "recbole":
        return read_recbole(files.interactions), files.items
    if files.format == "table":
        return read_interactions(files.interactions), None
    raw = read_sequences(files.interactions)
    if files.items is not None:
        raw.items = read_items_jsonl(files.items)
    return raw, files.items


def k_core(raw: RawData, k: int) -> RawData:
    """Iteratively keeps users and items with at least ``k`` interactions; counts what it drops."""
    users, sequences = raw.users, raw.sequences
    dropped_users = dropped_interactions = 0
    before_items = len({i for s in sequences for i in s})
    while True:
        counts = Counter(i for s in sequences for i in s)
        new_users, new_sequences, changed = [], [], False
        for user, seq in zip(users, sequences):
            kept = [i for i in seq if counts[i] >= k]
            dropped_interactions += len(seq) - len(kept)
            changed |= len(kept) != len(seq)
            if len(kept) >= k:
                new_users.append(user)
                new_sequences.append(kept)
            else:
                dropped_users += 1
                dropped_interactions += len(kept)
                changed = True
        users, sequences = new_users, new_sequences
        if not changed:
            break
    after_items = len({i for s in sequences for i in s})
    if not users:
        raise ValueError(f"the {k}-core filter removed every user (empty dataset)")
    dropped = dict(raw.dropped)
    dropped.update(
        {
            f"{k}core_users": dropped_users,
            f"{k}core_items": before_items - after_items,
            f"{k}core_interactions": dropped_interactions,
        }
    )
    return RawData(users=users, sequences=sequences, items=raw.items, dropped=dropped)


def _sort_key(item: RawId) -> tuple[int, int | str]:
    return (0, item) if isinstance(item, int) else (1, str(item))


@lru_cache(maxsize=8)
def _load_cached(path: str, k: int | None, require_text: bool) -> SequenceDataset:
    return _load(Path(path), k, require_text)


def load_dataset(dataset: str | Path, *, k_core_min: int | None = None, require_text: bool = False) -> SequenceDataset:
    """Loads a dataset by bundled name or path (cached per process).

    Args:
        dataset: ``amazon-beauty``, ``amazon-sports`` or a path (see the module docstring).
        k_core_min: keep only users and items with at least this many interactions (iteratively).
        require_text: raise if the dataset has no item text, or if an item in the sequences has none.
    """
    # The cached object is shared between callers; the copy differs only by the name it was asked for.
    return replace(_load_cached(str(resolve(dataset).resolve()), k_core_min, require_text), name=str(dataset))


def _load(path: Path, k: int | None, require_text: bool) -> SequenceDataset:
    raw, items_path = _read(path)
    if k is not None:
        raw = k_core(raw, k)
    item_ids = sorted({i for s in raw.sequences for i in s}, key=_sort_key)
    index = {item: j for j, item in enumerate(item_ids)}
    sequences = [np.fromiter((index[i] for i in s), dtype=np.int64, count=len(s)) for s in raw.sequences]
    items = None
    dropped = dict(raw.dropped)
    if raw.items is not None:
        missing = [i for i in item_ids if i not in raw.items]
        if missing and require_text:
            where = items_path or path
            raise DataFormatError(
                where,
                None,
                f"{len(missing)} items in the sequences have no entry in the item file, e.g. {missing[:5]}",
            )
        if missing:
            log.warning("%s: %d items in the sequences have no text record", path, len(missing))
            dropped["items_without_text"] = len(missing)
        unused = len(raw.items) - (len(item_ids) - len(missing))
        if unused:
            log.warning("%s: %d item records never occur in the sequences and are not in the catalogue", path, unused)
            dropped["item_records_not_in_sequences"] = unused
        items = [raw.items.get(i, {}) for i in item_ids]
    elif require_text:
        raise DataFormatError(path, None, "the dataset has no item text (items.jsonl or a RecBole .item file)")
    for reason, count in dropped.items():
        if count:
            log.info("%s: %s = %d", path, reason, count)
    return SequenceDataset(
        name=str(path), user_ids=list(raw.users), item_ids=item_ids, sequences=sequences, items=items, dropped=dropped
    )
