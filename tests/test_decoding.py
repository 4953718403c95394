"""Prefix index, and constrained beam search through the T5 step checked against HF's teacher-forced forward pass.

Tiny random T5 with odd sizes (d_model 24, d_kv 8, 3 heads, d_ff 37) so shape mix-ups fail loudly; a catalogue of
50 items over 3 levels plus a collision level. The engine on its own, against a toy step: ``test_beam_search.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from genrec.decoding import CudaGraph, PrefixIndex, prefix_index
from genrec.seq2seq.t5_step import CachedT5Decoder, score_items, t5_beam_search, t5_search_function
from genrec.seq2seq.vocab import PAD_ID, CodeVocab

SEM_SIZES = (7, 5, 6)


def make_catalogue(n_items: int, seed: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Random 3-level codes plus a collision level numbering items that share a prefix (TIGER §3.1)."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.stack([torch.randint(0, s, (n_items,), generator=g) for s in SEM_SIZES], dim=1)
    _, inverse = torch.unique(sem, dim=0, return_inverse=True)
    collision = torch.zeros(n_items, dtype=torch.long)
    for i in range(n_items):
        collision[i] = int((inverse[:i] == inverse[i]).sum())
    codes = torch.cat([sem, collision[:, None]], dim=1)
    return codes, (*SEM_SIZES, int(collision.max()) + 2)  # +1 spare collision code never used


def make_model(vocab: CodeVocab, seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab.size,
        d_model=24,
        d_kv=8,
        num_heads=3,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
        pad_token_id=PAD_ID,
        eos_token_id=1,
        decoder_start_token_id=PAD_ID,
        **overrides,
    )
    model = T5ForConditionalGeneration(config).eval()
    # Scale down the (std 1) embeddings so the random model is not near one-hot and many items compete.
    with torch.no_grad():
        model.shared.weight.mul_(0.3)
    return model


def make_histories(
    codes: torch.Tensor, vocab: CodeVocab, n_users: int, seed: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs: concatenated code tokens of 1..5 random items, padded with pad=0 on ``side``."""
    g = torch.Generator().manual_seed(seed)
    max_items = 5
    width = max_items * codes.shape[1]
    input_ids = torch.full((n_users, width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(n_users, width, dtype=torch.long)
    for u in range(n_users):
        n = int(torch.randint(1, max_items + 1, (1,), generator=g))
        items = torch.randint(0, codes.shape[0], (n,), generator=g)
        tokens = vocab.encode(codes[items]).flatten()
        span = slice(0, len(tokens)) if side == "right" else slice(width - len(tokens), width)
        input_ids[u, span] = tokens
        mask[u, span] = 1
    return input_ids, mask


@pytest.fixture(scope="module")
def setup():
    codes, sizes = make_catalogue(50, seed=1)
    vocab = CodeVocab(level_sizes=sizes)
    model = make_model(vocab)
    input_ids, mask = make_histories(codes, vocab, n_users=6, seed=2)
    return codes, vocab, model, input_ids, mask


# --- prefix index -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_every_index_path_is_an_item_and_every_item_a_path(layout):
    codes, sizes = make_catalogue(50, seed=1)
    index = PrefixIndex(codes, sizes, layout=layout)
    assert index.layouts == [layout] * 4
    items, paths = index.paths()
    assert sorted(items.tolist()) == list(range(50))
    assert torch.equal(paths, codes[items])


def test_dense_and_csr_give_identical_children():
    codes, sizes = make_catalogue(50, seed=3)
    dense = PrefixIndex(codes, sizes, layout="dense")
    csr = PrefixIndex(codes, sizes, layout="csr")
    for level in range(len(sizes)):
        nodes = torch.arange(dense.n_nodes[level]).reshape(-1, 1).repeat(1, 2)  # extra dim: shapes are kept
        assert torch.equal(dense.children(level, nodes), csr.children(level, nodes))


def test_dense_limit_picks_csr_for_large_levels():
    codes, sizes = make_catalogue(50, seed=1)
    index = PrefixIndex(codes, sizes, dense_limit=40)
    # level 0: 1 node x 7 codes <= 40 stays dense; last level: ~45 nodes x 3 codes > 40 goes CSR.
    assert index.layouts[0] == "dense" and index.layouts[-1] == "csr"


@pytest.mark.parametrize("faster", ["dense", "csr"])
def test_levels_between_the_bounds_keep_the_layout_measured_faster(monkeypatch, faster):
    timed = []

    def fake_timer(layout, lookup, device):
        timed.append(layout)
        assert lookup().shape[0] == 4096  # each timed lookup is a real batch of children of that level
        return 1.0 if layout == faster else 2.0

    monkeypatch.setattr(prefix_index, "time_lookup", fake_timer)
    codes, sizes = make_catalogue(50, seed=1)
    # measure_above=40: levels 0 and 1 (7 and 35 dense entries) stay dense untimed; levels 2 and 3 (174, 144) are timed.
    index = PrefixIndex(codes, sizes, measure_above=40)
    assert index.layouts == ["dense", "dense", faster, faster] and index.lookup_seconds[:2] == [None, None]
    slower = ({"dense", "csr"} - {faster}).pop()
    assert index.lookup_seconds[2:] == [{faster: 1.0, slower: 2.0}] * 2
    assert timed == ["dense", "csr"] * 2
    items, paths = index.paths()
    assert sorted(items.tolist()) == list(range(50)) and torch.equal(paths, codes[items])


def test_memory_bound_wins_over_speed_and_is_never_timed(monkeypatch):
    monkeypatch.setattr(prefix_index, "time_lookup", lambda *a: pytest.fail("a level over dense_limit was timed"))
    codes, sizes = make_catalogue(50, seed=1)
    index = PrefixIndex(codes, sizes, dense_limit=40, measure_above=40)
    assert index.layouts[-1] == "csr" and index.lookup_seconds[-1] is None
    assert index.memory_bytes < PrefixIndex(codes, sizes, layout="dense").memory_bytes


def test_real_timings_choose_a_layout_for_a_large_level():
    # 20,000 items over 64 x 64 x 64 codes: the last level's dense table (about 4,000 nodes x 64) is measured.
    g = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.randint(64, (30_000, 3), generator=g), dim=0)[:20_000]
    codes = codes[torch.randperm(len(codes), generator=g)]
    index = PrefixIndex(codes, (64, 64, 64), measure_above=1 << 12)
    seconds = index.lookup_seconds[-1]
    assert set(seconds) == {"dense", "csr"} and all(s > 0 for s in seconds.values())
    assert index.layouts[-1] == min(seconds, key=seconds.get)
    assert torch.equal(index.children(2, torch.arange(10)), PrefixIndex(codes, (64, 64, 64), layout="csr").children(2, torch.arange(10)))


def test_index_rejects_duplicates_and_out_of_range_codes():
    codes = torch.tensor([[0, 1], [2, 0], [0, 1], [1, 1]])
    with pytest.raises(ValueError, match=r"items \[0, 2\] share \[0, 1\]"):
        PrefixIndex(codes, (3, 2))
    with pytest.raises(ValueError, match="item 1 has code 2 on level 0"):
        PrefixIndex(torch.tensor([[0, 1], [2, 0]]), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        PrefixIndex(torch.tensor([[0, 1], [1, 0]]), (2, 2, 2))


# --- decoder step ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [{}, {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}], ids=["relu", "gated"]
)
def test_cached_decoder_step_matches_hf_teacher_forcing(overrides, setup):
    codes, vocab, _, input_ids, mask = setup
    model = make_model(vocab, seed=5, **overrides)
    b, w, levels = input_ids.shape[0], 4, vocab.levels
    g = torch.Generator().manual_seed(0)
    seqs = vocab.encode(codes[torch.randint(0, len(codes), (b, w), generator=g)])  # (b, w, l)
    decoder_inputs = torch.cat([torch.zeros(b, w, 1, dtype=torch.long), seqs[..., :-1]], dim=-1)

    with torch.no_grad():
        encoded = model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        expected = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.repeat_interleave(w, 0)),
            attention_mask=mask.repeat_interleave(w, 0),
            decoder_input_ids=decoder_inputs.flatten(0, 1),
            use_cache=False,
        ).logits.view(b, w, levels, -1)

        # Step 0 runs once per user; then feed the beams in a scrambled order and undo it with reorder() before
        # the last step: the cache must follow its beam.
        perm = torch.stack([torch.randperm(w, generator=g) for _ in range(b)])
        inverse = perm.argsort(1)
        decoder = CachedT5Decoder(model, encoded, mask, max_len=levels)
        got = decoder.step(decoder_inputs[:, :1, 0], 0)
        torch.testing.assert_close(got, expected[:, :1, 0], atol=1e-5, rtol=1e-5)
        decoder.reorder(torch.zeros(b, w, dtype=torch.long))
        for t in range(1, levels):
            order = perm if t < levels - 1 else torch.arange(w).expand(b, w)
            if t == levels - 1:
                decoder.reorder(inverse)
            tokens = decoder_inputs[..., t].gather(1, order)
            got = decoder.step(tokens, t)
            want = expected[:, :, t].gather(1, order[..., None].expand_as(got))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- beam search ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_exhaustive_beam_equals_brute_force(layout, setup):
    codes, vocab, model, input_ids, mask = setup
    index = PrefixIndex(codes, vocab.level_sizes, layout=layout)
    out = t5_beam_search(model, input_ids, mask, index, vocab, beam_width=64, top_k=10)
    brute = score_items(model, input_ids, mask, vocab, codes)  # (b, 50)
    top = brute.topk(10, dim=1)
    assert torch.equal(out.items, top.indices)
    torch.testing.assert_close(out.scores, top.values, atol=1e-4, rtol=0)
    assert torch.equal(out.codes, codes[out.items])
    # Against a float64 copy of the model: the fp32 engine is accurate, not just consistent with fp32 HF.
    brute64 = score_items(copy.deepcopy(model).double(), input_ids, mask, vocab, codes)
    torch.testing.assert_close(out.scores.double(), brute64.gather(1, out.items), atol=1e-4, rtol=0)
    assert torch.equal(out.items, brute64.topk(10, dim=1).indices)


