"""Invariant tests of the item tokenizer: k-means, residual quantization, RQ-VAE, collisions, artifacts, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.features import NpyFeatures, TextEmbeddings, feature_fingerprint, fuse_features, fuse_to_npy, load_features
from genrec.features.source import normalize_features
from genrec.tokenizer import (
    RQVAE,
    ResidualKMeans,
    append_collision_code,
    assert_unique,
    collision_stats,
    decode_codes,
    load_tokenizer,
    reassign_last_level,
    resolve_collisions,
    save_tokenizer,
)
from genrec.tokenizer.kmeans import kmeans
from genrec.tokenizer.residual import residual_quantize


def clustered(n: int = 600, d: int = 24, centres: int = 40, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """(n, d) points around ``centres`` well-separated random centres."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, d, generator=g) * 3
    labels = torch.arange(n) % centres
    return means[labels] + noise * torch.randn(n, d, generator=g)


# --- k-means -----------------------------------------------------------------------------------------------------


def test_kmeans_plusplus_uses_the_codes_on_separated_clusters():
    x = clustered(n=640, centres=64, noise=0.01)
    result = kmeans(x, 64, max_iter=1, seed=3)  # one Lloyd step: what the seeding found
    assert result.assignments.unique().numel() >= 0.9 * 64
    # Converged k-means on separated clusters recovers them exactly: every cluster is one code.
    full = kmeans(x, 64, seed=3)
    labels = torch.arange(640) % 64
    assert torch.unique(torch.stack([labels, full.assignments], 1), dim=0).shape[0] == 64


def test_kmeans_reseeds_dead_clusters():
    # 20 tight clusters, and a start where 5 centroids sit far from every point: those 5 get no points and must be
    # moved onto badly served points until every cluster is found.
    x = clustered(n=100, centres=20, noise=0.01)
    init = torch.cat([x[:15], torch.full((5, x.shape[1]), 1e3)])
    result = kmeans(x, 20, init=init)
    assert result.assignments.unique().numel() == 20
    assert result.inertia < 1e-2 * kmeans(x, 20, init=init, max_iter=0).inertia


def test_kmeans_assignments_match_final_centroids():
    x = clustered()
    result = kmeans(x, 16, max_iter=3)
    d2 = torch.cdist(x, result.centroids)
    assert torch.equal(d2.argmin(dim=1), result.assignments)


def test_kmeans_rejects_fewer_items_than_codes_and_non_finite_rows():
    with pytest.raises(ValueError, match="cannot fit 32 codes to 10 items"):
        kmeans(torch.randn(10, 4), 32)
    x = torch.randn(50, 4)
    x[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"first rows \[7\]"):
        kmeans(x, 4)


# --- residual quantization ---------------------------------------------------------------------------------------


def test_rq_kmeans_decode_reproduces_quantized_and_residuals_shrink():
    x = clustered(d=17)
    rq = ResidualKMeans(input_dim=17, levels=3, codebook_size=16).fit(x)
    q = rq.quantize(x)
    assert q.codes.shape == (600, 3) and q.codes.dtype == torch.int64
    torch.testing.assert_close(rq.decode(q.codes), q.quantized)
    torch.testing.assert_close(decode_codes(rq.codebooks, q.codes), q.quantized)
    # The last residual minus the last code is what is left: x - quantized.
    torch.testing.assert_close(q.residuals[:, -1] - q.selected[:, -1], x - q.quantized, atol=1e-5, rtol=1e-5)
    energy = q.residuals.pow(2).sum(dim=2).mean(dim=0)  # (l,) mean squared norm each level quantizes
    final = (x - q.quantized).pow(2).sum(dim=1).mean()
    assert torch.all(energy[1:] <= energy[:-1]) and final <= energy[-1]


def test_rq_kmeans_level_with_fewer_items_than_codes():
    with pytest.raises(ValueError, match="level 0: cannot fit 64 codes to 30 items"):
        ResidualKMeans(input_dim=4, codebook_size=64).fit(torch.randn(30, 4))


