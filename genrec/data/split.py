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
from numpy.lib.stride_tricks import sliding_window_view

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


def _windows(seq: np.ndarray, max_len: int) -> np.ndarray:
    """(m-1, max_len) histories predicting seq[1..m-1], each the up-to-max_len items before its target."""
    padded = np.concatenate([np.full(max_len, PAD_ITEM, dtype=np.int64), seq])
    return sliding_window_view(padded, max_len)[1 : len(seq)]


def _last(seq: np.ndarray, max_len: int) -> np.ndarray:
    out = np.full(max_len, PAD_ITEM, dtype=np.int64)
    tail = seq[-max_len:]
    out[max_len - len(tail) :] = tail
    return out


def _stack(users: list[int], histories: list[np.ndarray], targets: list[int], max_len: int) -> Samples:
    if not targets:
        return Samples(np.zeros(0, np.int64), np.zeros((0, max_len), np.int64), np.zeros(0, np.int64))
    return Samples(np.asarray(users, np.int64), np.stack(histories), np.asarray(targets, np.int64))


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
    train_users, train_hist, train_tgt = [], [], []
    parts: dict[str, tuple[list, list, list]] = {"valid": ([], [], []), "test": ([], [], [])}
    skipped = {"valid": 0, "test": 0, "train": 0}
    for u, seq in enumerate(dataset.sequences):
        m = len(seq)
        if m >= 2:
            parts["test"][0].append(u)
            parts["test"][1].append(_last(seq[:-1], max_len))
            parts["test"][2].append(seq[-1])
        else:
            skipped["test"] += 1
        if m >= 3:
            parts["valid"][0].append(u)
            parts["valid"][1].append(_last(training_part(seq), max_len))
            parts["valid"][2].append(seq[-2])
        else:
            skipped["valid"] += 1
        train = training_part(seq)
        if len(train) >= 2:
            windows = _windows(train, max_len)
            train_hist.append(windows)
            train_users.append(np.full(len(windows), u, dtype=np.int64))
            train_tgt.append(train[1:])
        else:
            skipped["train"] += 1
    train_samples = (
        Samples(np.concatenate(train_users), np.concatenate(train_hist), np.concatenate(train_tgt))
        if train_tgt
        else _stack([], [], [], max_len)
    )
    for part, count in skipped.items():
        if count:
            log.info("%s: %d users are too short for a %s sample", dataset.name, count, part)
    return Split(
        train=train_samples,
        valid=_stack(*parts["valid"], max_len),
        test=_stack(*parts["test"], max_len),
        max_len=max_len,
        skipped=skipped,
    )
