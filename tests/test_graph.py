"""The user-item training graph, its GraphSAGE encoder and the GraphFeatures source: a layer against a dense
reference, no held-out interaction in the graph, BPR learning a planted structure, caching, config parsing, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.data import item_popularity, load_dataset
from genrec.features import NpyFeatures
from genrec.features.graph import GraphFeatures, graph_item_embeddings, ranking_auc, train_graph_encoder, training_graph
from genrec.features.sage import BipartiteGraph, GraphSAGE, SAGELayer
from tests.conftest import write_sequences_dataset

ROOT = Path(__file__).resolve().parents[1]


def edges(graph: BipartiteGraph) -> set[tuple[int, int]]:
    return set(zip(graph.users.tolist(), graph.items.tolist()))


def test_sage_layer_matches_dense_reference():
    # 4 users x 5 items; user 3 and item 4 have no edge (their neighbourhood mean must be zero, not NaN).
    pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (1, 3), (2, 0)]
    graph = BipartiteGraph(4, 5, torch.tensor([u for u, _ in pairs]), torch.tensor([i for _, i in pairs]))
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    layer = SAGELayer(3, 2)
    new_users, new_items = layer(users, items, *graph.mean_operators())

    adjacency = torch.zeros(4, 5)
    adjacency[graph.users, graph.items] = 1.0
    user_mean = adjacency / adjacency.sum(1, keepdim=True).clamp_min(1)  # rows of isolated nodes stay 0
    item_mean = adjacency.T / adjacency.T.sum(1, keepdim=True).clamp_min(1)
    expected_users = torch.cat([users, user_mean @ items], 1) @ layer.user.weight.T + layer.user.bias
    expected_items = torch.cat([items, item_mean @ users], 1) @ layer.item.weight.T + layer.item.bias
    torch.testing.assert_close(new_users, expected_users)
    torch.testing.assert_close(new_items, expected_items)
    # The isolated user sees only itself.
    torch.testing.assert_close(new_users[3], layer.user.weight[:, :3] @ users[3] + layer.user.bias)


def test_graph_and_popularity_hold_only_training_interactions(tiny_dataset, tmp_path):
    ds = load_dataset(tiny_dataset)  # dense items: 10->0, 20->1, 30->2, 40->3, 50->4
    graph = training_graph(ds)
    # Training parts: user 0 [0 1] (2 3 held out), user 1 [] (1 2 held out), user 2 [3 0 4 1] (2 0 held out).
    assert edges(graph) == {(0, 0), (0, 1), (2, 3), (2, 0), (2, 4), (2, 1)}
    for u, seq in enumerate(ds.sequences):
        held_out = set(seq[-2:].tolist()) - set(seq[:-2].tolist())
        assert not any((u, i) in edges(graph) for i in held_out)
    assert item_popularity(ds).tolist() == [2, 2, 0, 1, 1]
    # Repeats: one graph edge, but every training interaction counts towards popularity.
    repeats = load_dataset(write_sequences_dataset(tmp_path / "r", ["1 5 5 6 7 8"]))
    assert edges(training_graph(repeats)) == {(0, 0), (0, 1)}
    assert item_popularity(repeats).tolist() == [2, 1, 0, 0]


def planted_graph(seed: int = 0) -> tuple[BipartiteGraph, set[tuple[int, int]]]:
    """Two communities of 30 users and 20 items; each user interacts with 8 items of its own community, 6 of them in
    the graph and 2 held out."""
    g = torch.Generator().manual_seed(seed)
    train, held_out = [], set()
    for u in range(60):
        community = u // 30
        chosen = (torch.randperm(20, generator=g)[:8] + 20 * community).tolist()
        train += [(u, i) for i in chosen[:6]]
        held_out |= {(u, i) for i in chosen[6:]}
    users, items = torch.tensor(train).T
    return BipartiteGraph(60, 40, users, items), held_out


def test_bpr_learns_a_planted_structure_deterministically():
    graph, held_out = planted_graph()
    features = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))  # content carries no signal
    rng = torch.random.get_rng_state()
    kwargs = {"dim": 16, "epochs": 40, "batch_size": 64, "lr": 1e-2, "temperature": 0.2, "seed": 3, "progress": False}
    fit = train_graph_encoder(graph, features, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is left alone
    assert fit.items.shape == (40, 16) and fit.users.shape == (60, 16)
    torch.testing.assert_close(fit.items.norm(dim=1), torch.ones(40))
    assert fit.losses[-1] < 0.5 * fit.losses[0]
    assert ranking_auc(fit.users, fit.items, (graph.users, graph.items)) > 0.9
    # Unseen edges too: at most 0.75 here, since half of the random items are of the user's own community.
    u, i = torch.tensor(sorted(held_out)).T
    assert ranking_auc(fit.users, fit.items, (u, i)) > 0.6
    similarity = fit.items @ fit.items.T
    community = torch.arange(40) // 20
    same = (community[:, None] == community[None, :]) & ~torch.eye(40, dtype=torch.bool)
    assert similarity[same].mean() > similarity[community[:, None] != community[None, :]].mean() + 0.5
    assert torch.equal(train_graph_encoder(graph, features, **kwargs).items, fit.items)


def write_npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array.astype(np.float32))
    return str(path)


def test_graph_features_load_is_cached(tiny_dataset, tmp_path, monkeypatch):
    import genrec.features.graph as graph_module

    npy = write_npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 7)))
    cache = str(tmp_path / "c")
    source = GraphFeatures(sources=[NpyFeatures(path=npy)], dim=4, epochs=2, batch_size=4, cache_dir=cache)
    x = source.load(tiny_dataset)
    assert x.shape == (5, 4) and bool(torch.isfinite(x).all())
    assert len(list((tmp_path / "c" / "graph").glob("tiny-sage-*.npy"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds this entry")

    monkeypatch.setattr(graph_module, "train_graph_encoder", no_training)
    assert torch.equal(source.load(tiny_dataset), x)
    # Another hyperparameter or other input features are another entry, never a stale hit.
    with pytest.raises(AssertionError, match="trained although"):
        GraphFeatures(sources=source.sources, dim=4, epochs=3, batch_size=4, cache_dir=cache).load(tiny_dataset)
    other = write_npy(tmp_path / "y.npy", np.random.default_rng(1).normal(size=(5, 7)))
    with pytest.raises(AssertionError, match="trained although"):
        GraphFeatures(sources=[NpyFeatures(path=other)], dim=4, epochs=2, batch_size=4, cache_dir=cache).load(
            tiny_dataset
        )


def test_graph_features_errors(tiny_dataset, tmp_path):
    npy = NpyFeatures(path=write_npy(tmp_path / "x.npy", np.ones((5, 3))))
    with pytest.raises(ValueError, match="non-empty list of feature sources"):
        GraphFeatures(sources=[])
    with pytest.raises(ValueError, match="GraphFeatures.dim must be >= 1, got 0"):
        GraphFeatures(sources=[npy], dim=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GraphFeatures(sources=[npy], temperature=0.0)
    with pytest.raises(ValueError, match="weight must be > 0"):
        GraphFeatures(sources=[npy], weight=-1.0)
    with pytest.raises(ValueError, match=r"one row per item \(5\), got shape \(4, 3\)"):
        graph_item_embeddings(tiny_dataset, torch.ones(4, 3), cache_dir=tmp_path)
    bad = torch.ones(5, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 of 5 rows hold NaN or inf \(dense item indices \[2\]\)"):
        graph_item_embeddings(tiny_dataset, bad, cache_dir=tmp_path)
    graph = training_graph(load_dataset(tiny_dataset))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_graph_encoder(graph, torch.ones(5, 3), epochs=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        GraphSAGE(n_users=3, input_dim=3, dim=0)
    short = load_dataset(write_sequences_dataset(tmp_path / "short", ["1 1 2", "2 3"]))
    with pytest.raises(ValueError, match="no training interactions"):
        training_graph(short)


def test_mmgrec_config_parses_nested_feature_sources(tmp_path):
    from genrec.cli import main
    from genrec.features import TextEmbeddings

    config = ROOT / "configs" / "tokenizer" / "beauty-mmgrec.yaml"
    cli = main(["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False)
    (source,) = cli.datamodule.sources
    assert isinstance(source, GraphFeatures) and isinstance(source.sources[0], TextEmbeddings)
    assert source.describe()["sources"][0]["type"] == "TextEmbeddings"
    assert cli.model.hparams.collision_order == "popularity" and cli.model.hparams.codebook_size == 128