def test_rqvae_decode_reproduces_quantized_and_residuals_shrink():
    torch.manual_seed(0)
    x = clustered(n=300, d=19)
    model = RQVAE(input_dim=19, encoder_dims=(23, 7), levels=3, codebook_size=8)
    model.initialize(x)
    z = model.encode(x)
    q = model.quantize(z)
    torch.testing.assert_close(model.decode_codes(q.codes), q.quantized)
    out = model(x)
    assert torch.equal(out.codes, q.codes)
    assert out.reconstruction.shape == x.shape and out.quantized.shape == (300, 7)
    energy = q.residuals.pow(2).sum(dim=2).mean(dim=0)
    assert torch.all(energy[1:] <= energy[:-1])


def test_rqvae_reseed_moves_dead_codes_onto_residuals():
    model = RQVAE(input_dim=5, encoder_dims=(6, 3), levels=2, codebook_size=4)
    residuals = torch.randn(10, 2, 3)
    dead = torch.tensor([[True, False, False, False], [False, False, True, True]])
    before = model.codebooks.detach().clone()
    assert model.reseed_codes(dead, residuals) == 3
    after = model.codebooks.detach()
    assert torch.equal(after[~dead], before[~dead])
    for level, code in torch.nonzero(dead).tolist():
        assert (after[level, code] == residuals[:, level]).all(dim=1).any()


# --- collisions --------------------------------------------------------------------------------------------------


def colliding_codes() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, (300, 3), generator=g)  # 27 possible IDs for 300 items: many collisions


def test_extra_code_is_rank_within_each_collision_group():
    codes = colliding_codes()
    out = append_collision_code(codes)
    assert torch.equal(out[:, :3], codes)
    assert_unique(out)
    for row in torch.unique(codes, dim=0):
        members = (codes == row).all(dim=1)
        extra = out[members, -1]
        assert extra.tolist() == list(range(int(members.sum())))  # 0..g-1 in item order


def test_extra_code_level_is_added_even_without_collisions():
    codes = torch.tensor([[0, 1], [1, 0], [1, 1]])
    out, sizes = resolve_collisions(codes, strategy="extra_code", codebook_size=2)
    assert sizes == (2, 2, 1) and out[:, -1].tolist() == [0, 0, 0]


def test_popularity_extra_code_ranks_each_group_by_descending_popularity():
    codes = colliding_codes()
    popularity = torch.randint(4, (300,), generator=torch.Generator().manual_seed(3))  # many ties
    out = append_collision_code(codes, popularity)
    assert torch.equal(out[:, :3], codes)
    assert_unique(out)
    for row in torch.unique(codes, dim=0):
        members = torch.nonzero((codes == row).all(dim=1)).flatten()
        extra = out[members, -1]
        assert sorted(extra.tolist()) == list(range(members.numel()))
        ranked = members[torch.argsort(extra)].tolist()  # the group in extra-code order
        # Strictly ordered by (descending popularity, item index): the most popular item gets 0.
        keys = [(-int(popularity[i]), i) for i in ranked]
        assert all(a < b for a, b in zip(keys, keys[1:]))
    # All-equal popularity is TIGER's item-index order.
    assert torch.equal(append_collision_code(codes, torch.zeros(300)), append_collision_code(codes))


