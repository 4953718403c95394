"""The frame of the tokenizer LightningModules: reading the catalogue from ``ItemFeatures``, writing the artifact.

``TokenizerModule`` writes the artifact from the whole catalogue when fit ends (skipped under ``fast_dev_run``,
which must not overwrite a real artifact); ``OneStepTokenizer`` is one for tokenizers with nothing to optimise by
gradient, fitted in one training step. The modules themselves are in :mod:`genrec.tokenizer.lightning`.
"""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl
import torch
from torch import Tensor

from genrec.tokenizer.artifact import SemanticIds
from genrec.tokenizer.collisions import ORDERS, STRATEGIES
from genrec.tokenizer.export import log_tokenizer
from genrec.tokenizer.sizes import fill_sizes

log = logging.getLogger(__name__)


def datamodule_features(trainer: pl.Trainer) -> tuple[Tensor, dict]:
    """The full (n, d) feature matrix and description of the trainer's datamodule."""
    datamodule = getattr(trainer, "datamodule", None)
    if getattr(datamodule, "features", None) is None or not hasattr(datamodule, "describe"):
        raise RuntimeError(
            "tokenizer modules need an ItemFeatures datamodule (data: class_path: "
            "genrec.tokenizer.datamodule.ItemFeatures) to read the whole catalogue"
        )
    return datamodule.features, datamodule.describe()


def whole_catalogue(trainer: pl.Trainer, batch: Tensor, method: str) -> Tensor:
    """The full (n, d) feature matrix, after checking that ``batch`` is all of it (one-step tokenizers)."""
    features, _ = datamodule_features(trainer)
    if batch.shape[0] != features.shape[0]:
        raise ValueError(
            f"{method} fits on the whole catalogue in one step, but got a batch of {batch.shape[0]} of "
            f"{features.shape[0]} items; set data.init_args.batch_size: null"
        )
    return features


def derive_input_dim(module: pl.LightningModule, features: Tensor) -> bool:
    """Fills ``hparams.input_dim`` from the data; True if the module still has to be built."""
    width = features.shape[1]
    if module.hparams.input_dim is None:
        module.hparams["input_dim"] = width
        return True
    if module.hparams.input_dim != width:
        raise ValueError(f"model input_dim={module.hparams.input_dim} but the item features have width {width}")
    return False


def derive_sizes(module: pl.LightningModule, n_items: int, *, length: str = "levels") -> bool:
    """Fills the module's unset ``hparams[length]`` / ``hparams.codebook_size`` from the catalogue size (logged,
    :mod:`genrec.tokenizer.sizes`); True if it filled one (the quantizer is built only now)."""
    hp = module.hparams
    if hp[length] is not None and hp.codebook_size is not None:
        return False
    sizes = fill_sizes(n_items, levels=hp[length], codebook_size=hp.codebook_size, who=module.method, length=length)
    hp[length], hp["codebook_size"] = sizes
    return True


def check_collision(collision: str, order: str = "index") -> None:
    if collision not in STRATEGIES:
        raise ValueError(f"collision must be one of {STRATEGIES}, got {collision!r}")
    if order not in ORDERS:
        raise ValueError(f"collision_order must be one of {ORDERS}, got {order!r}")
    if order == "popularity" and collision != "extra_code":
        raise ValueError(
            f"collision_order='popularity' orders the extra code of collision='extra_code', not {collision!r}"
        )


def collision_popularity(trainer: pl.Trainer, order: str, n_items: int) -> Tensor | None:
    """None for item-index order; else (n_items,) training interaction counts of the datamodule's dataset."""
    if order == "index":
        return None
    from genrec.data.dataset import load_dataset
    from genrec.data.split import item_popularity

    dataset = load_dataset(trainer.datamodule.dataset)
    if dataset.n_items != n_items:
        raise ValueError(
            f"collision_order='popularity' counts the training interactions of dataset {dataset.name!r} "
            f"({dataset.n_items} items), but the item features have {n_items} rows; set data.init_args.dataset"
        )
    return torch.from_numpy(item_popularity(dataset))


class TokenizerModule(pl.LightningModule):
    """What every tokenizer module shares: the artifact is written from the whole catalogue when fit ends.

    Subclasses implement :meth:`export` (features and datamodule description -> the written artifact).
    """

    def export(self, features: Tensor, data: dict) -> SemanticIds:
        raise NotImplementedError

    @torch.no_grad()
    def on_fit_end(self) -> None:
        if self.trainer.fast_dev_run:
            log.info("fast_dev_run: tokenizer artifact not written")
            return
        features, data = datamodule_features(self.trainer)
        ids = self.export(features, data)
        log_tokenizer(self.trainer.loggers, ids, step=self.global_step)


class OneStepTokenizer(TokenizerModule):
    """A tokenizer with nothing to optimise by gradient: one training step fits it on the whole catalogue.

    Configure the datamodule with ``batch_size: null`` (one batch = every item) and the trainer with
    ``max_epochs: 1``. Subclasses implement :meth:`fit_catalogue` and :attr:`fitted`.
    """

    method = "tokenizer"
    """Its name in errors."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.fit_seconds = 0.0

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    def fit_catalogue(self, batch: Tensor, features: Tensor) -> None:
        """Fits on the whole catalogue: ``batch`` on the module's device, ``features`` the datamodule's matrix."""
        raise NotImplementedError

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        features = whole_catalogue(self.trainer, batch, self.method)
        if self.fitted:
            return None  # a later epoch: the tokenizer is final
        start = time.perf_counter()
        self.fit_catalogue(batch, features)
        self.fit_seconds = time.perf_counter() - start
        return None
