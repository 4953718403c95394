"""The on-disk cache of derived item matrices (text, image and graph features): the one writer and reader.

An entry is ``<cache root>/<kind>/<dataset>-<tag>-<key[:16]>.npy``, an (n_items, d) float32 matrix whose row i is
dense item i, with a ``.json`` beside it recording what produced it. The key is a sha256 hex digest of everything
the matrix depends on (each caller hashes its own inputs), so a changed input is a new entry, never a stale hit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


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
    """The matrix of the entry ``path`` (written by :func:`save_cached`), or None when there is none yet."""
    if not path.exists():
        return None
    return torch.from_numpy(np.load(path))


def save_cached(path: Path, matrix: Tensor | np.ndarray, metadata: dict) -> None:
    """Writes a cache entry: the matrix to ``path``, then ``metadata`` as indented JSON to ``path`` with ``.json``.

    Args:
        path: the entry's ``.npy`` (:func:`cache_path`); its folder is created if missing.
        matrix: (n_items, d) float32, row i = dense item i; a CPU tensor or an array, saved as its numpy array.
        metadata: JSON-able description of what produced it (read by people, never by genrec).
    """
    array = matrix.numpy() if isinstance(matrix, Tensor) else matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written cache entry
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
