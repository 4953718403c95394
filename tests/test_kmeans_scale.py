"""Tokenizer fitting beyond memory: sampled and refined k-means, memmapped input, encoding and fusion in blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.tokenizer import ResidualKMeans, reassign_last_level, residual_quantize
from genrec.tokenizer.kmeans import kmeans, reseed_empty, reseed_farthest, squared_distances
from genrec.tokenizer.residual import last_level_distances, last_residual_distances, residual_codes
from genrec.tokenizer.rows import Rows


def labelled_blobs(n: int, d: int, centres: int, *, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) points around ``centres`` random centres, in random order, and (n,) the centre of each."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, d, generator=g) * 3
    labels = torch.randint(centres, (n,), generator=g)
    return means[labels] + noise * torch.randn(n, d, generator=g), labels


def blobs(n: int, d: int, centres: int, *, noise: float, seed: int = 0) -> torch.Tensor:
    return labelled_blobs(n, d, centres, noise=noise, seed=seed)[0]


def memmapped(x: torch.Tensor, tmp_path, name: str = "x.npy") -> np.ndarray:
    np.save(tmp_path / name, x.numpy())
    return np.load(tmp_path / name, mmap_mode="r")


def test_kmeans_within_the_cap_is_the_plain_algorithm_bit_for_bit():
    # Existing artifacts (Beauty: 12,101 items, cap 65,536 at k = 256) were fitted without a sample.
    x = blobs(1024, 12, 30, noise=0.5)
    plain = kmeans(x, 8, max_points_per_centroid=None)
    at_cap = kmeans(x, 8, max_points_per_centroid=128)  # 128 * 8 = 1024 = n: no sample
    for a, b in zip(plain, at_cap):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert at_cap.sample_size == 1024 and at_cap.refine_iterations == 0
    over = kmeans(x, 8, max_points_per_centroid=127)
    assert over.sample_size == 127 * 8 and over.refine_iterations >= 1


def test_residual_kmeans_within_the_cap_is_kmeans_on_each_residual():
    # The definition, level by level, with the residual kept in memory: what ResidualKMeans did before it read
    # its input in blocks.
    x = blobs(700, 9, 25, noise=0.4)
    rq = ResidualKMeans(input_dim=9, levels=3, codebook_size=16, seed=5).fit(x)
    residual = x
    for level in range(3):
        result = kmeans(residual, 16, seed=5 + level, max_points_per_centroid=None)
        assert torch.equal(rq.codebooks[level], result.centroids)
        residual = residual - result.centroids[result.assignments]


def test_sampled_kmeans_recovers_separated_clusters():
    x, labels = labelled_blobs(6000, 16, 24, noise=0.05, seed=1)
    result = kmeans(x, 24, seed=2, max_points_per_centroid=32)  # a sample of 768 of 6,000 rows
    assert result.sample_size == 768
    pairs = torch.unique(torch.stack([labels, result.assignments], dim=1), dim=0)
    assert pairs.shape[0] == 24  # every cluster is one code, every code one cluster
    assert torch.equal(result.assignments, torch.cdist(x, result.centroids).argmin(dim=1))


def test_sampled_kmeans_inertia_is_within_a_few_percent_of_full_lloyd():
    x = blobs(20000, 16, 100, noise=1.0, seed=3)  # overlapping clusters: no exact answer to find
    full = kmeans(x, 16, max_points_per_centroid=None)
    sampled = kmeans(x, 16)  # the default 256 points per centroid: 4,096 of 20,000 rows
    assert sampled.sample_size == 4096 and sampled.inertia <= 1.03 * full.inertia
    unrefined = kmeans(x, 16, refine_iter=0)
    assert sampled.inertia <= unrefined.inertia  # the full-data iterations only improve the sample's centres


def test_memmap_input_gives_the_result_of_the_same_array_in_memory(tmp_path):
    x = blobs(3000, 10, 50, noise=0.3, seed=4)
    disk = memmapped(x, tmp_path)
    for cap in (None, 40):  # in memory, and sampled (3,000 > 40 * 16)
        a = kmeans(x, 16, max_points_per_centroid=cap, chunk_size=512)
        b = kmeans(disk, 16, max_points_per_centroid=cap, chunk_size=512)
        assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignments, b.assignments)
        assert a.inertia == b.inertia
    rq_memory = ResidualKMeans(input_dim=10, levels=3, codebook_size=16, max_points_per_centroid=40)
    rq_disk = ResidualKMeans(input_dim=10, levels=3, codebook_size=16, max_points_per_centroid=40)
    codes = rq_memory.fit_predict(x, chunk_size=700).codes
    assert torch.equal(rq_disk.fit_predict(disk, chunk_size=700).codes, codes)
    assert torch.equal(rq_disk.codebooks, rq_memory.codebooks)
    # The codes of the fit are the greedy encoding with the fitted codebooks, however the rows are read.
    assert torch.equal(rq_disk.encode(x), codes)
    assert torch.equal(rq_disk.encode_catalogue(disk, chunk_size=333), codes)


def test_rows_recompute_each_level_residual_from_the_input(tmp_path):
    x = torch.randn(50, 4)
    c0, c1 = torch.randn(3, 4), torch.randn(5, 4)
    a0, a1 = torch.randint(3, (50,)), torch.randint(5, (50,))
    rows = Rows(memmapped(x, tmp_path)).then(c0, a0).then(c1, a1)
    expected = x - c0[a0] - c1[a1]
    assert torch.equal(rows.materialize(), expected)
    assert torch.equal(rows.block(10, 20), expected[10:20])
    index = torch.tensor([3, 7, 49])
    assert torch.equal(rows.take(index), expected[index])
    assert torch.equal(torch.cat([b for _, b in rows.blocks(16)]), expected)


def test_non_finite_rows_of_a_memmap_are_named(tmp_path):
    x = torch.randn(2000, 3)
    x[3, 0] = float("nan")
    x[1500, 2] = float("inf")
    disk = memmapped(x, tmp_path)
    with pytest.raises(ValueError, match=r"level 0: 2 rows have NaN or inf, first rows \[3, 1500\]"):
        kmeans(disk, 4, chunk_size=256, name="level 0")
    with pytest.raises(ValueError, match=r"first rows \[3, 1500\]"):
        ResidualKMeans(input_dim=3, codebook_size=4).fit(disk, chunk_size=256)


def test_reseed_farthest_moves_centres_as_reseed_empty_does():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3000, 5, generator=g)
    centroids = torch.randn(8, 5, generator=g)
    served = squared_distances(x, centroids).min(dim=1).values
    expected = centroids.clone()
    reseed_empty(expected, [1, 4, 6], x, served)
    got = centroids.clone()
    reseed_farthest(got, [1, 4, 6], Rows(x), served)
    assert torch.equal(got, expected)
    # 2,000 copies of one far point fill the first candidates: after the first pick they are all served, and the
    # next pick lies outside them, so the candidates must grow for the pick to be reseed_empty's.
    x = torch.cat([torch.full((2000, 5), 50.0), torch.randn(1000, 5, generator=g)])
    served = x.pow(2).sum(dim=1)
    expected, got = centroids.clone(), centroids.clone()
    reseed_empty(expected, [0, 2], x, served)
    reseed_farthest(got, [0, 2], Rows(x), served)
    assert torch.equal(got, expected) and not torch.equal(got[2], x[0])


def test_residual_codes_equal_residual_quantize(tmp_path):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1000, 6, generator=g)
    codebooks = torch.randn(3, 11, 6, generator=g)
    q = residual_quantize(x, codebooks)
    assert torch.equal(residual_codes(x, codebooks, chunk_size=128), q.codes)
    assert torch.equal(residual_codes(memmapped(x, tmp_path), codebooks, chunk_size=999), q.codes)
    rows = torch.tensor([0, 5, 999, 17])
    torch.testing.assert_close(last_residual_distances(x, codebooks, rows, chunk_size=3),
                               last_level_distances(q, codebooks)[rows])
    # With an encoder (the RQ-VAE's), each block is encoded before it is quantized.
    encoder = torch.nn.Linear(6, 4)
    latent_codebooks = torch.randn(2, 7, 4, generator=g)
    with torch.no_grad():
        expected = residual_quantize(encoder(x), latent_codebooks).codes
    assert torch.equal(residual_codes(x, latent_codebooks, encoder=encoder, chunk_size=1000), expected)


def test_reassign_reads_only_the_colliding_items_distances():
    g = torch.Generator().manual_seed(8)
    prefix = torch.arange(60) // 3  # 20 prefixes of 3 items, last codes in [0, 2) of 4: many collide
    codes = torch.stack([prefix // 5, prefix % 5, torch.randint(2, (60,), generator=g)], dim=1)
    distances = torch.rand(60, 4, generator=g)
    asked = []

    def rows_of(index: torch.Tensor) -> torch.Tensor:
        asked.append(index)
        return distances[index]

    assert torch.equal(reassign_last_level(codes, rows_of), reassign_last_level(codes, distances))
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    assert torch.equal(asked[0], torch.nonzero(counts[inverse] > 1).flatten())


def test_rqkmeans_lightning_export_encodes_a_sampled_fit(tmp_path):
    import lightning.pytorch as pl

    from genrec.tokenizer import load_tokenizer
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQKMeansTokenizer

    x = blobs(400, 7, 40, noise=0.3, seed=10)
    module = RQKMeansTokenizer(output_dir=str(tmp_path / "km"), levels=3, codebook_size=16,
                               max_points_per_centroid=16)  # a sample of 256 of 400 items
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=ItemFeatures(features=x, batch_size=None))
    ids = load_tokenizer(tmp_path / "km")
    assert ids.config["hparams"]["max_points_per_centroid"] == 16
    assert ids.codes.shape == (400, 4) and torch.equal(ids.codes[:, :3], module.quantizer.encode(x))
