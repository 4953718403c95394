"""T5 side of constrained beam search: a cached one-token decoder step, the search entry, the brute-force oracle.

:class:`CachedT5Decoder` is a :class:`genrec.decoding.DecoderStep` run on the HF model's own modules. HF
``generate`` repeats the encoder output once per beam and keeps a cross-attention cache per beam. Here the beams of
a user are just ``w`` query rows attending to that user's encoder states, so cross-attention keys and values are
computed once per user and shared by all of its beams; only the small self-attention cache is per beam.

:func:`t5_beam_search` runs the encoder and the generic engine (``genrec.decoding.beam_search``) on it;
:func:`t5_search_function` is the same search as a sync-free function of the inputs, to compile or capture as a
CUDA graph; :func:`score_items` scores every item by HF's teacher-forced forward pass, the oracle the engine is
tested against.

Shapes: ``b`` users, ``w`` beams, ``n`` encoder length, ``h`` heads, ``e`` head width, ``t`` decoded positions,
``m`` catalogue items, ``l`` code levels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from genrec.decoding import BeamSearchOutput, PrefixIndex, beam_search
from genrec.decoding.beam_search import Normalization
from genrec.seq2seq.vocab import CodeVocab


def check_supported(model: nn.Module) -> None:
    """Raises ``ValueError`` unless ``model`` is a T5 encoder-decoder this module can step through."""
    from transformers import T5ForConditionalGeneration

    if not isinstance(model, T5ForConditionalGeneration):
        raise ValueError(f"expected a transformers T5ForConditionalGeneration, got {type(model).__name__}")
    if model.training:
        raise ValueError("the model is in training mode (dropout on): call model.eval() before decoding")
    blocks = model.decoder.block
    if len(blocks) == 0:
        raise ValueError("the T5 decoder has no layers")
    for i, block in enumerate(blocks):
        if len(block.layer) != 3:
            raise ValueError(f"decoder block {i} has {len(block.layer)} sub-layers, expected 3 (self, cross, ff)")
        if block.layer[0].SelfAttention.has_relative_attention_bias != (i == 0):
            raise ValueError("only T5 with the relative position bias in the first decoder layer is supported")
    if model.config.decoder_start_token_id is None:
        raise ValueError("model.config.decoder_start_token_id is not set (genrec uses pad=0)")


class CachedT5Decoder:
    """Incremental T5 decoder over (users, beams) with a per-user shared cross-attention cache.

    Self-attention cache layout (``t`` the position, ``L = max_len``):

    * position 0 is the decoder start token, identical for every beam of a user: its keys / values are kept once
      per user, ``(b, 1, layers, 2, h, e)``, and never reordered;
    * positions ``1 .. L - 2`` are per beam, one tensor ``(b, w, L - 2, layers, 2, h, e)`` for all layers, so that
      reordering beams is a single gather;
    * position ``L - 1`` is the last step: its keys / values are used in that step and never stored.

    Args:
        model: an eval-mode ``T5ForConditionalGeneration`` (see :func:`check_supported`).
        encoder_hidden: (b, n, d) float encoder output.
        attention_mask: (b, n) encoder padding mask, 1 for real tokens.
        max_len: number of positions that will be decoded (the decoder start token is position 0).
        fp32_head: under autocast, compute the output projection (``lm_head``, the logits the search ranks by) in
            float32 with autocast off, instead of rounding the logits to the autocast dtype; no effect without
            autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        encoder_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        max_len: int,
        *,
        fp32_head: bool = True,
    ) -> None:
        self.model = model
        self.fp32_head = fp32_head
        self.blocks = model.decoder.block
        self.scale_output = getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings)
        self.max_len = max_len
        first = self.blocks[0].layer[0].SelfAttention
        self.heads, self.head_dim = first.n_heads, first.key_value_proj_dim
        self.batch = encoder_hidden.shape[0]
        # Relative position bias of every (query, key) pair, (h, t, t); row t holds the keys 0..t of step t.
        self.position_bias = first.compute_bias(max_len, max_len, device=encoder_hidden.device)[0]
        # Additive padding mask, (b, 1, 1, n): T5 cross-attention has no position bias.
        keep = attention_mask.to(torch.bool)[:, None, None, :]
        self.cross_mask = torch.zeros(keep.shape, dtype=torch.float32, device=encoder_hidden.device)
        self.cross_mask.masked_fill_(~keep, float("-inf"))
        # Cross-attention keys / values once per user and layer: k as (b, h, e, n), ready for q @ k, v as (b, h, n, e).
        self.cross_kv = []
        for block in self.blocks:
            attn = block.layer[1].EncDecAttention
            k = rearrange(attn.k(encoder_hidden), "b n (h e) -> b h e n", h=self.heads)
            v = rearrange(attn.v(encoder_hidden), "b n (h e) -> b h n e", h=self.heads)
            self.cross_kv.append((k, v))
        self.start_kv: torch.Tensor | None = None  # (b, 1, layers, 2, h, e)
        self.cache: torch.Tensor | None = None  # (b, w, max_len - 2, layers, 2, h, e)

    def step(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        """Feeds one token per beam and returns the next-token logits.

        Longer than most functions here on purpose: each decoder layer's self-attention, cross-attention and
        feed-forward run inline in the order HF's T5 runs them, so the two can be read side by side.

        Args:
            tokens: (b, w) int64 decoder input at decoder position ``level``; at 0 the start token with w = 1.
            level: index of this step, 0-based; steps must come in order, with :meth:`reorder` in between.

        Returns:
            (b, w, vocab) logits over the full vocabulary, as HF's teacher-forced forward computes them.
        """
        position = level  # one decoder position per code level
        b, w = tokens.shape
        if position == 0 and w != 1:
            raise ValueError(f"the first step takes one start token per user, got {w} beams")
        stored = position - 1  # per-beam cached positions 1 .. position - 1
        x = self.model.decoder.embed_tokens(tokens)  # (b, w, d)
        bias = self.position_bias[:, position, : position + 1]  # (h, t + 1)
        new_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, (b, w, h, e) each
        for i, block in enumerate(self.blocks):
            self_attn, cross_attn, ff = block.layer

            # Self-attention of one new position over the start token (0), the cached positions (1 .. t-1) and
            # itself (t). The scores of the three parts are computed separately and concatenated (a few numbers
            # per head) rather than concatenating the keys (a copy of the whole cache per layer). T5 does not
            # scale q.k: the 1/sqrt(e) is folded into its initialisation.
            sa = self_attn.SelfAttention
            y = self_attn.layer_norm(x)
            q = rearrange(sa.q(y), "b w (h e) -> b w h e", h=self.heads)
            k = rearrange(sa.k(y), "b w (h e) -> b w h e", h=self.heads)
            v = rearrange(sa.v(y), "b w (h e) -> b w h e", h=self.heads)
            if position < self.max_len - 1:  # the last position is never attended to again
                new_kv.append((k, v))
            scores = [torch.einsum("bwhe,bwhe->bwh", q, k)[..., None]]  # the new position itself
            if position > 0:
                k0, v0 = self.start_kv[:, 0, i].unbind(1)  # (b, h, e), shared by the beams of a user
                scores.insert(0, torch.einsum("bwhe,bhe->bwh", q, k0)[..., None])
            if stored > 0:
                keys, values = self.cache[:, :, :stored, i].unbind(3)  # (b, w, t, h, e)
                scores.insert(-1, torch.einsum("bwhe,bwthe->bwht", q, keys))
            weights = torch.softmax(torch.cat(scores, dim=-1).float() + bias, dim=-1).to(q.dtype)  # (b, w, h, t+1)
            out = weights[..., -1:] * v
            if position > 0:
                out = out + weights[..., :1] * v0[:, None]
            if stored > 0:
                out = out + torch.einsum("bwht,bwthe->bwhe", weights[..., 1:-1], values)
            x = x + sa.o(rearrange(out, "b w h e -> b w (h e)"))

            # Cross-attention: the w beams of a user are w queries against that user's encoder states.
            ca = cross_attn.EncDecAttention
            y = cross_attn.layer_norm(x)
            q = rearrange(ca.q(y), "b w (h e) -> b h w e", h=self.heads)
            k, v = self.cross_kv[i]
            scores = torch.matmul(q, k.to(q.dtype)).float() + self.cross_mask  # (b, h, w, n)
            out = torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), v.to(q.dtype))
            x = x + ca.o(rearrange(out, "b h w e -> b w (h e)"))

            x = x + ff.DenseReluDense(ff.layer_norm(x))

        if position == 0:
            self.start_kv = torch.stack([torch.stack(kv, dim=2) for kv in new_kv], dim=2)  # (b, 1, layers, 2, h, e)
        elif position < self.max_len - 1:
            if self.cache is None:
                shape = (b, w, self.max_len - 2, len(self.blocks), 2, self.heads, self.head_dim)
                self.cache = torch.empty(shape, dtype=new_kv[0][0].dtype, device=tokens.device)
            for i, (k, v) in enumerate(new_kv):
                self.cache[:, :, stored, i, 0] = k
                self.cache[:, :, stored, i, 1] = v
        x = self.model.decoder.final_layer_norm(x)
        if self.scale_output:
            x = x * self.model.model_dim**-0.5
        head = self.model.lm_head
        if self.fp32_head and torch.is_autocast_enabled(x.device.type):
            # bf16 logits keep ~3 significant digits: near-ties between items flip. The projection is a small share
            # of the step (d x vocab per beam), so it runs in float32 (float64 for a float64 model).
            dtype = torch.promote_types(head.weight.dtype, torch.float32)
            with torch.autocast(x.device.type, enabled=False):
                bias = None if head.bias is None else head.bias.to(dtype)
                return F.linear(x.to(dtype), head.weight.to(dtype), bias)
        return head(x)

    def reorder(self, parent: torch.Tensor) -> None:
        """Keeps, for user ``u`` and new beam ``j``, the cache of old beam ``parent[u, j]``.

        Args:
            parent: (b, w_new) int64 in ``[0, w_old)``; ``w_new`` may differ from ``w_old`` (1 -> w after step 0).
        """
        if self.cache is None:  # only the shared start token is cached so far
            return
        b, w_old = self.cache.shape[:2]
        rows = (parent + w_old * torch.arange(b, device=parent.device)[:, None]).flatten()
        self.cache = self.cache.flatten(0, 1).index_select(0, rows).unflatten(0, parent.shape)


