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

from genrec.data.dataset import SequenceDataset, load_dataset
from genrec.data.split import HOLDOUT, training_interactions
from genrec.features.source import FeatureSource, Normalization

log = logging.getLogger(__name__)

EXACT_ITEMS = 1 << 16
"""Up to this many items the SVD is ``torch.svd_lowrank`` on the COO matrix, so Beauty's and Sports' features (and
every tokenizer and result recorded on them) stay the same bits; larger catalogues take
:func:`symmetric_svd_lowrank`, 3x faster at a million items and linear in them (the same subspace, other bits)."""


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
    information (Levy & Goldberg, 2014), factorised by a randomised truncated SVD (:data:`EXACT_ITEMS` says which);
    rows are ``U * sqrt(S)``.

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
    r, c = _pairs(ds, window=window, holdout=holdout)
    if not len(r):
        raise ValueError(f"{ds.name}: no co-occurring pairs in the training sequences")
    r, c = torch.from_numpy(r), torch.from_numpy(c)
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
    if n <= EXACT_ITEMS:
        u, s, _ = torch.svd_lowrank(matrix, q=dim, niter=4)
    else:
        u, s = symmetric_svd_lowrank(matrix.to_sparse_csr(), q=dim, niter=4)
    unseen = int((row_sum == 0).sum())
    if unseen:
        log.warning("%s: %d items never co-occur in a training sequence; their features are zero", ds.name, unseen)
    return (u * s.sqrt()).float().contiguous()


def _pairs(dataset: SequenceDataset, *, window: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (earlier, later) pair of training items at most ``window`` positions apart within a user, as two
    (p,) int64 arrays (all users' pairs at distance 1, then 2, ...), from the concatenated training parts."""
    users, items = training_interactions(dataset, holdout)
    rows, cols = [], []
    for offset in range(1, window + 1):
        at = np.flatnonzero(users[:-offset] == users[offset:])  # both ends in one user's training part
        rows.append(items[at])
        cols.append(items[at + offset])
    return np.concatenate(rows), np.concatenate(cols)


def _gram(y: torch.Tensor, rows: int = 1 << 16) -> torch.Tensor:
    """(q, q) float64 ``y^T y`` of an (n, q) matrix, accumulated over blocks of rows."""
    gram = torch.zeros(y.shape[1], y.shape[1], dtype=torch.float64)
    for start in range(0, y.shape[0], rows):
        block = y[start : start + rows].double()
        gram += block.T @ block
    return gram


def symmetric_svd_lowrank(matrix: torch.Tensor, *, q: int, niter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``q`` singular vectors and values of a large symmetric sparse matrix: the randomised range finder of
    ``torch.svd_lowrank`` (Halko et al. 2009, algorithm 4.4, ``niter`` power iterations), with CSR products (6x
    faster than its COO ones at a million items, and no transposed copies: the matrix is symmetric), then the SVD
    of ``B = Q^T A`` from the eigenvectors of the (q, q) matrix ``B B^T`` (one streaming pass, where the SVD of the
    wide ``B`` takes 4 s at a million items).

    Args:
        matrix: (n, n) sparse CSR, symmetric.
        q: rank.
        niter: power iterations (two products by the matrix each: ``A^T A = A A``).

    Returns:
        u (n, q) left singular vectors and s (q,) singular values, descending.
    """
    basis = torch.linalg.qr(matrix @ torch.randn(matrix.shape[1], q)).Q
    for _ in range(2 * niter):
        basis = torch.linalg.qr(matrix @ basis).Q
    projected = matrix @ basis  # (n, q) = B^T
    values, vectors = torch.linalg.eigh(_gram(projected))  # B B^T = U S^2 U^T, ascending
    values, vectors = values.flip(0), vectors.flip(1)
    return basis @ vectors.to(basis.dtype), values.clamp_min(0).sqrt().to(basis.dtype)


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
