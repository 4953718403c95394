"""The synthetic dataset generator: exact sizes, determinism, genrec's format, power-law popularity, and
sequential structure that a model can learn and a popularity ranking cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.data import leave_one_out, load_dataset
from genrec.data.__main__ import main as data_main
from genrec.data.synth import FEATURES_FILE, SynthSpec, generate, write_synthetic

SPEC = SynthSpec(users=3000, items=3000, interactions=30_000, dim=16, seed=3)


def test_written_dataset_loads_with_the_requested_sizes(tmp_path):
    summary = write_synthetic(SPEC, tmp_path / "synth")
    ds = load_dataset(tmp_path / "synth")
    assert ds.n_users == 3000 and ds.n_interactions == 30_000
    assert ds.n_items == summary["items"] == 3000 - summary["dropped_items"]
    assert ds.item_ids == list(range(1, ds.n_items + 1))  # dense index = id - 1 = the features' row
    assert min(len(s) for s in ds.sequences) == SPEC.min_length
    features = np.load(tmp_path / "synth" / FEATURES_FILE)
    assert features.shape == (ds.n_items, 16) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert ds.items[0] == {"title": "Item 1", "categories": f"Cluster {generate(SPEC).cluster[0]}"}
    split = leave_one_out(ds, max_len=20)
    assert split.skipped == {"valid": 0, "test": 0, "train": 0}  # every user trains, validates and tests
    assert json.loads((tmp_path / "synth" / "synth.json").read_text())["spec"]["seed"] == 3


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    write_synthetic(SPEC, tmp_path / "a")
    write_synthetic(SPEC, tmp_path / "b")
    for name in ("sequences.txt", "items.jsonl", FEATURES_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = generate(SynthSpec(**{**SPEC.__dict__, "seed": 4}))
    assert not np.array_equal(np.concatenate(other.sequences), np.concatenate(generate(SPEC).sequences))


def test_popularity_has_a_heavy_head_and_a_long_tail():
    data = generate(SPEC)
    counts = np.sort(np.bincount(np.concatenate(data.sequences), minlength=data.n_items))[::-1]
    head = counts[: data.n_items // 20].sum() / counts.sum()  # the top 5 % of items
    assert head > 0.2, head  # uniform popularity would give 5 %
    assert (counts <= 10).sum() > data.n_items // 10  # and a tail of rarely seen items


def test_next_item_is_learnable_and_popularity_is_not_enough():
    data = generate(SPEC)
    c, n = data.cluster, data.n_items
    n_clusters = int(c.max()) + 1
    train = [s[:-2] for s in data.sequences]
    popularity = np.bincount(np.concatenate(train), minlength=n).astype(float)
    # A model of the generator, estimated on the training parts only: cluster transitions x popularity in cluster.
    transitions = np.zeros((n_clusters, n_clusters))
    for s in train:
        np.add.at(transitions, (c[s[:-1]], c[s[1:]]), 1)
    transitions /= transitions.sum(1, keepdims=True).clip(1)
    within = popularity / np.bincount(c, weights=popularity, minlength=n_clusters)[c].clip(1)
    top_popular = set(np.argsort(-popularity)[:10].tolist())
    hits_popularity = hits_model = 0
    for s in data.sequences:
        target = int(s[-1])
        hits_popularity += target in top_popular
        hits_model += target in set(np.argsort(-(transitions[c[s[-2]]][c] * within))[:10].tolist())
    recall_popularity, recall_model = hits_popularity / len(train), hits_model / len(train)
    assert recall_model > 0.3 and recall_model > 4 * recall_popularity, (recall_model, recall_popularity)


def test_features_tell_the_clusters_apart():
    data = generate(SPEC)
    centres = np.stack([data.features[data.cluster == j].mean(0) for j in range(int(data.cluster.max()) + 1)])
    nearest = np.argmax(data.features @ centres.T, axis=1)
    assert (nearest == data.cluster).mean() > 0.95


def test_cli_writes_a_dataset_and_refuses_impossible_sizes(tmp_path, capsys):
    out = tmp_path / "cli"
    assert data_main(["synth", str(out), "--users", "50", "--items", "40", "--interactions", "500", "--dim", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["interactions"] == 500
    assert load_dataset(out).n_interactions == 500
    assert data_main(["synth", str(tmp_path / "bad"), "--users", "50", "--items", "40", "--interactions", "100"]) == 2
    assert "cannot give 50 users 5 items each" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("bad", [dict(items=1), dict(clusters=0), dict(stay=1.5), dict(min_length=0)])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        SynthSpec(**{"users": 10, "items": 20, "interactions": 100, **bad})
