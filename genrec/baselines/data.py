"""The DataModule of item-ID sequential baselines (SASRec): dense item indices, no tokenizer.

Validation and test samples are exactly those of :func:`genrec.data.leave_one_out`. Training uses one row per user
instead of the split's sliding windows: the most recent ``max_len + 1`` items of the user's training part
(everything but the validation and test items), as input ``s[:-1]`` and labels ``s[1:]``. With causal attention the
output at position t sees exactly the window ``s[:t+1]``, so a loss at every position trains on the same (history,
target) pairs as the windows, in one forward pass per user (Kang & McAuley 2018). The difference: for users with
more than ``max_len + 1`` training items the oldest targets are dropped (as in SASRec), and a position's history
starts at the row's first item instead of reaching back ``max_len`` items.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from genrec.data import load_dataset, leave_one_out
from genrec.data.loading import SplitDataModule, TokenBatches
from genrec.data.split import PAD_ITEM, training_part

log = logging.getLogger(__name__)


def training_rows(sequences: list[np.ndarray], *, max_len: int) -> dict[str, torch.Tensor]:
    """One training row per user with at least 2 training items (the users :func:`leave_one_out` trains on).

    Args:
        sequences: per user, (m,) int64 dense item indices in chronological order.
        max_len: row length; a row holds the user's last ``max_len + 1`` training items.

    Returns:
        ``users`` (r,) int64, ``input`` (r, max_len) int64 left-padded with -1, ``labels`` (r, max_len) int64: the
        next item at each input position, -1 where the input is padding.
    """
    users, inputs, labels = [], [], []
    for u, seq in enumerate(sequences):
        train = training_part(seq)[-(max_len + 1) :]  # leave-one-out: without the validation and test targets
        if len(train) < 2:
            continue
        row_in = np.full(max_len, PAD_ITEM, dtype=np.int64)
        row_out = np.full(max_len, PAD_ITEM, dtype=np.int64)
        row_in[max_len - len(train) + 1 :] = train[:-1]
        row_out[max_len - len(train) + 1 :] = train[1:]
        users.append(u)
        inputs.append(row_in)
        labels.append(row_out)
    if not users:
        empty = torch.zeros(0, max_len, dtype=torch.long)
        return {"users": torch.zeros(0, dtype=torch.long), "input": empty, "labels": empty.clone()}
    return {
        "users": torch.as_tensor(np.asarray(users, np.int64)),
        "input": torch.from_numpy(np.stack(inputs)),
        "labels": torch.from_numpy(np.stack(labels)),
    }


class ItemSequenceData(SplitDataModule):
    """Leave-one-out samples of a dataset as dense item indices, for SASRec-style models.

    Batches are dicts: training ``input``/``labels`` (b, max_len); evaluation ``history`` (b, max_len) left-padded
    with -1 and ``target`` (b,); all int64, plus ``users`` (b,).

    Args:
        dataset: bundled name or path.
        max_len: history length in items (the model's positional table is linked to it by the CLI).
        batch_size: training rows (users) per batch.
        eval_batch_size: validation / test batch size.
        num_workers: DataLoader workers (0 is right: batches are single tensor gathers).
    """

    def __init__(
        self,
        *,
        dataset: str = "amazon-beauty",
        max_len: int = 50,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.save_hyperparameters()
        self.dataset = load_dataset(dataset)

    # Read by the CLI's argument links (see genrec/cli.py): the model's shape derives from the data.
    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @property
    def max_len(self) -> int:
        return self.hparams.max_len

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        split = leave_one_out(self.dataset, max_len=self.hparams.max_len)
        self.parts["train"] = TokenBatches(training_rows(self.dataset.sequences, max_len=self.hparams.max_len))
        for part in ("valid", "test"):
            samples = getattr(split, part)
            self.parts[part] = TokenBatches(
                {
                    "users": torch.from_numpy(samples.users),
                    "history": torch.from_numpy(samples.history),
                    "target": torch.from_numpy(samples.target),
                }
            )
        log.info("rows: %s", {k: len(v) for k, v in self.parts.items()})
