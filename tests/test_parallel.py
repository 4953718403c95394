"""Parallel semantic IDs (RPG): product k-means tokenizer, the causal per-digit model, exact catalogue scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.cli import main
from genrec.seq2seq.parallel import ParallelIdArchitecture, ParallelIdNetwork, ParallelIdRecommender
from genrec.tokenizer.artifact import load_tokenizer, save_tokenizer
from genrec.tokenizer.product import ProductKMeans

from tests.conftest import N_ITEMS, synthetic

ARCH = ParallelIdArchitecture(d_model=16, n_blocks=2, n_heads=2, dropout=0.0)


def test_product_kmeans_rotation_is_orthogonal_and_reconstructs_points_it_can_hold():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 10, generator=g) * torch.linspace(3, 0.1, 10)  # unequal variance across axes
    pq = ProductKMeans(input_dim=10, digits=4, codebook_size=12, seed=3).fit(x)
    assert pq.sub_dim == 3 and pq.codebooks.shape == (4, 12, 3)  # 10 dims padded to 4 subspaces of 3
    torch.testing.assert_close(pq.rotation @ pq.rotation.T, torch.eye(10), atol=1e-5, rtol=0)
    # As many codes as points: every subspace keeps every point, so decode(encode(x)) is x itself.
    codes = pq.encode(x)
    assert codes.shape == (12, 4) and codes.dtype == torch.long
    torch.testing.assert_close(pq.decode(codes), x, atol=1e-4, rtol=0)
    # The random rotation spreads the variance: no subspace is left with (almost) none of it.
    share = pq.project(x).var(0).sum(1) / pq.project(x).var(0).sum()
    assert share.min() > 0.05, share


def test_product_kmeans_whitened_still_decodes_and_refuses_too_few_items():
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)) * torch.tensor([5.0, 2, 1, 1, 0.5, 0.1])
    pq = ProductKMeans(input_dim=6, digits=3, codebook_size=16, whiten=True).fit(x)
    torch.testing.assert_close(pq.decode(pq.encode(x)), x, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="8 items cannot fill 16 codes"):
        ProductKMeans(input_dim=6, digits=3, codebook_size=16).fit(x[:8])
    with pytest.raises(RuntimeError, match="before fit"):
        ProductKMeans(input_dim=6, digits=3, codebook_size=4).encode(x)


def test_product_tokenizer_writes_unique_long_ids_through_train_py(tmp_path):
    n = 40
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "sequences.txt").write_text("".join(f"{u} {u % n + 1} {(u + 1) % n + 1} {(u + 3) % n + 1}\n"
                                                   for u in range(1, 61)))
    features = torch.randn(n, 12, generator=torch.Generator().manual_seed(0))
    features[7] = features[3]  # two items with the same features share all digits: a collision code follows
    np.save(tmp_path / "f.npy", features.numpy())
    out = tmp_path / "tok"
    source = {"class_path": "genrec.features.source.NpyFeatures", "init_args": {"path": str(tmp_path / "f.npy")}}
    main(["fit", "--model=genrec.tokenizer.lightning.ProductKMeansTokenizer", f"--model.output_dir={out}",
          "--model.digits=4", "--model.codebook_size=8", "--data=genrec.tokenizer.datamodule.ItemFeatures",
          f"--data.dataset={dataset}", "--data.batch_size=null",
          f"--data.sources=[{json.dumps(source)}]",
          "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"])
    ids = load_tokenizer(out)
    assert ids.codes.shape == (n, 5) and ids.level_sizes[:4] == (8, 8, 8, 8) and ids.level_sizes[4] == 2
    assert len({tuple(c) for c in ids.codes.tolist()}) == n
    assert ids.codes[3, :4].tolist() == ids.codes[7, :4].tolist() and ids.codes[3, 4] != ids.codes[7, 4]
    assert ids.config["method"] == "product k-means" and ids.codebooks.shape == (4, 8, 3)


def _network(level_sizes=(5, 5, 5, 2), n_items=30, **kwargs) -> ParallelIdNetwork:
    torch.manual_seed(0)
    net = ParallelIdNetwork(level_sizes=level_sizes, n_items=n_items, max_len=6, arch=ARCH, **kwargs)
    g = torch.Generator().manual_seed(1)
    codes = torch.stack([torch.randint(s, (n_items,), generator=g) for s in level_sizes], dim=1)
    net.set_codes(codes)
    return net.eval()


@pytest.mark.parametrize("temperature", [0.07, None])
def test_scores_are_the_sum_of_each_digits_log_probability(temperature):
    net = _network(temperature=temperature)
    history = torch.tensor([[-1, -1, 3, 8, 2], [1, 2, 3, 4, 5]])
    with torch.no_grad():
        hidden = net(history)[:, -1]
        logits = net.code_logits(hidden)
        scores = net.score_items(hidden)
    # The collision digit has 2 codes: the other 3 logits of that digit are -inf and get no probability.
    assert torch.isinf(logits[:, 3, 2:]).all() and torch.isfinite(logits[:, 3, :2]).all()
    log_probs = logits.double().log_softmax(-1)
    for item in range(net.item_codes.shape[0]):
        expected = sum(log_probs[:, d, net.item_codes[item, d]] for d in range(4))
        torch.testing.assert_close(scores[:, item].double(), expected, atol=1e-4, rtol=0)


def test_causal_padding_invariant_and_loss_is_mean_digit_cross_entropy():
    net = _network(item_embeddings=True)
    a = torch.tensor([[-1, 4, 9, 1]])
    b = torch.tensor([[-1, 4, 9, 17]])
    with torch.no_grad():
        assert torch.equal(net(a)[:, :3], net(b)[:, :3])  # a later item does not reach earlier positions
        # Left padding changes nothing: positions count back from the last slot.
        torch.testing.assert_close(net(a)[:, 1:], net(torch.tensor([[-1, -1, -1, 4, 9, 1]]))[:, 3:])
    labels = torch.tensor([[-1, 9, 1, 5]])
    hidden = net(a)
    logits = net.code_logits(hidden[0, 1:])  # positions with a label
    target = net.item_codes[torch.tensor([9, 1, 5])]
    expected = torch.stack([F.cross_entropy(logits[:, d], target[:, d]) for d in range(4)]).mean()
    torch.testing.assert_close(net.loss(hidden, labels), expected)


def test_item_embeddings_start_at_zero_and_codes_are_checked():
    plain, levered = _network(), _network(item_embeddings=True)
    history = torch.tensor([[2, 7, 11]])
    with torch.no_grad():
        torch.testing.assert_close(levered.embed_items(history), plain.embed_items(history))
    with pytest.raises(ValueError, match="item 4: code 2 of digit 3 is outside"):
        bad = plain.item_codes.clone()
        bad[4, 3] = 2
        plain.set_codes(bad)
    with pytest.raises(ValueError, match="shape"):
        plain.set_codes(plain.item_codes[:5])


def _walk_tokenizer(tmp_path):
    """The walk's items (27) as 6 parallel digits: the base-3 digits of i and of 26 - i, plus a constant."""
    i = torch.arange(N_ITEMS)
    j = N_ITEMS - 1 - i
    codes = torch.stack([i // 9, (i // 3) % 3, i % 3, j // 9, (j // 3) % 3, j % 3], dim=1)
    return save_tokenizer(tmp_path / "walk-pq", codes=codes, level_sizes=(3,) * 6, codebooks=None, config={},
                          metrics={}, fingerprint="synthetic", plot=False)


def test_learns_the_walk_through_the_cli_and_reloads_from_its_checkpoint(tmp_path, capsys):
    dataset, _ = synthetic(tmp_path)
    tokenizer = _walk_tokenizer(tmp_path)
    out = tmp_path / "run"
    cli = main([
        "fit", "--model=genrec.seq2seq.parallel.ParallelIdRecommender", "--model.arch.d_model=32",
        "--model.arch.dropout=0.0", "--model.arch.n_heads=2", "--model.lr=0.003", "--model.warmup_steps=5",
        "--data=genrec.seq2seq.data.SemanticIdSequences", f"--data.dataset={dataset}", f"--data.tokenizer={tokenizer}",
        "--data.max_len=5", "--data.batch_size=27", "--data.eval_batch_size=64",
        "--trainer.logger=false", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_epochs=40",
        "--trainer.check_val_every_n_epoch=40", f"--trainer.default_root_dir={out}", "--seed_everything=0",
        "--test_after_fit=true", "--examples=1",
    ])
    model = cli.model
    # Linked from the data: the artifact's digits, the catalogue size, the history length.
    assert tuple(model.hparams.level_sizes) == (3,) * 6 and model.hparams.n_items == N_ITEMS and model.hparams.max_len == 5
    metrics = cli.trainer.callback_metrics
    assert metrics["test/recall@1"] >= 0.9, metrics
    assert metrics["test/invalid"] == 0 and metrics["test/repeated"] == 0
    assert "recommended:" in capsys.readouterr().out  # the examples after the test
    best = cli.trainer.checkpoint_callback.best_model_path
    loaded = ParallelIdRecommender.load_from_checkpoint(best, map_location="cpu").eval()
    assert torch.equal(loaded.model.item_codes, load_tokenizer(tokenizer).codes)  # the catalogue came with it
    history = cli.datamodule.parts["test"][list(range(20))]["history"]
    model.eval()
    assert torch.equal(loaded.recommend(history), model.recommend(history))
    with pytest.raises(ValueError, match="at least one item"):
        loaded.recommend(torch.full((1, 3), -1))

    # recommend.py serves the checkpoint: dataset ids in and out, the next step of each walk first.
    import recommend

    histories = [[3, 4, 5], [26, 27, 1, 2]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"user": n, "history": h}) + "\n" for n, h in enumerate(histories)))
    assert recommend.main(["--checkpoint", best, "--input", str(tmp_path / "in.jsonl"), "--output",
                           str(tmp_path / "out.jsonl"), "--top-k", "5", "--device", "cpu"]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["items"][0] for o in out] == [6, 3]
    assert all(len(o["items"]) == 5 and o["scores"] == sorted(o["scores"], reverse=True) for o in out)


