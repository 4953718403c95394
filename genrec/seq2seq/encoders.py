"""What changes between generative systems: how a batch's histories become encoder states, and what training adds.

Every system in genrec is :class:`genrec.seq2seq.module.GenerativeRecommender` (one T5 encoder-decoder, one
decoder, one constrained beam search) plus one :class:`HistoryEncoder`, chosen in YAML::

    model:
      class_path: genrec.seq2seq.module.GenerativeRecommender
      init_args:
        encoder:
          class_path: genrec.seq2seq.mscgrec.MultimodalHistory
          init_args: {modality_dropout: 0.2}

A history encoder is built in two steps, so that the YAML names only its own options: the constructor takes
those options and creates no parameters; :meth:`HistoryEncoder.bind` then creates its parameters from the T5 and
the vocabulary, right after the T5 itself (same initialisation order, whoever built the object). The model hands
it the catalogue (:class:`genrec.seq2seq.catalogue.Catalogue`) before training and decoding.

Systems here: :class:`TokenHistory` (TIGER, the default), :class:`RelationAwareHistory` (MMGRec),
:class:`genrec.seq2seq.mscgrec.MultimodalHistory` (MSCGRec), :class:`genrec.seq2seq.colarec.ContentHistory`
(ColaRec).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import nn
from transformers import T5ForConditionalGeneration

from genrec.seq2seq.catalogue import Catalogue
from genrec.seq2seq.data import token_items
from genrec.seq2seq.vocab import CodeVocab

GenerationLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(hidden (b, n, d), mask (b, n), labels (b, l)) -> loss``: the model's teacher-forced loss of target IDs."""


class EncoderOutput(NamedTuple):
    """Encoder states of a batch: ``hidden`` (b, n, d) float, ``mask`` (b, n) int64 with 1 for real positions."""

    hidden: torch.Tensor
    mask: torch.Tensor


