"""One-token-at-a-time T5 decoder for beam search, run on the HF model's own modules.

HF ``generate`` repeats the encoder output once per beam and keeps a cross-attention cache per beam. Here the
beams of a user are just ``w`` query rows attending to that user's encoder states, so cross-attention keys and
values are computed once per user and shared by all of its beams; only the small self-attention cache is per beam.

Shapes: ``b`` users, ``w`` beams, ``n`` encoder length, ``h`` heads, ``e`` head width, ``t`` decoded positions.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


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
    """

    def __init__(
        self, model: nn.Module, encoder_hidden: torch.Tensor, attention_mask: torch.Tensor, max_len: int
    ) -> None:
        self.model = model
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

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Feeds one token per beam and returns the next-token logits.

        Args:
            tokens: (b, w) int64 decoder input at ``position``; at position 0 the start token with w = 1.
            position: index of this step, 0-based; steps must come in order, with :meth:`reorder` in between.

        Returns:
            (b, w, vocab) logits over the full vocabulary, as HF's teacher-forced forward computes them.
        """
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
        return self.model.lm_head(x)

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
