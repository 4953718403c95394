"""Synthetic datasets at any size, in genrec's own format, for scale measurements and regression checks.

``python -m genrec.data synth OUT --users U --items I --interactions N`` writes ``OUT/sequences.txt``,
``OUT/items.jsonl`` and ``OUT/features.npy``, which every CLI path reads as it reads a real dataset.

The generative story, chosen so that a sequence model has something to learn and popularity does not:

- **Power-law popularity.** Item ``i`` of a random permutation gets weight ``rank ** -alpha``, so a few items
  take most interactions and the tail is long, as in every real catalogue.
- **Latent clusters on a ring.** Every item belongs to one of ``C`` clusters (uniformly at random, so each
  cluster holds head and tail items). A user starts in a cluster drawn by its total weight; after each item they
  stay in their cluster with probability ``stay`` and move to the next cluster on the ring otherwise, then draw an
  item of that cluster by weight. The last item therefore tells the next one's cluster up to two choices, while a
  popularity ranking spreads over the whole catalogue.
- **Item features.** ``features.npy`` row ``i`` is its cluster's centre plus Gaussian noise whose spectrum decays
  as ``j ** -0.5`` along the directions ``j`` of a random basis, L2-normalised: like a content encoder's embedding,
  structure at every scale, so the first codes of a tokenizer recover the clusters and the later ones still find
  variance to split (isotropic noise would leave later levels nothing but collisions).
- **Lengths.** Every user has at least ``min_length`` items; the remaining interactions are spread over users by a
  multinomial over exponential weights (a geometric-like tail of long users), so the total is exactly ``N``.

Items that no user drew are left out and the rest numbered ``1..n`` in their original order, so the dataset's
dense item index is ``id - 1`` and is ``features.npy``'s row; how many were left out is returned and logged. The
output depends only on the arguments (one seeded numpy generator).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
"""The item feature matrix a synthetic dataset writes beside its sequences (row = dense item index)."""


@dataclass(frozen=True)
class SynthSpec:
    """What to generate (module docstring).

    Attributes:
        users: number of users U.
        items: catalogue size I before unused items are dropped.
        interactions: total interactions N, at least ``users * min_length``.
        clusters: latent clusters C; None: one per 50 items (at least 2).
        alpha: popularity exponent (weight of the item of rank r is r ** -alpha).
        stay: probability of staying in the current cluster at each step.
        dim: width of the item feature vectors (384: MiniLM's).
        noise: expected norm of the feature noise around a cluster centre of unit norm (0.8: clusters apart, and
            items within one distinct).
        min_length: fewest items per user (5, as in the 5-core Amazon datasets: every user then trains).
        seed: seed of the one random generator.
    """

    users: int
    items: int
    interactions: int
    clusters: int | None = None
    alpha: float = 0.8
    stay: float = 0.5
    dim: int = 384
    noise: float = 0.8
    min_length: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 2:
            raise ValueError(f"need at least 1 user and 2 items, got users={self.users}, items={self.items}")
        if self.min_length < 1:
            raise ValueError(f"min_length must be >= 1, got {self.min_length}")
        if self.interactions < self.users * self.min_length:
            raise ValueError(
                f"{self.interactions:,} interactions cannot give {self.users:,} users {self.min_length} items each: "
                f"need at least {self.users * self.min_length:,}"
            )
        if self.n_clusters < 1 or self.n_clusters > self.items:
            raise ValueError(f"clusters must be in [1, items={self.items}], got {self.clusters}")
        if not 0.0 <= self.stay <= 1.0 or self.alpha < 0 or self.dim < 1 or self.noise < 0:
            raise ValueError(f"need 0 <= stay <= 1, alpha >= 0, dim >= 1 and noise >= 0, got {self.stay}, "
                             f"{self.alpha}, {self.dim}, {self.noise}")

    @property
    def n_clusters(self) -> int:
        return self.clusters if self.clusters is not None else max(2, self.items // 50)


@dataclass(frozen=True)
class SynthData:
    """A generated dataset in memory.

    Attributes:
        sequences: per user, (m,) int64 item indices in ``[0, n_items)`` in chronological order.
        cluster: (n_items,) int64 latent cluster of each kept item.
        features: (n_items, dim) float32 item feature vectors.
        dropped_items: items of the requested catalogue that no user drew.
    """

    sequences: list[np.ndarray]
    cluster: np.ndarray
    features: np.ndarray
    dropped_items: int

    @property
    def n_items(self) -> int:
        return len(self.cluster)


def _lengths(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """(users,) int64 sequence lengths, each >= min_length, summing to exactly ``interactions``."""
    extra = spec.interactions - spec.users * spec.min_length
    weights = rng.exponential(size=spec.users)
    return spec.min_length + rng.multinomial(extra, weights / weights.sum()).astype(np.int64)


def _walks(spec: SynthSpec, lengths: np.ndarray, cluster: np.ndarray, weight: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """The concatenated item sequences of all users (users in order), one vectorised step per position."""
    c = spec.n_clusters
    by_cluster = np.argsort(cluster, kind="stable")  # items grouped by cluster
    cum = np.cumsum(weight[by_cluster])
    count = np.bincount(cluster, minlength=c)
    end = np.cumsum(count)  # cluster j's items are by_cluster[end[j] - count[j] : end[j]]
    upper = cum[end - 1]
    lower = np.concatenate([[0.0], upper[:-1]])
    mass = upper - lower
    state = rng.choice(c, size=spec.users, p=mass / mass.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    for t in range(int(lengths.max())):
        active = np.flatnonzero(lengths > t)
        if t:
            move = rng.random(len(active)) >= spec.stay
            state[active] = np.where(move, (state[active] + 1) % c, state[active])
        s = state[active]
        u = lower[s] + rng.random(len(active)) * mass[s]
        # searchsorted may land one past a cluster's end on rounding: clip into the cluster's own items.
        pos = np.clip(np.searchsorted(cum, u, side="right"), end[s] - count[s], end[s] - 1)
        out[starts[active] + t] = by_cluster[pos]
    return out


def generate(spec: SynthSpec) -> SynthData:
    """Draws a dataset (module docstring); deterministic given ``spec``."""
    rng = np.random.default_rng(spec.seed)
    c = spec.n_clusters
    cluster = rng.integers(c, size=spec.items)
    cluster[rng.permutation(spec.items)[:c]] = np.arange(c)  # no empty cluster
    weight = np.empty(spec.items)
    weight[rng.permutation(spec.items)] = np.arange(1, spec.items + 1, dtype=np.float64) ** -spec.alpha
    lengths = _lengths(spec, rng)
    flat = _walks(spec, lengths, cluster, weight, rng)

    used = np.zeros(spec.items, dtype=bool)
    used[flat] = True
    new_index = np.cumsum(used) - 1
    flat = new_index[flat]
    kept = np.flatnonzero(used)
    centres = rng.standard_normal((c, spec.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = np.arange(1, spec.dim + 1, dtype=np.float32) ** -0.5
    scale *= spec.noise / np.linalg.norm(scale)
    basis = np.linalg.qr(rng.standard_normal((spec.dim, spec.dim)))[0].astype(np.float32)
    features = np.empty((len(kept), spec.dim), dtype=np.float32)
    for start in range(0, len(kept), 1 << 16):  # in blocks: a 10^6 x 384 draw in float64 would take 3 GB
        rows = kept[start : start + (1 << 16)]
        noise = (rng.standard_normal((len(rows), spec.dim), dtype=np.float32) * scale) @ basis
        block = centres[cluster[rows]] + noise
        features[start : start + len(rows)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    sequences = np.split(flat, np.cumsum(lengths)[:-1])
    return SynthData(sequences=sequences, cluster=cluster[kept], features=features,
                     dropped_items=int(spec.items - len(kept)))


def write_synthetic(spec: SynthSpec, out: str | Path) -> dict:
    """Generates ``spec`` and writes it to the folder ``out`` (created; existing files are replaced).

    Files: ``sequences.txt`` (``user item item ...``, ids from 1), ``items.jsonl`` (a title and the latent
    cluster as the category, so recommendations read as text), ``features.npy`` (:data:`FEATURES_FILE`) and
    ``synth.json`` (the spec and the counts).

    Returns:
        What ``synth.json`` holds: the spec, the users, items and interactions written, the items dropped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = generate(spec)
    log.info("generated %s users, %s items (%s never drawn, left out), %s interactions in %.1f s",
             f"{spec.users:,}", f"{data.n_items:,}", f"{data.dropped_items:,}", f"{spec.interactions:,}",
             time.perf_counter() - start)
    with open(out / "sequences.txt", "w", encoding="utf-8") as f:
        for user, seq in enumerate(data.sequences, start=1):
            f.write(f"{user} {' '.join(map(str, (seq + 1).tolist()))}\n")
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for index, c in enumerate(data.cluster.tolist()):
            f.write(json.dumps({"item_id": index + 1, "title": f"Item {index + 1}", "categories": f"Cluster {c}"}) + "\n")
    np.save(out / FEATURES_FILE, data.features)
    summary = {"spec": asdict(spec), "users": spec.users, "items": data.n_items,
               "interactions": spec.interactions, "dropped_items": data.dropped_items}
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("wrote %s in %.1f s", out, time.perf_counter() - start)
    return summary
