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
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

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

    def load(self, dataset: str | Path) -> Tensor:
        if not Path(self.path).exists():
            how = f"python train.py fit {' '.join(self.made_by)}" if self.made_by else "the run that writes it"
            raise FileNotFoundError(f"feature file {self.path!r} does not exist: make it first ({how})")
        array = np.load(self.path, allow_pickle=False)
        if array.ndim != 2:
            raise ValueError(f"{self.path}: expected an (n_items, d) matrix, got shape {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def check_finite(x: Tensor, *, what: str) -> None:
    """Raises ValueError listing the rows of ``x`` (n, d) that hold NaN or inf; ``what`` names the matrix."""
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise ValueError(
            f"{what}: {rows.numel()} of {x.shape[0]} rows hold NaN or inf (dense item indices {rows[:20].tolist()}"
            f"{', ...' if rows.numel() > 20 else ''})"
        )


def normalize_features(x: Tensor, how: Normalization) -> Tensor:
    """Normalises an (n, d) matrix as the module docstring describes; returns (n, d) float32."""
    x = x.float()
    if how == "l2":
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if how == "standardize":
        # Floor the std: a constant column then stays 0 instead of becoming NaN.
        return (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-12) / x.shape[1] ** 0.5
    if how == "none":
        return x
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")


def fuse_features(matrices: list[Tensor], sources: list[FeatureSource]) -> Tensor:
    """Normalises, weights and concatenates per-source matrices.

    Args:
        matrices: one (n_items, d_s) float matrix per source.
        sources: the sources they came from (their ``normalize`` and ``weight``; ``describe()`` for errors).

    Returns:
        (n_items, sum of d_s) float32.

    Raises:
        ValueError: on no sources, non-finite values (naming the source and rows) or differing item counts.
    """
    if not sources or len(matrices) != len(sources):
        raise ValueError(f"need one matrix per feature source, got {len(matrices)} matrices for {len(sources)} sources")
    parts = []
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
        parts.append(normalize_features(x, source.normalize) * source.weight)
    return torch.cat(parts, dim=1)


def load_features(dataset: str | Path, sources: list[FeatureSource]) -> Tensor:
    """Loads every source for ``dataset`` and fuses them; see :func:`fuse_features`."""
    return fuse_features([source.load(dataset) for source in sources], sources)


def feature_fingerprint(features: Tensor) -> str:
    """sha256 hex digest of a feature matrix: its shape, then its float32 C-order bytes.

    Args:
        features: (n, d) float.
    """
    array = np.ascontiguousarray(features.detach().cpu().float().numpy())
    h = hashlib.sha256()
    h.update(json.dumps(list(array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()
