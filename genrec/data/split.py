"""Leave-one-out split with sliding-window training samples (the protocol of TIGER, P5 and S3-Rec).

For a user with items ``s[0..m-1]``: the test target is ``s[m-1]`` (history ``s[:m-1]``), the validation target is
``s[m-2]`` (history ``s[:m-2]``), and every prefix of the training part ``s[:m-2]`` predicts its next item (GRID,
CIKM 2025: sliding windows are the largest free gain). Histories keep the most recent ``max_len`` items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from genrec.data.dataset import SequenceDataset

log = logging.getLogger(__name__)

PAD_ITEM = -1
HOLDOUT = 2
"""Trailing items of each sequence that no model or feature may train on: the validation target, then the test one."""


class Samples(NamedTuple):
    """Next-item samples, one row each.

    Attributes:
        users: (n,) int64 dense user index.
        history: (n, max_len) int64 dense item indices, left-padded with -1 so the most recent item is last.
        target: (n,) int64 dense item index to predict.
    """

    users: np.ndarray
    history: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.target)

    @property
    def lengths(self) -> np.ndarray:
        return (self.history != PAD_ITEM).sum(axis=1)


@dataclass
class Split:
    """Train (sliding windows), validation and test samples of one dataset.

    Attributes:
        skipped: users left out of a part because their sequence is too short for it, by part.
    """

    train: Samples
    valid: Samples
    test: Samples
    max_len: int
    skipped: dict[str, int] = field(default_factory=dict)


def training_part(seq: np.ndarray, holdout: int = HOLDOUT) -> np.ndarray:
    """The items of ``seq`` that training may see: all but the last ``holdout`` (empty for shorter sequences)."""
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    return seq[: max(len(seq) - holdout, 0)]


def training_interactions(dataset: SequenceDataset, holdout: int = HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """Every (user, item) interaction of the training parts, in sequence order, repeats kept.

    Returns:
        users, items: (e,) int64 dense indices each.
    """
    parts = [training_part(seq, holdout) for seq in dataset.sequences]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    users = np.repeat(np.arange(len(parts), dtype=np.int64), lengths)
    items = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return users, items


def item_popularity(dataset: SequenceDataset, holdout: int = HOLDOUT) -> np.ndarray:
    """(n_items,) int64 number of training interactions of each item (held-out validation and test items excluded,
    so popularity never leaks the targets)."""
    _, items = training_interactions(dataset, holdout)
    return np.bincount(items, minlength=dataset.n_items).astype(np.int64)


def _histories(flat: np.ndarray, position: np.ndarray, first: np.ndarray, max_len: int,
               chunk: int = 1 << 20) -> np.ndarray:
    """(s, max_len) int64: for each sample, the up-to-``max_len`` items of ``flat`` before ``position`` that belong
    to its user (from ``first`` on), left-padded with -1; built ``chunk`` samples at a time so the index arrays stay
    small however many samples there are."""
    out = np.empty((len(position), max_len), dtype=np.int64)
    offsets = np.arange(-max_len, 0, dtype=np.int64)
    for begin in range(0, len(position), chunk):
        index = position[begin : begin + chunk, None] + offsets  # (c, max_len)
        inside = index >= first[begin : begin + chunk, None]
        out[begin : begin + chunk] = np.where(inside, flat[np.maximum(index, 0)], PAD_ITEM)
    return out


def leave_one_out(dataset: SequenceDataset, *, max_len: int = 20) -> Split:
    """Splits every user's sequence leave-one-out.

    Users with 2 items get a test sample only, users with 1 item none; such users are counted in
    :attr:`Split.skipped` and logged, never dropped silently.

    Args:
        dataset: the loaded dataset.
        max_len: histories keep the most recent ``max_len`` items.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    lengths = np.fromiter((len(seq) for seq in dataset.sequences), dtype=np.int64, count=dataset.n_users)
    flat = np.concatenate(dataset.sequences).astype(np.int64) if dataset.n_users else np.zeros(0, np.int64)
    first = np.cumsum(lengths) - lengths  # position of each user's first item in ``flat``
    users = np.arange(dataset.n_users, dtype=np.int64)

    def part(keep: np.ndarray, held_out: int) -> Samples:
        """One sample per user in ``keep``, whose target is the ``held_out``-th item from the end."""
        target_at = first[keep] + lengths[keep] - held_out
        return Samples(users[keep], _histories(flat, target_at, first[keep], max_len), flat[target_at])

    # Training targets: every item of the training part but its first, in user then sequence order.
    windows = np.maximum(lengths - HOLDOUT - 1, 0)
    train_users = np.repeat(users, windows)
    step = np.arange(windows.sum(), dtype=np.int64) - np.repeat(np.cumsum(windows) - windows, windows)
    train_at = first[train_users] + 1 + step
    train_samples = Samples(train_users, _histories(flat, train_at, first[train_users], max_len), flat[train_at])
    skipped = {"valid": int((lengths < 3).sum()), "test": int((lengths < 2).sum()), "train": int((windows == 0).sum())}
    for name, count in skipped.items():
        if count:
            log.info("%s: %d users are too short for a %s sample", dataset.name, count, name)
    return Split(
        train=train_samples,
        valid=part(lengths >= 3, 2),
        test=part(lengths >= 2, 1),
        max_len=max_len,
        skipped=skipped,
    )
