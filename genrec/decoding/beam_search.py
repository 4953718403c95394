"""Constrained beam search over semantic IDs, for any model that can take one decoder step at a time.

The model is reached only through a :class:`DecoderStep` (tokens in, next-token logits out, and a beam reorder), so
this module knows nothing of T5 or of the token vocabulary beyond each level's token range (``offsets``,
``level_sizes``). The T5 adapter is ``genrec.seq2seq.t5_step``.

An item is scored as the teacher-forced log-probability of its code tokens,
``sum_l log_softmax(logits over the full vocabulary)[token_l]``: beam search only restricts *which* tokens are
expanded (code tokens of the current level whose prefix is in the catalogue), never renormalises over them, so its
scores are directly comparable with a brute-force teacher-forced scorer and with the training loss.

A model trained with the constrained softmax (``genrec.seq2seq.losses.constrained_cross_entropy``, MSCGRec) has
never been taught to keep mass off invalid tokens, so it is decoded with ``normalize="valid"``: each step's
log-softmax runs over the valid continuations of the beam's prefix only, exactly the distribution it was trained on.

Shapes: ``b`` users, ``w`` beams, ``k`` codes of the current level, ``v`` model vocabulary, ``l`` code levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from genrec.decoding.prefix_index import PrefixIndex

Normalization = Literal["vocab", "valid"]


class DecoderStep(Protocol):
    """One decoder step over (users, beams): all that :func:`beam_search` needs from a model.

    The search calls ``step(start_tokens, 0)``, then for each later level ``reorder(parent)`` followed by
    ``step(tokens, level)``; the object keeps whatever per-beam state (a KV cache, the prefix so far) it needs.
    """

    def step(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        """Feeds one token per beam and returns the logits of the next one.

        Args:
            tokens: (b, w) int64 decoder input: at level 0 the caller's ``start_tokens`` (w = 1), later the token
                each beam emitted at ``level - 1`` (``offsets[level - 1] + code``).
            level: the code level whose token the returned logits predict, 0-based, in order.

        Returns:
            (b, w, v) float logits over the model's whole vocabulary; ``v >= offsets[l] + level_sizes[l]``.
        """
        ...

    def reorder(self, parent: torch.Tensor) -> None:
        """Makes new beam ``j`` of user ``u`` continue old beam ``parent[u, j]``.

        Args:
            parent: (b, w_new) int64 in ``[0, w_old)``; ``w_new`` may differ from ``w_old`` (1 -> w after level 0).
        """
        ...


class BeamSearchOutput(NamedTuple):
    """Top-K items per user, best first.

    Attributes:
        items: (b, top_k) int64 item indices into the catalogue, -1 where fewer valid items exist.
        scores: (b, top_k) float32 log-probabilities (float64 for float64 logits), ``-inf`` where ``items`` is -1.
        codes: (b, top_k, l) int64 semantic IDs of ``items``, -1 where ``items`` is -1.
    """

    items: torch.Tensor
    scores: torch.Tensor
    codes: torch.Tensor


def _check_args(
    index: PrefixIndex,
    start_tokens: torch.Tensor,
    level_sizes: tuple[int, ...],
    offsets: tuple[int, ...],
    *,
    beam_width: int,
    top_k: int,
    normalize: str,
) -> None:
    if normalize not in ("vocab", "valid"):
        raise ValueError(f"normalize must be 'vocab' or 'valid', got {normalize!r}")
    if top_k < 1 or beam_width < top_k:
        raise ValueError(f"need beam_width >= top_k >= 1, got beam_width={beam_width}, top_k={top_k}")
    if tuple(index.level_sizes) != level_sizes:
        raise ValueError(f"index level_sizes {index.level_sizes} != level_sizes {level_sizes}")
    if len(offsets) != len(level_sizes) or min(offsets) < 0:
        raise ValueError(f"need one offset >= 0 per level, got offsets {offsets} for level_sizes {level_sizes}")
    if start_tokens.dim() != 2 or start_tokens.shape[1] != 1 or start_tokens.dtype != torch.long:
        raise ValueError(f"start_tokens must be (b, 1) int64, got {tuple(start_tokens.shape)} {start_tokens.dtype}")
    if index.device != start_tokens.device:
        raise ValueError(f"index is on {index.device} but the inputs on {start_tokens.device}: call index.to(device)")


@torch.no_grad()
def beam_search(
    step: DecoderStep,
    index: PrefixIndex,
    *,
    start_tokens: torch.Tensor,
    level_sizes: Sequence[int],
    offsets: Sequence[int],
    beam_width: int,
    top_k: int,
    normalize: Normalization = "vocab",
) -> BeamSearchOutput:
    """Top-K catalogue items per user by beam search over their semantic IDs.

    One decoder step per code level: level ``l`` may only emit code tokens of level ``l`` that extend a catalogue
    prefix; everything else is ``-inf``. The first step runs on one row per user, later steps on ``beam_width``.

    Args:
        step: the model, fresh (no step taken yet) for these ``b`` users (:class:`DecoderStep`).
        index: prefix index of the catalogue, on the same device as ``start_tokens``.
        start_tokens: (b, 1) int64 decoder input of level 0, one per user (T5: the decoder start token).
        level_sizes: codes on each level; must equal ``index.level_sizes``.
        offsets: token id of code 0 of each level: code ``c`` of level ``l`` is logit ``offsets[l] + c``.
        beam_width: beams kept between levels, ``>= top_k``.
        top_k: items returned per user.
        normalize: ``"vocab"`` scores each step by log-softmax over the whole vocabulary; ``"valid"`` over the
            valid continuations of the prefix only (module docstring).

    Returns:
        :class:`BeamSearchOutput`, items sorted by descending score; distinct, valid, -1 / ``-inf`` filled. Scores
        are in the logits' dtype promoted to at least float32.
    """
    level_sizes, offsets = tuple(int(s) for s in level_sizes), tuple(int(o) for o in offsets)
    _check_args(
        index, start_tokens, level_sizes, offsets, beam_width=beam_width, top_k=top_k, normalize=normalize
    )
    b, levels, device = start_tokens.shape[0], len(level_sizes), start_tokens.device
    tokens = start_tokens
    # Zeros add exactly, so level 0's candidates take the dtype of its log-probabilities.
    scores = torch.zeros(b, 1, device=device)  # (b, w) log-prob of each beam
    nodes = torch.zeros(b, 1, dtype=torch.long, device=device)  # (b, w) trie node of each beam
    paths = torch.zeros(b, 1, 0, dtype=torch.long, device=device)  # (b, w, level) codes so far
    for level, (size, offset) in enumerate(zip(level_sizes, offsets)):
        logits = step.step(tokens, level)  # (b, w, v)
        if logits.shape[:2] != tokens.shape or logits.shape[-1] < offset + size:
            raise ValueError(f"level {level}: step returned logits {tuple(logits.shape)} for tokens "
                             f"{tuple(tokens.shape)}, expected (b, w, >= {offset + size})")
        # Scores in float32, or float64 for float64 logits (never in an autocast dtype).
        score_dtype = torch.promote_types(logits.dtype, torch.float32)
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
            step.reorder(parent)
            tokens = code + offset
            # Beams that are -inf (fewer valid prefixes than beams) carry node -1; park them on node 0 so the
            # next lookup stays in range. Their score stays -inf, so nothing they spawn is ever returned.
            nodes = nodes.clamp(min=0)
    return _finish(scores, nodes, paths, top_k)


def _finish(scores: torch.Tensor, nodes: torch.Tensor, paths: torch.Tensor, top_k: int) -> BeamSearchOutput:
    """Marks the ``-inf`` beams invalid and pads (b, keep) to (b, top_k) when fewer candidates existed."""
    valid = scores > float("-inf")
    items = nodes.masked_fill(~valid, -1)
    codes = paths.masked_fill(~valid[..., None], -1)
    pad = top_k - scores.shape[1]
    if pad > 0:  # fewer candidates than top_k even counting invalid ones
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
        codes = F.pad(codes, (0, 0, 0, pad), value=-1)
    return BeamSearchOutput(items=items, scores=scores, codes=codes)
