"""Top-K recommendations for any item histories from a trained checkpoint: the library behind ``recommend.py``.

A request is a user and a history of *dataset* item ids; the answer is one JSON-ready dict per request, in request
order, with the top-K dataset item ids, their log-probabilities and (where the dataset has item text) titles.
Requests are encoded exactly as in training (:func:`genrec.seq2seq.data.encode_histories`: left padding to the
model's ``max_len``, the most recent items kept, the hashed user token first when the model has one) and decoded
in batches by constrained beam search (T5 systems) or by scoring the whole catalogue (the parallel-ID model,
:mod:`genrec.seq2seq.parallel`). Bad requests become error lines, never exceptions, so one bad user cannot
sink a batch.
"""

from __future__ import annotations

import json
import logging
import pickle
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.data import SequenceDataset, load_dataset
from genrec.data.dataset import same_dataset
from genrec.data.split import PAD_ITEM
from genrec.data.text import item_texts, title_field
from genrec.decoding import BeamSearchOutput
from genrec.seq2seq.data import encode_histories
from genrec.seq2seq.module import GenerativeRecommender
from genrec.seq2seq.parallel import ParallelIdRecommender, Ranking

MODELS = (GenerativeRecommender, ParallelIdRecommender)
"""The checkpoint classes recommend.py serves (and their subclasses, e.g. MMGRec's, which load as themselves)."""

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One user to recommend for.

    Attributes:
        user: the user as given (echoed in the answer).
        history: dense item indices, oldest first, unknown ids already removed (never empty).
        user_index: dense user index for the user-bucket token; for users outside the dataset a stable hash.
    """

    user: Any
    history: list[int]
    user_index: int


Line = dict[str, Any]
"""An output line: ``{"user", "items", "scores"[, "titles"]}`` or ``{"user"[, "line"], "error"}``."""


class IdLookup:
    """Dataset id -> dense index; an integer id also matches when written as a string (JSON keys, ``--users``)."""

    def __init__(self, ids: list) -> None:
        self.index = {raw: i for i, raw in reversed(list(enumerate(ids)))}  # the first occurrence wins
        for raw, i in list(self.index.items()):
            self.index.setdefault(str(raw), i)

    def get(self, raw: Any) -> int | None:
        # bool is an int subclass (True == 1): never an id.
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            return None
        found = self.index.get(raw)
        return self.index.get(str(raw)) if found is None else found


def _refuse_constant(name: str) -> None:
    """``json.loads``' hook for NaN / Infinity, which Python accepts but JSON does not (and could not echo back)."""
    raise ValueError(f"{name} is not a JSON value")