def test_popularity_order_input_errors():
    codes = colliding_codes()
    with pytest.raises(ValueError, match=r"one entry per item, shape \(300,\), got \(299,\)"):
        append_collision_code(codes, torch.ones(299))
    nan = torch.ones(300)
    nan[7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(items \[7\]\)"):
        resolve_collisions(codes, strategy="extra_code", codebook_size=3, popularity=nan)
    with pytest.raises(ValueError, match="'reassign' does not use it"):
        resolve_collisions(codes, strategy="reassign", codebook_size=3, distances=torch.rand(300, 3), popularity=nan)


def test_reassign_makes_ids_unique_and_moves_only_colliding_items():
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(4, (120, 3), generator=g)
    codes[:, 2] = torch.randint(3, (120,), generator=g)  # last level crowded on 3 of 16 codes
    distances = torch.rand(120, 16, generator=g)
    out, sizes = resolve_collisions(codes, strategy="reassign", codebook_size=16, distances=distances)
    assert sizes == (16, 16, 16)
    assert_unique(out)
    assert torch.equal(out[:, :2], codes[:, :2])
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    alone = counts[inverse] == 1
    assert torch.equal(out[alone], codes[alone])


def test_reassign_moves_to_nearest_free_code():
    codes = torch.tensor([[0, 1], [0, 1], [1, 1]])
    distances = torch.tensor([[0.5, 0.1, 9.0, 0.2], [0.3, 0.2, 9.0, 0.9], [0.0, 0.0, 0.0, 0.0]])
    out = reassign_last_level(codes, distances)
    # Item 0 is closer to the shared code 1 (0.1 < 0.2) and keeps it; item 1 moves to its nearest free code, 0.
    assert out.tolist() == [[0, 1], [0, 0], [1, 1]]


def test_reassign_rejects_a_prefix_with_more_items_than_codes():
    codes = torch.zeros(5, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"prefix \[0\] holds 5 items but the last level has only 4 codes"):
        reassign_last_level(codes, torch.rand(5, 4))


def test_collision_stats_and_assert_unique():
    codes = torch.tensor([[0, 0], [0, 0], [0, 0], [1, 0], [2, 2], [2, 2]])
    stats = collision_stats(codes)
    assert stats.collision_rate == pytest.approx(5 / 6) and stats.max_group == 3 and stats.n_groups == 2
    with pytest.raises(ValueError, match=r"items \[0, 1, 2\]"):
        assert_unique(codes)


# --- features ----------------------------------------------------------------------------------------------------


def test_fuse_features_normalises_and_weights(tmp_path):
    a, b = torch.randn(10, 3) * 5, torch.randn(10, 4) * 100 + 7
    sources = [NpyFeatures(path="a.npy"), NpyFeatures(path="b.npy", normalize="standardize", weight=2)]
    fused = fuse_features([a, b], sources)
    assert fused.shape == (10, 7)
    torch.testing.assert_close(fused[:, :3].norm(dim=1), torch.ones(10))
    torch.testing.assert_close(fused[:, 3:].pow(2).sum(dim=1).mean(), torch.tensor(4.0 * 9 / 10))  # unbiased std
    np.save(tmp_path / "f.npy", b.numpy())
    torch.testing.assert_close(NpyFeatures(path=str(tmp_path / "f.npy")).load("any"), b)


@pytest.mark.parametrize("how", ["l2", "standardize", "none"])
def test_fusion_in_row_blocks_equals_whole_matrix_normalisation(how):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 7, generator=g) * 3 + 1, torch.rand(1000, 3, generator=g, dtype=torch.float64)
    sources = [NpyFeatures(path="x.npy", normalize=how, weight=1.5), NpyFeatures(path="y.npy", normalize="l2")]
    expected = torch.cat([normalize_features(x, how) * 1.5, normalize_features(y, "l2")], dim=1)
    assert torch.equal(fuse_features([x, y], sources, chunk_rows=97), expected)  # the same bits, any block size


def test_fuse_features_errors_name_source_and_rows():
    bad = torch.randn(8, 3)
    bad[2, 0] = float("inf")
    bad[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"feature source 1 .*rows hold NaN or inf \(dense item indices \[2, 5\]\)"):
        fuse_features([torch.randn(8, 2), bad], [NpyFeatures(path="ok.npy"), NpyFeatures(path="bad.npy")])
    with pytest.raises(ValueError, match=r"disagree on the number of items.*8 rows.*bad.npy.*7"):
        fuse_features([torch.randn(8, 2), torch.randn(7, 2)], [NpyFeatures(path="ok.npy"), NpyFeatures(path="bad.npy")])


