"""The DataModule of the generative recommender: histories and targets as semantic-ID tokens.

A split part stores each sample's item indices (int32), and a batch's tokens come from one table lookup when the
batch is gathered (no Python work per sample, no per-sample objects), so training is bound by the model, not by
collation, and a split takes 16x less memory than its tokens would: 10^7 interactions fit on one machine.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from genrec.data import Samples, leave_one_out, load_dataset
from genrec.data.dataset import same_dataset
from genrec.data.loading import SplitDataModule, TokenBatches, item_sequence_parts
from genrec.seq2seq.catalogue import Catalogue
from genrec.seq2seq.vocab import PAD_ID, CodeVocab
from genrec.features import FeatureSource
from genrec.tokenizer.recipe import NO_DATASET, RecipeError, TokenizerSettings, run_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Modality:
    """A semantic-ID artifact read by the encoder as one more modality of every history item (MSCGRec)."""

    tokenizer: str
    """Artifact folder, e.g. ``tokenizers/beauty-rqkmeans``."""
    tokenizer_config: str | None = None
    """YAML config that fits ``tokenizer`` when it does not exist yet."""


def _named_tokenizer(
    dataset: str | None, tokenizer: str | None, config: str | None, settings: TokenizerSettings | None
) -> tuple[str, str]:
    """:func:`genrec.tokenizer.recipe.run_tokenizer`'s artifact, and the command that fits it (for errors)."""
    if dataset is None:
        raise RecipeError(NO_DATASET)
    named = run_tokenizer(dataset, tokenizer, config, settings)
    how = ("python train.py fit " + " ".join(named.fit_args)) if named.fit_args else "a tokenizer config"
    return named.path, how


def _load_artifact(tokenizer: str, how: str, n_items: int, dataset: str):
    """Loads a tokenizer artifact fitted on ``dataset`` (``train.py`` fits a missing one first: genrec.pipeline)."""
    from genrec.tokenizer.artifact import load_tokenizer

    if not Path(tokenizer).exists():
        raise FileNotFoundError(f"tokenizer artifact {tokenizer!r} does not exist: fit it first ({how})")
    ids = load_tokenizer(tokenizer)
    fitted_on = (ids.config.get("data") or {}).get("dataset")
    if fitted_on is not None and not same_dataset(fitted_on, dataset):
        raise ValueError(
            f"tokenizer {tokenizer} was fitted on dataset {fitted_on!r} (its config.json), not on {dataset!r}: its "
            "codes belong to other items; fit one for this dataset"
        )
    if ids.n_items != n_items:
        raise ValueError(
            f"tokenizer {tokenizer} has {ids.n_items} items but dataset {dataset!r} has {n_items}: it was fitted on "
            "another dataset"
        )
    return ids


def _plain_settings(hparams) -> None:
    """Stores the tokenizer settings as a plain dict, so that checkpoints load with ``weights_only``."""
    settings = hparams.get("tokenizer_settings")
    if settings is not None and not isinstance(settings, dict):
        hparams["tokenizer_settings"] = dataclasses.asdict(settings)


