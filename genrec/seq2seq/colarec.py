"""ColaRec: content-based user input, collaborative generative IDs, and the losses that align the two.

Wang et al., "Content-Based Collaborative Generation for Recommender Systems" (CIKM 2024):

* item IDs come from a collaborative model (SASRec item embeddings here) by size-constrained hierarchical k-means,
  the last code being the item's index in its leaf (``genrec.tokenizer.constrained_kmeans``);
* the encoder reads a user's history as its items' *content* (a projection of the item's text embedding) added to
  the embeddings of the item's ID tokens, one position per item;
* an item-indexing task maps an item's content alone to its ID, so content space and ID space line up;
* a contrastive loss pulls together the representations of items whose IDs share a prefix, and a BPR loss ranks
  the next item above a random one by the dot product of pooled encoder states;
* total loss ``generation_weight * (recommendation + indexing) + bpr_weight * BPR + contrastive_weight * CL``
  (paper: 0.08, 1, 0.1).
"""

from __future__ import annotations

import torch
from einops import reduce
from torch import nn
from transformers import T5ForConditionalGeneration

from genrec.seq2seq.catalogue import Catalogue
from genrec.seq2seq.encoders import EncoderOutput, GenerationLoss, HistoryEncoder
from genrec.seq2seq.losses import prefix_contrastive_loss
from genrec.seq2seq.vocab import CodeVocab
from genrec.training import bpr_loss


class ContentHistory(HistoryEncoder):
    """ColaRec's encoder and losses (see the module docstring).

    Args:
        content_dim: width of the item content features; None to take it from the catalogue's ``content`` when
            the model receives it (it is then saved with the hyperparameters, so checkpoints rebuild the same model).
        generation_weight: weight of the two generation losses (recommendation and item indexing).
        bpr_weight: weight of the BPR loss on pooled encoder states.
        contrastive_weight: weight of the shared-prefix contrastive loss.
        temperature: contrastive softmax temperature.
        prefix_len: codes two IDs must share to be contrastive positives.
    """

    system_name = "ColaRec"

    def __init__(
        self,
        *,
        content_dim: int | None = None,
        generation_weight: float = 0.08,
        bpr_weight: float = 1.0,
        contrastive_weight: float = 0.1,
        temperature: float = 0.1,
        prefix_len: int = 1,
    ) -> None:
        super().__init__(
            content_dim=content_dim, generation_weight=generation_weight, bpr_weight=bpr_weight,
            contrastive_weight=contrastive_weight, temperature=temperature, prefix_len=prefix_len,
        )
        if min(generation_weight, bpr_weight, contrastive_weight) < 0 or generation_weight == 0:
            raise ValueError("loss weights must be >= 0, and generation_weight > 0")
        self.generation_weight, self.bpr_weight, self.contrastive_weight = generation_weight, bpr_weight, contrastive_weight
        self.temperature, self.prefix_len = temperature, prefix_len
        self.content_proj: nn.Linear | None = None
        self._table: torch.Tensor | None = None

    def bind(self, t5: T5ForConditionalGeneration, vocab: CodeVocab, *, n_items: int | None, max_len: int | None) -> None:
        if n_items is None:
            raise ValueError("ContentHistory needs n_items (linked from the datamodule by the CLI)")
        if not 1 <= self.prefix_len < vocab.levels:
            raise ValueError(f"prefix_len must be in [1, {vocab.levels}), got {self.prefix_len}")
        self.vocab, self.n_items, self.d_model = vocab, n_items, t5.config.d_model
        if self.options["content_dim"] is not None:
            self._build(self.options["content_dim"], t5.device)

    def _build(self, content_dim: int, device: torch.device) -> None:
        if content_dim < 1:
            raise ValueError(f"content_dim must be >= 1, got {content_dim}")
        self.options["content_dim"] = content_dim
        # Stored with the weights: a checkpoint decodes without the feature files.
        self.register_buffer("item_content", torch.zeros(self.n_items, content_dim, device=device))
        self.content_proj = nn.Linear(content_dim, self.d_model, device=device)
        # Unit-variance outputs for unit-norm inputs, the scale of T5's token embeddings.
        nn.init.normal_(self.content_proj.weight, std=1.0)
        nn.init.zeros_(self.content_proj.bias)

    def set_catalogue(self, catalogue: Catalogue, token_table: torch.Tensor) -> None:
        self._table = token_table
        content = catalogue.content
        if content is None:
            if self.content_proj is None:
                raise ValueError("ContentHistory needs item content: set data.init_args.content_sources")
            return  # a checkpoint's catalogue: the content came with the weights
        if self.content_proj is None:
            self._build(int(content.shape[1]), token_table.device)
        if content.shape != self.item_content.shape:
            raise ValueError(f"catalogue content {tuple(content.shape)} != model {tuple(self.item_content.shape)}")
        self.item_content.copy_(content)

    def _tokens(self) -> torch.Tensor:
        if self._table.device != self.item_content.device:
            self._table = self._table.to(self.item_content.device)
        return self._table

    def embed_items(self, t5: T5ForConditionalGeneration, items: torch.Tensor, *, with_id: bool) -> torch.Tensor:
        """(...) item indices (-1: none) -> (..., d) content projection, plus the ID's token embeddings."""
        x = self.content_proj(self.item_content[items.clamp(min=0)])
        if with_id:
            x = x + reduce(t5.shared(self._tokens()[items]), "... l d -> ... d", "sum")
        return x * (items >= 0)[..., None]

    def forward(self, t5: T5ForConditionalGeneration, batch: dict) -> EncoderOutput:
        history = batch["history"]
        mask = (history >= 0).long()
        hidden = t5.encoder(inputs_embeds=self.embed_items(t5, history, with_id=True), attention_mask=mask)
        return EncoderOutput(hidden.last_hidden_state, mask)

    def encode_items(self, t5: T5ForConditionalGeneration, items: torch.Tensor) -> torch.Tensor:
        """Encoder states (b, 1, d) of items read from their content alone (the item-indexing input)."""
        x = self.embed_items(t5, items[:, None], with_id=False)
        return t5.encoder(inputs_embeds=x, attention_mask=torch.ones_like(items)[:, None]).last_hidden_state

    def losses(
        self, t5: T5ForConditionalGeneration, batch: dict, encoded: EncoderOutput, generation_loss: GenerationLoss
    ) -> dict[str, torch.Tensor]:
        hidden, mask = encoded
        recommendation = generation_loss(hidden, mask, batch["labels"])
        target = batch["target"]
        negative = torch.randint(0, self.n_items, target.shape, device=target.device)
        items = torch.cat([target, negative])
        item_hidden = self.encode_items(t5, items)
        item_labels = self._tokens()[items, : self.vocab.levels]
        indexing = generation_loss(item_hidden, torch.ones_like(items)[:, None], item_labels)
        user_rep = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (b, d) mean over the history
        item_rep = item_hidden[:, 0]
        scale = hidden.shape[-1] ** -0.5
        pos, neg = (user_rep * item_rep[: len(target)]).sum(-1), (user_rep * item_rep[len(target) :]).sum(-1)
        bpr = bpr_loss(pos * scale, neg * scale)
        contrastive = prefix_contrastive_loss(
            item_rep, self.vocab.decode(item_labels), prefix_len=self.prefix_len, temperature=self.temperature
        )
        loss = (
            self.generation_weight * (recommendation + indexing) + self.bpr_weight * bpr
            + self.contrastive_weight * contrastive
        )
        return {"loss": loss, "recommendation": recommendation, "indexing": indexing, "bpr": bpr, "contrastive": contrastive}
