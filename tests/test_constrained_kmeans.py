"""Invariant tests of size-constrained k-means and ColaRec's hierarchical item IDs (and their Lightning module)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genrec.tokenizer import load_tokenizer
from genrec.tokenizer.constrained_kmeans import capacity_assign, hierarchical_codes, size_constrained_kmeans
from genrec.tokenizer.kmeans import kmeans


def blobs(
    n: int = 240, d: int = 7, centres: int = 6, noise: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) points around ``centres`` well-separated centres (equal sizes when centres divides n), and labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, d, generator=g) * 4
    labels = torch.arange(n) % centres
    return means[labels] + noise * torch.randn(n, d, generator=g), labels


def adversarial(kind: str, n: int = 300, d: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "random":
        return torch.randn(n, d, generator=g)
    if kind == "identical":
        return torch.ones(n, d)
    # 90 % of the points in one tight blob, the rest spread out.
    x = torch.randn(n, d, generator=g) * 3
    x[: int(0.9 * n)] = 1e-3 * torch.randn(int(0.9 * n), d, generator=g) + 2
    return x


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if two labelings group the points identically (labels may be permuted)."""
    pairs = torch.unique(torch.stack([a, b], dim=1), dim=0)
    return pairs.shape[0] == a.unique().numel() == b.unique().numel()


def greedy_oracle(distances: torch.Tensor, max_size: int) -> torch.Tensor:
    """The literal greedy: (point, cluster) pairs by ascending (distance, point, cluster), accepted while both free."""
    n, k = distances.shape
    assignment, counts = [-1] * n, [0] * k
    for _, i, c in sorted((float(distances[i, c]), i, c) for i in range(n) for c in range(k)):
        if assignment[i] < 0 and counts[c] < max_size:
            assignment[i], counts[c] = c, counts[c] + 1
    return torch.tensor(assignment)


# --- capacity-constrained assignment and k-means ------------------------------------------------------------------


