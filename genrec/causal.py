"""Causal self-attention over item sequences, shared by SASRec and the parallel-ID generative model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def causal_mask(real: torch.Tensor) -> torch.Tensor:
    """(b, n) bool real positions -> (b, 1, n, n) bool, True where a query may attend to a key.

    Causal, and never onto padding; a padding query may see itself so that no softmax row is empty (no NaN).
    """
    n = real.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=real.device)
    causal = torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    return causal & (rearrange(real, "b n -> b 1 1 n") | eye)


class CausalBlock(nn.Module):
    """Pre-LN transformer block: masked multi-head self-attention, then a position-wise feed-forward layer."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.p = n_heads, dropout
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        # SASRec §III-B: a two-layer point-wise FFN of the model's width.
        self.ffn = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d); allowed: (b, 1, n, n) bool, True where a query position may attend to a key position."""
        q, k, v = rearrange(self.qkv(self.attn_norm(x)), "b n (three h e) -> three b h n e", three=3, h=self.n_heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.p if self.training else 0.0)
        x = x + self.dropout(self.proj(rearrange(a, "b h n e -> b n (h e)")))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


def drop_padding_columns(items: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drops the leading columns that are padding in every row of ``items`` (b, n), and the same from ``aligned``.

    Exact for the causal models here, SASRec and the parallel-ID model (positions count back from the last slot and
    padding is never attended to), and the main saving on short-sequence datasets: Beauty's median user has 6 items
    in a 50-item window.
    """
    real = (items >= 0).any(dim=0)
    start = int(real.int().argmax()) if bool(real.any()) else items.shape[1] - 1
    return tuple(x[:, start:] for x in (items, *aligned))
