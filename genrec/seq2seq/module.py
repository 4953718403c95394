"""The generative recommender: a T5 encoder-decoder over semantic-ID tokens (TIGER, Rajput et al., NeurIPS 2023)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from transformers import T5Config, T5ForConditionalGeneration

from genrec.decoding import PrefixIndex, beam_search
from genrec.metrics import NDCG_KS, RECALL_KS
from genrec.seq2seq.vocab import EOS_ID, PAD_ID, CodeVocab
from genrec.training import RankingEvaluator, adamw_warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class T5Architecture:
    """Shape of the T5 encoder-decoder (defaults: TIGER §4)."""

    d_model: int = 128
    """Model width."""
    encoder_layers: int = 4
    decoder_layers: int = 4
    num_heads: int = 6
    d_kv: int = 64
    """Width of each attention head."""
    d_ff: int = 1024
    dropout: float = 0.1
    relative_attention_num_buckets: int = 32


def build_t5(vocab: CodeVocab, arch: T5Architecture) -> T5ForConditionalGeneration:
    """A randomly initialised T5 whose vocabulary is ``vocab`` (no pretrained weights)."""
    config = T5Config(
        vocab_size=vocab.size,
        d_model=arch.d_model,
        d_kv=arch.d_kv,
        d_ff=arch.d_ff,
        num_layers=arch.encoder_layers,
        num_decoder_layers=arch.decoder_layers,
        num_heads=arch.num_heads,
        dropout_rate=arch.dropout,
        relative_attention_num_buckets=arch.relative_attention_num_buckets,
        feed_forward_proj="relu",
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(config)


class GenerativeRecommender(pl.LightningModule):
    """Trains T5 to generate the next item's semantic ID and evaluates with constrained beam search.

    The vocabulary (``level_sizes``, ``n_user_buckets``) is linked from the datamodule by the CLI; the catalogue's
    codes come from the datamodule at setup and are stored in checkpoints, so a checkpoint decodes on its own.

    Args:
        level_sizes: codes per level of the tokenizer artifact (collision level included).
        n_user_buckets: hashed user tokens in the vocabulary (0: none).
        arch: T5 shape.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 0 over the run.
        beam_width: beams in evaluation (>= top_k).
        top_k: length of the ranked list evaluated (metrics up to @20 need 20).
    """

    def __init__(
        self,
        *,
        level_sizes: tuple[int, ...],
        n_user_buckets: int = 0,
        arch: T5Architecture | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 500,
        beam_width: int = 20,
        top_k: int = 20,
    ) -> None:
        super().__init__()
        if beam_width < top_k:
            raise ValueError(f"beam_width ({beam_width}) must be >= top_k ({top_k})")
        if top_k < max(*RECALL_KS, *NDCG_KS):
            raise ValueError(f"top_k must be >= {max(*RECALL_KS, *NDCG_KS)} to report every metric, got {top_k}")
        self.save_hyperparameters()
        self.vocab = CodeVocab(tuple(level_sizes), n_user_buckets)
        self.model = build_t5(self.vocab, arch or T5Architecture())
        self.item_codes: torch.Tensor | None = None
        self.index: PrefixIndex | None = None
        self.evaluator = RankingEvaluator()

    # --- catalogue ------------------------------------------------------------------------------------------
    def set_catalogue(self, item_codes: torch.Tensor) -> None:
        """Sets the catalogue's semantic IDs, (n_items, l) int64, and builds the prefix index over them."""
        if item_codes.shape[1] != self.vocab.levels:
            raise ValueError(f"catalogue codes have {item_codes.shape[1]} levels, the model {self.vocab.levels}")
        self.item_codes = item_codes.long().cpu()
        self.index = PrefixIndex(self.item_codes, self.vocab.level_sizes).to(self.device)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "item_codes"):
            self.set_catalogue(datamodule.item_codes)

    def on_fit_start(self) -> None:
        if self.index is not None:
            self.index = self.index.to(self.device)
        semantic_ids = getattr(getattr(self.trainer, "datamodule", None), "semantic_ids", None)
        if semantic_ids is not None and self.trainer.is_global_zero:
            # The run's record carries the tokenizer it stands on: its metrics, and its plot where the logger
            # takes images (W&B).
            from genrec.tokenizer.export import log_tokenizer

            log_tokenizer(self.trainer.loggers, semantic_ids)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genrec_item_codes"] = self.item_codes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("genrec_item_codes") is not None:
            self.set_catalogue(checkpoint["genrec_item_codes"])

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy over the target's code tokens; labels (b, l)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        # Not on the progress bar: showing it would read the loss back from the GPU every step.
        self.log("train/loss", loss, batch_size=len(batch["labels"]))
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(
            self.model,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            warmup_steps=self.hparams.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )

    # --- evaluation -----------------------------------------------------------------------------------------
    def recommend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, top_k: int | None = None):
        """Constrained beam search: the top-K catalogue items per user (see :func:`genrec.decoding.beam_search`)."""
        if self.index is None:
            raise RuntimeError("no catalogue: call set_catalogue(item_codes) or load a checkpoint that has one")
        return beam_search(
            self.model,
            input_ids,
            attention_mask,
            self.index,
            self.vocab,
            beam_width=self.hparams.beam_width,
            top_k=top_k or self.hparams.top_k,
        )

    def _evaluate(self, batch: dict, stage: str) -> None:
        out = self.recommend(batch["input_ids"], batch["attention_mask"])
        metrics = self.evaluator.update(stage, out.items, batch["target"], len(self.item_codes))
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "ndcg@10", on_epoch=True, on_step=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")
