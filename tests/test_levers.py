"""Quality levers of the generative recommender (issue 11), each tested on its mechanism: item-ID embeddings beside
the codes in the encoder input, and one encoder position per history item (pooled code embeddings)."""

from __future__ import annotations

import pytest
import torch

from genrec.cli import main
from genrec.seq2seq.catalogue import item_token_table
from genrec.seq2seq.data import encode_histories, token_items
from genrec.seq2seq.encoders import TokenHistory
from genrec.seq2seq.module import GenerativeRecommender, T5Architecture
from genrec.seq2seq.vocab import CodeVocab
from tests.conftest import cli_args, synthetic

TINY = T5Architecture(d_model=16, encoder_layers=2, decoder_layers=1, num_heads=2, d_kv=8, d_ff=24, dropout=0.0)
CODES = torch.tensor([[i // 4, i % 4, 0] for i in range(16)])


def _batch(vocab: CodeVocab, history: torch.Tensor, users: bool) -> dict:
    table = item_token_table(vocab, CODES)
    tokens = encode_histories(history, table=table, vocab=vocab, users=torch.arange(len(history)) if users else None)
    return {**tokens, "history": history}


@pytest.mark.parametrize("users", [False, True])
@pytest.mark.parametrize("trim", [0, 3, 6])
def test_token_items_names_the_item_of_every_token(users, trim):
    vocab = CodeVocab((4, 4, 1), n_user_buckets=4 if users else 0)
    history = torch.tensor([[-1, -1, 3, 7], [-1, 5, 0, 2]])
    batch = _batch(vocab, history, users)
    input_ids = batch["input_ids"] if users else batch["input_ids"][:, trim:]  # as TokenBatches trims pad columns
    items = token_items(history, vocab=vocab, width=input_ids.shape[1])
    table = item_token_table(vocab, CODES)
    real = items >= 0
    # Every real token is one of its item's tokens, in order; everything else is padding or the user token.
    per_item = table[items.clamp(min=0)]  # (b, t, tokens_per_item)
    slot = torch.arange(vocab.tokens_per_item).repeat(history.shape[1])[-items.shape[1] + (1 if users else 0):]
    if users:
        slot = torch.cat([torch.zeros(1, dtype=torch.long), slot])
    expected = per_item.gather(2, slot.expand(len(items), -1).unsqueeze(-1))[..., 0]
    assert torch.equal(input_ids[real], expected[real])
    if users:
        assert torch.equal(input_ids[:, 0], vocab.user_token(torch.arange(len(history))))
        real[:, 0] = True
    assert (input_ids[~real] == 0).all()
    with pytest.raises(ValueError, match="more than"):
        token_items(history, vocab=vocab, width=history.shape[1] * vocab.tokens_per_item + 2)


def _model(item_embeddings: bool, users: bool = False, pool_items: bool = False) -> GenerativeRecommender:
    torch.manual_seed(0)
    encoder = TokenHistory(item_embeddings=item_embeddings, pool_items=pool_items)
    return GenerativeRecommender(level_sizes=(4, 4, 1), n_user_buckets=4 if users else 0, n_items=len(CODES),
                                 arch=TINY, encoder=encoder).eval()


def test_item_embeddings_start_as_plain_tiger_and_only_touch_histories_with_their_item():
    plain, with_ids = _model(False), _model(True)
    with_ids.model.load_state_dict(plain.model.state_dict())
    history = torch.tensor([[-1, 1, 2, 3], [4, 5, 6, 7], [-1, -1, 9, 3]])
    batch = _batch(plain.vocab, history, users=False)
    with torch.no_grad():
        torch.testing.assert_close(with_ids.encode(batch).hidden, plain.encode(batch).hidden, rtol=0, atol=0)
        with_ids.encoder.item_embedding.weight[3] = 1.0  # item 3 is in rows 0 and 2, not in row 1
        changed = (with_ids.encode(batch).hidden - plain.encode(batch).hidden).abs().amax(dim=(1, 2))
    assert changed[0] > 1e-3 and changed[2] > 1e-3 and changed[1] == 0
    assert plain.system_name == "TIGER" and with_ids.system_name == "TIGER (item IDs)"
    assert _model(True, pool_items=True).system_name == "TIGER (pooled items, item IDs)"
    assert with_ids.hparams.encoder == {"class_path": "genrec.seq2seq.encoders.TokenHistory",
                                        "init_args": {"item_embeddings": True, "pool_items": False}}
    with pytest.raises(ValueError, match="'history'"):
        with_ids.encode({k: v for k, v in batch.items() if k != "history"})
    with pytest.raises(ValueError, match="n_items"):
        GenerativeRecommender(level_sizes=(4, 4, 1), arch=TINY, encoder=TokenHistory(item_embeddings=True))


@pytest.mark.parametrize("users", [False, True])
def test_pooled_items_give_one_encoder_position_per_item(users):
    plain, pooled = _model(True, users), _model(True, users, pool_items=True)
    pooled.load_state_dict(plain.state_dict())
    history = torch.tensor([[-1, 1, 2, 3], [4, 5, 6, 7], [-1, -1, 9, 3]])
    batch = _batch(plain.vocab, history, users=users)
    lead = 1 if users else 0
    with torch.no_grad():
        pooled.encoder.item_embedding.weight.normal_()
        out = pooled.encode(batch)
        # The same encoder over hand-pooled embeddings: mean of each item's 3 token (and item) embeddings * sqrt(3).
        tokens = pooled.model.shared(batch["input_ids"])
        items = pooled.encoder.item_embedding(history.clamp(min=0))
        body = tokens[:, lead:].view(3, 4, 3, -1).sum(2) + 3 * items * (history >= 0).unsqueeze(-1)
        expected_in = torch.cat([tokens[:, :lead], body / 3**0.5], dim=1)
        expected_mask = torch.cat([batch["attention_mask"][:, :lead], (history >= 0).long()], dim=1)
        expected = pooled.model.encoder(inputs_embeds=expected_in, attention_mask=expected_mask).last_hidden_state
    assert out.hidden.shape == (3, lead + 4, TINY.d_model)
    assert torch.equal(out.mask, expected_mask)
    torch.testing.assert_close(out.hidden, expected)
    with pytest.raises(ValueError, match="whole items"):
        pooled.encoder.pool(tokens[:, lead + 1:], batch["attention_mask"][:, lead + 1:])


@pytest.mark.parametrize("pool", [False, True])
def test_item_levers_learn_and_reload_for_inference(pool, tmp_path):
    from genrec.seq2seq.inference import Recommender

    dataset, tokenizer = synthetic(tmp_path)
    levers = ["--model.encoder=genrec.seq2seq.encoders.TokenHistory", "--model.encoder.item_embeddings=true",
              f"--model.encoder.pool_items={pool}"]
    cli = main(["fit", *cli_args(dataset, tokenizer, tmp_path / "run", *levers,
                                 "--trainer.max_steps=40", "--trainer.limit_val_batches=0", "--data.user_buckets=4",
                                 "--test_after_fit=false")])
    weights = cli.model.encoder.item_embedding.weight
    assert weights.abs().sum(1).gt(0).sum() >= 20  # trained rows moved off zero
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    rec = Recommender.load(ckpt)
    torch.testing.assert_close(rec.model.encoder.item_embedding.weight, weights.detach().cpu())
    requests = list(rec.dataset_requests(holdout=1))[:5]
    torch.testing.assert_close(rec.recommend(requests, top_k=10, beam_width=20).scores,
                               Recommender(cli.model.cpu(), rec.dataset, 5).recommend(requests, top_k=10,
                                                                                     beam_width=20).scores)