def test_narrow_beam_returns_valid_distinct_items_with_exact_scores(setup):
    codes, vocab, model, _, _ = setup
    input_ids, mask = make_histories(codes, vocab, n_users=16, seed=7)
    index = PrefixIndex(codes, vocab.level_sizes)
    out = t5_beam_search(model, input_ids, mask, index, vocab, beam_width=4, top_k=3)
    assert out.items.shape == (16, 3) and out.codes.shape == (16, 3, 4)
    assert (out.items >= 0).all()
    assert all(len(set(row)) == 3 for row in out.items.tolist())
    assert torch.equal(out.codes, codes[out.items])
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    brute = score_items(model, input_ids, mask, vocab, codes)
    torch.testing.assert_close(out.scores, brute.gather(1, out.items), atol=1e-4, rtol=0)


def test_fewer_valid_items_than_top_k_fills_with_minus_one(setup):
    _, vocab, model, input_ids, mask = setup
    few = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0], [3, 2, 1, 0]])  # 3 items
    out = t5_beam_search(model, input_ids, mask, PrefixIndex(few, vocab.level_sizes), vocab, beam_width=6, top_k=5)
    assert (out.items[:, 3:] == -1).all() and torch.isinf(out.scores[:, 3:]).all()
    assert (out.codes[:, 3:] == -1).all()
    assert sorted(out.items[0, :3].tolist()) == [0, 1, 2]
    brute = score_items(model, input_ids, mask, vocab, few)
    torch.testing.assert_close(out.scores[:, :3], brute.gather(1, out.items[:, :3]))
    # top_k above every level's candidate count: the beam is narrower than asked and the output still padded.
    tiny = CodeVocab(level_sizes=(2, 1))
    tiny_model = make_model(tiny, seed=3)
    one = PrefixIndex(torch.tensor([[1, 0]]), tiny.level_sizes)
    ids = torch.tensor([[2, 4, 0]])
    out = t5_beam_search(tiny_model, ids, torch.tensor([[1, 1, 0]]), one, tiny, beam_width=4, top_k=4)
    assert out.items.tolist() == [[0, -1, -1, -1]] and out.codes[0, 0].tolist() == [1, 0]


