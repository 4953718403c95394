"""Item feature sources, their fusion into the one matrix the tokenizer quantizes, and its fingerprint.

Each source gives an (n_items, d_s) matrix whose row i is dense item i. Before concatenation every source is
normalised so that its rows have (about) unit squared norm, then multiplied by its weight; a source's share of the
fused vector's energy is therefore weight² / sum of weights², whatever its width or scale:

- ``"l2"``: each row divided by its L2 norm (right for sentence embeddings, which live on the sphere);
- ``"standardize"``: each column to zero mean and unit variance, then the matrix divided by sqrt(d_s), so the
  expected row norm² is 1 (right for features of unrelated scales, e.g. counts or prices);
- ``"none"``: used as given.

:func:`feature_fingerprint` names a fused matrix by a hash, so a tokenizer artifact or a cache entry can tell that
its input features changed.

:func:`fuse_to_npy` fuses in blocks of rows into a float32 ``.npy`` file, reading ``.npy`` sources memory-mapped,
for catalogues whose features do not fit in memory (the in-memory :func:`load_features` stays as it is).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from genrec.features.matrix import CHUNK_ROWS, Matrix, block, nonfinite_rows

Normalization = Literal["l2", "standardize", "none"]
NORMALIZATIONS: tuple[str, ...] = ("l2", "standardize", "none")


class FeatureSource(abc.ABC):
    """One kind of item features; subclasses are small dataclasses so configs can name them."""

    normalize: Normalization
    weight: float

    @abc.abstractmethod
    def load(self, dataset: str | Path) -> Tensor:
        """(n_items, d_s) float32 raw features of ``dataset``."""

    def describe(self) -> dict:
        """JSON-able description for the artifact's config.json."""
        return {"type": type(self).__name__, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def _check(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"{type(self).__name__}.normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if not self.weight > 0:
            raise ValueError(f"{type(self).__name__}.weight must be > 0, got {self.weight}")


@dataclass
class TextEmbeddings(FeatureSource):
    """Sentence embeddings of each item's text, from ``genrec.features.text.text_embeddings``."""

    encoder: str | None = None
    """HF encoder name or path; None for the library default (all-MiniLM-L6-v2)."""
    template: str | None = None
    """Item text template, e.g. ``"{title}. {categories}"``; None: that one, or the item file's title- and
    category-like fields when it has neither (``genrec.data.text.resolve_template``, logged)."""
    batch_size: int = 256
    """Encoder batch size."""
    cache_dir: str | None = None
    """Embedding cache folder; None for the library default."""
    normalize: Normalization = "l2"
    """Per-source normalisation (module docstring)."""
    weight: float = 1.0
    """Multiplier after normalisation."""

    def __post_init__(self) -> None:
        self._check()

    def load(self, dataset: str | Path) -> Tensor:
        # Imported here: this module is all that reading a tokenizer artifact needs, and it stays free of datasets.
        from genrec.features.text import text_embeddings

        return text_embeddings(
            dataset, encoder=self.encoder, template=self.template, batch_size=self.batch_size, cache_dir=self.cache_dir
        )


@dataclass
class NpyFeatures(FeatureSource):
    """A precomputed (n_items, d) matrix in a ``.npy`` file (collaborative or image embeddings, ...)."""

    path: str
    """The .npy file; row i is dense item i."""
    normalize: Normalization = "l2"
    """Per-source normalisation (module docstring)."""
    weight: float = 1.0
    """Multiplier after normalisation."""
    made_by: list[str] | None = None
    """``train.py fit`` arguments of the run that writes ``path``, e.g. ``["--config", "configs/base/baseline.yaml",
    "--config", "configs/sasrec/beauty.yaml"]``: ``train.py`` runs it first when the file is missing
    (:mod:`genrec.pipeline`). None: the file must exist."""

    def __post_init__(self) -> None:
        self._check()

    def open(self, dataset: str | Path) -> np.ndarray:
        """The (n_items, d) matrix memory-mapped read-only: rows are read from disk only when used."""
        if not Path(self.path).exists():
            how = f"python train.py fit {' '.join(self.made_by)}" if self.made_by else "the run that writes it"
            raise FileNotFoundError(f"feature file {self.path!r} does not exist: make it first ({how})")
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if array.ndim != 2:
            raise ValueError(f"{self.path}: expected an (n_items, d) matrix, got shape {array.shape}")
        return array

    def load(self, dataset: str | Path) -> Tensor:
        return torch.from_numpy(np.array(self.open(dataset), dtype=np.float32))


def check_finite(x: Matrix, *, what: str) -> None:
    """Raises ValueError listing the rows of ``x`` (n, d) that hold NaN or inf; ``what`` names the matrix.

    ``x`` may be a tensor, an array or a memmap: it is checked in blocks of rows."""
    rows = nonfinite_rows(x)
    if rows.numel():
        raise ValueError(
            f"{what}: {rows.numel()} of {x.shape[0]} rows hold NaN or inf (dense item indices {rows[:20].tolist()}"
            f"{', ...' if rows.numel() > 20 else ''})"
        )


def normalize_features(x: Tensor, how: Normalization, *, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Normalises an (n, d) matrix as the module docstring describes; returns (n, d) float32.

    Args:
        x: (n, d) float.
        how: the normalisation.
        stats: (d,) column means and standard deviations for ``"standardize"`` (:func:`column_stats`), when ``x``
            is a block of rows of a larger matrix; None takes them from ``x``.
    """
    x = x.float()
    if how == "l2":
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if how == "standardize":
        mean, std = stats if stats is not None else (x.mean(dim=0), x.std(dim=0))
        # Floor the std: a constant column then stays 0 instead of becoming NaN.
        return (x - mean) / std.clamp_min(1e-12) / x.shape[1] ** 0.5
    if how == "none":
        return x
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")


def fuse_features(matrices: list[Tensor], sources: list[FeatureSource], *, chunk_rows: int = 1 << 16) -> Tensor:
    """Normalises, weights and concatenates per-source matrices, ``chunk_rows`` rows at a time into the one output
    (no whole-matrix temporaries: at a million items each would be another 1.5 GB).

    Args:
        matrices: one (n_items, d_s) float matrix per source.
        sources: the sources they came from (their ``normalize`` and ``weight``; ``describe()`` for errors).
        chunk_rows: rows normalised at a time (``"standardize"`` takes its column statistics from all rows).

    Returns:
        (n_items, sum of d_s) float32.

    Raises:
        ValueError: on no sources, non-finite values (naming the source and rows) or differing item counts.
    """
    _check_matrices(matrices, sources)
    # The column statistics of all rows, as normalize_features would take them from the whole matrix.
    stats = [(x.float().mean(dim=0), x.float().std(dim=0)) if source.normalize == "standardize" else None
             for x, source in zip(matrices, sources)]
    out = torch.empty(matrices[0].shape[0], sum(x.shape[1] for x in matrices), device=matrices[0].device)
    _fuse_blocks(matrices, sources, stats, out, chunk_rows=chunk_rows)
    return out


def _fuse_blocks(matrices: list[Matrix], sources: list[FeatureSource], stats: list[tuple[Tensor, Tensor] | None],
                 out: Tensor | np.ndarray, *, chunk_rows: int) -> None:
    """Writes the fusion of :func:`fuse_features` into ``out`` (a tensor, or an array such as a memmap),
    ``chunk_rows`` rows at a time; ``stats`` are each ``"standardize"`` source's column statistics."""
    for start in range(0, matrices[0].shape[0], chunk_rows):
        parts = [normalize_features(block(x, start, start + chunk_rows), source.normalize, stats=stat) * source.weight
                 for x, source, stat in zip(matrices, sources, stats)]
        fused = torch.cat(parts, dim=1)
        out[start : start + chunk_rows] = fused if isinstance(out, Tensor) else fused.cpu().numpy()


def _check_matrices(matrices: list[Matrix], sources: list[FeatureSource]) -> None:
    """The errors of :func:`fuse_features`: one (n_items, d_s) finite matrix per source, all with n_items rows."""
    if not sources or len(matrices) != len(sources):
        raise ValueError(f"need one matrix per feature source, got {len(matrices)} matrices for {len(sources)} sources")
    for i, (x, source) in enumerate(zip(matrices, sources)):
        name = f"feature source {i} ({source.describe()})"
        if x.ndim != 2:
            raise ValueError(f"{name}: expected an (n_items, d) matrix, got shape {tuple(x.shape)}")
        if x.shape[0] != matrices[0].shape[0]:
            raise ValueError(
                f"feature sources disagree on the number of items: source 0 ({sources[0].describe()}) has "
                f"{matrices[0].shape[0]} rows, {name} has {x.shape[0]}"
            )
        check_finite(x, what=name)


def load_features(dataset: str | Path, sources: list[FeatureSource]) -> Tensor:
    """Loads every source for ``dataset`` and fuses them; see :func:`fuse_features`."""
    return fuse_features([source.load(dataset) for source in sources], sources)


def column_stats(x: Matrix, *, chunk_rows: int = CHUNK_ROWS) -> tuple[Tensor, Tensor]:
    """(d,) float32 column means and unbiased standard deviations of ``x`` (n, d), from two passes over blocks of
    rows, summed in float64 (the second pass sums squares around the mean, which a one-pass formula would lose)."""
    n, d = x.shape
    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk_rows):
        total += block(x, start, start + chunk_rows).double().sum(dim=0).cpu()
    mean = total / n
    squares = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk_rows):
        squares += (block(x, start, start + chunk_rows).double().cpu() - mean).pow(2).sum(dim=0)
    # n - 1 as torch.std; one item has no spread (its std floors to 1e-12 in normalize_features).
    return mean.float(), (squares / max(n - 1, 1)).sqrt().float()


def fuse_to_npy(
    dataset: str | Path, sources: list[FeatureSource], path: str | Path, *, chunk_rows: int = CHUNK_ROWS
) -> np.ndarray:
    """Fuses the sources as :func:`load_features` does, ``chunk_rows`` rows at a time, into a float32 ``.npy`` file.

    ``.npy`` sources are memory-mapped (:meth:`NpyFeatures.open`), so neither they nor the fused matrix need fit in
    memory; other sources load as they do for :func:`load_features`. ``"standardize"`` takes two passes for the
    column means and standard deviations (:func:`column_stats`), so it matches the in-memory fusion up to float
    rounding; ``"l2"`` and ``"none"`` match it exactly. The file is written beside ``path`` and renamed into place,
    so a killed run leaves no partial matrix under ``path``.

    Args:
        dataset: passed to each source.
        sources: the feature sources.
        path: the ``.npy`` to write.
        chunk_rows: rows per block.

    Returns:
        The fused (n_items, sum of d_s) float32 matrix, memory-mapped read-only from ``path``.

    Raises:
        ValueError: as :func:`fuse_features`.
    """
    path = Path(path)
    matrices = [source.open(dataset) if isinstance(source, NpyFeatures) else source.load(dataset) for source in sources]
    _check_matrices(matrices, sources)
    n = matrices[0].shape[0]
    stats = [column_stats(x, chunk_rows=chunk_rows) if source.normalize == "standardize" else None
             for x, source in zip(matrices, sources)]
    partial = path.with_name(f".{path.name}.partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, sum(x.shape[1] for x in matrices)))
    _fuse_blocks(matrices, sources, stats, out, chunk_rows=chunk_rows)
    out.flush()
    del out
    os.replace(partial, path)
    return np.load(path, mmap_mode="r")


def feature_fingerprint(features: Matrix) -> str:
    """sha256 hex digest of a feature matrix: its shape, then its float32 C-order bytes (hashed in blocks of rows,
    which gives the same digest as hashing them at once).

    Args:
        features: (n, d) float tensor, array or memmap.
    """
    h = hashlib.sha256()
    h.update(json.dumps(list(features.shape)).encode())
    for start in range(0, features.shape[0], CHUNK_ROWS):
        h.update(np.ascontiguousarray(block(features, start, start + CHUNK_ROWS).detach().cpu().numpy()).tobytes())
    return h.hexdigest()
