"""The generative recommender: a T5 encoder-decoder over semantic-ID tokens (TIGER, Rajput et al., NeurIPS 2023)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from genrec.decoding import BeamSearchOutput, PrefixIndex
from genrec.metrics import NDCG_KS, RECALL_KS
from genrec.seq2seq.catalogue import Catalogue
from genrec.seq2seq.data import SemanticIdData
from genrec.seq2seq.encoders import EncoderOutput, HistoryEncoder, build_encoder
from genrec.seq2seq.losses import constrained_cross_entropy
from genrec.seq2seq.t5_step import t5_beam_search
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

    The vocabulary (``level_sizes``, ``n_user_buckets``, ``input_level_sizes``) is linked from the datamodule by the
    CLI; the catalogue comes from the datamodule at setup (:class:`genrec.seq2seq.catalogue.Catalogue`) and its
    codes are stored in checkpoints, so a checkpoint decodes on its own.

    Every generative system is this class plus a :class:`genrec.seq2seq.encoders.HistoryEncoder`, which says what
    the encoder reads and what training adds to the generation loss (TIGER by default; MMGRec, MSCGRec, ColaRec
    by choosing theirs in YAML). The constrained softmax is a switch that works with any of them.

    Args:
        level_sizes: codes per level of the tokenizer artifact (collision level included).
        n_user_buckets: hashed user tokens in the vocabulary (0: none).
        input_level_sizes: level sizes of each input-only modality (MSCGRec; linked from the datamodule).
        n_items: catalogue size, linked from the datamodule (read by encoders with per-item parameters).
        max_len: history length in items, linked from the datamodule (read by encoders with item positions).
        arch: T5 shape.
        encoder: the system's history encoder (default :class:`~genrec.seq2seq.encoders.TokenHistory`, TIGER); a
            ``{class_path, init_args}`` dict (as saved in a checkpoint's hyperparameters) is accepted too.
        constrained_softmax: train with the softmax of each step over the valid continuations of the target's
            prefix only, and decode with the same normalisation (MSCGRec; :mod:`genrec.seq2seq.losses`).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 0 over the run.
        beam_width: beams in evaluation (>= top_k).
        top_k: length of the ranked list evaluated (metrics up to @20 need 20).
        compile: run the training step's forward and loss through ``torch.compile`` (GPU configs: it fuses the
            small elementwise kernels between T5's matrix products); decoding stays eager.
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
        encoder: HistoryEncoder | None = None,
        constrained_softmax: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 500,
        beam_width: int = 20,
        top_k: int = 20,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if beam_width < top_k:
            raise ValueError(f"beam_width ({beam_width}) must be >= top_k ({top_k})")
        if top_k < max(*RECALL_KS, *NDCG_KS):
            raise ValueError(f"top_k must be >= {max(*RECALL_KS, *NDCG_KS)} to report every metric, got {top_k}")
        self.save_hyperparameters(ignore=["encoder"])
        self.vocab = CodeVocab(tuple(level_sizes), n_user_buckets, tuple(tuple(m) for m in input_level_sizes))
        self.model = build_t5(self.vocab, arch or T5Architecture())
        self.encoder = build_encoder(encoder)
        # Right after the T5: the encoder's parameters draw from the generator in the same order whoever built it.
        self.encoder.bind(self.model, self.vocab, n_items=n_items, max_len=max_len)
        self.hparams["encoder"] = self.encoder.spec()  # a plain dict, so checkpoints load with weights_only
        self.catalogue: Catalogue | None = None
        self.index: PrefixIndex | None = None
        self.evaluator = RankingEvaluator()
        self._compiled_losses = None

    @property
    def system_name(self) -> str:
        """The published system this configuration is, for run records and tables."""
        return self.encoder.system_name

    # --- catalogue ------------------------------------------------------------------------------------------
    @property
    def item_codes(self) -> torch.Tensor | None:
        """(n_items, l) int64 semantic IDs of the catalogue, None before :meth:`set_catalogue`."""
        return None if self.catalogue is None else self.catalogue.item_codes

    def set_catalogue(self, catalogue: Catalogue | torch.Tensor) -> None:
        """Sets the catalogue, builds the prefix index over its IDs and hands it to the encoder.

        Args:
            catalogue: the datamodule's :class:`~genrec.seq2seq.catalogue.Catalogue`, or its item codes alone,
                (n_items, l) int64, for a model that reads nothing else.
        """
        if isinstance(catalogue, torch.Tensor):
            catalogue = Catalogue(item_codes=catalogue)
        if catalogue.item_codes.shape[1] != self.vocab.levels:
            raise ValueError(f"catalogue codes have {catalogue.item_codes.shape[1]} levels, the model {self.vocab.levels}")
        sizes = self.vocab.input_level_sizes
        if len(catalogue.input_codes) != len(sizes):
            raise ValueError(f"the model reads {len(sizes)} input modalities, got codes of {len(catalogue.input_codes)}")
        for m, codes in enumerate(catalogue.input_codes):
            if codes.shape[1] != len(sizes[m]):
                raise ValueError(f"input modality {m}: codes of shape {tuple(codes.shape)}, the model reads {sizes[m]}")
        self.catalogue = dataclasses.replace(
            catalogue,
            item_codes=catalogue.item_codes.long().cpu(),
            input_codes=tuple(c.long().cpu() for c in catalogue.input_codes),
        )
        self.index = PrefixIndex(self.catalogue.item_codes, self.vocab.level_sizes, device=self.device)
        self.encoder.set_catalogue(self.catalogue, self.token_table())
        self.hparams["encoder"] = self.encoder.spec()  # encoders may size themselves from the catalogue

    def token_table(self) -> torch.Tensor:
        """(n_items + 1, tokens_per_item) encoder tokens of every item, on the model's device (last row: pad)."""
        return self.catalogue.token_table(self.vocab).to(self.device)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, SemanticIdData):
            self.set_catalogue(datamodule.catalogue)

    def on_fit_start(self) -> None:
        if self.index is not None:
            self.index = self.index.to(self.device)
        semantic_ids = None if self.catalogue is None else self.catalogue.semantic_ids
        if semantic_ids is not None and self.trainer.is_global_zero:
            # The run's record carries the tokenizer it stands on: its metrics, and its plot where the logger
            # takes images (W&B).
            from genrec.tokenizer.export import log_tokenizer

            log_tokenizer(self.trainer.loggers, semantic_ids)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genrec_item_codes"] = self.catalogue.item_codes
        checkpoint["genrec_input_codes"] = list(self.catalogue.input_codes)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("genrec_item_codes") is not None:
            codes = checkpoint["genrec_item_codes"]
            self.set_catalogue(Catalogue(item_codes=codes, input_codes=tuple(checkpoint.get("genrec_input_codes") or ())))

    # --- the parts a system changes ---------------------------------------------------------------------------
    def encode(self, batch: dict) -> EncoderOutput:
        """Encoder states ``hidden`` (b, n, d) and ``mask`` (b, n) of a batch's histories (the system's encoder)."""
        return self.encoder(self.model, batch)

    def generation_loss(self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target IDs ``labels`` (b, l) given encoder states (b, n, d)."""
        encoded = BaseModelOutput(last_hidden_state=hidden)
        if not self.hparams.constrained_softmax:
            # use_cache=False: teacher forcing needs no decoder cache (HF builds one by default).
            return self.model(encoder_outputs=encoded, attention_mask=mask, labels=labels, use_cache=False).loss
        if self.index is None:
            raise RuntimeError("constrained_softmax needs the catalogue: call set_catalogue first")
        logits = self.model(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=self.model._shift_right(labels),
            use_cache=False,
        ).logits
        return constrained_cross_entropy(logits, labels, self.index, self.vocab)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss to optimise under ``"loss"``, and any parts worth logging (the system's encoder decides)."""
        return self.encoder.losses(self.model, batch, self.encode(batch), self.generation_loss)

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy over the target's code tokens; labels (b, l)."""
        return self.training_losses({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})["loss"]

    def _step_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """:meth:`training_losses`, compiled on first use when ``compile`` is on."""
        if not self.hparams.get("compile"):
            return self.training_losses(batch)
        if self._compiled_losses is None:
            import torch._dynamo

            # A graph the compiler cannot build runs eagerly (with a logged warning) instead of ending the run.
            torch._dynamo.config.suppress_errors = True
            self._compiled_losses = torch.compile(self.training_losses)
        return self._compiled_losses(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self._step_losses(batch)
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
        # In float32 even where the trainer autocasts its steps (bf16-mixed): bf16 decoding has not passed its
        # quality gate (top-20 overlap with fp32 >= 99 %, benchmarks/bf16_overlap.py), so rankings stay fp32.
        with torch.autocast(self.device.type, enabled=False):
            hidden, mask = self.encode(batch)
            return t5_beam_search(
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
        """Top-K catalogue items per user by constrained beam search (:func:`genrec.seq2seq.t5_step.t5_beam_search`)."""
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
