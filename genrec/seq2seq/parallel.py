"""Parallel semantic IDs (RPG, Hou et al., KDD 2025): a causal model that predicts every digit of the next ID at once.

TIGER generates a short ordered ID code by code, one (history, target) pair per encoder pass. RPG instead gives
every item a long *unordered* ID (product quantisation, :mod:`genrec.tokenizer.product`) and predicts all of its
digits in parallel from one hidden state, so that a causal transformer over the history trains on the next item at
every position of a sequence in one pass, as SASRec does. Here the backbone is SASRec's own (pre-LN causal blocks,
:mod:`genrec.causal`), so the two differ only in what an item is: SASRec learns one free vector per item, this model
builds each item from its code embeddings on the way in and scores it through them on the way out.

- Input: a history item is the sum of its m code embeddings (each digit its own rows) over sqrt(m), plus,
  optionally, a zero-initialised item-ID embedding (the same lever as :class:`genrec.seq2seq.encoders.TokenHistory`).
- Output: one projection per digit of the hidden state, scored against that digit's code embeddings (the input
  table, tied) by cosine similarity over a temperature, as RPG does; softmax per digit.
- Loss: the mean over digits and labelled positions of each digit's cross-entropy (RPG's multi-token prediction).
- Ranking: an item's score is the sum over digits of the log-probability of its code, log p(ID) under the per-digit
  factorisation; every item of the catalogue is scored exactly (RPG's ``exact`` mode), so every recommendation is a
  real item and none is missed by a beam. Cost per user: m * k projections, then one gather per digit over the
  catalogue (n_items * m adds), no item-sized matrix product.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from genrec.causal import CausalBlock, causal_mask, drop_padding_columns
from genrec.metrics import NDCG_KS, RECALL_KS
from genrec.training import RankingEvaluator, adamw_warmup_cosine

log = logging.getLogger(__name__)

Softmax = Literal["digits", "catalogue"]


class Ranking(NamedTuple):
    """Top-K items per user, best first: ``items`` (b, top_k) int64 and ``scores`` (b, top_k) float log p(ID)."""

    items: torch.Tensor
    scores: torch.Tensor


@dataclass
class ParallelIdArchitecture:
    """Shape of the causal backbone (defaults: genrec's tuned SASRec on Beauty, so the two compare one to one)."""

    d_model: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2


class ParallelIdNetwork(nn.Module):
    """Items in as their code embeddings, causal blocks, per-digit code logits out.

    Args:
        level_sizes: codes per digit of the tokenizer artifact (a collision digit included).
        n_items: catalogue size.
        max_len: longest input sequence (size of the positional table).
        arch: backbone shape.
        item_embeddings: add a learned, zero-initialised item-ID embedding to each history item.
        temperature: cosine-similarity temperature of the code logits; None scores by plain dot products.
        softmax: ``"digits"`` (one softmax per digit) or ``"catalogue"`` (over the IDs that exist); see :meth:`loss`.
        item_logits: add the hidden state's dot product with the item-ID embedding to each item's catalogue logit
            (the ID embedding then serves on both sides, as SASRec's does); needs both options above.
        label_smoothing: of the catalogue softmax's cross-entropy.
    """

    def __init__(
        self,
        *,
        level_sizes: tuple[int, ...],
        n_items: int,
        max_len: int,
        arch: ParallelIdArchitecture,
        item_embeddings: bool = False,
        temperature: float | None = 0.07,
        softmax: Softmax = "digits",
        item_logits: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if softmax not in get_args(Softmax):
            raise ValueError(f"softmax must be one of {get_args(Softmax)}, got {softmax!r}")
        if not level_sizes or min(level_sizes) < 1:
            raise ValueError(f"level_sizes must be non-empty and positive, got {level_sizes}")
        if n_items < 2 or max_len < 1:
            raise ValueError(f"need n_items >= 2 and max_len >= 1, got n_items={n_items}, max_len={max_len}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 or None, got {temperature}")
        if item_logits and not (item_embeddings and softmax == "catalogue"):
            raise ValueError("item_logits scores items with their item-ID embeddings: it needs item_embeddings=true "
                             "and softmax='catalogue'")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_smoothing and softmax != "catalogue":
            # Smoothing spreads mass over every class, and the per-digit softmax has -inf codes that do not exist.
            raise ValueError("label_smoothing smooths the catalogue softmax: it needs softmax='catalogue'")
        self.item_logits, self.label_smoothing = item_logits, label_smoothing
        m, k, d = len(level_sizes), max(level_sizes), arch.d_model
        self.digits, self.max_len, self.temperature, self.softmax = m, max_len, temperature, softmax
        sizes = torch.tensor(level_sizes)
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes)  # (m,) first token of each digit
        # (m, k) token of code c of digit l, and whether that code exists (the collision digit has fewer).
        codes = torch.arange(k)
        self.register_buffer("digit_valid", codes.unsqueeze(0) < sizes.unsqueeze(1))
        self.register_buffer("digit_tokens", self.offsets.unsqueeze(1) + torch.minimum(codes, sizes.unsqueeze(1) - 1))
        # The catalogue, (n_items, m) codes per digit, filled by set_codes and saved with the weights.
        self.register_buffer("item_codes", torch.zeros(n_items, m, dtype=torch.long))
        self.code_embedding = nn.Embedding(int(sizes.sum()), d)
        self.position_embedding = nn.Embedding(max_len, d)
        self.dropout = nn.Dropout(arch.dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(d_model=d, n_heads=arch.n_heads, dropout=arch.dropout) for _ in range(arch.n_blocks)
        )
        self.final_norm = nn.LayerNorm(d)
        self.heads = nn.Linear(d, m * d)  # one projection per digit
        self.apply(self._init)
        # Last, and zero: with or without it, every other weight draws the same numbers and the model starts as
        # the codes alone.
        self.item_embedding = nn.Embedding(n_items, d) if item_embeddings else None
        if self.item_embedding is not None:
            nn.init.zeros_(self.item_embedding.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_codes(self, codes: torch.Tensor) -> None:
        """Sets the catalogue's IDs, (n_items, m) int64 with digit l in [0, level_sizes[l])."""
        if codes.shape != self.item_codes.shape:
            raise ValueError(f"catalogue codes of shape {tuple(codes.shape)}, the model has {tuple(self.item_codes.shape)}")
        limits = self.digit_valid.sum(1).to(codes.device)
        bad = (codes < 0) | (codes >= limits)
        if bool(bad.any()):
            item, digit = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"item {item}: code {int(codes[item, digit])} of digit {digit} is outside [0, {int(limits[digit])})")
        self.item_codes.copy_(codes)

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        """(b, n) item indices (-1 padding) -> (b, n, d): its code embeddings [+ item-ID embedding]; padding positions
        hold item 0's, which :meth:`forward` zeroes with the positional embedding."""
        safe = items.clamp(min=0)
        # Summed over digits and scaled by 1/sqrt(m): the item vector starts at the codes' own scale, as SASRec's
        # does (a plain mean would shrink it sqrt(m) times below the positional embedding at initialisation).
        tokens = rearrange(self.item_codes[safe] + self.offsets, "b n m -> (b n) m")
        x = F.embedding_bag(tokens, self.code_embedding.weight, mode="sum") * self.digits**-0.5
        x = rearrange(x, "(b n) d -> b n d", b=items.shape[0])
        if self.item_embedding is not None:
            x = x + self.item_embedding(safe)
        return x

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden states of a left-padded batch, SASRec's way.

        Args:
            items: (b, n) int64 dense item indices, -1 for padding, n <= max_len; the most recent item last.

        Returns:
            (b, n, d) float; position t depends only on items[:, :t + 1].
        """
        n = items.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequences of {n} items are longer than max_len={self.max_len}")
        # Positions count back from the last slot, so the most recent item always has the same position.
        positions = torch.arange(self.max_len - n, self.max_len, device=items.device)
        x = self.dropout((self.embed_items(items) + self.position_embedding(positions)) * (items >= 0).unsqueeze(-1))
        allowed = causal_mask(items >= 0)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(p, d) hidden states -> (p, m, k) float32 logits of every code of every digit; -inf for codes that do not
        exist.

        Always in float32, also under bf16 autocast: an item's score sums m of these logits, and bf16's 8-bit
        mantissa would leave a resolution of about 1 on scores of a few hundred, enough to reorder the top-K.
        """
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            queries = rearrange(self.heads(hidden.float()), "p (m d) -> p m d", m=self.digits)
            codes = self.code_embedding(self.digit_tokens).float()  # (m, k, d), tied with the input
            if self.temperature is not None:
                queries, codes = F.normalize(queries, dim=-1), F.normalize(codes, dim=-1)
            logits = torch.einsum("pmd,mkd->pmk", queries, codes)
            if self.temperature is not None:
                logits = logits / self.temperature
            return logits.masked_fill(~self.digit_valid, float("-inf"))

    def per_item(self, table: torch.Tensor) -> torch.Tensor:
        """(b, m, k) per-code values -> (b, n_items): each item's sum over digits of the value of its code.

        One bag per item of the (m * k, b) table's rows, each row b contiguous floats (on 2 CPU cores 6x faster than
        m gathers across the catalogue: 0.20 s instead of 1.24 s for 1,024 Beauty users); differentiable in the
        table. The -inf rows of codes that do not exist are in no bag.
        """
        k = table.shape[2]
        bags = self.item_codes + torch.arange(self.digits, device=table.device) * k  # (n_items, m)
        return F.embedding_bag(bags, rearrange(table, "b m k -> (m k) b").contiguous(), mode="sum").T

    def item_scores(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(p, d) hidden states and their (p, m, k) code logits -> (p, n_items) catalogue logits: the sum of each
        item's digits' logits, plus, with :attr:`item_logits`, the dot product of the hidden state with the item's
        ID embedding (tied with the input's; zero at initialisation, so the model starts as the codes alone)."""
        scores = self.per_item(logits)
        if self.item_logits:
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                scores = scores + hidden.float() @ self.item_embedding.weight.float().T
        return scores

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-item loss of ``labels`` (b, n) (-1: none) given ``hidden`` (b, n, d), under :attr:`softmax`.

        ``"digits"``: the mean over digits of each digit's cross-entropy (RPG's multi-token prediction), which
        spreads probability over every combination of codes; ``"catalogue"``: the cross-entropy of the softmax over
        the IDs that exist, an item's logit being the sum of its digits' logits (the parallel-ID counterpart of
        TIGER's constrained softmax, :mod:`genrec.seq2seq.losses`).
        """
        keep = labels >= 0
        hidden = hidden[keep]
        logits = self.code_logits(hidden)  # (p, m, k)
        if self.softmax == "catalogue":
            return F.cross_entropy(self.item_scores(hidden, logits), labels[keep], label_smoothing=self.label_smoothing)
        target = self.item_codes[labels[keep]]  # (p, m)
        return F.cross_entropy(rearrange(logits, "p m k -> (p m) k"), rearrange(target, "p m -> (p m)"))

    def score_items(self, hidden: torch.Tensor) -> torch.Tensor:
        """(b, d) hidden states -> (b, n_items) log-probability of every catalogue item's ID under :attr:`softmax`.

        Both normalisations rank the same (an item's score is the sum of its digits' logits up to a constant per
        user); they differ in the values, which recommend.py and the examples show.
        """
        logits = self.code_logits(hidden)
        if self.softmax == "catalogue":
            return self.item_scores(hidden, logits).log_softmax(-1)
        return self.per_item(logits.log_softmax(-1))


class ParallelIdRecommender(pl.LightningModule):
    """Trains the parallel-ID model at every position and evaluates by scoring the full catalogue.

    ``level_sizes``, ``n_items`` and ``max_len`` are linked from the datamodule
    (:class:`genrec.seq2seq.data.SemanticIdSequences`) by the CLI, and the catalogue's IDs come from it at setup;
    they are saved with the weights, so a checkpoint ranks on its own. As for SASRec, items in the user's history
    are not removed from the ranking.

    Args:
        level_sizes: codes per digit of the tokenizer artifact.
        n_items: catalogue size.
        max_len: history length in items.
        arch: backbone shape.
        item_embeddings: add a learned item-ID embedding to each history item (input side only).
        temperature: cosine temperature of the code logits (RPG: 0.07); None for plain dot products.
        softmax: ``"digits"`` (RPG: one softmax per digit) or ``"catalogue"`` (over the IDs that exist).
        item_logits: score items with their item-ID embeddings too, beside their codes (catalogue softmax only).
        label_smoothing: of the catalogue softmax's cross-entropy.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay on matrices, none on biases and norms.
        warmup_steps: linear warm-up, then cosine decay to 0 over the run.
        top_k: length of the ranked list evaluated (metrics up to @20 need 20).
    """

    def __init__(
        self,
        *,
        level_sizes: tuple[int, ...],
        n_items: int,
        max_len: int = 50,
        arch: ParallelIdArchitecture | None = None,
        item_embeddings: bool = False,
        temperature: float | None = 0.07,
        softmax: Softmax = "digits",
        item_logits: bool = False,
        label_smoothing: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        top_k: int = 20,
    ) -> None:
        super().__init__()
        if not max(*RECALL_KS, *NDCG_KS) <= top_k <= n_items:
            raise ValueError(f"top_k must be in [{max(*RECALL_KS, *NDCG_KS)}, n_items={n_items}], got {top_k}")
        self.save_hyperparameters()
        self.model = ParallelIdNetwork(
            level_sizes=tuple(level_sizes), n_items=n_items, max_len=max_len, arch=arch or ParallelIdArchitecture(),
            item_embeddings=item_embeddings, temperature=temperature, softmax=softmax, item_logits=item_logits,
            label_smoothing=label_smoothing,
        )
        self.register_buffer("has_catalogue", torch.tensor(False))
        self.evaluator = RankingEvaluator()

    @property
    def system_name(self) -> str:
        """``RPG``, with the levers in use named after it (run records tell them apart)."""
        levers = [name for name, on in (("item IDs", self.hparams.item_embeddings),
                                        ("catalogue softmax", self.hparams.softmax == "catalogue"),
                                        ("item logits", self.hparams.get("item_logits", False)),
                                        ("smoothing", self.hparams.get("label_smoothing", 0.0))) if on]
        return f"RPG ({', '.join(levers)})" if levers else "RPG"

    @property
    def item_codes(self) -> torch.Tensor | None:
        """(n_items, m) int64 semantic IDs of the catalogue, None before :meth:`set_catalogue`."""
        return self.model.item_codes if bool(self.has_catalogue) else None

    def set_catalogue(self, codes: torch.Tensor) -> None:
        """Sets the catalogue's semantic IDs, (n_items, m) int64."""
        self.model.set_codes(codes.to(self.device))
        self.has_catalogue.fill_(True)

    def setup(self, stage: str) -> None:
        catalogue = getattr(getattr(self.trainer, "datamodule", None), "catalogue", None)
        if catalogue is not None:
            self.set_catalogue(catalogue.item_codes)

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-item loss of a batch (:meth:`ParallelIdNetwork.loss`); items and labels (b, n) int64, -1 for padding /
        no label."""
        items, labels = drop_padding_columns(items, labels)
        return self.model.loss(self.model(items), labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch["input"], batch["labels"])
        self.log("train/loss", loss, batch_size=len(batch["input"]))
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(
            self.model,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            warmup_steps=self.hparams.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend_batch(self, batch: dict, *, top_k: int | None = None) -> Ranking:
        """The top-K catalogue items of every user of a batch (its ``history`` (b, n), left-padded with -1)."""
        if not bool(self.has_catalogue):
            raise RuntimeError("no catalogue: call set_catalogue(codes) or load a checkpoint that has one")
        (history,) = drop_padding_columns(batch["history"])
        if bool((history[:, -1] < 0).any()):
            raise ValueError("every history needs at least one item (its last column is padding in some row)")
        scores = self.model.score_items(self.model(history)[:, -1])
        best = scores.topk(top_k or self.hparams.top_k, dim=1)
        return Ranking(items=best.indices, scores=best.values)

    def recommend(self, history: torch.Tensor, *, top_k: int | None = None) -> torch.Tensor:
        """(b, n) left-padded item histories -> (b, top_k) int64 item indices, best first."""
        return self.recommend_batch({"history": history}, top_k=top_k).items

    def _evaluate(self, batch: dict, stage: str) -> None:
        items = self.recommend_batch(batch).items
        metrics = self.evaluator.update(stage, items, batch["target"], self.hparams.n_items)
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "ndcg@10", on_epoch=True, on_step=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")
