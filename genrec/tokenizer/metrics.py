"""Quality metrics of a fitted tokenizer and the items-per-code plot saved with it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from genrec.tokenizer.collisions import collision_stats


def relative_mse(x: Tensor, reconstruction: Tensor) -> float:
    """Fraction of variance unexplained: ||x - x̂||² / ||x - mean(x)||², summed over items and dimensions.

    0 is a perfect reconstruction, 1 is no better than predicting the mean item. Scale-free, so RQ-KMeans and RQ-VAE
    compare on the same features.

    Args:
        x: (n, d) float input.
        reconstruction: (n, d) float.
    """
    x = x.double()
    error = (x - reconstruction.double()).pow(2).sum()
    spread = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-30)
    return float(error / spread)


def codebook_usage(codes: Tensor, level_sizes: tuple[int, ...]) -> list[float]:
    """Fraction of each level's codes used by at least one item; ``codes`` is (n, l) int64."""
    return [codes[:, j].unique().numel() / size for j, size in enumerate(level_sizes)]


def code_perplexity(codes: Tensor, level_sizes: tuple[int, ...]) -> list[float]:
    """exp(entropy) of each level's code distribution: the effective number of codes (at most the level's size)."""
    out = []
    for j, size in enumerate(level_sizes):
        p = torch.bincount(codes[:, j], minlength=size).double() / codes.shape[0]
        p = p[p > 0]
        out.append(float(torch.exp(-(p * p.log()).sum())))
    return out


def tokenizer_metrics(
    *,
    features: Tensor,
    reconstruction: Tensor,
    raw_codes: Tensor,
    codes: Tensor,
    level_sizes: tuple[int, ...],
    fit_seconds: float,
) -> dict:
    """Everything saved to ``metrics.json``.

    Args:
        features: (n, d) float, the tokenizer's input.
        reconstruction: (n, d) float, its reconstruction from the final semantic IDs.
        raw_codes: (n, l) int64, the IDs before collision handling.
        codes: (n, l') int64, the final unique IDs.
        level_sizes: size of each of the l' final levels.
        fit_seconds: wall-clock fitting time.

    Returns:
        A JSON-able dict; per-level lists cover the final levels (the collision level too, if any).
    """
    stats = collision_stats(raw_codes)
    return {
        "n_items": int(codes.shape[0]),
        "level_sizes": list(level_sizes),
        "reconstruction_error": relative_mse(features, reconstruction),
        "usage": codebook_usage(codes, level_sizes),
        "perplexity": code_perplexity(codes, level_sizes),
        "collision_rate": stats.collision_rate,
        "max_group": stats.max_group,
        "colliding_ids": stats.n_groups,
        "fit_seconds": fit_seconds,
    }


def flat_metrics(metrics: dict, prefix: str = "tokenizer/") -> dict[str, float]:
    """Scalars for a logger: per-level lists become ``usage/level_0``, ...; non-numbers are dropped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, list):
            out.update({f"{prefix}{key}/level_{j}": float(v) for j, v in enumerate(value)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def plot_items_per_code(codes: Tensor, level_sizes: tuple[int, ...], path: str | Path) -> Path:
    """Saves a PNG with one panel per level: number of items on each code, codes sorted by that count.

    Args:
        codes: (n, l) int64.
        level_sizes: size of each level.
        path: where to write the PNG.

    Returns:
        The path written.
    """
    # A bare Figure renders with the Agg canvas and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    levels = len(level_sizes)
    fig = Figure(figsize=(4 * levels, 3), layout="constrained")
    axes = fig.subplots(1, levels, squeeze=False)[0]
    for j, (ax, size) in enumerate(zip(axes, level_sizes)):
        counts = torch.bincount(codes[:, j], minlength=size).sort(descending=True).values.numpy()
        ax.bar(range(size), counts, width=1.0)
        used = int((counts > 0).sum())
        ax.set_title(f"level {j}: {used}/{size} codes used")
        ax.set_xlabel("code (sorted by count)")
        ax.set_ylabel("items")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
