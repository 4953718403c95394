"""The on-disk cache of derived item matrices (text, image and graph features): the one writer and reader.

An entry is ``<cache root>/<kind>/<dataset>-<tag>-<key[:16]>.npy``, an (n_items, d) float32 matrix whose row i is
dense item i, with a ``.json`` beside it recording what produced it. The key is a sha256 hex digest of everything
the matrix depends on (each caller hashes its own inputs), so a changed input is a new entry, never a stale hit.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import secrets
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where genrec caches derived data: ``cache_dir``, else ``$GENREC_CACHE``, else ``~/.cache/genrec``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec"))


def encoder_slug(encoder: str) -> str:
    """A file-name-safe short name of an encoder: ``openai/clip-vit-base-patch32`` -> ``clip-vit-base-patch32``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.strip("/").split("/")[-1])


def cache_path(kind: str, *, dataset: str, tag: str, key: str, cache_dir: str | Path | None = None) -> Path:
    """The ``.npy`` of a cache entry (module docstring).

    Args:
        kind: the sub-folder, one per kind of matrix (``"embeddings"``, ``"image-embeddings"``, ``"graph"``).
        dataset: the dataset's name (``genrec.data.dataset.dataset_name``).
        tag: what made it, file-name safe (an :func:`encoder_slug`, ``"sage"``).
        key: sha256 hex digest of the inputs; its first 16 digits name the entry.
        cache_dir: cache root (see :func:`cache_root`).
    """
    return cache_root(cache_dir) / kind / f"{dataset}-{tag}-{key[:16]}.npy"


def load_cached(path: Path) -> Tensor | None:
    """The matrix of the entry ``path`` (written by :func:`save_cached`), or None when there is none yet.

    An entry that cannot be read (truncated or damaged outside genrec: :func:`save_cached` never leaves one) is a
    miss too, with a warning naming it: the matrix is derived data, and the caller computes and rewrites it.
    """
    if not path.exists():
        return None
    try:
        return torch.from_numpy(np.load(path))
    except (ValueError, EOFError, OSError) as error:
        log.warning("%s: unreadable cache entry (%s); computing it again", path, error)
        return None


def _temporary(path: Path) -> Path:
    """A file beside ``path`` that no other writer uses: ``.<name>.<pid>-<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _remove_orphans(path: Path) -> None:
    """Deletes the temporary files of ``path`` whose writer process is gone (killed before its rename)."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = orphan.name[len(path.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            orphan.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _write_atomically(path: Path, write) -> None:
    """``write(file)`` into a temporary file, then one rename onto ``path``: readers see the old or the new file."""
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_cached(path: Path, matrix: Tensor | np.ndarray, metadata: dict) -> None:
    """Writes a cache entry: the matrix to ``path``, then ``metadata`` as indented JSON to ``path`` with ``.json``.

    Each file goes through its own temporary file and one rename, so a run killed at any point leaves the previous
    entry (or none) and never a partial one, and two processes caching the same entry at once both write whole
    files (the later rename wins). Temporary files of killed writers are removed by the next write.

    Args:
        path: the entry's ``.npy`` (:func:`cache_path`); its folder is created if missing.
        matrix: (n_items, d) float32, row i = dense item i; a CPU tensor or an array, saved as its numpy array.
        metadata: JSON-able description of what produced it (read by people, never by genrec).
    """
    array = matrix.numpy() if isinstance(matrix, Tensor) else matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    for target in (path, path.with_suffix(".json")):
        _remove_orphans(target)
    _write_atomically(path, lambda f: np.save(f, array))
    text = json.dumps(metadata, indent=2).encode()
    _write_atomically(path.with_suffix(".json"), lambda f: f.write(text))
