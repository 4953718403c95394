"""The generative recommender: a T5 encoder-decoder over semantic-ID tokens (TIGER, Rajput et al., NeurIPS 2023)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from genrec.decoding import PrefixIndex, beam_search
from genrec.decoding.beam_search import BeamSearchOutput
from genrec.metrics import NDCG_KS, RECALL_KS
from genrec.seq2seq.losses import constrained_cross_entropy
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


Encoder = Literal["t5", "relation_aware"]


class GenerativeRecommender(pl.LightningModule):
    """Trains T5 to generate the next item's semantic ID and evaluates with constrained beam search.

    The vocabulary (``level_sizes``, ``n_user_buckets``, ``input_level_sizes``) is linked from the datamodule by the
    CLI; the catalogue's codes come from the datamodule at setup and are stored in checkpoints, so a checkpoint
    decodes on its own.

    This class is TIGER, and the shared frame of the other systems: they change what the encoder reads
    (:meth:`encode`) and what training adds to the generation loss (:meth:`training_losses`); the mechanisms below
    are switched by configuration, on any of them.

    Args:
        level_sizes: codes per level of the tokenizer artifact (collision level included).
        n_user_buckets: hashed user tokens in the vocabulary (0: none).
        input_level_sizes: level sizes of each input-only modality (MSCGRec; linked from the datamodule).
        n_items: catalogue size, linked from the datamodule (read by systems with per-item parameters).
        max_len: history length in items, linked from the datamodule (read by systems with item positions).
        arch: T5 shape.
        encoder: ``"t5"``, or ``"relation_aware"`` for MMGRec's position-free, user-gated relation-aware
            self-attention (:mod:`genrec.seq2seq.relation_attention`) in place of T5's encoder stack.
        constrained_softmax: train with the softmax of each step over the valid continuations of the target's
            prefix only, and decode with the same normalisation (MSCGRec; :mod:`genrec.seq2seq.losses`).
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
        input_level_sizes: tuple[tuple[int, ...], ...] = (),
        n_items: int | None = None,
        max_len: int | None = None,
        arch: T5Architecture | None = None,
        encoder: Encoder = "t5",
        constrained_softmax: bool = False,
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
        if encoder not in ("t5", "relation_aware"):
            raise ValueError(f"encoder must be 't5' or 'relation_aware', got {encoder!r}")
        self.save_hyperparameters()
        self.vocab = CodeVocab(tuple(level_sizes), n_user_buckets, tuple(tuple(m) for m in input_level_sizes))
        arch = arch or T5Architecture()
        self.model = build_t5(self.vocab, arch)
        if encoder == "relation_aware":
            from genrec.seq2seq.relation_attention import RelationAwareEncoder

            self.model.encoder = RelationAwareEncoder(
                embed_tokens=self.model.shared,
                vocab=self.vocab,
                num_layers=arch.encoder_layers,
                num_heads=arch.num_heads,
                d_kv=arch.d_kv,
                d_ff=arch.d_ff,
                dropout=arch.dropout,
            )
        self.item_codes: torch.Tensor | None = None
        self.input_codes: list[torch.Tensor] = []
        self.index: PrefixIndex | None = None
        self.evaluator = RankingEvaluator()

    @property
    def system_name(self) -> str:
        """The published system this configuration is, for run records and tables."""
        return "MMGRec" if self.hparams.encoder == "relation_aware" else "TIGER"

    # --- catalogue ------------------------------------------------------------------------------------------
    def set_catalogue(self, item_codes: torch.Tensor, input_codes: list[torch.Tensor] | None = None) -> None:
        """Sets the catalogue's semantic IDs and builds the prefix index over them.

        Args:
            item_codes: (n_items, l) int64, the IDs the decoder generates.
            input_codes: per input-only modality, (n_items, l_m) int64 codes the encoder reads beside the ID.
        """
        if item_codes.shape[1] != self.vocab.levels:
            raise ValueError(f"catalogue codes have {item_codes.shape[1]} levels, the model {self.vocab.levels}")
        input_codes = list(input_codes or [])
        if len(input_codes) != len(self.vocab.input_level_sizes):
            raise ValueError(
                f"the model reads {len(self.vocab.input_level_sizes)} input modalities, got codes of {len(input_codes)}"
            )
        for m, codes in enumerate(input_codes):
            if codes.shape != (item_codes.shape[0], len(self.vocab.input_level_sizes[m])):
                raise ValueError(f"input modality {m}: codes of shape {tuple(codes.shape)} for {item_codes.shape[0]} items")
        self.item_codes = item_codes.long().cpu()
        self.input_codes = [c.long().cpu() for c in input_codes]
        self.index = PrefixIndex(self.item_codes, self.vocab.level_sizes).to(self.device)

    def token_table(self) -> torch.Tensor:
        """(n_items + 1, tokens_per_item) encoder tokens of every item, on the model's device (last row: pad)."""
        from genrec.seq2seq.data import item_token_table

        return item_token_table(self.vocab, self.item_codes, self.input_codes).to(self.device)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "item_codes"):
            self.set_catalogue(datamodule.item_codes, [m.codes for m in getattr(datamodule, "input_ids", [])])

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
        checkpoint["genrec_input_codes"] = self.input_codes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("genrec_item_codes") is not None:
            self.set_catalogue(checkpoint["genrec_item_codes"], checkpoint.get("genrec_input_codes"))

    # --- the parts a system changes ---------------------------------------------------------------------------
    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states of a batch's histories.

        Returns:
            ``hidden`` (b, n, d) float and ``mask`` (b, n) int64, 1 for real positions.
        """
        mask = batch["attention_mask"]
        return self.model.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state, mask

    def generation_loss(self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target IDs ``labels`` (b, l) given encoder states (b, n, d)."""
        encoded = BaseModelOutput(last_hidden_state=hidden)
        if not self.hparams.constrained_softmax:
            return self.model(encoder_outputs=encoded, attention_mask=mask, labels=labels).loss
        if self.index is None:
            raise RuntimeError("constrained_softmax needs the catalogue: call set_catalogue first")
        logits = self.model(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=self.model._shift_right(labels)
        ).logits
        return constrained_cross_entropy(logits, labels, self.index, self.vocab)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss to optimise under ``"loss"``, and any parts worth logging."""
        hidden, mask = self.encode(batch)
        return {"loss": self.generation_loss(hidden, mask, batch["labels"])}

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy over the target's code tokens; labels (b, l)."""
        return self.training_losses({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.training_losses(batch)
        # Not on the progress bar: showing it would read the loss back from the GPU every step.
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=len(batch["labels"]))
        return losses["loss"]

    def configure_optimizers(self):
        return adamw_warmup_cosine(
            self,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            warmup_steps=self.hparams.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend_batch(self, batch: dict, *, top_k: int | None = None, beam_width: int | None = None) -> BeamSearchOutput:
        """Constrained beam search for a batch as the datamodule (or ``Recommender.encode``) lays it out."""
        if self.index is None:
            raise RuntimeError("no catalogue: call set_catalogue(item_codes) or load a checkpoint that has one")
        hidden, mask = self.encode(batch)
        return beam_search(
            self.model,
            None,
            mask,
            self.index,
            self.vocab,
            beam_width=beam_width or self.hparams.beam_width,
            top_k=top_k or self.hparams.top_k,
            encoder_hidden=hidden,
            normalize="valid" if self.hparams.constrained_softmax else "vocab",
        )

    def recommend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, top_k: int | None = None):
        """Constrained beam search: the top-K catalogue items per user (see :func:`genrec.decoding.beam_search`)."""
        return self.recommend_batch({"input_ids": input_ids, "attention_mask": attention_mask}, top_k=top_k)

    def _evaluate(self, batch: dict, stage: str) -> None:
        out = self.recommend_batch(batch)
        metrics = self.evaluator.update(stage, out.items, batch["target"], len(self.item_codes))
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "ndcg@10", on_epoch=True, on_step=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")
