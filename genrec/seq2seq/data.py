"""The DataModule of the generative recommender: histories and targets as semantic-ID tokens, built once.

Every sample's tokens come from one table lookup over the whole split (no Python work per sample), and loaders
yield whole batches by indexing those tensors, so training is bound by the model, not by collation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from einops import rearrange
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genrec.data import Samples, leave_one_out, load_dataset
from genrec.seq2seq.vocab import PAD_ID, CodeVocab
from genrec.tokenizer.features import FeatureSource

log = logging.getLogger(__name__)


@dataclass
class Modality:
    """A semantic-ID artifact read by the encoder as one more modality of every history item (MSCGRec)."""

    tokenizer: str
    """Artifact folder, e.g. ``tokenizers/beauty-rqkmeans``."""
    tokenizer_config: str | None = None
    """YAML config that fits ``tokenizer`` when it does not exist yet."""


def _load_artifact(tokenizer: str, tokenizer_config: str | None, n_items: int, dataset: str):
    """Loads a tokenizer artifact, fitting it first with ``tokenizer_config`` when missing."""
    from genrec.tokenizer.artifact import load_tokenizer

    if not Path(tokenizer).exists():
        if tokenizer_config is None:
            raise FileNotFoundError(f"tokenizer artifact {tokenizer!r} does not exist and no tokenizer_config builds it")
        log.info("tokenizer %s is missing: fitting it with %s", tokenizer, tokenizer_config)
        from genrec.cli import main

        main(["fit", "--config", tokenizer_config])
        if not Path(tokenizer).exists():
            raise FileNotFoundError(f"{tokenizer_config} ran but did not write {tokenizer!r}: check its output_dir")
    ids = load_tokenizer(tokenizer)
    if ids.n_items != n_items:
        raise ValueError(
            f"tokenizer {tokenizer} has {ids.n_items} items but dataset {dataset!r} has {n_items}: it was fitted on "
            "another dataset"
        )
    return ids


def item_token_table(
    vocab: CodeVocab, item_codes: torch.Tensor, input_codes: tuple[torch.Tensor, ...] | list[torch.Tensor] = ()
) -> torch.Tensor:
    """Encoder tokens of every item, plus a padding row so that item index -1 maps to pad tokens.

    Args:
        vocab: the token vocabulary.
        item_codes: (n_items, l) int64 semantic IDs (the ones the decoder generates).
        input_codes: per input-only modality of ``vocab``, (n_items, l_m) int64 codes, appended after the ID.

    Returns:
        (n_items + 1, vocab.tokens_per_item) int64; row ``n_items`` (index -1) is all pad.
    """
    if len(input_codes) != len(vocab.input_level_sizes):
        raise ValueError(f"vocab has {len(vocab.input_level_sizes)} input modalities, got codes for {len(input_codes)}")
    table = torch.cat(
        [vocab.encode(item_codes)] + [vocab.encode_input(m, c.to(item_codes.device)) for m, c in enumerate(input_codes)],
        dim=1,
    )
    return torch.cat([table, torch.full((1, table.shape[1]), PAD_ID, dtype=table.dtype, device=table.device)])


def encode_histories(
    history: torch.Tensor, *, table: torch.Tensor, vocab: CodeVocab, users: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Encoder tokens of item histories: the one place that turns histories into model input.

    Args:
        history: (b, n) int64 item indices, left-padded with -1 (the most recent item last).
        table: (n_items + 1, l) from :func:`item_token_table`.
        vocab: the token vocabulary; with user buckets, a hashed user token comes first.
        users: (b,) int64 user indices, needed when ``vocab`` has user buckets.

    Returns:
        ``input_ids`` (b, [1 +] n * l) int64 left-padded with pad, ``attention_mask`` (same shape) int64.
    """
    input_ids = rearrange(table[history], "b n l -> b (n l)")
    if vocab.n_user_buckets:
        if users is None:
            raise ValueError("this vocabulary has user buckets: pass the users' indices")
        input_ids = torch.cat([vocab.user_token(users).unsqueeze(1), input_ids], dim=1)
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD_ID).long()}


