"""Collaborative item features without a trained model: PPMI of windowed co-occurrence, factorised by SVD.

For datasets with no item text (Amazon Sports), or as a second feature source. Only the training part of each
sequence (everything before the validation and test items) is counted, so the features never see held-out items.
Items that never occur in a training part get a zero row (reported in the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.data.dataset import load_dataset
from genrec.data.split import HOLDOUT, training_part
from genrec.features.source import FeatureSource, Normalization

log = logging.getLogger(__name__)


def cooccurrence_embeddings(
    dataset: str | Path,
    *,
    dim: int = 64,
    window: int = 3,
    holdout: int = HOLDOUT,
    seed: int = 0,
) -> torch.Tensor:
    """Item embeddings from the item-item co-occurrence of the training sequences.

    Pairs of items at most ``window`` positions apart co-occur; counts become positive pointwise mutual
    information (Levy & Goldberg, 2014), factorised by a randomised truncated SVD; rows are ``U * sqrt(S)``.

    Args:
        dataset: bundled name or path.
        dim: embedding width (at most n_items - 1).
        window: co-occurrence window in positions.
        holdout: trailing items of each sequence left out (2 = the leave-one-out validation and test items).
        seed: SVD seed.

    Returns:
        (n_items, dim) float32, row i = dense item index i.
    """
    ds = load_dataset(dataset)
    n = ds.n_items
    if not 0 < dim < n:
        raise ValueError(f"dim must be in [1, n_items) = [1, {n}), got {dim}")
    rows, cols = [], []
    for seq in ds.sequences:
        train = training_part(seq, holdout)
        for offset in range(1, window + 1):
            if len(train) > offset:
                rows.append(train[:-offset])
                cols.append(train[offset:])
    if not rows:
        raise ValueError(f"{ds.name}: no co-occurring pairs in the training sequences")
    r = torch.from_numpy(np.concatenate(rows))
    c = torch.from_numpy(np.concatenate(cols))
    keep = r != c
    r, c = torch.cat([r[keep], c[keep]]), torch.cat([c[keep], r[keep]])  # symmetric
    counts = torch.sparse_coo_tensor(torch.stack([r, c]), torch.ones(len(r)), (n, n), check_invariants=True).coalesce()
    i, j = counts.indices()
    v = counts.values()
    row_sum = torch.zeros(n).index_add_(0, i, v)
    total = v.sum()
    pmi = torch.log(v * total / (row_sum[i] * row_sum[j]))
    positive = pmi > 0
    keep = torch.stack([i[positive], j[positive]])
    matrix = torch.sparse_coo_tensor(keep, pmi[positive], (n, n), check_invariants=True).coalesce()
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(matrix, q=dim, niter=4)
    unseen = int((row_sum == 0).sum())
    if unseen:
        log.warning("%s: %d items never co-occur in a training sequence; their features are zero", ds.name, unseen)
    return (u * s.sqrt()).float().contiguous()


@dataclass
class CooccurrenceFeatures(FeatureSource):
    """Collaborative features from training-sequence co-occurrence (:func:`cooccurrence_embeddings`), for item
    tokenizers of datasets without text or as a second source beside text."""

    dim: int = 64
    """Embedding width."""
    window: int = 3
    """Co-occurrence window in positions."""
    normalize: Normalization = "l2"
    """Per-source normalisation (``genrec.features.source``)."""
    weight: float = 1.0
    """Multiplier after normalisation."""

    def __post_init__(self) -> None:
        self._check()

    def load(self, dataset: str | Path) -> torch.Tensor:
        return cooccurrence_embeddings(dataset, dim=self.dim, window=self.window)
