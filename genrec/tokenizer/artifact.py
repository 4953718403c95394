"""The on-disk artifact of a fitted tokenizer, ``tokenizers/<name>/``, and its loader.

Layout (see tokenizers/README.md)::

    codes.npy            (n_items, levels) int64, unique semantic IDs after collision handling; row = dense item
    codebooks.pt         (l, k, d) float32 codebooks (RQ-KMeans: feature space; RQ-VAE: latent space)
    config.json          what produced it: method, hyperparameters, data sources, collision strategy, versions
    metrics.json         quality metrics (genrec.tokenizer.metrics.tokenizer_metrics), incl. level_sizes
    fingerprint.json     sha256 of the input feature matrix (float32 bytes + shape)
    items_per_code.png   items per code, one panel per level
    manifest.json        written last: the sha256 of every other file; an artifact without it is incomplete

An artifact is written whole or not at all: :func:`save_tokenizer` writes into a hidden staging folder beside the
target and renames it into place, holding a lock so that two writers of one artifact cannot interleave (the second
is refused). A process killed mid-write leaves the previous artifact as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
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
MANIFEST_FILE = "manifest.json"


class ArtifactError(ValueError):
    """A tokenizer artifact that is incomplete, altered, or being written by another process."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _writer_lock(directory: Path):
    """An exclusive lock on writing ``directory`` (a ``.<name>.lock`` file beside it), refused if held elsewhere."""
    lock_path = directory.with_name(f".{directory.name}.lock")
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(
                f"tokenizer artifact {directory} is being written by another process (lock {lock_path} is held): "
                "wait for it, or write to another output_dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_complete(directory: str | Path) -> bool:
    """Whether ``directory`` holds a whole artifact (its manifest was written); see :func:`load_tokenizer`."""
    return (Path(directory) / MANIFEST_FILE).is_file()


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
    directory.parent.mkdir(parents=True, exist_ok=True)
    codes = codes.detach().cpu().long()
    _validate(codes, tuple(level_sizes), where=str(directory))
    with _writer_lock(directory):
        # Left by a writer that was killed: a staging folder, or the artifact this write replaces anyway.
        for stale in [*directory.parent.glob(f".{directory.name}.staging-*"),
                      *directory.parent.glob(f".{directory.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging-", dir=directory.parent))
        try:
            np.save(staging / CODES_FILE, codes.numpy())
            if codebooks is not None:
                torch.save(codebooks.detach().cpu().float().contiguous(), staging / CODEBOOKS_FILE)
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
            (staging / METRICS_FILE).write_text(
                json.dumps({**metrics, "level_sizes": list(level_sizes)}, indent=2) + "\n"
            )
            (staging / FINGERPRINT_FILE).write_text(
                json.dumps({"sha256": fingerprint, "n_items": codes.shape[0]}) + "\n"
            )
            if plot:
                plot_items_per_code(codes, tuple(level_sizes), staging / PLOT_FILE)
            files = {f.name: _sha256(f) for f in sorted(staging.iterdir())}
            (staging / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=2) + "\n")
            staging.chmod(0o755)  # mkdtemp makes it private
            # Two renames: at every instant the old artifact or the new one is whole on disk (a kill between them
            # leaves the old one under .<name>.old-<pid>, which load_tokenizer points to).
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            if directory.exists():
                os.replace(directory, old)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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
    if not path.is_dir():
        left = sorted(path.parent.glob(f".{path.name}.old-*"))
        hint = f" (an interrupted write left the previous one in {left[0]}: rename it back, or refit)" if left else ""
        raise FileNotFoundError(f"tokenizer artifact {path} does not exist{hint}; fit one with train.py (see README)")
    if not is_complete(path):
        raise ArtifactError(
            f"tokenizer artifact {path} is incomplete (no {MANIFEST_FILE}: written by an interrupted or older "
            "genrec): refit it (train.py refits it when the run names its tokenizer_config)"
        )
    listed = json.loads((path / MANIFEST_FILE).read_text())["files"]
    for name in (CODES_FILE, CONFIG_FILE, METRICS_FILE, FINGERPRINT_FILE):
        if name not in listed:
            raise ArtifactError(f"tokenizer artifact {path}: {MANIFEST_FILE} does not list {name}")
    for name, digest in listed.items():
        if not (path / name).is_file():
            raise ArtifactError(f"tokenizer artifact {path} has no {name}, which its {MANIFEST_FILE} lists: refit it")
        if _sha256(path / name) != digest:
            raise ArtifactError(
                f"tokenizer artifact {path}: {name} was changed after the artifact was written (its sha256 differs "
                f"from {MANIFEST_FILE}): refit it rather than mix files of two fits"
            )
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
