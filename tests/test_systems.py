"""The seed systems built on the shared frame: MMGRec's relation-aware encoder, MSCGRec's modalities and
constrained softmax, ColaRec's content input and losses; each learns the synthetic walk through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from transformers.modeling_outputs import BaseModelOutput

from genrec.cli import main
from genrec.decoding import PrefixIndex
from genrec.seq2seq.catalogue import item_token_table
from genrec.seq2seq.colarec import ContentHistory
from genrec.seq2seq.data import Modality, SemanticIdData, encode_histories
from genrec.seq2seq.encoders import RelationAwareHistory
from genrec.seq2seq.losses import constrained_cross_entropy, prefix_contrastive_loss, valid_code_mask
from genrec.seq2seq.module import GenerativeRecommender, T5Architecture
from genrec.seq2seq.mscgrec import MultimodalHistory
from genrec.seq2seq.relation_attention import permute_items, relation_classes
from genrec.seq2seq.t5_step import t5_beam_search
from genrec.seq2seq.vocab import CodeVocab, token_roles
from genrec.tokenizer.artifact import save_tokenizer
from genrec.features import NpyFeatures
from tests.conftest import N_ITEMS, cli_args, synthetic

TINY = T5Architecture(d_model=16, encoder_layers=2, decoder_layers=1, num_heads=2, d_kv=8, d_ff=24, dropout=0.0)


def _history_batch(vocab: CodeVocab, codes: torch.Tensor, n: int = 5, b: int = 3, users: bool = False):
    g = torch.Generator().manual_seed(1)
    history = torch.stack([torch.randperm(len(codes), generator=g)[:n] for _ in range(b)])
    table = item_token_table(vocab, codes)
    return history, encode_histories(history, table=table, vocab=vocab, users=torch.arange(b) if users else None)


# ------------------------------------------------------------------------------------------- MMGRec's encoder
def test_token_roles_follow_items_from_the_right():
    vocab = CodeVocab((3, 3, 2), n_user_buckets=4)
    codes = torch.tensor([[0, 0, 0], [1, 2, 1], [2, 1, 0]])
    history = torch.tensor([[-1, 0, 1], [2, 1, 0]])
    inputs = encode_histories(history, table=item_token_table(vocab, codes), vocab=vocab, users=torch.tensor([0, 1]))
    slot, code, user = token_roles(inputs["input_ids"], vocab)
    assert user[:, 0].all() and not user[:, 1:].any()
    assert code[0, 1:].tolist() == [0, 1, 2] * 3
    assert slot[0, 1:].tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    rel = relation_classes(slot, code, user, vocab.tokens_per_item)
    assert rel[0, 4, 5] == 0 * 9 + 0 * 3 + 1  # same item, codes 0 -> 1
    assert rel[0, 4, 7] == 9 + 0 * 3 + 0  # different items, codes 0 -> 0
    assert rel[0, 0, 0] == 2 * 9 + 2 * 3  # user -> user


@pytest.mark.parametrize("users", [False, True])
def test_relation_aware_encoder_is_permutation_invariant_over_the_history(users):
    torch.manual_seed(0)
    codes = torch.tensor([[i // 4, i % 4, 0] for i in range(16)])
    model = GenerativeRecommender(
        level_sizes=(4, 4, 1), n_user_buckets=4 if users else 0, arch=TINY, encoder=RelationAwareHistory()
    ).eval()
    _, inputs = _history_batch(model.vocab, codes, users=users)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = permute_items(inputs["input_ids"], perm, model.vocab)
    assert not torch.equal(permuted, inputs["input_ids"])
    mask = inputs["attention_mask"]
    with torch.no_grad():
        a = model.model.encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        b = model.model.encoder(input_ids=permuted, attention_mask=mask).last_hidden_state
    # Encoder states move with their items (equivariance) ...
    lead = 1 if users else 0
    p = model.vocab.tokens_per_item
    token_perm = torch.cat([torch.arange(lead), lead + (perm[:, None] * p + torch.arange(p)).flatten()])
    torch.testing.assert_close(b, a[:, token_perm], rtol=1e-5, atol=1e-5)
    # ... so decoding, which reads them as an unordered memory, gives the same recommendations and scores.
    model.set_catalogue(codes)
    out_a = model.recommend(inputs["input_ids"], mask, top_k=10)
    out_b = model.recommend(permuted, mask, top_k=10)
    assert torch.equal(out_a.items, out_b.items)
    torch.testing.assert_close(out_a.scores, out_b.scores, rtol=1e-5, atol=1e-5)
    # The oracle: T5's own encoder sees positions, so the same permutation changes its output.
    t5 = GenerativeRecommender(level_sizes=(4, 4, 1), n_user_buckets=4 if users else 0, arch=TINY).eval()
    with torch.no_grad():
        c = t5.model.encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        d = t5.model.encoder(input_ids=permuted, attention_mask=mask).last_hidden_state
    assert not torch.allclose(d, c[:, token_perm], atol=1e-4)


def test_relation_aware_encoder_reads_the_user():
    torch.manual_seed(0)
    codes = torch.tensor([[i // 4, i % 4, 0] for i in range(16)])
    model = GenerativeRecommender(level_sizes=(4, 4, 1), n_user_buckets=4, arch=TINY,
                                  encoder=RelationAwareHistory()).eval()
    history = torch.tensor([[1, 2, 3], [1, 2, 3]])
    inputs = encode_histories(history, table=item_token_table(model.vocab, codes), vocab=model.vocab,
                              users=torch.tensor([0, 1]))
    with torch.no_grad():
        states = model.model.encoder(**inputs).last_hidden_state
    assert not torch.allclose(states[0, 1:], states[1, 1:])  # same history, different users: gated differently


# ------------------------------------------------------------------------------------------ constrained softmax
def _catalogue():
    # A sparse trie: not every prefix extends by every code.
    codes = torch.tensor([[0, 0, 0], [0, 2, 0], [0, 2, 1], [1, 1, 0], [2, 0, 0], [2, 0, 1], [2, 2, 0]])
    vocab = CodeVocab((3, 3, 2))
    return codes, vocab, PrefixIndex(codes, vocab.level_sizes)


def test_constrained_softmax_puts_zero_mass_on_invalid_tokens():
    codes, vocab, index = _catalogue()
    torch.manual_seed(0)
    logits = torch.randn(len(codes), 3, vocab.size) * 5
    labels = vocab.encode(codes)
    masks = valid_code_mask(index, codes)
    assert masks[1][0].tolist() == [True, False, True] and masks[2][1].tolist() == [True, True]
    loss = constrained_cross_entropy(logits, labels, index, vocab, reduction="none")
    for level, (size, offset) in enumerate(zip(vocab.level_sizes, vocab.offsets)):
        level_logits = logits[:, level, offset : offset + size].masked_fill(~masks[level], float("-inf"))
        probs = level_logits.softmax(-1)
        assert (probs[~masks[level]] == 0).all()  # exactly zero mass on invalid continuations
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(codes)))
        torch.testing.assert_close(loss[:, level], -probs.gather(1, codes[:, level : level + 1])[:, 0].log())
    # Raising an invalid token's logit leaves the loss unchanged; under the full softmax it would not.
    bumped = logits.clone()
    bumped[0, 1, vocab.offsets[1] + 1] += 100.0  # item 0's prefix (0,) never continues with code 1
    bumped[:, :, 0] += 100.0  # pad, never valid
    torch.testing.assert_close(constrained_cross_entropy(bumped, labels, index, vocab), loss.mean())
    full = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert not torch.isclose(F.cross_entropy(bumped.flatten(0, 1), labels.flatten()), full)
    # A target that is not an item is an error, not a silent loss.
    with pytest.raises(ValueError, match="not a catalogue item"):
        constrained_cross_entropy(logits[:1], vocab.encode(torch.tensor([[1, 0, 0]])), index, vocab)


def test_valid_normalised_beam_search_equals_brute_force():
    codes, vocab, index = _catalogue()
    torch.manual_seed(0)
    model = GenerativeRecommender(level_sizes=vocab.level_sizes, arch=TINY, constrained_softmax=True).eval()
    model.set_catalogue(codes)
    hidden = torch.randn(4, 6, TINY.d_model)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, :2] = 0
    out = t5_beam_search(model.model, None, mask, index, vocab, beam_width=len(codes), top_k=len(codes),
                         encoder_hidden=hidden, normalize="valid")
    # Brute force: every item's teacher-forced constrained log-probability.
    labels = vocab.encode(codes)
    scores = torch.empty(4, len(codes))
    with torch.no_grad():
        for u in range(4):
            logits = model.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden[u : u + 1].expand(len(codes), -1, -1)),
                attention_mask=mask[u : u + 1].expand(len(codes), -1),
                decoder_input_ids=model.model._shift_right(labels),
            ).logits
            scores[u] = -constrained_cross_entropy(logits, labels, index, vocab, reduction="none").sum(1)
    best = scores.sort(dim=1, descending=True)
    torch.testing.assert_close(out.scores, best.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores.gather(1, out.items), best.values, rtol=1e-5, atol=1e-5)
    # Each user's valid-normalised scores are a distribution over the catalogue.
    torch.testing.assert_close(out.scores.exp().sum(1), torch.ones(4))


def test_prefix_contrastive_loss_prefers_shared_prefixes_close():
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    aligned = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    crossed = aligned[[0, 2, 1, 3]]
    assert prefix_contrastive_loss(aligned, codes) < prefix_contrastive_loss(crossed, codes)
    assert prefix_contrastive_loss(aligned, torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0]])) == 0  # no positives


# -------------------------------------------------------------------------------------------------- MSCGRec
def _second_modality(tmp_path: Path) -> Path:
    """A 'text' modality for the walk: codes that say nothing about the walk's next step (item index mod 5, 4)."""
    i = torch.arange(N_ITEMS)
    codes = torch.stack([i % 5, (i // 5) % 6], dim=1)
    return save_tokenizer(tmp_path / "walk-text", codes=codes, level_sizes=(5, 6), codebooks=None,
                          config={"synthetic": True}, metrics={}, fingerprint="text", plot=False)


def test_multimodal_inputs_and_modality_masking(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=N_ITEMS, length=6)
    text = _second_modality(tmp_path)
    dm = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=3,
                        input_modalities=[Modality(tokenizer=str(text))])
    dm.setup()
    assert dm.vocab.tokens_per_item == 4 + 2 and dm.input_level_sizes == ((5, 6),)
    test = dm.parts["test"].materialize()
    # user 0 walks 0..5: history 2, 3, 4; each item = its 4 ID tokens, then its 2 text tokens
    row = test["input_ids"][0].view(3, 6)
    assert row[0, 4:].tolist() == [dm.vocab.input_offsets[0][0] + 2, dm.vocab.input_offsets[0][1] + 0]
    assert test["labels"].shape == (N_ITEMS, 4)  # only the generated modality is a target
    torch.manual_seed(0)
    model = GenerativeRecommender(level_sizes=dm.level_sizes, input_level_sizes=dm.input_level_sizes, max_len=3,
                                  arch=TINY, encoder=MultimodalHistory(modality_dropout=0.5))
    batch = dm.parts["train"][list(range(len(dm.parts["train"])))]
    slot, code, _ = token_roles(batch["input_ids"], model.vocab)
    kept = model.encoder.modality_mask(slot, code)
    real = batch["attention_mask"].bool()
    per_item = (kept & real).view(len(kept), -1, 6)
    items_real = real.view(len(kept), -1, 6).any(-1)
    assert per_item.any(-1)[items_real].all()  # no item loses every modality
    hidden_mod = per_item[..., 4:].all(-1) == 0
    assert 0.3 < hidden_mod[items_real].float().mean() < 0.7  # about half the text modalities hidden
    model.train()
    hidden, mask = model.encode(batch)
    assert hidden.shape[:2] == mask.shape and (mask <= batch["attention_mask"]).all()
    model.eval()
    _, mask = model.encode(batch)
    assert torch.equal(mask, batch["attention_mask"])  # no masking at evaluation


# -------------------------------------------------------------------------------------------------- ColaRec
def _content(tmp_path: Path) -> Path:
    """Item 'content': a noisy one-hot of the item index (content says which item it is, not what comes next)."""
    g = np.random.default_rng(0)
    x = np.eye(N_ITEMS, 32, dtype=np.float32) + 0.05 * g.standard_normal((N_ITEMS, 32)).astype(np.float32)
    path = tmp_path / "content.npy"
    np.save(path, x)
    return path


def test_content_input_and_losses(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=N_ITEMS, length=6)
    content = _content(tmp_path)
    dm = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=3,
                        content_sources=[NpyFeatures(path=str(content))])
    assert dm.content_dim == 32
    dm.setup()
    torch.manual_seed(0)
    model = GenerativeRecommender(level_sizes=dm.level_sizes, n_items=N_ITEMS, arch=TINY,
                                  encoder=ContentHistory(content_dim=32))
    model.set_catalogue(dm.catalogue)
    torch.testing.assert_close(model.encoder.item_content, dm.catalogue.content)  # the catalogue's content is read
    batch = dm.parts["train"][list(range(16))]
    # One position per history item: content projection + the item's ID token embeddings.
    hidden, mask = model.encode(batch)
    assert hidden.shape == (16, 3, TINY.d_model) and torch.equal(mask, (batch["history"] >= 0).long())
    losses = model.training_losses(batch)
    assert set(losses) == {"loss", "recommendation", "indexing", "bpr", "contrastive"}
    assert all(torch.isfinite(v) for v in losses.values())
    hp = model.encoder
    expected = hp.generation_weight * (losses["recommendation"] + losses["indexing"]) + hp.bpr_weight * losses["bpr"] \
        + hp.contrastive_weight * losses["contrastive"]
    torch.testing.assert_close(losses["loss"], expected)
    losses["loss"].backward()
    assert model.encoder.content_proj.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------- each system learns the walk, end to end
# Each system runs through the real CLI. The fast twin (default suite) trains 40 steps and checks that the loss falls
# and that the checkpoint reloads for inference; the slow one (-m slow) trains 300 steps to Recall@10 >= 0.9.
class LossTrace(Callback):
    """Keeps the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _system_args(name: str, tmp_path: Path) -> list[str]:
    """CLI arguments that make the walk's TIGER into ``name``."""
    if name == "MMGRec":
        return ["--model.encoder=genrec.seq2seq.encoders.RelationAwareHistory", "--data.user_buckets=8"]
    if name == "MSCGRec":
        modalities = json.dumps([{"tokenizer": str(_second_modality(tmp_path))}])
        return ["--model.encoder=genrec.seq2seq.mscgrec.MultimodalHistory", "--model.encoder.modality_dropout=0.2",
                "--model.constrained_softmax=true", f"--data.input_modalities={modalities}"]
    source = {"class_path": "genrec.features.source.NpyFeatures", "init_args": {"path": str(_content(tmp_path))}}
    return ["--model.encoder=genrec.seq2seq.colarec.ContentHistory", "--model.encoder.generation_weight=1.0",
            f"--data.content_sources={json.dumps([source])}"]


def _fit(name: str, tmp_path: Path, steps: int):
    dataset, tokenizer = synthetic(tmp_path)
    cli = main(["fit", *cli_args(dataset, tokenizer, tmp_path / "run", *_system_args(name, tmp_path),
                                 f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
                                 "--trainer.callbacks+=tests.test_systems.LossTrace", "--test_after_fit=true",
                                 "--examples=1")])
    assert cli.model.system_name == name
    return cli


SYSTEMS = ["MMGRec", "MSCGRec", "ColaRec"]


@pytest.mark.parametrize("name", SYSTEMS)
def test_system_trains_and_its_checkpoint_reloads_for_inference(name, tmp_path):
    from genrec.seq2seq.inference import Recommender

    cli = _fit(name, tmp_path, steps=40)
    (trace,) = [c for c in cli.trainer.callbacks if isinstance(c, LossTrace)]
    assert len(trace.losses) == 40
    assert np.mean(trace.losses[-5:]) < 0.8 * np.mean(trace.losses[:5]), trace.losses
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))  # the default callback keeps one checkpoint
    rec = Recommender.load(ckpt)
    assert type(rec.model.encoder) is type(cli.model.encoder)
    assert rec.model.hparams.constrained_softmax == (name == "MSCGRec")
    requests = list(rec.dataset_requests(holdout=1))[:5]
    torch.testing.assert_close(rec.recommend(requests, top_k=10, beam_width=20).scores,
                               Recommender(cli.model.cpu(), rec.dataset, 5).recommend(requests, top_k=10,
                                                                                     beam_width=20).scores)
    if name == "ColaRec":  # the content travels with the checkpoint
        assert rec.model.hparams.encoder["init_args"]["content_dim"] == 32
        torch.testing.assert_close(rec.model.encoder.item_content, cli.model.encoder.item_content.cpu())


@pytest.mark.slow
@pytest.mark.parametrize("name", SYSTEMS)
def test_system_learns_the_walk(name, tmp_path):
    metrics = _fit(name, tmp_path, steps=300).trainer.callback_metrics
    assert metrics["test/recall@10"] >= 0.9, {k: float(v) for k, v in metrics.items() if k.startswith("test/")}
