"""Readers for the on-disk formats genrec accepts.

Every reader returns raw user sequences (dataset ids, chronological) and optional item text records, and raises
:class:`DataFormatError` naming the file, the line and what was expected when the input is malformed.

- ``sequences.txt``: ``user_id item_id item_id ...`` per line (integer ids, P5 style), optional ``items.jsonl``.
- an interactions table ``user,item,timestamp[,rating]`` (CSV or TSV; a header row chooses the columns by name).
- RecBole atomic files: ``<name>.inter`` and optional ``<name>.item`` with typed headers (``item_id:token``).

Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

RawId = int | str


class DataFormatError(ValueError):
    """A data file does not have the expected format."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


@dataclass
class RawData:
    """What a reader found, before dense re-indexing.

    Attributes:
        users: user ids in file order.
        sequences: per user, the item ids in chronological order.
        items: item id -> text fields (``None`` when the dataset has no item file).
        dropped: what filtering removed, by reason (every count is also logged).
    """

    users: list[RawId]
    sequences: list[list[RawId]]
    items: dict[RawId, dict] | None = None
    dropped: dict[str, int] = field(default_factory=dict)


def find_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or its ``.gz`` twin, whichever exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a text file (gunzipped if ``*.gz``), each line decoded as UTF-8 on its own.

    Raises:
        DataFormatError: naming the file and the line, for a line that is not UTF-8 or a gzip file that is
            truncated or corrupt (the lines before it were read).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(path, number, f"not UTF-8 text (byte {e.start}: {e.reason})") from None
                yield number, text.rstrip("\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(path, number + 1, f"truncated or corrupt gzip file ({e})") from None


def _parse_int(token: str, path: Path, line: int, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DataFormatError(path, line, f"expected an integer {what}, got {token!r}") from None


def read_sequences(path: str | Path) -> RawData:
    """Reads ``user_id item_id item_id ...`` lines (integer ids, whitespace separated).

    Blank lines are skipped. A line with a user id and no items, a non-integer id, or a user listed twice is an
    error.
    """
    path = Path(path)
    users: list[RawId] = []
    sequences: list[list[RawId]] = []
    seen: dict[int, int] = {}
    for number, line in _lines(path):
        tokens = line.split()
        if not tokens:
            continue
        user = _parse_int(tokens[0], path, number, "user id")
        if len(tokens) < 2:
            raise DataFormatError(path, number, f"user {user} has no items (expected 'user_id item_id ...')")
        if user in seen:
            raise DataFormatError(path, number, f"user {user} is listed twice (first on line {seen[user]})")
        seen[user] = number
        users.append(user)
        sequences.append([_parse_int(t, path, number, "item id") for t in tokens[1:]])
    if not users:
        raise DataFormatError(path, None, "no users found (empty dataset)")
    return RawData(users=users, sequences=sequences)


def read_items_jsonl(path: str | Path) -> dict[RawId, dict]:
    """Reads ``{"item_id": ..., <text fields>}`` per line into ``item_id -> fields``."""
    path = Path(path)
    items: dict[RawId, dict] = {}
    first_line: dict[RawId, int] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, number, f"malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict) or "item_id" not in record:
            raise DataFormatError(path, number, 'expected a JSON object with an "item_id" field')
        item = record.pop("item_id")
        if not isinstance(item, (int, str)) or isinstance(item, bool):
            raise DataFormatError(path, number, f"item_id must be an integer or string, got {item!r}")
        if item in items:
            raise DataFormatError(path, number, f"item {item!r} is listed twice (first on line {first_line[item]})")
        items[item] = record
        first_line[item] = number
    return items


def _sniff_delimiter(path: Path, first: str) -> str:
    name = path.name.removesuffix(".gz")
    if name.endswith(".tsv") or "\t" in first:
        return "\t"
    if name.endswith(".csv") or "," in first:
        return ","
    raise DataFormatError(path, 1, "cannot tell the delimiter: expected a .csv or .tsv file")


# Header names of the interaction-table columns, compared case-insensitively with "_", "-" and " " removed.
COLUMN_NAMES = {
    "user": ("user", "u", "userid", "uid", "reviewerid", "customerid", "visitorid", "sessionid"),
    "item": ("item", "i", "itemid", "iid", "movieid", "productid", "asin", "trackid", "songid", "bookid", "isbn"),
    "timestamp": ("timestamp", "t", "time", "ts", "datetime", "date", "unixtime", "unixreviewtime", "eventtime"),
    "rating": ("rating", "score", "stars", "overall", "value"),
}


def _header_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Column index of user, item, timestamp (and rating, if any) from a header row; errors name what is wrong."""
    roles: dict[str, list[int]] = defaultdict(list)
    for index, cell in enumerate(header):
        key = cell.strip().lower().split(":")[0].replace("_", "").replace("-", "").replace(" ", "")
        for role, names in COLUMN_NAMES.items():
            if key in names:
                roles[role].append(index)
    for role, found in roles.items():
        if len(found) > 1:
            names = ", ".join(repr(header[i]) for i in found)
            raise DataFormatError(path, 1, f"header names {len(found)} {role} columns ({names}): keep one")
    missing = [role for role in ("user", "item", "timestamp") if role not in roles]
    if missing:
        raise DataFormatError(
            path, 1,
            f"header {','.join(header)!r} has no {' / '.join(missing)} column; name the columns "
            f"user,item,timestamp[,rating] (accepted names for the timestamp: {', '.join(COLUMN_NAMES['timestamp'])})",
        )
    return {role: found[0] for role, found in roles.items()}


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_interactions(path: str | Path) -> RawData:
    """Reads an interactions table (CSV or TSV): ``user,item,timestamp[,rating]`` by position, or any columns by a
    header row.

    A first row whose timestamp position is not a number is a header: its names choose the columns (e.g.
    MovieLens' ``userId,movieId,rating,timestamp``; :data:`COLUMN_NAMES` lists the names accepted), other columns
    are ignored, and a header without a user, item or timestamp column, or with two of one, is an error rather
    than a guess. Without a header the columns are user, item, timestamp and an optional rating, in that order.
    Each user's items are ordered by timestamp (stable, so ties keep file order).
    """
    path = Path(path)
    rows = [line for _, line in _lines(path)]
    if not rows:
        raise DataFormatError(path, None, "no interactions found (empty file)")
    delimiter = _sniff_delimiter(path, rows[0])
    reader = csv.reader(rows, delimiter=delimiter)
    per_user: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    order: list[str] = []
    count = 0
    columns: dict[str, int] | None = None  # from a header; None: by position
    for number, row in enumerate(reader, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if number == 1 and (len(row) < 3 or not _is_number(row[2].strip())):
            columns = _header_columns(path, row)
            continue
        if columns is None and len(row) not in (3, 4):
            raise DataFormatError(
                path, number, f"expected 3 or 4 columns (user, item, timestamp[, rating]), got {len(row)}"
            )
        if columns is not None and len(row) <= max(columns.values()):
            need = max(columns.values()) + 1
            raise DataFormatError(path, number, f"expected at least {need} columns (as the header names), got {len(row)}")
        where = columns or {"user": 0, "item": 1, "timestamp": 2, **({"rating": 3} if len(row) == 4 else {})}
        user, item, stamp = (row[where[role]].strip() for role in ("user", "item", "timestamp"))
        try:
            t = float(stamp)
        except ValueError:
            raise DataFormatError(path, number, f"expected a numeric timestamp, got {stamp!r}") from None
        if not user or not item:
            raise DataFormatError(path, number, "empty user or item id")
        if "rating" in where and not _is_number(row[where["rating"]]):
            raise DataFormatError(path, number, f"expected a numeric rating, got {row[where['rating']]!r}")
        if user not in per_user:
            order.append(user)
        per_user[user].append((t, number, item))
        count += 1
    if count == 0:
        raise DataFormatError(path, None, "no interactions found (empty dataset)")
    sequences = [[item for _, _, item in sorted(per_user[u])] for u in order]
    return RawData(users=list(order), sequences=sequences)


def _recbole_table(path: Path, required: tuple[str, ...]) -> tuple[list[tuple[str, str]], Iterator[tuple[int, list[str]]]]:
    """The typed header ``name:type`` of a RecBole atomic file and an iterator over its rows (line, fields).

    Raises if the header is missing or malformed, lacks a ``required`` column, or a row has the wrong width.
    """
    lines = _lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataFormatError(path, None, "empty file (expected a typed header line)") from None
    columns = []
    for column in header.split("\t"):
        name, sep, kind = column.strip().partition(":")
        if not sep:
            raise DataFormatError(path, 1, f"expected a typed header like 'item_id:token', got column {column!r}")
        columns.append((name, kind))
    names = [n for n, _ in columns]
    for name in required:
        if name not in names:
            raise DataFormatError(path, 1, f"header has no '{name}' column (got {names})")

    def rows() -> Iterator[tuple[int, list[str]]]:
        for number, line in lines:
            if not line.strip():
                continue
            values = line.split("\t")
            if len(values) != len(columns):
                raise DataFormatError(path, number, f"expected {len(columns)} tab-separated fields, got {len(values)}")
            yield number, values

    return columns, rows()


def read_recbole(inter_path: str | Path) -> RawData:
    """Reads RecBole atomic files: ``<name>.inter`` and, when present beside it, ``<name>.item``.

    ``.inter`` needs ``user_id`` and ``item_id`` columns; rows are ordered per user by ``timestamp`` when present,
    else kept in file order. Text columns of ``.item`` (``token`` / ``token_seq``) become the item's text fields.
    """
    inter_path = Path(inter_path)
    columns, rows = _recbole_table(inter_path, ("user_id", "item_id"))
    names = [n for n, _ in columns]
    u_col, i_col = names.index("user_id"), names.index("item_id")
    t_col = names.index("timestamp") if "timestamp" in names else None
    per_user: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    order: list[str] = []
    for number, values in rows:
        user, item = values[u_col].strip(), values[i_col].strip()
        if not user or not item:
            raise DataFormatError(inter_path, number, f"empty {'user_id' if not user else 'item_id'}")
        t = 0.0
        if t_col is not None:
            try:
                t = float(values[t_col])
            except ValueError:
                raise DataFormatError(inter_path, number, f"expected a numeric timestamp, got {values[t_col]!r}") from None
        if user not in per_user:
            order.append(user)
        per_user[user].append((t, number, item))
    if not order:
        raise DataFormatError(inter_path, None, "no interactions found (empty dataset)")
    sequences = [[item for _, _, item in sorted(per_user[u])] for u in order]

    items = None
    item_path = recbole_item_file(inter_path)
    if item_path is not None:
        items = _read_recbole_items(item_path)
    return RawData(users=order, sequences=sequences, items=items)


def recbole_item_file(inter_path: Path) -> Path | None:
    """The ``<name>.item[.gz]`` beside a ``<name>.inter[.gz]``, if there is one."""
    return find_file(inter_path.parent, inter_path.name.removesuffix(".gz").removesuffix(".inter") + ".item")


def _read_recbole_items(path: Path) -> dict[RawId, dict]:
    columns, rows = _recbole_table(path, ("item_id",))
    names = [n for n, _ in columns]
    i_col = names.index("item_id")
    text_cols = [(j, n) for j, (n, kind) in enumerate(columns) if j != i_col and kind in ("token", "token_seq")]
    items: dict[RawId, dict] = {}
    for number, values in rows:
        item = values[i_col].strip()
        if item in items:
            raise DataFormatError(path, number, f"item {item!r} is listed twice")
        items[item] = {n: values[j].strip() for j, n in text_cols}
    return items