def is_blank(text: str | bytes) -> bool:
    """Whether an input line is blank, which gives no output line: only whitespace once decoded. A line that is
    not UTF-8 is not blank (it gives an error line)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return not text.strip()


def user_hash(user: Any) -> int:
    """A stable user index for users outside the dataset: their bucket is arbitrary, but the same on every run."""
    return zlib.crc32(json.dumps(user, sort_keys=True).encode())


def read_checkpoint(path: Path) -> dict:
    """The contents of a Lightning checkpoint, loaded safely: tensors and plain Python data only.

    ``weights_only=True`` refuses any pickled object that is not on torch's allow-list, so a crafted file cannot run
    code here; genrec's own checkpoints hold only such data (hyperparameters as plain dicts). mmap leaves the
    weights on disk; only the hyperparameters are read by the caller.

    Raises:
        ValueError: the file is empty, truncated or corrupt, or holds objects that are not plain data, with the
            file named.
    """
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): was it written completely?")
    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = ("holds objects other than tensors and plain data, refused" if isinstance(e, pickle.UnpicklingError)
                else "is not a readable PyTorch checkpoint (truncated or corrupt?)")
        raise ValueError(f"checkpoint {path} {what}: {first}") from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return saved


class Recommender:
    """A trained generative model (:data:`MODELS`) with the dataset that maps its item indices to ids and titles.

    Args:
        model: a model with its catalogue set (as restored from a checkpoint), on the device to run on.
        dataset: the dataset it was trained on (same items, same order).
        max_len: history length in items the model was trained with.
    """

    def __init__(self, model: GenerativeRecommender | ParallelIdRecommender, dataset: SequenceDataset, max_len: int) -> None:
        if model.item_codes is None:
            raise ValueError("the model has no catalogue (item codes): it cannot decode")
        if len(model.item_codes) != dataset.n_items:
            raise ValueError(
                f"the model's catalogue has {len(model.item_codes)} items but dataset {dataset.name!r} has "
                f"{dataset.n_items}: it was trained on another dataset (pass the right one with --dataset)"
            )
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.model = model.eval()
        # T5 systems read history tokens and decode by beam search; the parallel-ID model reads item indices.
        self.beam = isinstance(model, GenerativeRecommender)
        self.table: torch.Tensor | None = None  # (n_items + 1, tokens per item), T5 systems
        self.to(model.device)
        self.dataset = dataset
        self.max_len = max_len
        self.items = IdLookup(dataset.item_ids)
        self.users = IdLookup(dataset.user_ids)
        self.titles: list[str] | None = None
        field = title_field(dataset) if dataset.items is not None else None
        if field is not None:  # "title", or the item file's own title-like field (RecBole's movie_title)
            self.titles = item_texts(dataset, "{" + field + "}")[0]
        self.hashed_users = 0  # requests whose user is not in the dataset (matters only with user buckets)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        *,
        dataset: str | None = None,
        max_len: int | None = None,
        device: str | torch.device = "cpu",
    ) -> Recommender:
        """Loads a Lightning checkpoint of a :data:`MODELS` class trained with its semantic-ID datamodule.

        Args:
            checkpoint: the ``.ckpt`` file, read with ``weights_only=True`` (tensors and plain data only: a file that
                would run code when unpickled is refused, see :func:`read_checkpoint`).
            dataset: overrides the dataset recorded in the checkpoint's datamodule hyperparameters.
            max_len: overrides the history length recorded there.
            device: where the model runs.
        """
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
        saved = read_checkpoint(checkpoint)
        data_hparams = dict(saved.get("datamodule_hyper_parameters") or {})
        # LightningCLI records the model's class; the systems built on GenerativeRecommender load as themselves.
        class_path = (saved.get("hyper_parameters") or {}).get("_class_path")
        del saved
        model_class = GenerativeRecommender
        if class_path:
            import importlib

            module_name, _, name = class_path.rpartition(".")
            model_class = getattr(importlib.import_module(module_name), name)
            if not (isinstance(model_class, type) and issubclass(model_class, MODELS)):
                names = " or ".join(m.__name__ for m in MODELS)
                raise ValueError(f"{checkpoint} holds a {class_path}, not a semantic-ID model ({names})")
        recorded = data_hparams.get("dataset")
        if dataset is not None and recorded is not None and not same_dataset(str(recorded), str(dataset)):
            raise ValueError(
                f"{checkpoint} was trained on dataset {recorded!r}, not {dataset!r}: its items are another "
                "catalogue's (leave out --dataset, or pass the dataset it was trained on)"
            )
        dataset = dataset or recorded
        max_len = max_len or data_hparams.get("max_len")
        if dataset is None or max_len is None:
            raise ValueError(
                f"{checkpoint} records no datamodule dataset / max_len (was it trained with SemanticIdData?): "
                "pass --dataset and --max-len"
            )
        try:
            data = load_dataset(dataset)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (the dataset recorded in {checkpoint}; pass --dataset to override)") from None
        model = model_class.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
        return cls(model, data, int(max_len))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> Recommender:
        """Moves the model and the decoding tables (prefix index, item token table) to ``device``; returns self.

        The tables are not parameters: a ``model.to`` alone (as Lightning's strategies do) leaves them behind.
        """
        self.model.to(device)
        if self.beam:
            self.model.index = self.model.index.to(self.model.device)
            self.table = self.model.token_table()
        return self

    # --- requests -------------------------------------------------------------------------------------------
    def parse_line(self, text: str | bytes, number: int, source: str = "<stdin>") -> Request | Line | None:
        """Parses one input line ``{"user": ..., "history": [item ids]}`` (text, or bytes to decode as UTF-8).

        Unknown item ids are logged (user, ids, line) and skipped. Returns the request, an error line for a line
        that gives nothing to recommend from (not UTF-8, not JSON, NaN or Infinity, no history), or ``None`` for a
        blank line.
        """
        where = f"{source} line {number}"
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                return {"user": None, "line": number, "error": f"{where}: not UTF-8 text (byte {e.start}: {e.reason})"}
        if is_blank(text):
            return None
        try:
            record = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as e:  # json.JSONDecodeError is one
            return {"user": None, "line": number, "error": f"{where}: invalid JSON ({e})"}
        if not isinstance(record, dict):
            got = type(record).__name__
            return {"user": None, "line": number, "error": f"{where}: expected a JSON object, got {got}"}
        user = record.get("user")
        history = record.get("history")
        if not isinstance(history, list):
            return {"user": user, "line": number, "error": f"{where}: expected \"history\": a list of item ids"}
        dense = [self.items.get(raw) for raw in history]
        unknown = [raw for raw, i in zip(history, dense) if i is None]
        if unknown:
            log.warning("%s: user %s: unknown item ids skipped: %s", where, json.dumps(user), json.dumps(unknown))
        known = [i for i in dense if i is not None]
        if not known:
            what = "the history is empty" if not history else "no item id in the history is in the dataset"
            return {"user": user, "line": number, "error": f"{where}: {what}"}
        return Request(user, known, self._user_index(user))

    def dataset_requests(self, users: list[str] | None = None, *, holdout: int = 0) -> Iterator[Request | Line]:
        """Requests for dataset users (all when ``users`` is None) with their full sequences as history.

        The full sequence recommends the item *after* the user's last one; ``holdout=h`` drops each user's last
        ``h`` items first (``h=1`` gives the leave-one-out test history, whose answer is the held-out item).
        """
        for given in self.dataset.user_ids if users is None else users:
            yield self.dataset_request(given, holdout=holdout)

    def dataset_request(self, given: Any, *, holdout: int = 0) -> Request | Line:
        """The request of one dataset user (an id as :meth:`dataset_requests` takes them), or an error line for a user
        who is not in the dataset or has no item left after the holdout."""
        if holdout < 0:
            raise ValueError(f"holdout must be >= 0, got {holdout}")
        u = self.users.get(given)
        if u is None:
            return {"user": given, "error": f"user {given!r} is not in dataset {self.dataset.name!r}"}
        user = self.dataset.user_ids[u]
        seq = self.dataset.sequences[u]
        history = seq[: len(seq) - holdout].tolist()
        if not history:
            return {"user": user, "error": f"the user has {len(seq)} items: none left after holding out {holdout}"}
        return Request(user, history, u)

    def _user_index(self, user: Any) -> int:
        index = self.users.get(user)
        if index is not None:
            return index
        if self.beam and self.model.vocab.n_user_buckets:
            if not self.hashed_users:
                log.warning("user %s is not in the dataset: its user token is a hashed bucket", json.dumps(user))
            self.hashed_users += 1
        return user_hash(user)

    # --- decoding -------------------------------------------------------------------------------------------
    def encode(self, requests: list[Request]) -> dict[str, torch.Tensor]:
        """Model inputs of ``requests``: histories cut to the last ``max_len`` items, left-padded, on the device."""
        history = np.full((len(requests), self.max_len), PAD_ITEM, dtype=np.int64)
        for row, request in enumerate(requests):
            recent = request.history[-self.max_len :]
            history[row, self.max_len - len(recent) :] = recent
        users = torch.tensor([r.user_index for r in requests], dtype=torch.long, device=self.device)
        history = torch.from_numpy(history).to(self.device)
        if not self.beam:
            return {"history": history, "users": users}
        tokens = encode_histories(history, table=self.table, vocab=self.model.vocab, users=users)
        return {**tokens, "history": history, "users": users}

    def recommend(self, requests: list[Request], *, top_k: int, beam_width: int) -> BeamSearchOutput | Ranking:
        """Top-K of a batch of requests in one model call (no loop over users); ``beam_width`` is for beam search."""
        if not self.beam:
            return self.model.recommend_batch(self.encode(requests), top_k=min(top_k, self.dataset.n_items))
        return self.model.recommend_batch(self.encode(requests), top_k=top_k, beam_width=beam_width)

    def answer(self, requests: list[Request], out: BeamSearchOutput | Ranking) -> list[Line]:
        """Output lines for ``requests`` from their ranked items (dataset ids, best first)."""
        lines = []
        for request, items, scores in zip(requests, out.items.tolist(), out.scores.tolist()):
            # -1: fewer valid items than top_k (a catalogue smaller than top_k).
            ranked = [(i, s) for i, s in zip(items, scores) if i >= 0]
            line: Line = {
                "user": request.user,
                "items": [self.dataset.item_ids[i] for i, _ in ranked],
                "scores": [s for _, s in ranked],
            }
            if self.titles is not None:
                line["titles"] = [self.titles[i] for i, _ in ranked]
            lines.append(line)
        return lines

    def run(
        self,
        requests: Iterable[Request | Line],
        *,
        top_k: int = 10,
        beam_width: int | None = None,
        batch_size: int = 256,
    ) -> Iterator[Line]:
        """Output lines for a stream of requests and error lines, in input order, ``batch_size`` requests a batch."""
        beam_width = max(20, top_k) if beam_width is None else beam_width
        if top_k < 1 or beam_width < top_k or batch_size < 1:
            raise ValueError(
                f"need beam_width >= top_k >= 1 and batch_size >= 1, got {beam_width=}, {top_k=}, {batch_size=}"
            )
        stream = iter(requests)
        while chunk := list(islice(stream, batch_size)):
            ready = [r for r in chunk if isinstance(r, Request)]
            answers = iter([])
            if ready:
                answers = iter(self.answer(ready, self.recommend(ready, top_k=top_k, beam_width=beam_width)))
            for entry in chunk:
                yield next(answers) if isinstance(entry, Request) else entry
