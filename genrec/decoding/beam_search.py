"""Constrained beam search over semantic IDs, and the brute-force scorer it is tested against.

Both score an item as the teacher-forced log-probability of its code tokens,
``sum_l log_softmax(logits over the full vocabulary)[token_l]``: beam search only restricts *which* tokens are
expanded (code tokens of the current level whose prefix is in the catalogue), never renormalises over them, so its
scores are directly comparable with :func:`score_items` and with the training loss.

A model trained with the constrained softmax (``genrec.seq2seq.losses.constrained_cross_entropy``, MSCGRec) has
never been taught to keep mass off invalid tokens, so it is decoded with ``normalize="valid"``: each step's
log-softmax runs over the valid continuations of the beam's prefix only, exactly the distribution it was trained on.
"""

from __future__ import annotations

import contextlib
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from genrec.decoding.prefix_index import PrefixIndex
from genrec.decoding.t5_step import CachedT5Decoder, check_supported
from genrec.seq2seq.vocab import CodeVocab


class BeamSearchOutput(NamedTuple):
    """Top-K items per user, best first.

    Attributes:
        items: (b, top_k) int64 item indices into the catalogue, -1 where fewer valid items exist.
        scores: (b, top_k) float32 log-probabilities (float64 for a float64 model), ``-inf`` where ``items`` is -1.
        codes: (b, top_k, l) int64 semantic IDs of ``items``, -1 where ``items`` is -1.
    """

    items: torch.Tensor
    scores: torch.Tensor
    codes: torch.Tensor


Normalization = Literal["vocab", "valid"]


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


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    index: PrefixIndex,
    vocab: CodeVocab,
    *,
    beam_width: int,
    top_k: int,
    amp_dtype: torch.dtype | None = None,
    encoder_hidden: torch.Tensor | None = None,
    normalize: Normalization = "vocab",
) -> BeamSearchOutput:
    """Top-K catalogue items per user by beam search over their semantic IDs.

    One decoder step per code level: level ``l`` may only emit code tokens of level ``l`` that extend a catalogue
    prefix; everything else is ``-inf``. The first step runs on one row per user, later steps on ``beam_width``.

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
        encoder_hidden: (b, n, d) encoder states computed by the caller (models whose encoder input is not a
            token sequence: ColaRec, MSCGRec); ``model.encoder`` is then not run.
        normalize: ``"vocab"`` scores each step by log-softmax over the whole vocabulary; ``"valid"`` over the
            valid continuations of the prefix only (module docstring).

    Returns:
        :class:`BeamSearchOutput`, items sorted by descending score; distinct, valid, -1 / ``-inf`` filled.
    """
    if (input_ids is None) == (encoder_hidden is None):
        raise ValueError("pass exactly one of input_ids and encoder_hidden")
    if encoder_hidden is not None and encoder_hidden.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"encoder_hidden {tuple(encoder_hidden.shape)} does not match attention_mask {tuple(attention_mask.shape)}"
        )
    if normalize not in ("vocab", "valid"):
        raise ValueError(f"normalize must be 'vocab' or 'valid', got {normalize!r}")
    _check_inputs(model, input_ids, attention_mask, vocab)
    if top_k < 1 or beam_width < top_k:
        raise ValueError(f"need beam_width >= top_k >= 1, got beam_width={beam_width}, top_k={top_k}")
    if tuple(index.level_sizes) != tuple(vocab.level_sizes):
        raise ValueError(f"index level_sizes {index.level_sizes} != vocab level_sizes {vocab.level_sizes}")
    if index.device != attention_mask.device:
        raise ValueError(f"index is on {index.device} but the inputs on {attention_mask.device}: call index.to(device)")

    b, levels, device = attention_mask.shape[0], vocab.levels, attention_mask.device
    with _autocast(device, amp_dtype):
        if encoder_hidden is None:
            encoded = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            encoded = encoder_hidden
        decoder = CachedT5Decoder(model, encoded, attention_mask, max_len=levels)
        tokens = torch.full((b, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
        # Scores in float32, or float64 for a float64 model (never in the autocast dtype).
        score_dtype = torch.promote_types(encoded.dtype, torch.float32)
        scores = torch.zeros(b, 1, dtype=score_dtype, device=device)  # (b, w) log-prob of each beam
        nodes = torch.zeros(b, 1, dtype=torch.long, device=device)  # (b, w) trie node of each beam
        paths = torch.zeros(b, 1, 0, dtype=torch.long, device=device)  # (b, w, level) codes so far
        for level, (size, offset) in enumerate(zip(vocab.level_sizes, vocab.offsets)):
            logits = decoder.step(tokens, level)  # (b, w, vocab)
            child = index.children(level, nodes)  # (b, w, k), -1 = prefix not in the catalogue
            if normalize == "vocab":
                log_probs = F.log_softmax(logits.to(score_dtype), dim=-1)[..., offset : offset + size]  # (b, w, k)
            else:
                level_logits = logits[..., offset : offset + size].to(score_dtype).masked_fill(child < 0, float("-inf"))
                # A parked beam's node 0 always has children, so no row is all -inf (no NaN).
                log_probs = F.log_softmax(level_logits, dim=-1)
            candidates = (scores[..., None] + log_probs).masked_fill(child < 0, float("-inf"))
            last = level == levels - 1
            # Shapes are static, so this min never syncs with the device; with a tiny first level fewer than
            # beam_width candidates exist and the beam is narrower for a step.
            keep = min(top_k if last else beam_width, candidates.shape[1] * size)
            scores, flat = rearrange(candidates, "b w k -> b (w k)").topk(keep, dim=1)
            parent, code = flat // size, flat % size
            nodes = rearrange(child, "b w k -> b (w k)").gather(1, flat)
            paths = torch.cat([paths.gather(1, repeat(parent, "b w -> b w l", l=level)), code[..., None]], dim=2)
            if not last:
                decoder.reorder(parent)
                tokens = code + offset
                # Beams that are -inf (fewer valid prefixes than beams) carry node -1; park them on node 0 so the
                # next lookup stays in range. Their score stays -inf, so nothing they spawn is ever returned.
                nodes = nodes.clamp(min=0)

    valid = scores > float("-inf")
    items = nodes.masked_fill(~valid, -1)
    codes = paths.masked_fill(~valid[..., None], -1)
    if keep < top_k:  # fewer candidates than top_k even counting invalid ones
        pad = top_k - keep
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
        codes = F.pad(codes, (0, 0, 0, pad), value=-1)
    return BeamSearchOutput(items=items, scores=scores, codes=codes)


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

    The oracle for :func:`beam_search`, and exhaustive retrieval for small catalogues.

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