class HistoryEncoder(nn.Module):
    """A system's input side (module docstring). Subclasses override what differs from TIGER, nothing else.

    Args:
        **options: the subclass's constructor arguments, recorded so the model saves them with its hyperparameters.
    """

    system_name = "TIGER"
    """The published system this encoder makes of the model, for run records and tables."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def spec(self) -> dict:
        """``{class_path, init_args}``: what rebuilds this encoder (saved in the model's hyperparameters)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": dict(self.options)}

    def bind(self, t5: T5ForConditionalGeneration, vocab: CodeVocab, *, n_items: int | None, max_len: int | None) -> None:
        """Creates the parameters that depend on the model; called once, right after the T5 is built."""

    def set_catalogue(self, catalogue: Catalogue, token_table: torch.Tensor) -> None:
        """Receives the catalogue, and its ``(n_items + 1, tokens_per_item)`` token table (last row: pad)."""

    def forward(self, t5: T5ForConditionalGeneration, batch: dict) -> EncoderOutput:
        """T5's encoder over the batch's ``input_ids`` / ``attention_mask`` (TIGER)."""
        mask = batch["attention_mask"]
        return EncoderOutput(t5.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state, mask)

    def losses(
        self, t5: T5ForConditionalGeneration, batch: dict, encoded: EncoderOutput, generation_loss: GenerationLoss
    ) -> dict[str, torch.Tensor]:
        """The training loss under ``"loss"``, plus any parts worth logging. Default: next-item generation alone."""
        return {"loss": generation_loss(encoded.hidden, encoded.mask, batch["labels"])}


class TokenHistory(HistoryEncoder):
    """TIGER (Rajput et al., NeurIPS 2023): the history's code tokens through T5's own encoder.

    Args:
        item_embeddings: also give every catalogue item a learned embedding, added to each of its history tokens
            (an item-ID embedding beside the codes, on the input side only; what is generated is still the semantic
            ID). Zero at initialisation, so the model starts as plain TIGER and learns per-item corrections where
            the data has them; costs ``n_items * d_model`` parameters and no attention FLOPs.
        pool_items: give the encoder one position per history item instead of one per code: the item's token
            embeddings (each level has its own tokens, so the sum keeps which code sits at which level) are
            summed and scaled by ``1 / sqrt(tokens_per_item)``. The encoder reads ``tokens_per_item`` times fewer
            positions, so it costs that much less per layer (more in attention); T5's relative positions then
            count items. The user token, if any, stays a position of its own.
    """

    def __init__(self, item_embeddings: bool = False, pool_items: bool = False) -> None:
        super().__init__(item_embeddings=item_embeddings, pool_items=pool_items)
        self.item_embedding: nn.Embedding | None = None

    @property
    def system_name(self) -> str:  # type: ignore[override]
        """``TIGER``, with the levers in use named after it (run records tell the recipe from the paper's model)."""
        levers = [name for name, on in (("pooled items", self.options["pool_items"]),
                                        ("item IDs", self.options["item_embeddings"])) if on]
        return f"TIGER ({', '.join(levers)})" if levers else "TIGER"

    def bind(self, t5: T5ForConditionalGeneration, vocab: CodeVocab, *, n_items: int | None, max_len: int | None) -> None:
        self.vocab = vocab
        if self.options["item_embeddings"]:
            if not n_items:
                raise ValueError("item_embeddings needs the catalogue size n_items (linked from the datamodule)")
            self.item_embedding = nn.Embedding(n_items, t5.config.d_model)
            nn.init.zeros_(self.item_embedding.weight)

    def forward(self, t5: T5ForConditionalGeneration, batch: dict) -> EncoderOutput:
        if self.item_embedding is None and not self.options["pool_items"]:
            return super().forward(t5, batch)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = t5.shared(input_ids)
        if self.item_embedding is not None:
            if "history" not in batch:
                raise ValueError("item_embeddings reads the batch's 'history' (item indices); this batch has none")
            items = token_items(batch["history"], vocab=self.vocab, width=input_ids.shape[1])
            embeds = embeds + self.item_embedding(items.clamp(min=0)) * (items >= 0).unsqueeze(-1)
        if self.options["pool_items"]:
            embeds, mask = self.pool(embeds, mask)
        return EncoderOutput(t5.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask)

    def pool(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, [1 +] n * p, d) token embeddings and mask -> (b, [1 +] n, d) item embeddings and mask."""
        lead = 1 if self.vocab.n_user_buckets else 0
        p = self.vocab.tokens_per_item
        width = embeds.shape[1] - lead
        if width % p:
            raise ValueError(f"{width} history tokens are not whole items of {p} tokens (was a batch trimmed mid-item?)")
        items = rearrange(embeds[:, lead:], "b (n p) d -> b n p d", p=p).sum(2) * p**-0.5
        item_mask = mask[:, lead::p]
        return torch.cat([embeds[:, :lead], items], dim=1), torch.cat([mask[:, :lead], item_mask], dim=1)


class RelationAwareHistory(HistoryEncoder):
    """MMGRec's encoder: position-free, user-gated relation-aware self-attention in place of T5's encoder stack.

    See :mod:`genrec.seq2seq.relation_attention`. The stack replaces ``t5.encoder``, so the token path is TIGER's.
    """

    system_name = "MMGRec"

    def __init__(self) -> None:
        super().__init__()

    def bind(self, t5: T5ForConditionalGeneration, vocab: CodeVocab, *, n_items: int | None, max_len: int | None) -> None:
        from genrec.seq2seq.relation_attention import RelationAwareEncoder

        config = t5.config
        t5.encoder = RelationAwareEncoder(
            embed_tokens=t5.shared,
            vocab=vocab,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            d_kv=config.d_kv,
            d_ff=config.d_ff,
            dropout=config.dropout_rate,
        )


def build_encoder(encoder: HistoryEncoder | dict | None) -> HistoryEncoder:
    """An encoder object from itself, from its :meth:`HistoryEncoder.spec` (a loaded checkpoint), or TIGER's."""
    if encoder is None:
        return TokenHistory()
    if isinstance(encoder, HistoryEncoder):
        return encoder
    if not isinstance(encoder, dict) or "class_path" not in encoder:
        raise ValueError(f"encoder must be a HistoryEncoder or a {{class_path, init_args}} dict, got {encoder!r}")
    module_name, _, name = encoder["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, HistoryEncoder)):
        raise ValueError(f"encoder class_path {encoder['class_path']!r} is not a genrec HistoryEncoder")
    return cls(**(encoder.get("init_args") or {}))
