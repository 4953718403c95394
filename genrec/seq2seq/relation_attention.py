"""MMGRec's encoder: relation-aware self-attention over a history read as a set of items.

MMGRec (Liu et al., 2024, §3.3) drops position embeddings from the encoder and instead lets every pair of history
elements carry a *relation* term in attention, with the attention projections modulated by the user. Our reading,
in the style of relation-aware attention (Shaw et al., NAACL 2018):

* every encoder token is a code of one history item (or the user token); the relation ``c(i, j)`` between two
  tokens says whether they belong to the same item and which code positions they hold, nothing about *where* in the
  history the items are;
* scores are ``q_i . (k_j + rK[c(i, j)]) / sqrt(e)`` and outputs ``sum_j a_ij (v_j + rV[c(i, j)])``;
* queries, keys and values each get an extra projection scaled by a sigmoid gate computed from the user embedding
  by a small MLP: ``q = Wq x + g_q(u) * Wq' x`` (and k, v alike), so the same history is read differently per user.

With no positional signal, permuting the history's items permutes the encoder states the same way and leaves the
decoder's output unchanged (tested). The module replaces ``T5ForConditionalGeneration.encoder``: it takes the same
``input_ids`` / ``attention_mask`` and returns the same output type, so training, ``score_items`` and beam search
run unchanged on top of it.

Token layout (from :func:`genrec.seq2seq.data.encode_histories`): an optional user token first, then history items
left-padded in blocks of ``vocab.tokens_per_item`` tokens. Code tokens are never pad, so blocks are aligned from the
right end whatever left columns a batch trims; item slot and code position are read off that alignment.

Shapes: ``b`` users, ``t`` tokens, ``h`` heads, ``e`` head width, ``d`` model width, ``c`` relation classes.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from genrec.seq2seq.vocab import CodeVocab, token_roles


def relation_classes(slot: torch.Tensor, code: torch.Tensor, user: torch.Tensor, per_item: int) -> torch.Tensor:
    """Relation class of every token pair, (b, t, t) int64 in ``[0, n_relations(per_item))``.

    Classes: same item ``(code_i, code_j)``; different items ``(code_i, code_j)``; user -> token ``code_j``;
    token -> user ``code_i``; user -> user. None depends on which slots the items occupy, only on their equality.
    """
    p = per_item
    same = slot[:, :, None] == slot[:, None, :]
    pair = code[:, :, None] * p + code[:, None, :]
    rel = torch.where(same, pair, p * p + pair)
    user_row = 2 * p * p + code[:, None, :].expand_as(rel)
    user_col = 2 * p * p + p + code[:, :, None].expand_as(rel)
    rel = torch.where(user[:, :, None], user_row, rel)
    rel = torch.where(user[:, None, :], user_col, rel)
    return torch.where(user[:, :, None] & user[:, None, :], torch.full_like(rel, 2 * p * p + 2 * p), rel)


def n_relations(per_item: int) -> int:
    return 2 * per_item * per_item + 2 * per_item + 1


class UserGates(nn.Module):
    """Sigmoid gates for the extra query / key / value projections, from the user embedding (a small MLP)."""

    def __init__(self, d_model: int, width: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, width), nn.ReLU(), nn.Linear(width, 3 * out))

    def forward(self, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, d) user embedding -> three (b, 1, out) gates in (0, 1)."""
        return torch.sigmoid(self.net(user))[:, None].chunk(3, dim=-1)


