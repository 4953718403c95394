"""Recommendations for every request of a run, sharded across devices and nodes by Lightning's predict loop.

Each process (rank) of a ``Trainer(strategy="ddp", ...)`` answers its share of the batches a single process
would make (:class:`BatchBlocks`: batch ``k`` goes to rank ``k % world``, no request twice, none padded in) with
the same :class:`~genrec.seq2seq.inference.Recommender` logic as the single-process path, and
:class:`ShardWriter` writes its lines, each tagged with its global position, to a shard file as its batches
finish. When every rank is done, rank 0 merges the shards in position order (:func:`merge_shards`): the output is
the single-process ``recommend.py`` output with the same batch size, byte for byte, error lines in their places,
and the shards are removed.

Requests are built lazily from their position (:class:`PositionedRequests`), so a rank parses only its own input
lines: each unknown-item warning is printed once, by the rank that answers the line. The shards live in
``OUTPUT.shards/`` beside the output, which must be on a file system every node sees.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genrec.seq2seq.inference import Line, Recommender, Request, is_blank

Positioned = tuple[int, "Request | Line"]
"""A request (or an error line, which passes through) with its global position in the output."""


class PositionedRequests(Dataset):
    """Requests by global position, built on access; ``requests[rows]`` returns a whole batch.

    Args:
        count: how many requests (output lines) the run has.
        build: position -> the request at that position, or its error line.
    """

    def __init__(self, count: int, build: Callable[[int], Request | Line]) -> None:
        self.count, self.build = count, build

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: list[int]) -> list[Positioned]:
        return [(p, self.build(p)) for p in rows]

    @classmethod
    def of_users(cls, recommender: Recommender, users: list | None, *, holdout: int) -> PositionedRequests:
        """Dataset users (all when ``users`` is None) with their full sequences less ``holdout`` items, as
        :meth:`Recommender.dataset_requests` gives them."""
        if holdout < 0:
            raise ValueError(f"holdout must be >= 0, got {holdout}")
        ids = recommender.dataset.user_ids if users is None else list(users)
        return cls(len(ids), lambda p: recommender.dataset_request(ids[p], holdout=holdout))

    @classmethod
    def of_file(cls, recommender: Recommender, path: str | Path) -> PositionedRequests:
        """The JSON lines of a file (:meth:`Recommender.parse_line`), blank lines skipped as the single-process path
        skips them. The lines are held as bytes and parsed when their rank reads them."""
        with open(path, "rb") as f:
            lines = [(number, text) for number, text in enumerate(f, start=1) if not is_blank(text)]
        source = str(path)
        return cls(len(lines), lambda p: recommender.parse_line(lines[p][1], lines[p][0], source))


def _as_given(batch: list[Positioned]) -> list[Positioned]:
    """The DataLoader's collate function: a batch of requests is already what ``predict_step`` reads."""
    return batch