def test_catalogue_softmax_normalises_over_the_ids_that_exist_and_ranks_as_the_digits_do():
    digits, catalogue = _network(), _network(softmax="catalogue")
    history = torch.tensor([[-1, 3, 8, 2], [1, 2, 3, 4]])
    labels = torch.tensor([[-1, 8, 2, 11], [2, 3, 4, 0]])
    with torch.no_grad():
        hidden = catalogue(history)
        logits = catalogue.code_logits(hidden[labels >= 0])
        # An item's logit is the sum of its digits' logits; the softmax runs over the 30 items only.
        item_logits = torch.stack([sum(logits[:, d, catalogue.item_codes[i, d]] for d in range(4)) for i in range(30)], 1)
        torch.testing.assert_close(catalogue.loss(hidden, labels), F.cross_entropy(item_logits, labels[labels >= 0]))
        scores = catalogue.score_items(hidden[:, -1])
        torch.testing.assert_close(scores.exp().sum(1), torch.ones(2))  # a distribution over the catalogue
        assert torch.equal(scores.argsort(1, descending=True), digits.score_items(hidden[:, -1]).argsort(1, descending=True))
    with pytest.raises(ValueError, match="softmax must be one of"):
        _network(softmax="items")


def test_item_logits_add_the_tied_id_embedding_to_the_codes_and_start_as_the_codes_alone():
    codes_only = _network(softmax="catalogue", item_embeddings=True)
    net = _network(softmax="catalogue", item_embeddings=True, item_logits=True)
    history = torch.tensor([[-1, 3, 8, 2], [1, 2, 3, 4]])
    with torch.no_grad():
        # Zero at initialisation: the same scores as the codes alone.
        torch.testing.assert_close(net.score_items(net(history)[:, -1]), codes_only.score_items(net(history)[:, -1]))
        net.item_embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
        hidden = net(history)[:, -1]
        logits = net.code_logits(hidden)
    expected = net.per_item(logits) + hidden @ net.item_embedding.weight.T  # the input's embedding, tied
    torch.testing.assert_close(net.score_items(hidden), expected.log_softmax(-1))
    labels = torch.tensor([[-1, 8, 2, 11], [2, 3, 4, 0]])
    all_hidden = net(history)
    item_scores = net.item_scores(all_hidden[labels >= 0], net.code_logits(all_hidden[labels >= 0]))
    torch.testing.assert_close(net.loss(all_hidden, labels), F.cross_entropy(item_scores, labels[labels >= 0]))
    net.loss(all_hidden, labels).backward()
    assert net.item_embedding.weight.grad[labels[labels >= 0]].abs().sum() > 0  # the output side trains it
    with pytest.raises(ValueError, match="needs item_embeddings=true and softmax='catalogue'"):
        _network(softmax="catalogue", item_logits=True)
    with pytest.raises(ValueError, match="needs item_embeddings=true and softmax='catalogue'"):
        _network(item_embeddings=True, item_logits=True)


