"""Co-occurrence (PPMI + SVD) item features: shape, alignment, held-out items unseen, bad input."""

from __future__ import annotations

import pytest
import torch

from genrec.features.cooccurrence import CooccurrenceFeatures, cooccurrence_embeddings
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