class TokenBatches(Dataset):
    """Token tensors of one split part; ``dataset[list_of_rows]`` returns a whole batch as a dict.

    Args:
        tensors: name -> (n, ...) tensor, all with the same first dimension.
        trim: names of left-padded (n, t) tensors whose leading columns are dropped from a batch where ``mask`` is 0
            in every row. Exact for T5, whose attention sees only relative positions between real tokens, and the
            main saving on short histories (Beauty's median user has 6 of 20 history items). It is done here, on
            the host, so the training step needs no device-to-host read to find the width.
        mask: the (n, t) tensor that marks real tokens, for ``trim``.
    """

    def __init__(
        self, tensors: dict[str, torch.Tensor], *, trim: tuple[str, ...] = (), mask: str = "attention_mask"
    ) -> None:
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))
        self.trim, self.mask = trim, mask

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        batch = {k: v[index] for k, v in self.tensors.items()}
        if self.trim:
            real = batch[self.mask].bool().any(dim=0)
            start = int(real.int().argmax()) if bool(real.any()) else 0
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
    """A DataLoader that yields whole batches of ``data`` (one tensor gather each), sharded by :class:`BatchShards`."""
    return DataLoader(
        data,
        sampler=BatchShards(len(data), batch_size=batch_size, shuffle=shuffle, seed=0),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


class SemanticIdData(pl.LightningDataModule):
    """Leave-one-out samples of a dataset with histories and targets as semantic-ID tokens.

    The tokenizer artifact is loaded at construction (its level sizes define the model's vocabulary, linked into
    the model by the CLI); when it is missing and ``tokenizer_config`` is given, it is fitted first with that
    config, exactly as ``python train.py fit --config <tokenizer_config>`` would.

    Args:
        dataset: bundled name or path.
        tokenizer: artifact folder, e.g. ``tokenizers/beauty-rqkmeans``: the IDs the model generates.
        tokenizer_config: YAML config that fits ``tokenizer`` when it does not exist yet.
        input_modalities: more semantic-ID artifacts whose codes follow each history item's ID in the encoder
            input (MSCGRec: text and image codes beside the collaborative ID); never decoded.
        content_sources: item features (e.g. text embeddings) offered to models that read item content
            (ColaRec); exposed as ``item_content`` and ``content_dim``.
        max_len: history length in items.
        user_buckets: hashed user-id tokens prepended to the history (0: none; TIGER used 2000).
        batch_size: training batch size.
        eval_batch_size: validation / test batch size.
        num_workers: DataLoader workers (0 is right: batches are single tensor gathers).
    """

    def __init__(
        self,
        *,
        dataset: str = "amazon-beauty",
        tokenizer: str = "tokenizers/beauty-rqkmeans",
        tokenizer_config: str | None = None,
        input_modalities: list[Modality] | None = None,
        content_sources: list[FeatureSource] | None = None,
        max_len: int = 20,
        user_buckets: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset = load_dataset(dataset)
        n_items = self.dataset.n_items
        self.semantic_ids = _load_artifact(tokenizer, tokenizer_config, n_items, dataset)
        self.input_ids = [_load_artifact(m.tokenizer, m.tokenizer_config, n_items, dataset) for m in input_modalities or ()]
        self.vocab = CodeVocab(
            tuple(self.semantic_ids.level_sizes), user_buckets, tuple(tuple(m.level_sizes) for m in self.input_ids)
        )
        self.item_content: torch.Tensor | None = None
        if content_sources:
            from genrec.tokenizer.features import load_features

            self.item_content = load_features(dataset, list(content_sources))
            if self.item_content.shape[0] != n_items:
                raise ValueError(f"content features have {self.item_content.shape[0]} rows, dataset {n_items} items")
        self.parts: dict[str, TokenBatches] = {}

    # Read by the CLI's argument links (see genrec/cli.py): the model's vocabulary derives from the artifact.
    @property
    def level_sizes(self) -> tuple[int, ...]:
        return self.vocab.level_sizes

    @property
    def n_user_buckets(self) -> int:
        return self.vocab.n_user_buckets

    @property
    def input_level_sizes(self) -> tuple[tuple[int, ...], ...]:
        return self.vocab.input_level_sizes

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @property
    def max_len(self) -> int:
        return self.hparams.max_len

    @property
    def content_dim(self) -> int:
        return 0 if self.item_content is None else int(self.item_content.shape[1])

    @property
    def item_codes(self) -> torch.Tensor:
        """(n_items, l) int64 semantic ID of every item."""
        return self.semantic_ids.codes

    def token_table(self) -> torch.Tensor:
        """(n_items + 1, tokens_per_item) encoder tokens of every item (see :func:`item_token_table`)."""
        return item_token_table(self.vocab, self.item_codes, [m.codes for m in self.input_ids])

    def encode_samples(self, samples: Samples) -> dict[str, torch.Tensor]:
        """Tokenises a split part.

        Returns:
            ``input_ids`` (n, [1 +] max_len * tokens_per_item) int64 left-padded with pad, ``attention_mask`` (same
            shape) int64, ``labels`` (n, l) target tokens, ``target`` (n,) target item, ``users`` (n,) user index,
            ``history`` (n, max_len) item indices (-1 padded).
        """
        table = self.token_table()
        history = torch.from_numpy(samples.history)
        users = torch.from_numpy(samples.users)
        target = torch.from_numpy(samples.target)
        return {
            **encode_histories(history, table=table, vocab=self.vocab, users=users),
            "labels": table[target, : self.vocab.levels],
            "target": target,
            "users": users,
            "history": history,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        split = leave_one_out(self.dataset, max_len=self.hparams.max_len)
        empty = np.flatnonzero(split.test.lengths == 0)
        if len(empty):
            raise ValueError(f"{len(empty)} test users have an empty history (e.g. user index {empty[0]})")
        self.parts = {
            name: TokenBatches(self.encode_samples(getattr(split, name)), trim=("input_ids", "attention_mask"))
            for name in ("train", "valid", "test")
        }
        log.info("samples: %s", {k: len(v) for k, v in self.parts.items()})

    def _loader(self, part: str, *, shuffle: bool, batch_size: int) -> DataLoader:
        return batch_loader(self.parts[part], batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False, batch_size=self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.hparams.eval_batch_size)
