"""Pieces every genrec LightningModule shares: the optimiser schedule, the BPR loss, the leave-one-out evaluator, the
callback that keeps ``last.ckpt`` the last model, and the one that fits a run into a wall-clock budget."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from torch import nn
from torchmetrics import MeanMetric

from genrec.metrics import NDCG_KS, RECALL_KS, list_errors, ranking_metrics

log = logging.getLogger(__name__)


class WarmupCosine:
    """Learning-rate factor of a step: linear warm-up, then cosine decay to 0 at step ``total``.

    A callable object rather than a closure, so that ``LambdaLR`` saves it in checkpoints and :class:`TimeBudget`
    can move the end of the schedule (``total``) while training runs.

    Args:
        warmup_steps: steps of linear warm-up (at most half the schedule).
        total_steps: the step where the factor reaches 0.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.total = max(1, total_steps)
        self.warmup = min(warmup_steps, self.total // 2)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))))


def adamw_warmup_cosine(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    fused: bool | None = None,
) -> dict:
    """AdamW (no decay on biases and norms) with linear warm-up then cosine decay to 0, stepped every batch.

    Args:
        fused: AdamW's fused implementation (the whole update in a few multi-tensor kernels); None uses it when
            the parameters are on a CUDA device and the default implementation elsewhere (CPU runs keep their
            numbers).

    Returns:
        Lightning's ``configure_optimizers`` dict.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    if fused is None:
        fused = any(p.is_cuda for p in decay + no_decay)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
        fused=fused or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
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


class TimeBudget(Callback):
    """Fits ``fit`` into a wall-clock budget by choosing how many epochs to train, and measures training speed.

    Cutting a run off at a time limit (Lightning's ``max_time``) stops it mid-schedule, at a high learning rate and
    possibly long after its last validation. Instead, after every training epoch this callback times the epoch
    (the latest one: the first pays for compilation and warm-up) and the latest validation, and sets the trainer's
    ``max_epochs`` to the most epochs that end within ``minutes`` of the start of training: never more than
    configured, and a multiple of ``check_val_every_n_epoch`` so that the last epoch is validated (its weights can
    become the best checkpoint). It moves the end of the learning-rate schedule (:class:`WarmupCosine`) to the
    new last step, so the rate decays to 0 where the budget ends, as it would at the end of a full schedule.

    It also records what it measured: per epoch the training seconds (validation excluded) and samples, and the
    samples/s of the epochs after the first. One device synchronisation per epoch and per validation (to read the
    time), none inside the training steps. The record goes to ``report`` (JSON) when fit ends.

    Args:
        minutes: the budget of ``fit`` (training and validation), or None to measure only.
        report: where the JSON record goes (created with its folder); None: only logged.
    """

    def __init__(self, minutes: float | None = None, report: str | None = None) -> None:
        super().__init__()
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes must be > 0 (or None to measure only), got {minutes}")
        self.minutes, self.report = minutes, report
        self.epochs: list[dict] = []
        self.validation_seconds: list[float] = []
        self._start = self._epoch_start = self._val_start = 0.0
        self._samples = 0
        self._val_in_epoch = 0.0
        self._configured: int | None = None
        self.planned_epochs: int | None = None
        self.stopped_by: str | None = None

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._now(pl_module)
        self._configured = trainer.fit_loop.max_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._samples, self._val_in_epoch = time.perf_counter(), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
        self._samples += len(first)  # a shape: no device read

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = self._now(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            seconds = self._now(pl_module) - self._val_start
            self.validation_seconds.append(seconds)
            self._val_in_epoch += seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        end = self._now(pl_module)
        seconds = end - self._epoch_start - self._val_in_epoch
        self.epochs.append({"epoch": trainer.current_epoch, "train_seconds": round(seconds, 3),
                            "samples": self._samples})
        if self.minutes is not None:
            self._fit_budget(trainer, elapsed=end - self._start)

    def _fit_budget(self, trainer: pl.Trainer, *, elapsed: float) -> None:
        per_epoch = self.epochs[-1]["train_seconds"]
        every = trainer.check_val_every_n_epoch or 1
        validates = bool(getattr(trainer, "enable_validation", True))
        # Until a validation has been timed, assume it costs an epoch of training.
        per_validation = self.validation_seconds[-1] if self.validation_seconds else per_epoch
        left = self.minutes * 60 - elapsed
        current = trainer.current_epoch + 1  # epochs done, counted as Lightning counts max_epochs
        configured = self._configured if self._configured and self._configured > 0 else current + 10**4
        fits = current
        for total in range(current + 1, configured + 1):
            cost = (total - current) * per_epoch
            if validates:
                cost += (total // every - current // every) * per_validation
            if cost > left:
                break
            fits = total
        # End on a validated epoch (its weights can become the best checkpoint, which is what gets tested). When
        # none is within reach: train on only while no validation has run yet (the final weights are then tested).
        validated = [t for t in range(current, fits + 1) if t % every == 0] if validates else [fits]
        if fits == configured:  # the whole configured run fits: the budget changes nothing
            epochs = fits
        elif validated:
            epochs = validated[-1]
        else:
            epochs = fits if not self.validation_seconds else current
        trainer.fit_loop.max_epochs = epochs
        steps = epochs * trainer.num_training_batches // trainer.accumulate_grad_batches
        for config in trainer.lr_scheduler_configs:
            for schedule in getattr(config.scheduler, "lr_lambdas", ()):
                if isinstance(schedule, WarmupCosine):
                    schedule.total = max(1, int(steps))
        self.planned_epochs = epochs

    def _stopped_by(self, trainer: pl.Trainer) -> str:
        """Why training ended: the configured epochs, this budget's plan, or another callback that stopped it."""
        done = trainer.current_epoch  # epochs done, resumed ones included, counted as max_epochs counts them
        if self._configured and done >= self._configured:
            return "max_epochs"
        if self.planned_epochs is not None and done >= self.planned_epochs:
            return "budget"
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
                return "early_stopping"
            if isinstance(callback, Timer) and (callback.time_remaining() or 0) <= 0:
                return "max_time"
        return "other"

    def summary(self) -> dict:
        """What was measured: epochs, seconds, samples/s (epochs after the first, when there are any)."""
        timed = self.epochs[1:] or self.epochs
        seconds = sum(e["train_seconds"] for e in timed)
        return {
            "budget_minutes": self.minutes,
            "epochs": len(self.epochs),
            "planned_epochs": self.planned_epochs,
            "stopped_by": self.stopped_by,
            "train_seconds": round(sum(e["train_seconds"] for e in self.epochs), 2),
            "validation_seconds": round(sum(self.validation_seconds), 2),
            "validations": len(self.validation_seconds),
            "samples_per_s": round(sum(e["samples"] for e in timed) / seconds, 1) if seconds > 0 else None,
            "per_epoch": self.epochs,
        }

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stopped_by = self._stopped_by(trainer)
        summary = self.summary()
        log.info("time budget: stopped by %s after %d epochs, %.1f s training, %.1f s validation, %s samples/s",
                 summary["stopped_by"], summary["epochs"], summary["train_seconds"], summary["validation_seconds"],
                 summary["samples_per_s"])
        if self.report and trainer.is_global_zero:
            path = Path(self.report)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + "\n")
