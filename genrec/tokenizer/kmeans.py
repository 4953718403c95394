"""Batched k-means in torch: greedy k-means++ seeding, Lloyd iterations, re-seeding of empty clusters.

Runs on whatever device the input lives on (a GPU when the caller put the features there). Distances are computed
in row chunks, so memory stays at ``chunk_size * k`` floats however large the catalogue is.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`.

    Attributes:
        centroids: (k, d) float, the cluster centres.
        assignments: (n,) int64 in [0, k), the nearest centre of each point under ``centroids``.
        inertia: sum over points of the squared distance to their centre.
        iterations: Lloyd iterations run.
    """

    centroids: Tensor
    assignments: Tensor
    inertia: float
    iterations: int


def squared_distances(x: Tensor, centroids: Tensor) -> Tensor:
    """Squared Euclidean distances between rows.

    Args:
        x: (n, d) float.
        centroids: (k, d) float.

    Returns:
        (n, k) float, clamped at 0 (the expansion ||x||² - 2x·c + ||c||² can go slightly negative).
    """
    x_sq = x.pow(2).sum(dim=1, keepdim=True)
    c_sq = centroids.pow(2).sum(dim=1)
    return (x_sq - 2.0 * x @ centroids.T + c_sq).clamp_min_(0.0)


def nearest_centroid(x: Tensor, centroids: Tensor, *, chunk_size: int = 16384) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid of every row, computed ``chunk_size`` rows at a time.

    Args:
        x: (n, d) float.
        centroids: (k, d) float.
        chunk_size: rows per distance block.

    Returns:
        (n,) int64 indices and (n,) float squared distances.
    """
    indices, dists = [], []
    for start in range(0, x.shape[0], chunk_size):
        d2 = squared_distances(x[start : start + chunk_size], centroids)
        best, index = d2.min(dim=1)
        indices.append(index)
        dists.append(best)
    return torch.cat(indices), torch.cat(dists)


def reseed_empty(centroids: Tensor, empty: list[int], x: Tensor, served: Tensor) -> None:
    """Moves each empty centre onto the worst-served point, in place.

    One at a time, counting the centres moved so far (farthest-point order), so several empty centres do not all
    land in the same badly served cluster.

    Args:
        centroids: (k, d) float, edited in place.
        empty: indices of the empty centres.
        x: (n, d) the points.
        served: (n,) squared distance of each point to its current centre.
    """
    served = served.clone()
    for index in empty:
        far = int(served.argmax())
        centroids[index] = x[far]
        served = torch.minimum(served, squared_distances(x, x[far : far + 1]).squeeze(1))


def kmeans_plusplus(x: Tensor, k: int, *, generator: torch.Generator, n_trials: int | None = None) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; the greedy variant samples a few candidates per step
    and keeps the one that lowers the potential most, which avoids the occasional bad draw).

    Args:
        x: (n, d) float, n >= k.
        k: number of centres.
        generator: random source on ``x.device``.
        n_trials: candidates per step; default 2 + floor(ln k), as in the greedy k-means++ literature.

    Returns:
        (k, d) float, rows of ``x``.
    """
    n = x.shape[0]
    n_trials = n_trials or 2 + int(math.log(k))
    x_sq = x.pow(2).sum(dim=1)  # computed once: the loop below is latency-bound, k small steps

    def distances_from(rows: Tensor) -> Tensor:  # (t,) row indices -> (t, n) squared distances
        return (x_sq[rows].unsqueeze(1) - 2.0 * x[rows] @ x.T + x_sq).clamp_min_(0.0)

    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centres = [x[first]]
    closest = distances_from(first).squeeze(0)  # (n,) distance to the nearest chosen centre
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            # Every point coincides with a centre already (fewer distinct points than k): draw uniformly.
            candidates = torch.randint(n, (n_trials,), generator=generator, device=x.device)
        else:
            candidates = torch.multinomial(closest, n_trials, replacement=True, generator=generator)
        # (t, n): the potential each candidate would leave.
        trial = torch.minimum(closest.unsqueeze(0), distances_from(candidates))
        best = trial.sum(dim=1).argmin()
        closest = trial[best]
        centres.append(x[candidates[best]].unsqueeze(0))
    return torch.cat(centres)


def kmeans(
    x: Tensor,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int = 16384,
    init: Tensor | None = None,
    name: str = "k-means",
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding on ``x.device``.

    Empty clusters are re-seeded with the points currently farthest from their centre, so all ``k`` codes stay in
    use (an unused code is wasted vocabulary for a semantic-ID model).

    Args:
        x: (n, d) float, finite, n >= k.
        k: number of clusters.
        max_iter: Lloyd iterations at most.
        tol: stop once the inertia improves by less than this fraction in an iteration.
        seed: seed of the k-means++ draws.
        chunk_size: rows per distance block.
        init: (k, d) starting centroids instead of k-means++ (a warm start).
        name: what is being clustered, for error messages (e.g. "level 2").

    Returns:
        A :class:`KMeansResult`; ``assignments`` are recomputed against the final ``centroids``, so encoding ``x``
        with these centroids reproduces them exactly.

    Raises:
        ValueError: if ``x`` is not 2-D, has fewer rows than ``k``, or has NaN / inf.
    """
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (n, d) matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"{name}: k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"{name}: cannot fit {k} codes to {n} items; use a smaller codebook or more items")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten()
        raise ValueError(f"{name}: {rows.numel()} rows have NaN or inf, first rows {rows[:10].tolist()}")
    x = x.float()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if init is None:
        centroids = kmeans_plusplus(x, k, generator=generator)
    elif init.shape != (k, x.shape[1]):
        raise ValueError(f"{name}: init must have shape {(k, x.shape[1])}, got {tuple(init.shape)}")
    else:
        centroids = init.to(x).clone()
    previous = math.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        assignments, dists = nearest_centroid(x, centroids, chunk_size=chunk_size)
        inertia = float(dists.sum())
        counts = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        empty = counts == 0
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        if bool(empty.any()):
            reseed_empty(centroids, torch.nonzero(empty).flatten().tolist(), x, dists)
            previous = math.inf  # the objective jumped; do not declare convergence on this step
            continue
        if previous < math.inf and previous - inertia <= tol * previous:
            break
        previous = inertia
    assignments, dists = nearest_centroid(x, centroids, chunk_size=chunk_size)
    return KMeansResult(centroids, assignments, float(dists.sum()), iterations)