class BatchBlocks(DistributedSampler):
    """Yields lists of positions, one list per batch, for this process only: the batches of a single-process run
    (consecutive blocks of ``batch_size`` positions) dealt to the ranks in turn, none twice, none padded in.

    A batch of the same requests is the same computation as in one process (the same shapes, so the same kernels):
    the merged output equals the single-process output with the same ``batch_size`` bit for bit. Rows dealt one by
    one (:class:`genrec.data.loading.BatchShards`) would change each batch's make-up, and with it the last bits of
    some scores. A ``DistributedSampler``, so Lightning keeps it rather than putting in its own (which would pad the
    last batches with repeated requests). A rank with no block (fewer batches than ranks) gets one empty batch: it
    then runs the predict hooks, writes its empty shard and meets the others at the barrier, where Lightning would
    skip the loop of a rank without batches and leave the others waiting.
    """

    def __init__(self, n: int, *, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        replicas = torch.distributed.get_world_size() if distributed else 1
        rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(range(n), num_replicas=replicas, rank=rank, shuffle=False, drop_last=False)
        self.n, self.batch_size = n, batch_size

    def _blocks(self) -> range:
        return range(self.rank, math.ceil(self.n / self.batch_size), self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        blocks = self._blocks()
        if not blocks:
            yield []
        for k in blocks:
            yield list(range(k * self.batch_size, min((k + 1) * self.batch_size, self.n)))

    def __len__(self) -> int:
        return max(len(self._blocks()), 1)


class RequestData(pl.LightningDataModule):
    """The predict loader over :class:`PositionedRequests`, sharded across the ranks by :class:`BatchBlocks`, which
    is built in :meth:`predict_dataloader`, once the process group exists."""

    def __init__(self, requests: PositionedRequests, *, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.requests, self.batch_size = requests, batch_size

    def predict_dataloader(self) -> DataLoader:
        sampler = BatchBlocks(len(self.requests), batch_size=self.batch_size)
        return DataLoader(self.requests, sampler=sampler, batch_size=None, collate_fn=_as_given)

    def transfer_batch_to_device(self, batch: list[Positioned], device: torch.device, dataloader_idx: int) -> list:
        return batch  # host data: Recommender.encode builds the batch's tensors on the device


class BatchRecommender(pl.LightningModule):
    """A :class:`Recommender` as a LightningModule: ``predict_step`` answers a batch of positioned requests.

    Args:
        recommender: the loaded recommender; its model becomes this module's submodule, so the strategy moves it
            to the rank's device.
        top_k: items per request.
        beam_width: beams kept per level (T5 systems).
    """

    def __init__(self, recommender: Recommender, *, top_k: int, beam_width: int) -> None:
        super().__init__()
        if top_k < 1 or beam_width < top_k:
            raise ValueError(f"need beam_width >= top_k >= 1, got {beam_width=}, {top_k=}")
        self.recommender = recommender
        self.model = recommender.model
        self.top_k, self.beam_width = top_k, beam_width

    def on_predict_start(self) -> None:
        self.recommender.to(self.device)  # the decoding tables follow the model the strategy moved

    def predict_step(self, batch: list[Positioned]) -> list[tuple[int, Line]]:
        """(position, output line) of each request of the batch, in one model call."""
        positions = [p for p, _ in batch]
        lines = self.recommender.run([entry for _, entry in batch], top_k=self.top_k, beam_width=self.beam_width,
                                     batch_size=max(len(batch), 1))
        return list(zip(positions, lines))


def shard_path(output: str | Path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its shard of ``output``: ``OUTPUT.shards/rank-R-of-W.jsonl``."""
    output = Path(output)
    return output.with_name(output.name + ".shards") / f"rank-{rank:05d}-of-{world_size:05d}.jsonl"


@dataclass
class MergeSummary:
    """What a merge wrote.

    Attributes:
        users: output lines.
        errors: error lines among them.
    """

    users: int
    errors: int


def _shard_lines(path: Path) -> Iterator[tuple[int, Line, str]]:
    """(position, line, where) of a shard's lines, checked to be in strictly increasing position order."""
    previous = -1
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            where = f"{path} line {number}"
            try:
                record = json.loads(text)
                position, line = record["position"], record["line"]
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{where}: expected {{\"position\": n, \"line\": {{...}}}} ({e})") from None
            if not isinstance(position, int) or position <= previous:
                raise ValueError(f"{where}: position {position!r} after {previous}: a shard is in increasing order")
            previous = position
            yield position, line, where


def merge_shards(output: str | Path, *, world_size: int, total: int) -> MergeSummary:
    """Writes ``output`` from the shards of ``world_size`` ranks in position order, then removes the shards.

    The shards are read side by side in one pass (a heap merge: memory per shard, not per line), and their
    positions must be exactly ``0 .. total - 1``. The output is written under a temporary name and renamed, so a
    failed merge leaves no partial output and keeps the shards.

    Raises:
        FileNotFoundError: a rank's shard is missing (the rank did not finish), naming the file.
        ValueError: a shard line is malformed or out of order, or a position is missing or repeated, naming where.
    """
    output = Path(output)
    paths = [shard_path(output, rank, world_size) for rank in range(world_size)]
    for rank, path in enumerate(paths):
        if not path.is_file():
            raise FileNotFoundError(f"cannot merge {output}: shard {path} of rank {rank} is missing (did it finish?)")
    partial = output.with_name(output.name + ".partial")
    users = errors = 0
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for position, line, where in heapq.merge(*map(_shard_lines, paths), key=lambda entry: entry[0]):
                if position < users:
                    raise ValueError(f"cannot merge {output}: position {position} is repeated ({where})")
                if position > users:
                    raise ValueError(f"cannot merge {output}: position {users} is missing (the next, {position}, "
                                     f"is {where})")
                # json.loads gives back what json.dumps wrote (floats by their shortest repr), so this is the
                # rank's encoding of the line, and the single-process one.
                out.write(json.dumps(line, allow_nan=False) + "\n")
                users += 1
                errors += "error" in line
        if users != total:
            raise ValueError(f"cannot merge {output}: the shards hold {users} lines, expected {total}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, output)
    for path in paths:
        path.unlink()
    try:
        paths[0].parent.rmdir()
    except OSError:  # other files there (another run's shards): the folder stays
        pass
    return MergeSummary(users=users, errors=errors)


class ShardWriter(BasePredictionWriter):
    """Writes each rank's lines to its shard as batches finish; rank 0 merges the shards once every rank is done.

    Args:
        output: the final JSON-lines file (the shards go to ``OUTPUT.shards/``, :func:`shard_path`).
        total: requests in the run (the merge checks that every position came back once).

    After ``trainer.predict``, rank 0's :attr:`summary` says what was merged and :attr:`hashed_users` counts the
    requests of users outside the dataset on all ranks.
    """

    def __init__(self, output: str | Path, *, total: int) -> None:
        super().__init__(write_interval="batch")
        self.output, self.total = Path(output), total
        self.summary: MergeSummary | None = None
        self.hashed_users = 0
        self._file = None
        self._path: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._path = shard_path(self.output, trainer.global_rank, trainer.world_size)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Written under another name and renamed when complete: a shard under its own name is a finished one.
        self._file = open(self._path.with_suffix(".partial"), "w", encoding="utf-8")

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        for position, line in prediction:
            self._file.write(json.dumps({"position": position, "line": line}, allow_nan=False) + "\n")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._file.close()
        os.replace(self._path.with_suffix(".partial"), self._path)
        hashed = getattr(getattr(pl_module, "recommender", None), "hashed_users", 0)
        hashed = trainer.strategy.reduce(torch.tensor(hashed, device=pl_module.device), reduce_op="sum")
        self.hashed_users = int(hashed)
        trainer.strategy.barrier("genrec-shards-written")
        if trainer.is_global_zero:
            self.summary = merge_shards(self.output, world_size=trainer.world_size, total=self.total)