class RelationAwareAttention(nn.Module):
    """Multi-head self-attention with relation embeddings and user-gated extra projections (module docstring)."""

    def __init__(self, *, d_model: int, num_heads: int, d_kv: int, relations: int, dropout: float) -> None:
        super().__init__()
        inner = num_heads * d_kv
        self.heads, self.d_kv = num_heads, d_kv
        self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        self.qkv_user = nn.Linear(d_model, 3 * inner, bias=False)  # the extra projections the user gates scale
        self.gates = UserGates(d_model, max(8, d_model // 4), inner)
        self.rel_k = nn.Parameter(torch.randn(relations, num_heads, d_kv) * d_kv**-0.5)
        self.rel_v = nn.Parameter(torch.zeros(relations, num_heads, d_kv))
        self.out = nn.Linear(inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, user: torch.Tensor, rel: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (b, t, d) normalised token states.
            user: (b, d) user embedding.
            rel: (b, t, t) int64 relation classes.
            key_mask: (b, t) bool, True for real tokens.

        Returns:
            (b, t, d) attention output (before the residual).
        """
        g_q, g_k, g_v = self.gates(user)  # (b, 1, inner) each
        base_q, base_k, base_v = self.qkv(x).chunk(3, dim=-1)
        extra_q, extra_k, extra_v = self.qkv_user(x).chunk(3, dim=-1)
        q, k, v = (
            rearrange(a + g * e, "b t (h e) -> b h t e", h=self.heads)
            for a, g, e in ((base_q, g_q, extra_q), (base_k, g_k, extra_k), (base_v, g_v, extra_v))
        )
        b, h, t, _ = q.shape
        rel_h = rel[:, None].expand(b, h, t, t)
        # q_i . rK[c(i, j)]: score every query against every relation once, then pick each pair's class.
        q_rel = torch.einsum("bhte,che->bhtc", q, self.rel_k).gather(3, rel_h)  # (b, h, t, t)
        scores = (torch.matmul(q, k.transpose(-1, -2)) + q_rel) * self.d_kv**-0.5
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = self.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        out = torch.matmul(weights, v)
        # sum_j a_ij rV[c(i, j)] = sum_c (sum of a_ij over the pairs of class c) rV[c].
        per_class = weights.new_zeros(b, h, t, self.rel_v.shape[0]).scatter_add_(3, rel_h, weights)
        out = out + torch.einsum("bhtc,che->bhte", per_class, self.rel_v)
        return self.out(rearrange(out, "b h t e -> b t (h e)"))


class RelationAwareLayer(nn.Module):
    """Pre-norm block: relation-aware self-attention, then a ReLU feed-forward, each with a residual."""

    def __init__(self, *, d_model: int, num_heads: int, d_kv: int, d_ff: int, relations: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = RelationAwareAttention(
            d_model=d_model, num_heads=num_heads, d_kv=d_kv, relations=relations, dropout=dropout
        )
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, user, rel, key_mask):
        x = x + self.dropout(self.attention(self.norm1(x), user, rel, key_mask))
        return x + self.dropout(self.ff(self.norm2(x)))


class RelationAwareEncoder(nn.Module):
    """A stand-in for T5's encoder stack with relation-aware, user-gated attention and no positions.

    Args:
        embed_tokens: the model's shared token embedding (T5's ``shared``), so encoder and decoder tie as in T5.
        vocab: the token vocabulary (user token range, tokens per item).
        num_layers: encoder layers.
        num_heads: attention heads.
        d_kv: head width.
        d_ff: feed-forward width.
        dropout: dropout rate.
    """

    def __init__(
        self,
        *,
        embed_tokens: nn.Embedding,
        vocab: CodeVocab,
        num_layers: int,
        num_heads: int,
        d_kv: int,
        d_ff: int,
        dropout: float,
    ) -> None:
        super().__init__()
        d_model = embed_tokens.embedding_dim
        self.embed_tokens = embed_tokens
        self.vocab = vocab
        relations = n_relations(vocab.tokens_per_item)
        self.layers = nn.ModuleList(
            RelationAwareLayer(
                d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff, relations=relations, dropout=dropout
            )
            for _ in range(num_layers)
        )
        # The user embedding when the vocabulary has no user tokens: gates are then the same for everyone.
        self.default_user = nn.Parameter(torch.zeros(d_model))
        self.final_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.embed_tokens = embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **unused,
    ) -> BaseModelOutput:
        """Encodes ``input_ids`` (b, t) with ``attention_mask`` (b, t); returns states (b, t, d)."""
        if input_ids is None:
            raise ValueError("RelationAwareEncoder reads token roles off input_ids; inputs_embeds alone is not enough")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        key_mask = attention_mask.bool()
        slot, code, user_flag = token_roles(input_ids, self.vocab)
        rel = relation_classes(slot, code, user_flag, self.vocab.tokens_per_item)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.vocab.n_user_buckets:
            user = (x * user_flag[..., None]).sum(1)  # (b, d): the one user token's embedding
        else:
            user = self.default_user.expand(x.shape[0], -1)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, user, rel, key_mask)
        x = self.dropout(self.final_norm(x))
        return BaseModelOutput(last_hidden_state=x)


def permute_items(input_ids: torch.Tensor, perm: torch.Tensor, vocab: CodeVocab) -> torch.Tensor:
    """Reorders the history items of fully populated rows by ``perm`` (tests and diagnostics).

    Args:
        input_ids: (b, [1 +] n * tokens_per_item) tokens with every item slot real.
        perm: (n,) permutation of item slots (in input order).

    Returns:
        Same shape, the item blocks permuted; a leading user token stays first.
    """
    lead = input_ids.shape[1] % vocab.tokens_per_item
    head, items = input_ids[:, :lead], input_ids[:, lead:]
    blocks = rearrange(items, "b (n p) -> b n p", p=vocab.tokens_per_item)[:, perm]
    return torch.cat([head, rearrange(blocks, "b n p -> b (n p)")], dim=1)