def test_fuse_to_npy_equals_in_memory_fusion(tmp_path):
    g = torch.Generator().manual_seed(9)
    np.save(tmp_path / "a.npy", (torch.randn(101, 5, generator=g) * 4).numpy())
    np.save(tmp_path / "b.npy", (torch.randn(101, 3, generator=g) * 50 + 9).numpy().astype(np.float64))
    sources = [
        NpyFeatures(path=str(tmp_path / "a.npy")),
        NpyFeatures(path=str(tmp_path / "b.npy"), normalize="standardize", weight=2.0),
        NpyFeatures(path=str(tmp_path / "a.npy"), normalize="none", weight=0.5),
    ]
    memory = load_features("any", sources)
    disk = fuse_to_npy("any", sources, tmp_path / "fused.npy", chunk_rows=10)
    assert isinstance(disk, np.memmap) and disk.dtype == np.float32 and disk.shape == (101, 13)
    fused = torch.from_numpy(np.array(disk))
    assert torch.equal(fused[:, :5], memory[:, :5]) and torch.equal(fused[:, 8:], memory[:, 8:])
    torch.testing.assert_close(fused[:, 5:8], memory[:, 5:8], rtol=1e-5, atol=1e-6)
    # open() maps the file; load() reads it into memory as float32, as it did before it went through the map.
    assert isinstance(sources[1].open("any"), np.memmap)
    loaded = sources[1].load("any")
    assert not isinstance(loaded.numpy(), np.memmap)
    assert torch.equal(loaded, torch.from_numpy(np.load(tmp_path / "b.npy").astype(np.float32)))


def test_fuse_to_npy_names_non_finite_rows_and_writes_nothing(tmp_path):
    x = torch.randn(2000, 3)
    x[3, 0] = float("nan")
    x[1500, 2] = float("inf")
    np.save(tmp_path / "bad.npy", x.numpy())
    with pytest.raises(ValueError, match=r"feature source 0 .*2 of 2000 rows hold NaN or inf .*\[3, 1500\]"):
        fuse_to_npy("any", [NpyFeatures(path=str(tmp_path / "bad.npy"))], tmp_path / "bad-fused.npy", chunk_rows=256)
    assert not (tmp_path / "bad-fused.npy").exists()


def test_feature_sources_validate_choices():
    with pytest.raises(ValueError, match="normalize must be one of"):
        TextEmbeddings(normalize="zscore")
    with pytest.raises(ValueError, match="weight must be > 0"):
        NpyFeatures(path="x.npy", weight=0)


# --- artifact ----------------------------------------------------------------------------------------------------


def test_artifact_round_trip(tmp_path):
    x = clustered(n=200, d=6)
    rq = ResidualKMeans(input_dim=6, levels=2, codebook_size=8).fit(x)
    codes, sizes = resolve_collisions(rq.encode(x), strategy="extra_code", codebook_size=8)
    fingerprint = feature_fingerprint(x)
    save_tokenizer(
        tmp_path / "tok",
        codes=codes,
        level_sizes=sizes,
        codebooks=rq.codebooks,
        config={"method": "rq-kmeans"},
        metrics={"usage": [1.0, 1.0]},
        fingerprint=fingerprint,
    )
    ids = load_tokenizer(tmp_path / "tok")
    assert torch.equal(ids.codes, codes) and ids.codes.dtype == torch.int64
    assert ids.level_sizes == sizes and ids.levels == 3 and ids.n_items == 200
    torch.testing.assert_close(ids.codebooks, rq.codebooks)
    assert ids.config == {"method": "rq-kmeans"} and ids.metrics["usage"] == [1.0, 1.0]
    assert ids.fingerprint == fingerprint
    assert (tmp_path / "tok" / "items_per_code.png").stat().st_size > 0
    ids.check_features(x)
    with pytest.raises(ValueError, match="do not match the fingerprint"):
        ids.check_features(x + 1)


def test_fingerprint_depends_on_shape_and_values():
    x = torch.arange(12.0)
    assert feature_fingerprint(x.reshape(3, 4)) != feature_fingerprint(x.reshape(4, 3))
    assert feature_fingerprint(x.reshape(3, 4)) == feature_fingerprint(x.reshape(3, 4).double())


def test_load_tokenizer_rejects_missing_or_duplicate(tmp_path):
    with pytest.raises(ValueError, match=r"is incomplete \(no manifest.json"):
        load_tokenizer(tmp_path)  # an empty folder
    kwargs = dict(level_sizes=(2, 2), codebooks=None, config={}, metrics={}, fingerprint="x", plot=False)
    with pytest.raises(ValueError, match="not unique"):
        save_tokenizer(tmp_path / "dup", codes=torch.tensor([[0, 1], [0, 1]]), **kwargs)
    with pytest.raises(ValueError, match="outside"):
        save_tokenizer(tmp_path / "range", codes=torch.tensor([[0, 2]]), **kwargs)


