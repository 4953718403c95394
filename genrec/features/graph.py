"""Collaborative item features from the user-item training graph: the graph encoder of MMGRec's Graph RQ-VAE
(Liu et al., "Multimodal Generative Recommendation with Transformer Model", 2024).

A GraphSAGE network (Hamilton et al., 2017; mean aggregator) runs over the bipartite graph of the training
interactions: item nodes start from a linear projection of the items' fused modality features (any
:class:`~genrec.features.source.FeatureSource`), user nodes from learned embeddings. It is trained with BPR, and
its item outputs become one more feature source (:class:`GraphFeatures`) that an RQ-VAE quantizes. The two stages
run one after the other (encoder first, then the tokenizer on its frozen outputs), so every tokenizer and collision
strategy of ``genrec.tokenizer`` works on them unchanged.

Only the training part of each sequence is a graph edge (``genrec.data.split.training_part``): the validation and
test items never reach the features. Items with no training interaction keep a content-only representation (their
neighbourhood mean is zero), so cold items still get a meaningful vector.

The network itself (:class:`~genrec.features.sage.GraphSAGE`) and the graph's mean operators live in
``genrec.features.sage``; this module builds the graph from a dataset, trains the encoder and caches its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from genrec.data.dataset import SequenceDataset, dataset_name, load_dataset
from genrec.data.split import leave_one_out, training_interactions
from genrec.features.cache import cache_path, load_cached, save_cached
from genrec.features.sage import BipartiteGraph, GraphSAGE
from genrec.features.source import FeatureSource, Normalization, check_finite, feature_fingerprint, load_features
from genrec.training import bpr_loss

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the training procedure changes, so old cache entries are not served


def training_graph(dataset: SequenceDataset) -> BipartiteGraph:
    """The user-item graph of the training interactions (leave-one-out: no validation or test item), repeated
    interactions merged into one edge."""
    users, items = training_interactions(dataset)
    if users.size == 0:
        raise ValueError(f"{dataset.name}: no training interactions (every sequence has at most 2 items)")
    pairs = np.unique(users * dataset.n_items + items)  # sorted by user, then item: a deterministic edge order
    return BipartiteGraph(
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        users=torch.from_numpy(pairs // dataset.n_items),
        items=torch.from_numpy(pairs % dataset.n_items),
    )


def cosine_bpr_loss(users: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """BPR (Rendle et al., 2009) on cosine scores: mean of -log sigmoid((s(u, i) - s(u, j)) / temperature).

    Args:
        users, positives, negatives: (b, d) float unit rows.
        temperature: divides the score difference (cosines lie in [-1, 1]).
    """
    margin = (users * positives).sum(1) - (users * negatives).sum(1)
    return bpr_loss(margin / temperature, torch.zeros_like(margin))


class GraphTraining(NamedTuple):
    """Result of :func:`train_graph_encoder`.

    Attributes:
        model: the trained encoder (eval mode).
        items: (n_items, dim) float item representations, unit rows.
        users: (n_users, dim) float user representations, unit rows.
        losses: mean BPR loss of each epoch.
        seconds: wall-clock training time.
    """

    model: GraphSAGE
    items: Tensor
    users: Tensor
    losses: list[float]
    seconds: float


def train_graph_encoder(
    graph: BipartiteGraph,
    features: Tensor,
    *,
    dim: int = 64,
    layers: int = 2,
    epochs: int = 10,
    batch_size: int = 8192,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    temperature: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> GraphTraining:
    """Trains :class:`GraphSAGE` with BPR over mini-batches of (user, positive, negative) triples.

    Every epoch visits each edge once in a seeded random order, with one negative drawn uniformly from all items
    (occasionally a positive of that user: harmless noise at these densities). The whole graph is propagated at
    every step, so each step sees current representations. Deterministic on CPU for a given seed; the global RNG
    is left as it was.

    Args:
        graph: the training graph.
        features: (n_items, d_in) float item content; row i is item i.
        dim, layers: encoder shape (:class:`GraphSAGE`).
        epochs: passes over the edges.
        batch_size: triples per step.
        lr, weight_decay: AdamW.
        temperature: BPR temperature on cosine scores.
        seed: initialisation and sampling seed.
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    if features.ndim != 2 or features.shape[0] != graph.n_items:
        raise ValueError(
            f"item features must be (n_items, d) = ({graph.n_items}, d) to match the graph, got {tuple(features.shape)}"
        )
    check_finite(features, what="graph encoder input features")
    for name, value in (("dim", dim), ("layers", layers), ("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not (lr > 0 and temperature > 0 and weight_decay >= 0):
        raise ValueError(f"need lr > 0, temperature > 0, weight_decay >= 0; got {lr}, {temperature}, {weight_decay}")
    features = features.float()
    user_mean, item_mean = graph.mean_operators()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GraphSAGE(n_users=graph.n_users, input_dim=features.shape[1], dim=dim, layers=layers)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        g = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        bar = tqdm(range(epochs), desc="graph encoder (BPR)", unit="epoch", disable=not progress)
        for _ in bar:
            order = torch.randperm(graph.n_edges, generator=g)
            negatives = torch.randint(graph.n_items, (graph.n_edges,), generator=g)
            total = 0.0
            for begin in range(0, graph.n_edges, batch_size):
                batch = order[begin : begin + batch_size]
                users, items = model(features, user_mean, item_mean)
                loss = cosine_bpr_loss(
                    users[graph.users[batch]], items[graph.items[batch]], items[negatives[batch]], temperature
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * batch.numel()
            losses.append(total / graph.n_edges)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    with torch.no_grad():
        users, items = model(features, user_mean, item_mean)
    return GraphTraining(model=model, items=items, users=users, losses=losses, seconds=time.perf_counter() - start)


def ranking_auc(users: Tensor, items: Tensor, pairs: tuple[Tensor, Tensor], *, seed: int = 0) -> float:
    """Fraction of (user, item) pairs scored above a uniformly random item for the same user (ties count half).

    Args:
        users: (n_users, d) float; items: (n_items, d) float.
        pairs: (p,) int64 users and (p,) int64 items.
    """
    u, i = pairs
    j = torch.randint(items.shape[0], (u.numel(),), generator=torch.Generator().manual_seed(seed))
    pos = (users[u] * items[i]).sum(1)
    neg = (users[u] * items[j]).sum(1)
    return float((pos > neg).float().mean() + 0.5 * (pos == neg).float().mean())


def graph_item_embeddings(
    dataset: str | Path,
    features: Tensor,
    *,
    dim: int = 64,
    layers: int = 2,
    epochs: int = 10,
    batch_size: int = 8192,
    lr: float = 3e-3,
    temperature: float = 0.2,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """Item representations of :func:`train_graph_encoder` on ``dataset``'s training graph, trained once and cached.

    The cache entry (``<cache root>/graph/``) is keyed by the dataset name, the graph's edges, a fingerprint of
    ``features`` and every hyperparameter, so a changed input is never served stale. A JSON beside it records the
    loss of each epoch, the training time and the validation AUC (each user's validation item against a random
    item: does the encoder generalise past its training edges?).

    Args:
        dataset: bundled name or path.
        features: (n_items, d_in) float item content (e.g. fused text embeddings).
        dim, layers, epochs, batch_size, lr, temperature, seed: see :func:`train_graph_encoder`.
        cache_dir: cache root (``genrec.features.cache.cache_root``).

    Returns:
        (n_items, dim) float32, unit rows; row i = dense item i.
    """
    ds = load_dataset(dataset)
    graph = training_graph(ds)
    if features.ndim != 2 or features.shape[0] != ds.n_items:
        raise ValueError(
            f"{ds.name}: the graph encoder's input features must have one row per item ({ds.n_items}), "
            f"got shape {tuple(features.shape)}"
        )
    check_finite(features, what=f"{ds.name}: graph encoder input features")
    hparams = {"dim": dim, "layers": layers, "epochs": epochs, "batch_size": batch_size, "lr": lr,
               "temperature": temperature, "seed": seed}
    key = hashlib.sha256(
        json.dumps(
            {"version": CACHE_VERSION, "dataset": dataset_name(dataset), "graph": graph.fingerprint(),
             "features": feature_fingerprint(features), **hparams},
            sort_keys=True,
        ).encode()
    ).hexdigest()
    path = cache_path("graph", dataset=dataset_name(dataset), tag="sage", key=key, cache_dir=cache_dir)
    cached = load_cached(path)
    if cached is not None:
        log.info("graph item representations from cache %s", path)
        return cached
    fit = train_graph_encoder(graph, features, **hparams)
    # The validation samples of the leave-one-out split (history length is irrelevant: only users and targets).
    valid = leave_one_out(ds, max_len=1).valid
    auc = ranking_auc(fit.users, fit.items, (torch.from_numpy(valid.users), torch.from_numpy(valid.target)))
    log.info(
        "%s: graph encoder trained in %.1f s; BPR loss %.4f -> %.4f over %d epochs; validation AUC %.4f",
        ds.name, fit.seconds, fit.losses[0], fit.losses[-1], epochs, auc,
    )
    save_cached(
        path,
        fit.items,
        {"dataset": str(dataset), **hparams, "items": ds.n_items, "users": ds.n_users, "edges": graph.n_edges,
         "input_shape": list(features.shape), "seconds": round(fit.seconds, 2), "losses": fit.losses,
         "valid_auc": auc},
    )
    return fit.items


@dataclass
class GraphFeatures(FeatureSource):
    """Collaborative + content item features: the GraphSAGE encoder of :func:`graph_item_embeddings` over the
    training graph, its item nodes fed by other feature sources (MMGRec's graph encoder; e.g. TextEmbeddings, or
    CooccurrenceFeatures for a dataset without text)."""

    sources: list[FeatureSource]
    """Sources of the item nodes' input, fused as ``genrec.features.source`` describes."""
    dim: int = 64
    """Output width (and width of every layer)."""
    layers: int = 2
    """SAGE layers."""
    epochs: int = 10
    """BPR passes over the training edges."""
    batch_size: int = 8192
    """(user, positive, negative) triples per step."""
    lr: float = 3e-3
    """AdamW learning rate."""
    temperature: float = 0.2
    """BPR temperature on cosine scores."""
    seed: int = 0
    """Initialisation and sampling seed."""
    cache_dir: str | None = None
    """Cache root; None for the library default (``$GENREC_CACHE`` or ``~/.cache/genrec``)."""
    normalize: Normalization = "l2"
    """Per-source normalisation (``genrec.features.source``); the outputs already have unit rows."""
    weight: float = 1.0
    """Multiplier after normalisation."""

    def __post_init__(self) -> None:
        self._check()
        if not self.sources or not all(isinstance(s, FeatureSource) for s in self.sources):
            raise ValueError(f"GraphFeatures.sources must be a non-empty list of feature sources, got {self.sources!r}")
        for name in ("dim", "layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GraphFeatures.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"GraphFeatures.lr and .temperature must be > 0, got {self.lr} and {self.temperature}")

    def describe(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sources"}
        return {"type": type(self).__name__, "sources": [s.describe() for s in self.sources], **fields}

    def load(self, dataset: str | Path) -> Tensor:
        return graph_item_embeddings(
            dataset,
            load_features(dataset, self.sources),
            dim=self.dim,
            layers=self.layers,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            temperature=self.temperature,
            seed=self.seed,
            cache_dir=self.cache_dir,
        )
