"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence, scored against the catalogue.

Item embedding + learned positional embedding, pre-LN causal self-attention blocks, and the item embedding table
shared as the output layer. Trained with full-softmax cross-entropy by default (Klenitskiy & Vasilev, RecSys 2023,
showed it beats the original one-negative BCE by a wide margin), or with sampled softmax / BCE.

The item embedding table holds a padding row first: dense item ``i`` is row ``i + 1``. :meth:`SASRec.item_vectors`
and the exported ``.npy`` drop that row, so row ``i`` of the export is item ``i``, as ``NpyFeatures`` expects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.causal import CausalBlock, causal_mask, drop_padding_columns
from genrec.metrics import NDCG_KS, RECALL_KS
from genrec.training import RankingEvaluator, adamw_warmup_cosine

log = logging.getLogger(__name__)

Loss = Literal["ce", "sampled", "bce"]
EMBEDDINGS_FILE = "item_embeddings.npy"


class SASRec(nn.Module):
    """The SASRec network: item sequences in, one hidden state per position out.

    Args:
        n_items: catalogue size; inputs are dense indices in [0, n_items) and -1 for padding.
        max_len: longest input sequence (size of the positional table).
        d_model: embedding and hidden width.
        n_blocks: self-attention blocks.
        n_heads: attention heads per block.
        dropout: dropout on embeddings, attention weights and block outputs.
    """

    def __init__(
        self, *, n_items: int, max_len: int, d_model: int = 64, n_blocks: int = 2, n_heads: int = 1, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if n_items < 2 or max_len < 1:
            raise ValueError(f"need n_items >= 2 and max_len >= 1, got n_items={n_items}, max_len={max_len}")
        self.n_items, self.max_len = n_items, max_len
        self.item_embedding = nn.Embedding(n_items + 1, d_model, padding_idx=0)  # row 0 is padding, item i is i + 1
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(d_model=d_model, n_heads=n_heads, dropout=dropout) for _ in range(n_blocks))
        self.final_norm = nn.LayerNorm(d_model)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def item_vectors(self) -> torch.Tensor:
        """(n_items, d) embedding of every dense item index (the padding row dropped)."""
        return self.item_embedding.weight[1:]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden states of a left-padded batch.

        Args:
            items: (b, n) int64 dense item indices, -1 for padding, n <= max_len; the most recent item is last.

        Returns:
            (b, n, d) float; position t depends only on items[:, :t + 1]. Padding positions hold values to ignore.
        """
        n = items.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequences of {n} items are longer than max_len={self.max_len}")
        real = items >= 0  # (b, n)
        # Positions count back from the last slot, so the most recent item always has the same position.
        positions = torch.arange(self.max_len - n, self.max_len, device=items.device)
        x = self.item_embedding(items + 1) + self.position_embedding(positions)
        x = self.dropout(x * real.unsqueeze(-1))
        allowed = causal_mask(real)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)


def next_item_loss(
    hidden: torch.Tensor, labels: torch.Tensor, items: torch.Tensor, *, loss: Loss, negatives: int = 256
) -> torch.Tensor:
    """Mean next-item loss over the labelled positions.

    Args:
        hidden: (b, n, d) hidden states.
        labels: (b, n) int64 next item at each position, -1 for none.
        items: (n_items, d) output item embeddings.
        loss: ``"ce"`` softmax over the whole catalogue; ``"sampled"`` softmax over the target and ``negatives``
            uniform items shared by the batch (uniform proposals need no logQ correction; a negative equal to the
            target is masked out); ``"bce"`` the original SASRec loss, the target against one uniform item that is
            not the target.
        negatives: negatives per batch for ``"sampled"``.

    Returns:
        () float.
    """
    keep = labels >= 0
    h, y = hidden[keep], labels[keep]  # (p, d), (p,)
    n_items = items.shape[0]
    if loss == "ce":
        return F.cross_entropy(h @ items.T, y)
    positive = (h * items[y]).sum(-1)  # (p,)
    if loss == "sampled":
        sampled = torch.randint(n_items, (negatives,), device=h.device)
        negative = (h @ items[sampled].T).masked_fill(sampled.unsqueeze(0) == y.unsqueeze(1), float("-inf"))
        logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # (p, 1 + negatives); the target is column 0
        return F.cross_entropy(logits, torch.zeros_like(y))
    if loss == "bce":
        # Adding 1..n_items-1 modulo n_items draws uniformly among the items other than the target.
        other = (y + torch.randint(1, n_items, y.shape, device=y.device)) % n_items
        negative = (h * items[other]).sum(-1)
        return F.softplus(-positive).mean() + F.softplus(negative).mean()
    raise ValueError(f"loss must be one of {get_args(Loss)}, got {loss!r}")


@dataclass
class SASRecArchitecture:
    """Shape of the SASRec network (defaults: the paper's Beauty setting, with dropout raised for CE training)."""

    d_model: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2


class SASRecRecommender(pl.LightningModule):
    """Trains SASRec on next-item prediction and evaluates by ranking the full catalogue.

    Every item is scored for every user (no sampled evaluation) and the top ``top_k`` are compared with the target
    by :func:`genrec.metrics.ranking_metrics`, under the same metric names as the generative recommender. Items
    already in the user's history are *not* removed from the ranking: in this leave-one-out protocol a user may
    interact with an item again, and the generative model is not filtered either.

    ``n_items`` and ``max_len`` are linked from the datamodule by the CLI. When ``fit`` ends, the item embeddings
    of the best checkpoint are written to ``<default_root_dir>/item_embeddings.npy``.

    Args:
        n_items: catalogue size.
        max_len: history length in items.
        arch: network shape.
        loss: ``"ce"``, ``"sampled"`` or ``"bce"`` (see :func:`next_item_loss`).
        negatives: uniform negatives per batch for ``loss="sampled"``.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay on matrices (embeddings included), none on biases and norms.
        warmup_steps: linear warm-up, then cosine decay to 0 over the run.
        top_k: length of the ranked list evaluated (metrics up to @20 need 20).
    """

    def __init__(
        self,
        *,
        n_items: int,
        max_len: int = 50,
        arch: SASRecArchitecture | None = None,
        loss: Loss = "ce",
        negatives: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        top_k: int = 20,
    ) -> None:
        super().__init__()
        if loss not in get_args(Loss):
            raise ValueError(f"loss must be one of {get_args(Loss)}, got {loss!r}")
        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        if not max(*RECALL_KS, *NDCG_KS) <= top_k <= n_items:
            raise ValueError(f"top_k must be in [{max(*RECALL_KS, *NDCG_KS)}, n_items={n_items}], got {top_k}")
        self.save_hyperparameters()
        arch = arch or SASRecArchitecture()
        self.model = SASRec(
            n_items=n_items, max_len=max_len, d_model=arch.d_model, n_blocks=arch.n_blocks, n_heads=arch.n_heads,
            dropout=arch.dropout,
        )
        self.evaluator = RankingEvaluator()

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-item loss of a batch; items and labels (b, n) int64, -1 for padding / no label."""
        items, labels = drop_padding_columns(items, labels)
        hidden = self.model(items)
        return next_item_loss(hidden, labels, self.model.item_vectors(), loss=self.hparams.loss,
                              negatives=self.hparams.negatives)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch["input"], batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input"]))
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
    @torch.no_grad()
    def recommend(self, history: torch.Tensor, *, top_k: int | None = None) -> torch.Tensor:
        """The top-K items of every user, scoring the whole catalogue (history items included).

        Args:
            history: (b, n) int64 dense item indices, left-padded with -1.

        Returns:
            (b, top_k) int64 item indices, best first.
        """
        (history,) = drop_padding_columns(history)
        last = self.model(history)[:, -1]  # (b, d): left padding puts the most recent item last
        scores = last @ self.model.item_vectors().T  # (b, n_items)
        return scores.topk(top_k or self.hparams.top_k, dim=1).indices

    def _evaluate(self, batch: dict, stage: str) -> None:
        items = self.recommend(batch["history"])
        metrics = self.evaluator.update(stage, items, batch["target"], self.hparams.n_items)
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "ndcg@10", on_epoch=True, on_step=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # --- collaborative features -----------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        out = Path(self.trainer.default_root_dir) / EMBEDDINGS_FILE
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") or None
        if best:
            export_item_embeddings(best, out)
        else:
            log.warning("no best checkpoint: exporting the item embeddings of the final weights")
            save_embeddings(self.model.item_vectors(), out)


def save_embeddings(vectors: torch.Tensor, out_path: str | Path) -> Path:
    """Writes (n_items, d) vectors as float32 ``.npy`` (row i = dense item i); creates the folder."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vectors.detach().float().cpu().numpy())
    log.info("wrote %s item embeddings of width %s to %s", vectors.shape[0], vectors.shape[1], out)
    return out


def export_item_embeddings(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Writes the (n_items, d) item embedding table of a SASRec checkpoint to ``out_path`` (.npy, float32).

    Row ``i`` is dense item ``i`` (the padding row is dropped), ready for
    ``genrec.features.NpyFeatures(path=out_path)``.
    """
    model = SASRecRecommender.load_from_checkpoint(ckpt_path, map_location="cpu")
    return save_embeddings(model.model.item_vectors(), out_path)
