"""The on-disk artifact of a fitted tokenizer, ``tokenizers/<name>/``, and its loader.

Layout (see tokenizers/README.md)::

    codes.npy            (n_items, levels) int64, unique semantic IDs after collision handling; row = dense item
    codebooks.pt         (l, k, d) float32 codebooks (RQ-KMeans: feature space; RQ-VAE: latent space)
    config.json          what produced it: method, hyperparameters, data sources, collision strategy, versions
    metrics.json         quality metrics (genrec.tokenizer.metrics.tokenizer_metrics), incl. level_sizes
    fingerprint.json     sha256 of the input feature matrix (float32 bytes + shape)
    items_per_code.png   items per code, one panel per level
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genrec.features import feature_fingerprint
from genrec.tokenizer.collisions import assert_unique

CODES_FILE = "codes.npy"
CODEBOOKS_FILE = "codebooks.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
FINGERPRINT_FILE = "fingerprint.json"
PLOT_FILE = "items_per_code.png"


@dataclass(frozen=True)
class SemanticIds:
    """A loaded tokenizer artifact.

    Attributes:
        codes: (n_items, levels) int64; row i is the semantic ID of dense item i.
        level_sizes: number of codes on each level (the collision level included).
        codebooks: (l, k, d) float32, or None when the artifact has none.
        metrics: contents of metrics.json.
        config: contents of config.json.
        fingerprint: sha256 of the features the tokenizer was fitted on.
        path: the artifact directory.
    """

    codes: Tensor
    level_sizes: tuple[int, ...]
    codebooks: Tensor | None = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    fingerprint: str = ""
    path: Path | None = None

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def check_features(self, features: Tensor) -> None:
        """Raises ValueError if ``features`` are not the matrix this tokenizer was fitted on."""
        if feature_fingerprint(features) != self.fingerprint:
            raise ValueError(
                f"features of shape {tuple(features.shape)} do not match the fingerprint of tokenizer {self.path}; "
                "refit the tokenizer or use the features it was fitted on"
            )


def save_tokenizer(
    directory: str | Path,
    *,
    codes: Tensor,
    level_sizes: tuple[int, ...],
    codebooks: Tensor | None,
    config: dict,
    metrics: dict,
    fingerprint: str,
    plot: bool = True,
) -> Path:
    """Writes an artifact (module docstring) to ``directory``, replacing the files of an earlier one.

    Args:
        directory: target folder, created if missing.
        codes: (n_items, levels) int64, unique rows.
        level_sizes: size of each level.
        codebooks: (l, k, d) float, or None.
        config: JSON-able description of what produced the codes.
        metrics: JSON-able metrics.
        fingerprint: ``genrec.features.feature_fingerprint`` of the input features.
        plot: also write items_per_code.png.

    Returns:
        The directory.
    """
    from genrec.tokenizer.metrics import plot_items_per_code

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    codes = codes.detach().cpu().long()
    _validate(codes, tuple(level_sizes), where=str(directory))
    np.save(directory / CODES_FILE, codes.numpy())
    if codebooks is not None:
        torch.save(codebooks.detach().cpu().float().contiguous(), directory / CODEBOOKS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (directory / METRICS_FILE).write_text(json.dumps({**metrics, "level_sizes": list(level_sizes)}, indent=2) + "\n")
    (directory / FINGERPRINT_FILE).write_text(json.dumps({"sha256": fingerprint, "n_items": codes.shape[0]}) + "\n")
    if plot:
        plot_items_per_code(codes, tuple(level_sizes), directory / PLOT_FILE)
    return directory


def load_tokenizer(path: str | Path) -> SemanticIds:
    """Loads an artifact written by :func:`save_tokenizer` and checks it.

    Args:
        path: the artifact directory, e.g. ``tokenizers/beauty-rqkmeans``.

    Returns:
        A :class:`SemanticIds`.

    Raises:
        FileNotFoundError: if a required file is missing.
        ValueError: if the codes are out of range for ``level_sizes`` or not unique.
    """
    path = Path(path)
    for name in (CODES_FILE, CONFIG_FILE, METRICS_FILE, FINGERPRINT_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"tokenizer artifact {path} has no {name}; fit one with train.py (see README)")
    codes = torch.from_numpy(np.load(path / CODES_FILE, allow_pickle=False)).long()
    metrics = json.loads((path / METRICS_FILE).read_text())
    level_sizes = tuple(int(s) for s in metrics["level_sizes"])
    _validate(codes, level_sizes, where=str(path / CODES_FILE))
    codebooks_path = path / CODEBOOKS_FILE
    return SemanticIds(
        codes=codes,
        level_sizes=level_sizes,
        codebooks=torch.load(codebooks_path, weights_only=True) if codebooks_path.is_file() else None,
        metrics=metrics,
        config=json.loads((path / CONFIG_FILE).read_text()),
        fingerprint=json.loads((path / FINGERPRINT_FILE).read_text())["sha256"],
        path=path,
    )


def _validate(codes: Tensor, level_sizes: tuple[int, ...], *, where: str) -> None:
    if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
        raise ValueError(f"{where}: codes of shape {tuple(codes.shape)} do not match level_sizes {level_sizes}")
    sizes = torch.tensor(level_sizes)
    if bool((codes < 0).any()) or bool((codes >= sizes).any()):
        raise ValueError(f"{where}: codes fall outside [0, level_sizes) with level_sizes {level_sizes}")
    assert_unique(codes)
