"""Whole-batch loading of prebuilt sample tensors, shared by every model's DataModule.

A split part is a dict of tensors with one row per sample; a batch is one gather of rows from each, so loading
costs one indexing operation per batch, whatever the model.
"""

from __future__ import annotations

import copy
import math
from typing import Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genrec.data.dataset import SequenceDataset
from genrec.data.split import PAD_ITEM, leave_one_out, training_part


class Derived(Protocol):
    """Tensors computed from a batch's stored ones when the batch is gathered (e.g. tokens from item indices)."""

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The derived tensors of ``batch`` (rows as gathered); they are added to it, replacing same-named ones."""

    def to(self, device: torch.device) -> Derived:
        """The same derivation with its tables on ``device``."""


class TokenBatches(Dataset):
    """Token tensors of one split part; ``dataset[list_of_rows]`` returns a whole batch as a dict.

    Args:
        tensors: name -> (n, ...) tensor, all with the same first dimension, on one device.
        trim: names of (n, t) tensors whose leading columns are dropped from a batch where ``mask`` is 0 in every
            row. Exact for T5, whose attention sees only relative positions between real tokens, and the main
            saving on short histories (Beauty's median user has 6 of 20 history items). The width is found on the
            host from each row's first real column, counted once here, so a batch never reads the device (no
            synchronisation when the tensors live on a GPU).
        mask: the (n, t) tensor that marks real tokens, for ``trim``.
        derive: computes more tensors of every batch from its stored ones, so a part stores only what they are
            computed from: a history of 20 items is 20 int32 values instead of 2 x 80 int64 tokens and mask, 16x
            less memory (what lets 10^7 interactions train on one machine). ``trim`` and ``mask`` may name derived
            tensors; the first real columns are then counted once here, in chunks.
        chunk_rows: rows per chunk when counting the first real columns of derived tensors.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        *,
        trim: tuple[str, ...] = (),
        mask: str = "attention_mask",
        derive: Derived | None = None,
        chunk_rows: int = 1 << 16,
    ) -> None:
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))
        self.trim, self.mask, self.derive = trim, mask, derive
        self.first_real: torch.Tensor | None = None  # (n,) int64 on the CPU: a row's first real column
        if trim:
            starts = []
            for begin in range(0, max(self.n, 1), chunk_rows):
                real = self._gather(torch.arange(begin, min(begin + chunk_rows, self.n)))[mask].bool().cpu()
                # argmax finds the first True; a row with none counts as starting past the end.
                starts.append(torch.where(real.any(1), real.int().argmax(1), real.shape[1]))
            self.first_real = torch.cat(starts)

    def __len__(self) -> int:
        return self.n

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str) -> TokenBatches:
        """The same part with its tensors on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = copy.copy(self)  # the row starts stay on the host
        moved.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        moved.derive = None if self.derive is None else self.derive.to(device)
        return moved

    def _gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``index`` (on this part's device) of every stored and derived tensor, untrimmed."""
        batch = {k: v[index] for k, v in self.tensors.items()}
        if self.derive is not None:
            batch.update(self.derive(batch))
        return batch

    def materialize(self) -> dict[str, torch.Tensor]:
        """Every row of every stored and derived tensor, untrimmed (small parts, tests and notebooks)."""
        return self._gather(torch.arange(self.n, device=self.device))

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        device = self.device
        if device.type == "cuda":  # pinned, so the copy of the row indices is asynchronous
            batch_index = index.pin_memory().to(device, non_blocking=True)
        else:
            batch_index = index.to(device)
        batch = self._gather(batch_index)
        if self.trim:
            start = int(self.first_real[index].min()) if len(index) else 0
            if start >= batch[self.mask].shape[1]:  # no real token in the batch at all: keep every column
                start = 0
            batch.update({k: batch[k][:, start:] for k in self.trim})
        return batch


class BatchShards(DistributedSampler):
    """Yields lists of row indices, one list per batch, for this process only.

    A ``DistributedSampler`` subclass so Lightning leaves it in place under DDP. Training shuffles per epoch and
    gives every rank the same number of batches; evaluation shards rows without repeating any, so metrics summed
    across ranks count every user exactly once.
    """

    def __init__(self, n: int, *, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        replicas = torch.distributed.get_world_size() if distributed else 1
        rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(range(n), num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        self.n, self.batch_size = n, batch_size

    def _rows(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
            per_rank = self.n // self.num_replicas
            return order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return torch.arange(self.rank, self.n, self.num_replicas)

    def __iter__(self):
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch, even when the iterator
        # was created earlier (as on resuming from a checkpoint).
        for chunk in self._rows().split(self.batch_size):
            yield chunk.tolist()

    def __len__(self) -> int:
        rows = self.n // self.num_replicas if self.shuffle else len(range(self.rank, self.n, self.num_replicas))
        return math.ceil(rows / self.batch_size)


def batch_loader(data: TokenBatches, *, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """A DataLoader that yields whole batches of ``data`` (one tensor gather each), sharded by :class:`BatchShards`.

    Host batches are pinned for asynchronous copies when CUDA is present; a part already on the GPU is gathered
    there, in this process (workers cannot share its tensors).
    """
    on_host = data.device.type == "cpu"
    return DataLoader(
        data,
        sampler=BatchShards(len(data), batch_size=batch_size, shuffle=shuffle, seed=0),
        batch_size=None,
        num_workers=num_workers if on_host else 0,
        pin_memory=on_host and torch.cuda.is_available(),
    )


class SplitDataModule(pl.LightningDataModule):
    """A DataModule whose ``setup`` fills :attr:`parts` (``train`` / ``valid`` / ``test`` -> :class:`TokenBatches`).

    The loaders read ``batch_size``, ``eval_batch_size``, ``num_workers`` and, where the subclass has it,
    ``on_device`` from its hyperparameters. With ``on_device`` the parts move once to the trainer's device (a GPU)
    and every batch is gathered there: no host-to-device copy of a batch, no collation, no worker processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[str, TokenBatches] = {}

    def _device(self) -> torch.device:
        """Where the loaders' batches are gathered: the trainer's device with ``on_device``, else the CPU."""
        trainer = getattr(self, "trainer", None)
        if self.hparams.get("on_device") and trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def _loader(self, part: str, *, shuffle: bool, batch_size: int) -> DataLoader:
        if part not in self.parts:
            raise RuntimeError(f"no {part!r} part: call setup() first")
        self.parts[part] = self.parts[part].to(self._device())
        return batch_loader(self.parts[part], batch_size=batch_size, shuffle=shuffle,
                            num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False, batch_size=self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.hparams.eval_batch_size)


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


def item_sequence_parts(dataset: SequenceDataset, *, max_len: int) -> dict[str, TokenBatches]:
    """The split parts of models that read item indices and train at every position (SASRec, parallel IDs).

    ``train``: :func:`training_rows`; ``valid`` / ``test``: exactly the samples of :func:`genrec.data.leave_one_out`
    as ``users``, ``history`` (b, max_len) left-padded with -1 and ``target`` (b,).
    """
    split = leave_one_out(dataset, max_len=max_len)
    parts = {"train": TokenBatches(training_rows(dataset.sequences, max_len=max_len))}
    for part in ("valid", "test"):
        samples = getattr(split, part)
        parts[part] = TokenBatches(
            {
                "users": torch.from_numpy(samples.users),
                "history": torch.from_numpy(samples.history),
                "target": torch.from_numpy(samples.target),
            }
        )
    return parts