def test_left_and_right_padding_agree(setup):
    codes, vocab, model, _, _ = setup
    index = PrefixIndex(codes, vocab.level_sizes)
    right_ids, right_mask = make_histories(codes, vocab, 8, seed=9, side="right")
    left_ids, left_mask = make_histories(codes, vocab, 8, seed=9, side="left")
    assert not torch.equal(left_ids, right_ids)
    right = t5_beam_search(model, right_ids, right_mask, index, vocab, beam_width=8, top_k=5)
    left = t5_beam_search(model, left_ids, left_mask, index, vocab, beam_width=8, top_k=5)
    assert torch.equal(left.items, right.items)
    torch.testing.assert_close(left.scores, right.scores, atol=1e-5, rtol=0)


def test_bfloat16_autocast_returns_valid_items(setup):
    codes, vocab, model, input_ids, mask = setup
    index = PrefixIndex(codes, vocab.level_sizes)
    out = t5_beam_search(model, input_ids, mask, index, vocab, beam_width=8, top_k=5, amp_dtype=torch.bfloat16)
    assert out.scores.dtype == torch.float32
    assert (out.items >= 0).all() and torch.equal(out.codes, codes[out.items])


def test_bad_inputs_raise(setup):
    codes, vocab, model, input_ids, mask = setup
    index = PrefixIndex(codes, vocab.level_sizes)
    with pytest.raises(ValueError, match="beam_width >= top_k"):
        t5_beam_search(model, input_ids, mask, index, vocab, beam_width=3, top_k=5)
    with pytest.raises(ValueError, match="level_sizes"):
        other = PrefixIndex(codes, (*SEM_SIZES, vocab.level_sizes[-1] + 1))
        t5_beam_search(model, input_ids, mask, other, vocab, beam_width=5, top_k=5)
    with pytest.raises(ValueError, match="attention_mask shape"):
        t5_beam_search(model, input_ids, mask[:, :-1], index, vocab, beam_width=5, top_k=5)
    empty_row = mask.clone()
    empty_row[0] = 0
    with pytest.raises(ValueError, match="at least one real"):
        t5_beam_search(model, input_ids, empty_row, index, vocab, beam_width=5, top_k=5)
    model.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            t5_beam_search(model, input_ids, mask, index, vocab, beam_width=5, top_k=5)
    finally:
        model.eval()