def test_tokenizers_folder_does_not_shadow_huggingface():
    spec = importlib.util.find_spec("tokenizers")
    assert spec is not None and "site-packages" in str(spec.origin)
    repo = Path(__file__).resolve().parents[1]
    assert not list((repo / "tokenizers").glob("**/*.py"))


# --- Lightning ---------------------------------------------------------------------------------------------------


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


def test_rqvae_lightning_trains_and_writes_artifact(tmp_path):
    import lightning.pytorch as pl

    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQVAETokenizer

    pl.seed_everything(0)
    x = clustered(n=512, d=20, centres=30, noise=0.3)
    data = ItemFeatures(features=x, batch_size=128)
    module = RQVAETokenizer(output_dir=str(tmp_path / "vae"), encoder_dims=(32, 8), levels=3, codebook_size=16,
                            lr=3e-3)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(tmp_path, max_epochs=30, callbacks=[Record()])
    trainer.fit(module, datamodule=data)
    assert module.hparams.input_dim == 20  # derived from the data, so load_from_checkpoint can rebuild it
    trainer.save_checkpoint(tmp_path / "vae.ckpt")
    restored = RQVAETokenizer.load_from_checkpoint(tmp_path / "vae.ckpt")
    assert torch.equal(restored.model.quantize(restored.model.encode(x)).codes, module.model(x).codes)
    assert len(losses) == 120 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    ids = load_tokenizer(tmp_path / "vae")
    assert ids.codes.shape == (512, 4) and ids.level_sizes[:3] == (16, 16, 16)
    assert ids.config["method"] == "rq-vae" and ids.config["hparams"]["input_dim"] == 20
    metrics = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert set(metrics) >= {"reconstruction_error", "usage", "perplexity", "collision_rate", "max_group", "fit_seconds"}


def test_rqkmeans_lightning_fits_in_one_step(tmp_path):
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQKMeansTokenizer

    from lightning.pytorch.loggers import CSVLogger

    class ImageLogger(CSVLogger):  # stands in for WandbLogger, the logger that takes images
        images: list = []

        def log_image(self, key, images, step=None):
            self.images.append((key, images))

    x = clustered(n=300, d=9)
    module = RQKMeansTokenizer(output_dir=str(tmp_path / "km"), codebook_size=32, collision="reassign")
    logger = ImageLogger(tmp_path / "logs")
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.loggers = [logger]
    trainer.fit(module, datamodule=ItemFeatures(features=x, batch_size=None))
    ids = load_tokenizer(tmp_path / "km")
    assert ids.codes.shape == (300, 3) and ids.level_sizes == (32, 32, 32)
    assert min(ids.metrics["usage"]) >= 0.9
    ids.check_features(x)
    assert logger.images == [("tokenizer/items_per_code", [str(tmp_path / "km" / "items_per_code.png")])]
    logged = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "tokenizer/usage/level_2" in logged and "tokenizer/collision_rate" in logged

    small_batches = RQKMeansTokenizer(output_dir=str(tmp_path / "km2"), codebook_size=16)
    with pytest.raises(ValueError, match="batch_size: null"):
        _trainer(tmp_path, max_epochs=1).fit(small_batches, datamodule=ItemFeatures(features=x, batch_size=100))