def _check_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: CodeVocab) -> None:
    check_supported(model)
    if input_ids is None:  # precomputed encoder states: check the mask alone
        input_ids = torch.zeros_like(attention_mask, dtype=torch.long)
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be (b, n) int64, got {tuple(input_ids.shape)} {input_ids.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
    if not attention_mask.bool().any(1).all():
        raise ValueError("every user needs at least one real (attention_mask=1) history token")
    if model.config.vocab_size < vocab.size:
        raise ValueError(f"model vocab_size {model.config.vocab_size} < CodeVocab size {vocab.size}")


def _autocast(device: torch.device, amp_dtype: torch.dtype | None, *, cache: bool = True):
    if amp_dtype is None:
        return contextlib.nullcontext()
    # A CUDA graph cannot capture autocast's cache of cast weights: callers that capture pass cache=False.
    return torch.autocast(device_type=device.type, dtype=amp_dtype, cache_enabled=cache)


def _search(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    index: PrefixIndex,
    vocab: CodeVocab,
    *,
    beam_width: int,
    top_k: int,
    amp_dtype: torch.dtype | None,
    fp32_head: bool,
    encoder_hidden: torch.Tensor | None,
    normalize: Normalization,
    autocast_cache: bool = True,
) -> BeamSearchOutput:
    """:func:`t5_beam_search` without its input checks, which read the device: nothing here synchronises with the
    host (HF's T5 encoder reads its padding mask to skip an all-ones one, but not while compiled or captured)."""
    b, device = attention_mask.shape[0], attention_mask.device
    # The engine calls the decoder steps, so it runs under autocast too; it keeps its scores in float32.
    with _autocast(device, amp_dtype, cache=autocast_cache):
        if encoder_hidden is None:
            encoder_hidden = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        decoder = CachedT5Decoder(model, encoder_hidden, attention_mask, max_len=vocab.levels, fp32_head=fp32_head)
        start = torch.full((b, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
        return beam_search(
            decoder,
            index,
            start_tokens=start,
            level_sizes=vocab.level_sizes,
            offsets=vocab.offsets,
            beam_width=beam_width,
            top_k=top_k,
            normalize=normalize,
        )


@torch.no_grad()
def t5_beam_search(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    index: PrefixIndex,
    vocab: CodeVocab,
    *,
    beam_width: int,
    top_k: int,
    amp_dtype: torch.dtype | None = None,
    fp32_head: bool = True,
    encoder_hidden: torch.Tensor | None = None,
    normalize: Normalization = "vocab",
) -> BeamSearchOutput:
    """Top-K catalogue items per user: the T5 encoder, then :func:`genrec.decoding.beam_search` on its decoder.

    Args:
        model: eval-mode ``transformers.T5ForConditionalGeneration`` trained on ``vocab``.
        input_ids: (b, n) int64 encoder tokens (item histories), left- or right-padded with pad=0; None when
            ``encoder_hidden`` is given.
        attention_mask: (b, n) 1 for real tokens (or encoder states), 0 for padding.
        index: prefix index of the catalogue, on the same device as ``input_ids``.
        vocab: the token vocabulary; ``vocab.level_sizes`` must equal ``index.level_sizes``.
        beam_width: beams kept between levels, ``>= top_k``.
        top_k: items returned per user.
        amp_dtype: run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``);
            log-softmax and scores stay float32. ``None`` runs in the model's dtype.
        fp32_head: under ``amp_dtype``, the output projection in float32 too (:class:`CachedT5Decoder`); False is
            plain autocast, whose logits are rounded to ``amp_dtype``.
        encoder_hidden: (b, n, d) encoder states computed by the caller (models whose encoder input is not a
            token sequence: ColaRec, MSCGRec); ``model.encoder`` is then not run.
        normalize: ``"vocab"`` or ``"valid"`` (see ``genrec.decoding.beam_search``); ``"valid"`` for a model
            trained with the constrained softmax.

    Returns:
        :class:`BeamSearchOutput`, items sorted by descending score; distinct, valid, -1 / ``-inf`` filled.
    """
    if (input_ids is None) == (encoder_hidden is None):
        raise ValueError("pass exactly one of input_ids and encoder_hidden")
    if encoder_hidden is not None and encoder_hidden.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"encoder_hidden {tuple(encoder_hidden.shape)} does not match attention_mask {tuple(attention_mask.shape)}"
        )
    _check_inputs(model, input_ids, attention_mask, vocab)
    return _search(model, input_ids, attention_mask, index, vocab, beam_width=beam_width, top_k=top_k,
                   amp_dtype=amp_dtype, fp32_head=fp32_head, encoder_hidden=encoder_hidden, normalize=normalize)


def t5_search_function(
    model: nn.Module,
    index: PrefixIndex,
    vocab: CodeVocab,
    *,
    beam_width: int,
    top_k: int,
    amp_dtype: torch.dtype | None = None,
    fp32_head: bool = True,
    normalize: Normalization = "vocab",
) -> Callable[[torch.Tensor, torch.Tensor], BeamSearchOutput]:
    """:func:`t5_beam_search` as a function of ``(input_ids, attention_mask)`` alone, for ``torch.compile`` and
    CUDA-graph capture (:class:`genrec.decoding.CudaGraph`).

    The model is checked once, here; the function itself checks nothing about its inputs (the check that every
    user has a real token reads the device), does not synchronise with the host while compiled or captured, and
    runs autocast without its weight cache, so it can be captured. Give it inputs that :func:`t5_beam_search`
    accepts.
    """
    check_supported(model)
    if model.config.vocab_size < vocab.size:
        raise ValueError(f"model vocab_size {model.config.vocab_size} < CodeVocab size {vocab.size}")

    @torch.no_grad()
    def search(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BeamSearchOutput:
        return _search(model, input_ids, attention_mask, index, vocab, beam_width=beam_width, top_k=top_k,
                       amp_dtype=amp_dtype, fp32_head=fp32_head, encoder_hidden=None, normalize=normalize,
                       autocast_cache=False)

    return search


@torch.no_grad()
def score_items(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab: CodeVocab,
    item_codes: torch.Tensor,
    *,
    max_rows: int = 8192,
) -> torch.Tensor:
    """Teacher-forced log-probability of every item for every user, by HF's own forward pass.

    The oracle for :func:`t5_beam_search`, and exhaustive retrieval for small catalogues.

    Args:
        model: eval-mode ``transformers.T5ForConditionalGeneration``.
        input_ids: (b, n) int64 encoder tokens.
        attention_mask: (b, n) 1 for real tokens, 0 for padding.
        vocab: the token vocabulary.
        item_codes: (m, l) int64 semantic IDs, ``item_codes[:, j]`` in ``[0, vocab.level_sizes[j])``.
        max_rows: decoder sequences (user, item pairs) per forward pass.

    Returns:
        (b, m) ``sum_l log_softmax(logits)[token_l]``, float32 (float64 for a float64 model).
    """
    _check_inputs(model, input_ids, attention_mask, vocab)
    from transformers.modeling_outputs import BaseModelOutput

    b = input_ids.shape[0]
    labels = vocab.encode(item_codes.to(input_ids.device))  # (m, l)
    start = torch.full_like(labels[:, :1], model.config.decoder_start_token_id)
    decoder_inputs = torch.cat([start, labels[:, :-1]], dim=1)  # shifted right, as in training
    encoded = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    score_dtype = torch.promote_types(encoded.dtype, torch.float32)
    out = torch.empty(b, labels.shape[0], dtype=score_dtype, device=input_ids.device)
    chunk = max(1, max_rows // b)
    for s in range(0, labels.shape[0], chunk):
        lab, dec = labels[s : s + chunk], decoder_inputs[s : s + chunk]
        c = lab.shape[0]
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=repeat(encoded, "b n d -> (b c) n d", c=c)),
            attention_mask=repeat(attention_mask, "b n -> (b c) n", c=c),
            decoder_input_ids=repeat(dec, "c l -> (b c) l", b=b),
            use_cache=False,
        ).logits
        log_probs = F.log_softmax(logits.to(score_dtype), dim=-1)
        token_lp = log_probs.gather(-1, repeat(lab, "c l -> (b c) l 1", b=b))[..., 0]
        out[:, s : s + c] = rearrange(token_lp.sum(-1), "(b c) -> b c", b=b)
    return out