def test_index_to_device_keeps_answers():
    codes, sizes = make_catalogue(50, seed=1)
    index = PrefixIndex(codes, sizes, layout="csr")
    assert index.to("cpu") is index and index.device == torch.device("cpu")
    items, paths = index.paths()
    assert torch.equal(paths, codes[items])


@pytest.mark.gpu
def test_cuda_matches_cpu(setup):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    codes, vocab, model, input_ids, mask = setup
    cpu = t5_beam_search(model, input_ids, mask, PrefixIndex(codes, vocab.level_sizes), vocab, beam_width=8, top_k=5)
    gpu_model = copy.deepcopy(model).cuda()
    index = PrefixIndex(codes, vocab.level_sizes).to("cuda")
    gpu = t5_beam_search(gpu_model, input_ids.cuda(), mask.cuda(), index, vocab, beam_width=8, top_k=5)
    assert torch.equal(gpu.items.cpu(), cpu.items)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-4, rtol=0)


def test_fp32_head_keeps_the_logits_float32_under_autocast_and_changes_nothing_without_it(setup):
    codes, vocab, model, input_ids, mask = setup
    hidden = model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    start = torch.zeros(len(input_ids), 1, dtype=torch.long)
    plain = CachedT5Decoder(model, hidden, mask, max_len=vocab.levels, fp32_head=False).step(start, 0)
    fixed = CachedT5Decoder(model, hidden, mask, max_len=vocab.levels, fp32_head=True).step(start, 0)
    assert torch.equal(plain, fixed)  # no autocast: the same projection
    seen = []
    hook = model.lm_head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden16 = model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            plain16 = CachedT5Decoder(model, hidden16, mask, max_len=vocab.levels, fp32_head=False).step(start, 0)
            fixed16 = CachedT5Decoder(model, hidden16, mask, max_len=vocab.levels, fp32_head=True).step(start, 0)
    finally:
        hook.remove()
    assert plain16.dtype == torch.bfloat16 and fixed16.dtype == torch.float32
    # The plain step handed its hidden state to lm_head under autocast; the fixed one projected the same state
    # in float32 (without calling the autocast module at all).
    (x,) = seen
    assert torch.equal(fixed16, torch.nn.functional.linear(x.float(), model.lm_head.weight))
    index = PrefixIndex(codes, vocab.level_sizes)
    for fp32_head in (False, True):
        out = t5_beam_search(model, input_ids, mask, index, vocab, beam_width=8, top_k=5, amp_dtype=torch.bfloat16,
                             fp32_head=fp32_head)
        assert out.scores.dtype == torch.float32 and torch.equal(out.codes, codes[out.items])


