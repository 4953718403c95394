"""Pieces every genrec LightningModule shares: the optimiser schedule, the BPR loss, the leave-one-out evaluator and
the callback that keeps ``last.ckpt`` the last model."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import MeanMetric

from genrec.metrics import NDCG_KS, RECALL_KS, list_errors, ranking_metrics


def adamw_warmup_cosine(
    model: nn.Module, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int
) -> dict:
    """AdamW (no decay on biases and norms) with linear warm-up then cosine decay to 0, stepped every batch.

    Returns:
        Lightning's ``configure_optimizers`` dict.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    total = max(1, total_steps)
    warmup = min(warmup_steps, total // 2)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(positive - negative)`` over matching score tensors (Rendle et al., UAI 2009)."""
    return -F.logsigmoid(positive - negative).mean()


class RankingEvaluator(nn.Module):
    """Per-stage running means of Recall@K, NDCG@K and the invalid / repeated rates of top-K lists.

    Means are torchmetrics ``MeanMetric``s weighted by users, so under DDP (with unrepeated evaluation shards) the
    epoch value counts every user exactly once. Log the metrics that :meth:`update` returns with ``self.log``.
    """

    names = tuple(f"recall@{k}" for k in RECALL_KS) + tuple(f"ndcg@{k}" for k in NDCG_KS) + ("invalid", "repeated")

    def __init__(self, stages: tuple[str, ...] = ("val", "test")) -> None:
        super().__init__()
        # ModuleDict keys may not hold "@".
        self.means = nn.ModuleDict(
            {stage: nn.ModuleDict({n.replace("@", "_at_"): MeanMetric() for n in self.names}) for stage in stages}
        )

    def update(self, stage: str, items: torch.Tensor, target: torch.Tensor, n_items: int) -> dict[str, MeanMetric]:
        """Adds a batch of ranked lists (b, k) and targets (b,); returns name -> metric object to log."""
        values = ranking_metrics(items, target)
        values.update(list_errors(items, n_items))
        out = {}
        for name, per_user in values.items():
            metric = self.means[stage][name.replace("@", "_at_")]
            metric.update(per_user)
            out[name] = metric
        return out


class LastCheckpoint(Callback):
    """Keeps ``last.ckpt`` the model as it is now: written after every training epoch and when fit ends.

    Lightning's ``ModelCheckpoint(save_last=True)`` beside a ``monitor`` writes ``last.ckpt`` only when it saves a
    monitored checkpoint too (Lightning 2.6), so with validation every few epochs it can hold an earlier step, and a
    rerun into the same folder writes ``last-v1.ckpt`` beside a stale ``last.ckpt``. This callback writes to a
    temporary file and renames it over ``last.ckpt``, so the file is always whole and always the latest step, also
    for a resumed or repeated run. It goes into the folder of the trainer's ``ModelCheckpoint`` (the best
    checkpoints' folder), else ``<default_root_dir>/checkpoints``.

    Args:
        filename: the name of the file in that folder.
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        super().__init__()
        if not filename.endswith(".ckpt") or "/" in filename:
            raise ValueError(f"filename must be a bare name ending in .ckpt, got {filename!r}")
        self.filename = filename
        self._saved_step: int | None = None

    def path(self, trainer: pl.Trainer) -> Path:
        """Where ``last.ckpt`` goes for this trainer."""
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(folder or Path(trainer.default_root_dir) / "checkpoints") / self.filename

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == self._saved_step or getattr(trainer, "fast_dev_run", False):
            return
        path = self.path(trainer)
        partial = path.with_name(f".{path.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)  # every rank calls it; rank zero writes
        if trainer.is_global_zero:
            os.replace(partial, path)
        trainer.strategy.barrier("genrec-last-checkpoint")
        self._saved_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)  # a run stopped by max_steps mid-epoch