def test_label_smoothing_smooths_the_catalogue_softmax_only():
    plain, smooth = _network(softmax="catalogue"), _network(softmax="catalogue", label_smoothing=0.1)
    history = torch.tensor([[-1, 3, 8, 2], [1, 2, 3, 4]])
    labels = torch.tensor([[-1, 8, 2, 11], [2, 3, 4, 0]])
    with torch.no_grad():
        hidden = smooth(history)
        item_logits = smooth.per_item(smooth.code_logits(hidden[labels >= 0]))
        log_p = item_logits.log_softmax(-1)
        target = labels[labels >= 0]
        # (1 - eps) of the target's cross-entropy and eps of the uniform one over the 30 items.
        expected = -(0.9 * log_p.gather(1, target[:, None]).squeeze(1) + 0.1 * log_p.mean(1)).mean()
        torch.testing.assert_close(smooth.loss(hidden, labels), expected)
        assert not torch.isclose(plain.loss(hidden, labels), expected)
    with pytest.raises(ValueError, match="needs softmax='catalogue'"):
        _network(label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        _network(softmax="catalogue", label_smoothing=1.0)


@pytest.mark.parametrize("item_logits", [False, True])
def test_code_logits_stay_float32_under_bf16_autocast(item_logits):
    net = _network(softmax="catalogue", item_embeddings=item_logits, item_logits=item_logits)
    if item_logits:
        with torch.no_grad():
            net.item_embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    history = torch.tensor([[-1, 3, 8, 2], [1, 2, 3, 4]])
    with torch.no_grad():
        exact = net.score_items(net(history)[:, -1])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = net(history)[:, -1]
            logits = net.code_logits(hidden)
            scores = net.score_items(hidden)
    assert logits.dtype == torch.float32 and scores.dtype == torch.float32
    # Only the backbone ran in bf16: the scores stay close to the float32 ones.
    assert (scores - exact).abs().max() < 0.5


def test_a_tokenizer_fitted_on_another_dataset_is_refused_even_with_the_same_item_count(tmp_path):
    from genrec.seq2seq.data import SemanticIdData, SemanticIdSequences

    dataset, _ = synthetic(tmp_path)
    twin, _ = synthetic(tmp_path / "twin")  # another dataset of the same 27 items
    i = torch.arange(N_ITEMS)
    codes = torch.stack([i // 9, (i // 3) % 3, i % 3], dim=1)
    artifact = save_tokenizer(tmp_path / "tok", codes=codes, level_sizes=(3, 3, 3), codebooks=None,
                              config={"data": {"dataset": str(twin)}}, metrics={}, fingerprint="x", plot=False)
    for data in (SemanticIdData, SemanticIdSequences):
        with pytest.raises(ValueError, match=r"was fitted on dataset .*twin/walk.* not on .*: its codes belong to other"):
            data(dataset=str(dataset), tokenizer=str(artifact))
        data(dataset=str(twin), tokenizer=str(artifact))  # its own dataset, named by the same path
        data(dataset=str(twin) + "/", tokenizer=str(artifact))  # or by another spelling of it