def test_capacity_assign_is_the_greedy_over_pairs():
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        n, k = int(torch.randint(3, 40, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        max_size = math.ceil(n / k) + seed % 3
        distances = torch.rand(n, k, generator=g)
        if seed % 2:
            distances = distances.round(decimals=1)  # many ties: broken by point, then cluster index
        assert torch.equal(capacity_assign(distances, max_size), greedy_oracle(distances, max_size)), seed


@pytest.mark.parametrize("kind", ["random", "identical", "blob"])
@pytest.mark.parametrize("k, max_size", [(7, None), (13, None), (7, 50)])
def test_every_cluster_within_max_size(kind, k, max_size):
    x = adversarial(kind)
    result = size_constrained_kmeans(x, k, max_size=max_size, max_iter=15, seed=3)
    bound = max_size or math.ceil(x.shape[0] / k)
    sizes = torch.bincount(result.assignment, minlength=k)
    assert result.assignment.dtype == torch.int64 and result.centroids.shape == (k, x.shape[1])
    assert int(sizes.max()) <= bound and int(sizes.sum()) == x.shape[0]
    # The inertia is that of the returned assignment and centroids.
    assert result.inertia == pytest.approx(float((x - result.centroids[result.assignment]).pow(2).sum()), rel=1e-4)


def test_generous_bound_matches_unconstrained_kmeans_on_separated_blobs():
    x, labels = blobs(n=250, centres=5)
    constrained = size_constrained_kmeans(x, 5, max_size=250, seed=0)
    plain = kmeans(x, 5, seed=0)
    assert same_partition(constrained.assignment, labels) and same_partition(plain.assignments, labels)
    assert constrained.inertia <= plain.inertia * (1 + 1e-5)


def test_tight_bound_recovers_equal_sized_blobs():
    x, labels = blobs(n=240, centres=6)
    result = size_constrained_kmeans(x, 6, seed=2)  # max_size = 40 = every blob's size
    assert same_partition(result.assignment, labels)


def test_size_constrained_kmeans_errors():
    x = torch.randn(30, 3)
    with pytest.raises(ValueError, match=r"max_size=4 points cannot hold 30 points; max_size must be >= .* = 5"):
        size_constrained_kmeans(x, 7, max_size=4)
    with pytest.raises(ValueError, match="cannot make 31 clusters of 30 points"):
        size_constrained_kmeans(x, 31)
    with pytest.raises(ValueError, match=r"expected a \(n, d\) matrix"):
        size_constrained_kmeans(x[0], 2)
    with pytest.raises(ValueError, match="cannot hold 30 points"):
        capacity_assign(torch.rand(30, 7), 4)


def test_size_constrained_kmeans_is_deterministic_for_a_seed():
    x = adversarial("random")
    a, b = size_constrained_kmeans(x, 9, seed=4), size_constrained_kmeans(x, 9, seed=4)
    assert torch.equal(a.assignment, b.assignment) and torch.equal(a.centroids, b.centroids)


# --- hierarchical codes (ColaRec) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, branching", [(300, (4, 5)), (203, (5, 3, 2)), (40, (3, 32)), (5, (8, 8))])
def test_hierarchical_codes_invariants(n, branching):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(n))
    out = hierarchical_codes(x, branching, seed=1)
    codes, levels = out.codes, len(branching)
    assert codes.shape == (n, levels + 1) and codes.dtype == torch.int64
    assert torch.unique(codes, dim=0).shape[0] == n
    assert out.level_sizes[:levels] == tuple(branching)
    assert bool((codes >= 0).all()) and bool((codes < torch.tensor(out.level_sizes)).all())
    # Inside every parent cluster of g items, each child holds at most ceil(g / k) items.
    for level, k in enumerate(branching):
        # A parent is a distinct prefix (the root, all items, on level 0; unique() takes no empty rows).
        prefix = codes[:, :level] if level else torch.zeros(n, 1, dtype=torch.long)
        parents, parent_of = torch.unique(prefix, dim=0, return_inverse=True)
        for p in range(parents.shape[0]):
            members = parent_of == p
            sizes = torch.bincount(codes[members, level], minlength=k)
            assert int(sizes.max()) <= math.ceil(int(members.sum()) / k)
    # The last code numbers each leaf 0, 1, ... by distance to the leaf centroid, which is the reconstruction.
    leaves, leaf_of = torch.unique(codes[:, :-1], dim=0, return_inverse=True)
    assert out.level_sizes[-1] == int(torch.bincount(leaf_of).max())
    for leaf in range(leaves.shape[0]):
        members = torch.nonzero(leaf_of == leaf).flatten()
        centre = x[members].mean(dim=0)
        assert torch.allclose(out.reconstruction[members], centre.expand(len(members), -1))
        distances = (x[members] - centre).pow(2).sum(dim=1)
        index = codes[members, -1]
        assert sorted(index.tolist()) == list(range(len(members)))
        assert bool((distances[torch.argsort(index)].diff() >= -1e-6).all())


def test_hierarchical_codes_are_deterministic_for_a_seed():
    x = torch.randn(180, 4, generator=torch.Generator().manual_seed(0))
    a, b = hierarchical_codes(x, (4, 4), seed=7), hierarchical_codes(x, (4, 4), seed=7)
    assert torch.equal(a.codes, b.codes) and a.level_sizes == b.level_sizes


def test_hierarchical_codes_follow_the_cluster_structure():
    # 4 separated blobs of 30 with 3 sub-blobs of 10 each: level 0 finds the blobs, level 1 the sub-blobs.
    g = torch.Generator().manual_seed(0)
    top = torch.randn(4, 5, generator=g) * 20
    sub = torch.randn(4, 3, 5, generator=g) * 2
    labels = torch.arange(120)
    x = top[labels // 30] + sub[labels // 30, (labels % 30) // 10] + 0.01 * torch.randn(120, 5, generator=g)
    out = hierarchical_codes(x, (4, 3), seed=0)
    assert same_partition(out.codes[:, 0], labels // 30)
    assert same_partition(out.codes[:, 0] * 3 + out.codes[:, 1], labels // 10)
    assert out.level_sizes == (4, 3, 10)


# --- Lightning ----------------------------------------------------------------------------------------------------


def _trainer(tmp_path, **kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_lightning_module_writes_a_loadable_artifact(tmp_path):
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import ConstrainedKMeansTokenizer

    x, _ = blobs(n=150, d=6, centres=5, noise=0.5)
    module = ConstrainedKMeansTokenizer(output_dir=str(tmp_path / "cola"), branching=(4, 3), seed=2)
    _trainer(tmp_path, max_epochs=2).fit(module, datamodule=ItemFeatures(features=x, batch_size=None))
    ids = load_tokenizer(tmp_path / "cola")
    expected = hierarchical_codes(x, (4, 3), seed=2, max_iter=module.hparams.max_iter, tol=module.hparams.tol)
    assert torch.equal(ids.codes, expected.codes) and ids.level_sizes == expected.level_sizes
    assert ids.level_sizes[:2] == (4, 3) and ids.codebooks is None
    ids.check_features(x)
    assert ids.config["method"] == "constrained-kmeans" and ids.config["hparams"]["branching"] == [4, 3]
    assert ids.config["feature_shape"] == [150, 6] and {"genrec_version", "torch_version", "created"} <= set(ids.config)
    assert ids.metrics["max_group"] == ids.level_sizes[-1] and ids.metrics["usage"][:2] == [1.0, 1.0]
    relative = float((x - expected.reconstruction).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())
    assert ids.metrics["reconstruction_error"] == pytest.approx(relative, rel=1e-5)
    assert (tmp_path / "cola" / "items_per_code.png").is_file()


def test_lightning_module_checks_batches_and_skips_fast_dev_run(tmp_path):
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import ConstrainedKMeansTokenizer

    x = torch.randn(60, 3)
    with pytest.raises(ValueError, match="batch_size: null"):
        module = ConstrainedKMeansTokenizer(output_dir=str(tmp_path / "a"), branching=(3, 2))
        _trainer(tmp_path, max_epochs=1).fit(module, datamodule=ItemFeatures(features=x, batch_size=16))
    module = ConstrainedKMeansTokenizer(output_dir=str(tmp_path / "b"), branching=(3, 2))
    _trainer(tmp_path, fast_dev_run=True).fit(module, datamodule=ItemFeatures(features=x, batch_size=None))
    assert module.result is not None and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="branching must be"):
        ConstrainedKMeansTokenizer(output_dir="x", branching=(4, 0))


def test_artifact_feeds_semantic_id_data(tiny_dataset, tmp_path):
    """Fitted through the CLI on the tiny dataset's item embeddings, read by the seq2seq datamodule."""
    import numpy as np

    from genrec.cli import main
    from genrec.data import load_dataset
    from genrec.seq2seq.data import SemanticIdData

    n_items = load_dataset(str(tiny_dataset)).n_items
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(n_items, 4)).astype(np.float32))
    out = tmp_path / "cola"
    main([
        "fit",
        "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--model=genrec.tokenizer.lightning.ConstrainedKMeansTokenizer",
        f"--model.output_dir={out}", "--model.branching=[2, 2]",
        "--data=genrec.tokenizer.datamodule.ItemFeatures",
        f"--data.dataset={tiny_dataset}", "--data.batch_size=null",
        "--data.sources="
        + json.dumps([{"class_path": "genrec.features.source.NpyFeatures", "init_args": {"path": str(emb)}}]),
    ])
    data = SemanticIdData(dataset=str(tiny_dataset), tokenizer=str(out), max_len=3)
    assert data.level_sizes[:2] == (2, 2) and data.catalogue.item_codes.shape == (n_items, 3)
    data.setup("fit")
    assert len(data.parts["train"]) > 0