def encode_histories(
    history: torch.Tensor, *, table: torch.Tensor, vocab: CodeVocab, users: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Encoder tokens of item histories: the one place that turns histories into model input.

    Args:
        history: (b, n) int64 item indices, left-padded with -1 (the most recent item last).
        table: (n_items + 1, l) from :func:`genrec.seq2seq.catalogue.item_token_table`.
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


def token_items(history: torch.Tensor, *, vocab: CodeVocab, width: int) -> torch.Tensor:
    """The history item behind each encoder token of :func:`encode_histories`' layout.

    Args:
        history: (b, n) int64 item indices, left-padded with -1, as given to :func:`encode_histories`.
        vocab: the token vocabulary the tokens were made with.
        width: columns of the (possibly left-trimmed, :class:`genrec.data.loading.TokenBatches`) ``input_ids``.

    Returns:
        (b, width) int64: the item each token belongs to, -1 for padding and for the user token.
    """
    items = history.repeat_interleave(vocab.tokens_per_item, dim=1)
    if vocab.n_user_buckets:
        items = torch.cat([items.new_full((len(items), 1), -1), items], dim=1)
    if width > items.shape[1]:
        raise ValueError(f"input_ids have {width} columns, more than the {items.shape[1]} of these histories")
    return items[:, items.shape[1] - width :]


class SemanticIdData(SplitDataModule):
    """Leave-one-out samples of a dataset with histories and targets as semantic-ID tokens.

    The tokenizer artifact is loaded at construction (its level sizes define the model's vocabulary, linked into
    the model by the CLI). It must exist: ``train.py`` fits a missing one from ``tokenizer_config`` before it builds
    this object (:mod:`genrec.pipeline`); the DataModule itself never trains anything.

    Args:
        dataset: bundled name or path (None only in a config that is given one: ``--data.dataset``).
        tokenizer: artifact folder, e.g. ``tokenizers/beauty-rqkmeans``: the IDs the model generates; None: the
            one named from the dataset and ``tokenizer_config``'s settings (:mod:`genrec.tokenizer.recipe`).
        tokenizer_config: YAML config that fits ``tokenizer``; ``train.py`` runs it when the artifact is missing.
        tokenizer_settings: with ``tokenizer`` None, settings over ``tokenizer_config``'s (sizes, text template).
        input_modalities: more semantic-ID artifacts whose codes follow each history item's ID in the encoder
            input (MSCGRec: text and image codes beside the collaborative ID); never decoded.
        content_sources: item features (e.g. text embeddings) offered to models that read item content
            (ColaRec); handed to the model in :attr:`catalogue`.
        max_len: history length in items.
        user_buckets: hashed user-id tokens prepended to the history (0: none; TIGER used 2000).
        batch_size: training batch size.
        eval_batch_size: validation / test batch size.
        num_workers: DataLoader workers (0 is right: batches are single tensor gathers).
        on_device: keep the samples on the trainer's device (a GPU) and gather batches there
            (:class:`genrec.data.loading.SplitDataModule`); Beauty's parts take about 20 MB.
    """

    def __init__(
        self,
        *,
        dataset: str | None = "amazon-beauty",
        tokenizer: str | None = "tokenizers/beauty-rqkmeans",
        tokenizer_config: str | None = None,
        tokenizer_settings: TokenizerSettings | None = None,
        input_modalities: list[Modality] | None = None,
        content_sources: list[FeatureSource] | None = None,
        max_len: int = 20,
        user_buckets: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _plain_settings(self.hparams)
        tokenizer, how = _named_tokenizer(dataset, tokenizer, tokenizer_config, tokenizer_settings)
        self.dataset = load_dataset(dataset)
        n_items = self.dataset.n_items
        semantic_ids = _load_artifact(tokenizer, how, n_items, dataset)
        inputs = [_load_artifact(*_named_tokenizer(dataset, m.tokenizer, m.tokenizer_config, None), n_items, dataset)
                  for m in input_modalities or ()]
        self.vocab = CodeVocab(
            tuple(semantic_ids.level_sizes), user_buckets, tuple(tuple(m.level_sizes) for m in inputs)
        )
        content = None
        if content_sources:
            from genrec.features import load_features

            content = load_features(dataset, list(content_sources))
            if content.shape[0] != n_items:
                raise ValueError(f"content features have {content.shape[0]} rows, dataset {n_items} items")
        self.catalogue = Catalogue(
            item_codes=semantic_ids.codes,
            input_codes=tuple(m.codes for m in inputs),
            content=content,
            semantic_ids=semantic_ids,
            input_artifacts=tuple(inputs),
        )

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
        """Width of the catalogue's content features (0: none)."""
        content = self.catalogue.content
        return 0 if content is None else int(content.shape[1])

    def token_table(self) -> torch.Tensor:
        """(n_items + 1, tokens_per_item) encoder tokens of every item (see :func:`genrec.seq2seq.catalogue.item_token_table`)."""
        return self.catalogue.token_table(self.vocab)

    def encode_samples(self, samples: Samples, tokens: HistoryTokens | None = None) -> TokenBatches:
        """A split part whose batches carry tokens, built from the samples' item indices as each batch is gathered
        (:class:`HistoryTokens`): the part stores only ``history`` (int32), ``users`` and ``target``.

        Returns:
            A :class:`TokenBatches` whose batches hold ``input_ids`` ((b, [1 +] max_len * tokens_per_item) int64
            left-padded with pad, trimmed of all-padding columns), ``attention_mask`` (same shape) int64, ``labels``
            (b, l) target tokens, ``target`` (b,) target item, ``users`` (b,) user index, ``history`` (b, max_len)
            int64 item indices (-1 padded). ``tokens``: the derivation to share between parts (default: a new one
            over :meth:`token_table`).
        """
        stored = {
            # int32 halves the largest tensor; item indices stay far below 2^31.
            "history": torch.from_numpy(samples.history.astype(np.int32)),
            "users": torch.from_numpy(samples.users),
            "target": torch.from_numpy(samples.target),
        }
        tokens = tokens or HistoryTokens(self.token_table(), self.vocab)
        return TokenBatches(stored, trim=("input_ids", "attention_mask"), derive=tokens)

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        split = leave_one_out(self.dataset, max_len=self.hparams.max_len)
        empty = np.flatnonzero(split.test.lengths == 0)
        if len(empty):
            raise ValueError(f"{len(empty)} test users have an empty history (e.g. user index {empty[0]})")
        tokens = HistoryTokens(self.token_table(), self.vocab)  # one token table for the three parts
        self.parts = {name: self.encode_samples(getattr(split, name), tokens) for name in ("train", "valid", "test")}
        log.info("samples: %s", {k: len(v) for k, v in self.parts.items()})


class HistoryTokens:
    """The tokens of a batch of samples, from their item indices: :func:`encode_histories` and the target's ID.

    Args:
        table: (n_items + 1, tokens_per_item) from :func:`genrec.seq2seq.catalogue.item_token_table`.
        vocab: the token vocabulary (its levels are the target's ID tokens; its user buckets the user token).
    """

    def __init__(self, table: torch.Tensor, vocab: CodeVocab) -> None:
        self.table, self.vocab = table, vocab

    def to(self, device: torch.device) -> HistoryTokens:
        return HistoryTokens(self.table.to(device), self.vocab)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        history = batch["history"].long()
        return {
            **encode_histories(history, table=self.table, vocab=self.vocab, users=batch["users"]),
            "labels": self.table[batch["target"], : self.vocab.levels],
            "history": history,
        }


class SemanticIdSequences(SplitDataModule):
    """One row of item indices per user with the catalogue's semantic IDs, for causal models trained at every
    position (the parallel-ID model, :mod:`genrec.seq2seq.parallel`).

    The rows and samples are SASRec's (:func:`genrec.data.loading.item_sequence_parts`): training ``input`` /
    ``labels`` (b, max_len), evaluation ``history`` (b, max_len) left-padded with -1 and ``target`` (b,), plus
    ``users``. The IDs travel in :attr:`catalogue`; the artifact must exist (``train.py`` fits a missing one from
    ``tokenizer_config`` first, :mod:`genrec.pipeline`).

    Args:
        dataset: bundled name or path (None only in a config that is given one: ``--data.dataset``).
        tokenizer: artifact folder, e.g. ``tokenizers/beauty-text-cooc-pq32``; None: the one named from the dataset
            and ``tokenizer_config``'s settings (:mod:`genrec.tokenizer.recipe`).
        tokenizer_config: YAML config that fits ``tokenizer``; ``train.py`` runs it when the artifact is missing.
        tokenizer_settings: with ``tokenizer`` None, settings over ``tokenizer_config``'s (sizes, text template).
        max_len: history length in items.
        batch_size: training rows (users) per batch.
        eval_batch_size: validation / test batch size.
        num_workers: DataLoader workers (0 is right: batches are single tensor gathers).
    """

    def __init__(
        self,
        *,
        dataset: str | None = "amazon-beauty",
        tokenizer: str | None = "tokenizers/beauty-text-cooc-pq32",
        tokenizer_config: str | None = None,
        tokenizer_settings: TokenizerSettings | None = None,
        max_len: int = 50,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.save_hyperparameters()
        _plain_settings(self.hparams)
        tokenizer, how = _named_tokenizer(dataset, tokenizer, tokenizer_config, tokenizer_settings)
        self.dataset = load_dataset(dataset)
        semantic_ids = _load_artifact(tokenizer, how, self.dataset.n_items, dataset)
        self.catalogue = Catalogue(item_codes=semantic_ids.codes, semantic_ids=semantic_ids)

    # Read by the CLI's argument links (see genrec/cli.py).
    @property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(self.catalogue.semantic_ids.level_sizes)

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