def test_the_search_function_equals_the_checked_search_and_refuses_a_training_model(setup):
    codes, vocab, model, input_ids, mask = setup
    index = PrefixIndex(codes, vocab.level_sizes)
    for amp in (None, torch.bfloat16):
        want = t5_beam_search(model, input_ids, mask, index, vocab, beam_width=8, top_k=5, amp_dtype=amp)
        got = t5_search_function(model, index, vocab, beam_width=8, top_k=5, amp_dtype=amp)(input_ids, mask)
        assert torch.equal(got.items, want.items) and torch.equal(got.scores, want.scores)
    model.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            t5_search_function(model, index, vocab, beam_width=8, top_k=5)
    finally:
        model.eval()


def test_cuda_graphs_refuse_host_tensors():
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraph(lambda x: x * 2, torch.ones(3))


@pytest.mark.slow  # compiling takes about a minute on 2 cores
def test_the_compiled_search_equals_eager(setup):
    codes, vocab, model, input_ids, mask = setup
    index = PrefixIndex(codes, vocab.level_sizes)
    want = t5_beam_search(model, input_ids, mask, index, vocab, beam_width=8, top_k=5)
    got = torch.compile(t5_search_function(model, index, vocab, beam_width=8, top_k=5), dynamic=False)(input_ids, mask)
    assert torch.equal(got.items, want.items)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_cuda_graph_of_the_search_replays_it_exactly_on_new_inputs(setup, amp):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    codes, vocab, model, input_ids, mask = setup
    gpu_model = copy.deepcopy(model).cuda()
    index = PrefixIndex(codes, vocab.level_sizes).to("cuda")
    ids, m = input_ids.cuda(), mask.cuda()
    graph = CudaGraph(t5_search_function(gpu_model, index, vocab, beam_width=8, top_k=5, amp_dtype=amp), ids, m)
    other_ids, other_mask = make_histories(codes, vocab, len(input_ids), seed=7)
    for i, k in ((ids, m), (other_ids.cuda(), other_mask.cuda())):
        want = t5_beam_search(gpu_model, i, k, index, vocab, beam_width=8, top_k=5, amp_dtype=amp)
        got = graph(i, k)
        assert torch.equal(got.items, want.items)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="captured for"):
        graph(ids[:2], m[:2])