def test_rqkmeans_lightning_orders_the_collision_code_by_training_popularity(tiny_dataset, tmp_path):
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQKMeansTokenizer

    # Two well-separated pairs of identical points and one more item: 1 level x 2 codes must collide.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0], [9.0, 9.0], [0.1, 0.0]])
    popularity = [2, 2, 0, 1, 1]  # training interactions of tiny_dataset's items (tests/test_graph.py)
    for order in ("index", "popularity"):
        module = RQKMeansTokenizer(
            output_dir=str(tmp_path / order), levels=1, codebook_size=2, max_iter=10, collision_order=order
        )
        data = ItemFeatures(dataset=str(tiny_dataset), features=x, batch_size=None)
        _trainer(tmp_path, max_epochs=1).fit(module, datamodule=data)
        ids = load_tokenizer(tmp_path / order)
        assert ids.config["collision_order"] == order and ids.config["hparams"]["collision_order"] == order
        for code in ids.codes[:, 0].unique():
            members = torch.nonzero(ids.codes[:, 0] == code).flatten().tolist()
            ranked = sorted(members, key=lambda i: int(ids.codes[i, 1]))
            if order == "index":
                assert ranked == sorted(members)
            else:
                assert ranked == sorted(members, key=lambda i: (-popularity[i], i))
    # Items 2 and 3 collide: by index item 2 gets 0; by popularity item 3 (1 interaction) beats item 2 (none).
    assert load_tokenizer(tmp_path / "index").codes[[2, 3], 1].tolist() == [0, 1]
    assert load_tokenizer(tmp_path / "popularity").codes[[2, 3], 1].tolist() == [1, 0]

    wrong = ItemFeatures(dataset=str(tiny_dataset), features=torch.randn(6, 2), batch_size=None)
    module = RQKMeansTokenizer(output_dir=str(tmp_path / "w"), levels=1, codebook_size=2, collision_order="popularity")
    with pytest.raises(ValueError, match=r"\(5 items\), but the item features have 6 rows"):
        _trainer(tmp_path, max_epochs=1).fit(module, datamodule=wrong)


def test_lightning_modules_validate_collision_strategy():
    from genrec.tokenizer.lightning import RQKMeansTokenizer, RQVAETokenizer

    for cls in (RQKMeansTokenizer, RQVAETokenizer):
        with pytest.raises(ValueError, match="collision must be one of"):
            cls(output_dir="x", collision="hash")
        with pytest.raises(ValueError, match="collision_order must be one of"):
            cls(output_dir="x", collision_order="alphabetical")
        with pytest.raises(ValueError, match="orders the extra code of collision='extra_code', not 'reassign'"):
            cls(output_dir="x", collision="reassign", collision_order="popularity")


def test_lightning_modules_check_the_data(tmp_path):
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQKMeansTokenizer, RQVAETokenizer

    data = ItemFeatures(features=torch.randn(20, 5), batch_size=None)
    out = str(tmp_path / "x")
    with pytest.raises(ValueError, match="cannot fit 32 codes per level to 20 items"):
        _trainer(tmp_path, max_epochs=1).fit(RQVAETokenizer(output_dir=out, codebook_size=32), datamodule=data)
    with pytest.raises(ValueError, match="level 0: cannot fit 32 codes to 20 items"):
        _trainer(tmp_path, max_epochs=1).fit(RQKMeansTokenizer(output_dir=out, codebook_size=32), datamodule=data)
    with pytest.raises(ValueError, match="input_dim=7 but the item features have width 5"):
        module = RQKMeansTokenizer(output_dir=out, input_dim=7, codebook_size=4)
        _trainer(tmp_path, max_epochs=1).fit(module, datamodule=data)
    bad = torch.randn(20, 5)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"ItemFeatures\(features=...\): 1 of 20 rows hold NaN or inf .*\[3\]"):
        ItemFeatures(features=bad)


def test_residual_quantization_gradients_are_the_same_bits_every_time():
    # Issue 15, case 10: RQ-VAE fits at one seed differed between processes. The codebook rows were gathered by
    # advanced indexing, whose CPU backward accumulates rows in parallel in no fixed order (on 2 threads about a
    # third of the calls differed in the last bits, and training amplified that into other codes).
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1024, 32, generator=g, requires_grad=True)
        codebooks = torch.randn(3, 256, 32, generator=g, requires_grad=True)
        upstream = torch.randn(1024, 3, 32, generator=g)

        def gradients() -> tuple[torch.Tensor, torch.Tensor]:
            x.grad = codebooks.grad = None
            q = residual_quantize(x, codebooks)
            torch.autograd.backward([q.selected, q.residuals], [upstream, upstream])
            return x.grad.clone(), codebooks.grad.clone()

        first = gradients()
        for _ in range(40):
            again = gradients()
            assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    finally:
        torch.set_num_threads(threads)
