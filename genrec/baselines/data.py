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

from genrec.data import load_dataset
from genrec.data.loading import SplitDataModule, item_sequence_parts

log = logging.getLogger(__name__)


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
        on_device: keep the rows on the trainer's device (a GPU) and gather batches there
            (:class:`genrec.data.loading.SplitDataModule`).
    """

    def __init__(
        self,
        *,
        dataset: str = "amazon-beauty",
        max_len: int = 50,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        on_device: bool = False,
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
        self.parts = item_sequence_parts(self.dataset, max_len=self.hparams.max_len)
        log.info("rows: %s", {k: len(v) for k, v in self.parts.items()})
