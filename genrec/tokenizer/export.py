"""From a fitted quantizer to a saved artifact: collision handling, metrics, files, logger output.

Shared by the tokenizer LightningModules (a function, not a base class: the two fit very differently).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

import genrec
from genrec.features import feature_fingerprint
from genrec.tokenizer.artifact import PLOT_FILE, SemanticIds, load_tokenizer, save_tokenizer
from genrec.tokenizer.collisions import CollisionStrategy, LastDistances, resolve_collisions
from genrec.tokenizer.metrics import flat_metrics, tokenizer_metrics

log = logging.getLogger(__name__)


@torch.no_grad()
def export_tokenizer(
    directory: str | Path,
    *,
    features: Tensor,
    raw_codes: Tensor,
    last_distances: LastDistances,
    reconstruct: Callable[[Tensor], Tensor],
    codebooks: Tensor,
    collision: CollisionStrategy,
    config: dict,
    fit_seconds: float,
    popularity: Tensor | None = None,
) -> SemanticIds:
    """Makes the IDs unique, measures them and writes the artifact.

    Args:
        directory: artifact folder, e.g. ``tokenizers/beauty-rqkmeans``.
        features: (n, d) float, the matrix the tokenizer was fitted on (row = dense item).
        raw_codes: (n, l) int64, the quantizer's codes before collision handling.
        last_distances: (n, k) float, distance of each item's last residual to each last-level code; or a function
            of (r,) item indices giving their rows (only colliding items' are needed, by ``"reassign"``).
        reconstruct: maps (n, l) codes to (n, d) reconstructions of ``features``.
        codebooks: (l, k, d') float.
        collision: collision strategy (see ``genrec.tokenizer.collisions``).
        config: what produced the tokenizer; saved as config.json with the collision strategy and versions added.
        fit_seconds: wall-clock fitting time.
        popularity: (n,) real per item; orders the extra collision code by descending popularity (MMGRec) instead
            of item index. Recorded as ``collision_order`` in config.json.

    Returns:
        The artifact as :func:`load_tokenizer` reads it back.
    """
    levels = raw_codes.shape[1]
    codes, level_sizes = resolve_collisions(
        raw_codes,
        strategy=collision,
        codebook_size=codebooks.shape[1],
        distances=last_distances,
        popularity=popularity,
    )
    # Measured on the final first-l codes: "reassign" moves some items, and the metric should describe the IDs used.
    return write_artifact(
        directory,
        features=features,
        codes=codes,
        raw_codes=raw_codes,
        reconstruction=reconstruct(codes[:, :levels]),
        level_sizes=level_sizes,
        codebooks=codebooks,
        config={
            **config,
            "collision": collision,
            "collision_order": "index" if popularity is None else "popularity",
        },
        fit_seconds=fit_seconds,
    )


@torch.no_grad()
def write_artifact(
    directory: str | Path,
    *,
    features: Tensor,
    codes: Tensor,
    raw_codes: Tensor,
    reconstruction: Tensor,
    level_sizes: tuple[int, ...],
    codebooks: Tensor | None,
    config: dict,
    fit_seconds: float,
) -> SemanticIds:
    """Measures unique IDs and writes them as an artifact: the one writer of every tokenizer.

    Args:
        directory: artifact folder.
        features: (n, d) float, the matrix the tokenizer was fitted on (row = dense item).
        codes: (n, levels) int64 unique semantic IDs.
        raw_codes: (n, l) int64 codes before whatever made them unique (collision statistics are taken on them).
        reconstruction: (n, d) the tokenizer's reconstruction of ``features`` from the IDs.
        level_sizes: codes per level of ``codes``.
        codebooks: (l, k, d') float, or None for tokenizers without a per-level codebook.
        config: what produced the tokenizer, collision fields included; saved as config.json with versions added.
        fit_seconds: wall-clock fitting time.

    Returns:
        The artifact as :func:`load_tokenizer` reads it back.
    """
    metrics = tokenizer_metrics(
        features=features,
        reconstruction=reconstruction,
        raw_codes=raw_codes,
        codes=codes,
        level_sizes=level_sizes,
        fit_seconds=fit_seconds,
    )
    full_config = {
        **config,
        "feature_shape": list(features.shape),
        "genrec_version": genrec.__version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    save_tokenizer(
        directory,
        codes=codes,
        level_sizes=level_sizes,
        codebooks=codebooks,
        config=full_config,
        metrics=metrics,
        fingerprint=feature_fingerprint(features),
    )
    log.info("tokenizer written to %s: %s", directory, metrics)
    _warn_unused_codes(metrics, levels=raw_codes.shape[1], directory=directory)
    return load_tokenizer(directory)


UNUSED_SHARE = 0.05
"""A level whose perplexity is below this share of its codes is mostly unused vocabulary (warned)."""


def _warn_unused_codes(metrics: dict, *, levels: int, directory: str | Path) -> None:
    """Warns about quantizer levels (not the collision level) that use a small share of their codes: the codebook
    is too large for the catalogue, and the model would carry vocabulary that no item uses."""
    for j, (size, perplexity) in enumerate(zip(metrics["level_sizes"][:levels], metrics["perplexity"][:levels])):
        if perplexity < UNUSED_SHARE * size:
            log.warning(
                "%s: level %d uses %.1f of its %d codes (perplexity): the codebook is large for %s items; leave "
                "codebook_size and levels unset to have them fit the catalogue (genrec.tokenizer.sizes)",
                directory, j, perplexity, size, f"{metrics['n_items']:,}",
            )


def log_tokenizer(loggers: Sequence, ids: SemanticIds, *, step: int = 0) -> None:
    """Sends an artifact's metrics to every logger, and its plot to loggers that take images (e.g. WandbLogger).

    Args:
        loggers: Lightning loggers (``trainer.loggers``; empty with ``logger: false``).
        ids: the saved artifact.
        step: global step to log at.
    """
    scalars = flat_metrics(ids.metrics)
    for logger in loggers:
        logger.log_metrics(scalars, step=step)
        if hasattr(logger, "log_image") and ids.path is not None:
            logger.log_image(key="tokenizer/items_per_code", images=[str(ids.path / PLOT_FILE)], step=step)
