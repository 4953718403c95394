"""Co-occurrence (PPMI + SVD) item features: shape, alignment, held-out items unseen, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data import SequenceDataset
from genrec.features.cooccurrence import CooccurrenceFeatures, _pairs, cooccurrence_embeddings, symmetric_svd_lowrank
from tests.conftest import write_sequences_dataset


def test_items_that_co_occur_are_close_and_held_out_items_are_unseen(tmp_path):
    # Items 1-4 always appear together, items 5-8 together; item 9 only ever appears as a held-out (last) item.
    lines = [f"{u} 1 2 3 4 9 9" if u % 2 else f"{u} 5 6 7 8 9 9" for u in range(1, 41)]
    path = write_sequences_dataset(tmp_path / "two-groups", lines)
    x = torch.nn.functional.normalize(cooccurrence_embeddings(path, dim=4, window=2), dim=1)
    assert x.shape == (9, 4)
    # Items of different groups never co-occur: their features are orthogonal; each group's own are not.
    assert (x[:4] @ x[4:8].T).abs().max() < 1e-2  # randomised SVD: ~5e-4 of noise
    assert (x[0] @ x[1]) > 0.1 and (x[4] @ x[5]) > 0.1
    # The validation and test items (the last two) are never counted: item 9 gets a zero row (normalised to 0).
    assert torch.equal(x[8], torch.zeros(4))


def test_feature_source_and_errors(tmp_path):
    path = write_sequences_dataset(tmp_path / "d", ["1 1 2 3 4 5", "2 2 3 4 5 1"])
    assert CooccurrenceFeatures(dim=2).load(path).shape == (5, 2)
    with pytest.raises(ValueError, match=r"dim must be in \[1, n_items\)"):
        cooccurrence_embeddings(path, dim=5)
    with pytest.raises(ValueError, match="weight must be > 0"):
        CooccurrenceFeatures(weight=0.0)
    short = write_sequences_dataset(tmp_path / "s", ["1 1 2", "2 3 4"])
    with pytest.raises(ValueError, match="no co-occurring pairs"):
        cooccurrence_embeddings(short, dim=1)


def test_pairs_are_every_pair_within_the_window_of_each_training_part():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 30, size=int(m)) for m in rng.integers(1, 12, size=50)]
    expected = sorted((int(s[a]), int(s[a + o])) for s in sequences for o in (1, 2, 3)
                      for a in range(max(len(s) - 2, 0) - o))
    dataset = SequenceDataset(name="random", user_ids=list(range(50)), item_ids=list(range(30)), sequences=sequences)
    rows, cols = _pairs(dataset, window=3, holdout=2)
    assert sorted(zip(rows.tolist(), cols.tolist())) == expected


def test_symmetric_svd_of_large_catalogues_finds_the_top_singular_subspace():
    g = torch.Generator().manual_seed(0)
    factors = torch.randn(400, 6, generator=g)
    dense = factors @ torch.diag(torch.tensor([40.0, 30, 20, 10, 5, 3])) @ factors.T
    dense = dense + 0.01 * (lambda e: e + e.T)(torch.randn(400, 400, generator=g))
    torch.manual_seed(0)
    u, s = symmetric_svd_lowrank(dense.to_sparse_csr(), q=6, niter=4)
    exact_u, exact_s, _ = torch.linalg.svd(dense)
    torch.testing.assert_close(s, exact_s[:6], rtol=1e-3, atol=1e-3)
    assert torch.linalg.svdvals(exact_u[:, :6].T @ u).min() > 0.999  # the same subspace
    torch.testing.assert_close(u.T @ u, torch.eye(6), atol=1e-4, rtol=0)
