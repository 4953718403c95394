"""Batched k-means in torch: greedy k-means++ seeding, Lloyd iterations, re-seeding of empty clusters.

Runs on whatever device the input lives on (a GPU when the caller put the features there). Distances are computed
in row chunks, so memory stays at ``chunk_size * k`` floats however large the catalogue is.

More than ``max_points_per_centroid * k`` rows (faiss's rule of thumb: 256 points per centroid) are not all needed
to place k centres: the seeding and the Lloyd iterations run on a seeded uniform sample of that many rows, then a
few Lloyd iterations over all rows refine the centres, accumulating per-cluster sums and counts block by block, and
a last pass assigns every row. The input is then read only in blocks of rows, so it may be a numpy array, an
``np.memmap`` larger than memory or a :class:`~genrec.tokenizer.rows.Rows` residual. Up to the cap, k-means runs on
all rows in memory exactly as it did before sampling existed (the same bits: fitted artifacts do not change).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from genrec.features.matrix import Matrix
from genrec.tokenizer.rows import Rows, as_rows

POINTS_PER_CENTROID = 256
"""Default sample cap per centre (faiss's ``max_points_per_centroid``)."""


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`.

    Attributes:
        centroids: (k, d) float, the cluster centres.
        assignments: (n,) int64 in [0, k), the nearest centre of each point under ``centroids``.
        inertia: sum over points of the squared distance to their centre.
        iterations: Lloyd iterations run (on the sample, when there was one).
        sample_size: rows the seeding and those iterations ran on (n when there was no sample).
        refine_iterations: Lloyd iterations over all rows after the sample's (0 without a sample).
    """

    centroids: Tensor
    assignments: Tensor
    inertia: float
    iterations: int
    sample_size: int
    refine_iterations: int


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


def reseed_farthest(centroids: Tensor, empty: list[int], rows: Rows, served: Tensor) -> None:
    """:func:`reseed_empty` for rows read in blocks: the same farthest-point order, among the worst-served rows.

    A row outside the candidates is no farther from the moved centres than from its own, at most ``bound``, the
    largest served distance outside them; so a pick among the candidates that is farther than ``bound`` is the pick
    :func:`reseed_empty` makes over all rows. The candidates grow fourfold until every pick is.

    Args:
        centroids: (k, d) float, edited in place.
        empty: indices of the empty centres.
        rows: the n points.
        served: (n,) squared distance of each point to its current centre.
    """
    n = served.numel()
    size = min(n, max(1024, 64 * len(empty)))
    while True:
        top = torch.topk(served, min(n, size + 1))
        bound = float(top.values[size]) if size < n else -math.inf
        index = top.indices[:size].sort().values  # row order, so ties go to the first row as in reseed_empty
        candidates = rows.take(index)
        current = served[index].clone()
        picks = []
        for _ in empty:
            far = int(current.argmax())
            if float(current[far]) < bound:
                break
            picks.append(far)
            current = torch.minimum(current, squared_distances(candidates, candidates[far : far + 1]).squeeze(1))
        if len(picks) == len(empty):
            for centre, far in zip(empty, picks):
                centroids[centre] = candidates[far]
            return
        size *= 4


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
    x: Matrix | Rows,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int = 16384,
    init: Tensor | None = None,
    name: str = "k-means",
    max_points_per_centroid: int | None = POINTS_PER_CENTROID,
    refine_iter: int = 3,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding on the input's device, on a sample when the input is large.

    Empty clusters are re-seeded with the points currently farthest from their centre, so all ``k`` codes stay in
    use (an unused code is wasted vocabulary for a semantic-ID model).

    Args:
        x: (n, d) finite, n >= k: a float tensor, a numpy array or memmap (read in blocks of ``chunk_size`` rows,
            as float32 on the CPU), or :class:`~genrec.tokenizer.rows.Rows`.
        k: number of clusters.
        max_iter: Lloyd iterations at most (on the sample, when there is one).
        tol: stop once the inertia improves by less than this fraction in an iteration (on the sample and in the
            refinement alike).
        seed: seed of the sample and the k-means++ draws.
        chunk_size: rows per distance block and per block read.
        init: (k, d) starting centroids instead of k-means++ (a warm start).
        name: what is being clustered, for error messages (e.g. "level 2").
        max_points_per_centroid: with more than this many rows per cluster (n > max_points_per_centroid * k),
            seed and iterate on a uniform sample of max_points_per_centroid * k rows, then refine on all rows;
            None: always all rows, in memory.
        refine_iter: Lloyd iterations at most over all rows after the sample's.

    Returns:
        A :class:`KMeansResult`; ``assignments`` are recomputed against the final ``centroids``, so encoding ``x``
        with these centroids reproduces them exactly.

    Raises:
        ValueError: if ``x`` is not 2-D, has fewer rows than ``k``, or has NaN / inf (naming the rows).
    """
    if len(x.shape) != 2:
        raise ValueError(f"{name}: expected a (n, d) matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"{name}: k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"{name}: cannot fit {k} codes to {n} items; use a smaller codebook or more items")
    if max_points_per_centroid is not None and max_points_per_centroid < 1:
        raise ValueError(f"{name}: max_points_per_centroid must be >= 1 or None, got {max_points_per_centroid}")
    if refine_iter < 0:
        raise ValueError(f"{name}: refine_iter must be >= 0, got {refine_iter}")
    rows = as_rows(x)
    rows.check_finite(name=name, chunk_size=chunk_size)
    generator = torch.Generator(device=rows.device).manual_seed(seed)
    cap = n if max_points_per_centroid is None else max_points_per_centroid * k
    if n <= cap:
        x = rows.materialize()
        centroids = _start(x, k, init=init, generator=generator, name=name)
        centroids, iterations = _lloyd(x, centroids, max_iter=max_iter, tol=tol, chunk_size=chunk_size)
        assignments, dists = nearest_centroid(x, centroids, chunk_size=chunk_size)
        return KMeansResult(centroids, assignments, float(dists.sum()), iterations, n, 0)
    # Sorted, so a memmap is read front to back.
    sample = torch.randperm(n, generator=generator, device=rows.device)[:cap].sort().values
    points = rows.take(sample)
    centroids = _start(points, k, init=init, generator=generator, name=name)
    centroids, iterations = _lloyd(points, centroids, max_iter=max_iter, tol=tol, chunk_size=chunk_size)
    del points
    centroids, refined = _refine(rows, centroids, max_iter=refine_iter, tol=tol, chunk_size=chunk_size)
    assignments, dists = _assign(rows, centroids, chunk_size=chunk_size)
    return KMeansResult(centroids, assignments, float(dists.sum(dtype=torch.float64)), iterations, cap, refined)


def _start(x: Tensor, k: int, *, init: Tensor | None, generator: torch.Generator, name: str) -> Tensor:
    """The starting (k, d) centroids: k-means++ on ``x``, or ``init`` checked."""
    if init is None:
        return kmeans_plusplus(x, k, generator=generator)
    if init.shape != (k, x.shape[1]):
        raise ValueError(f"{name}: init must have shape {(k, x.shape[1])}, got {tuple(init.shape)}")
    return init.to(x).clone()


def _lloyd(x: Tensor, centroids: Tensor, *, max_iter: int, tol: float, chunk_size: int) -> tuple[Tensor, int]:
    """Lloyd iterations on ``x`` (n, d) in memory: the final centroids and the iterations run."""
    k = centroids.shape[0]
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
    return centroids, iterations


def _refine(rows: Rows, centroids: Tensor, *, max_iter: int, tol: float, chunk_size: int) -> tuple[Tensor, int]:
    """Lloyd iterations over all rows, read in blocks: the final centroids and the iterations run.

    The same update and stopping rule as :func:`_lloyd`, with the per-cluster sums and counts accumulated block by
    block (float32 within a block, float64 across blocks: a million float32 additions would lose digits).
    """
    k, d = centroids.shape
    previous = math.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        sums = torch.zeros(k, d, dtype=torch.float64, device=centroids.device)
        counts = torch.zeros(k, dtype=torch.int64, device=centroids.device)
        served = torch.empty(rows.shape[0], dtype=centroids.dtype, device=centroids.device)
        for start, x in rows.blocks(chunk_size):
            assignments, dists = nearest_centroid(x, centroids, chunk_size=chunk_size)
            served[start : start + x.shape[0]] = dists
            counts += torch.bincount(assignments, minlength=k)
            sums += torch.zeros_like(centroids).index_add_(0, assignments, x).double()
        inertia = float(served.sum(dtype=torch.float64))
        empty = counts == 0
        centroids = (sums / counts.clamp_min(1).unsqueeze(1)).to(centroids.dtype)
        if bool(empty.any()):
            reseed_farthest(centroids, torch.nonzero(empty).flatten().tolist(), rows, served)
            previous = math.inf
            continue
        if previous < math.inf and previous - inertia <= tol * previous:
            break
        previous = inertia
    return centroids, iterations


def _assign(rows: Rows, centroids: Tensor, *, chunk_size: int) -> tuple[Tensor, Tensor]:
    """:func:`nearest_centroid` of every row, read in blocks: (n,) int64 indices and (n,) squared distances."""
    # Written into outputs allocated once: small per-block results kept between the large freed blocks fragmented
    # the heap, and a million rows then left 1.2 GB resident.
    indices = torch.empty(rows.shape[0], dtype=torch.int64, device=centroids.device)
    dists = torch.empty(rows.shape[0], dtype=centroids.dtype, device=centroids.device)
    for start, x in rows.blocks(chunk_size):
        stop = start + x.shape[0]
        indices[start:stop], dists[start:stop] = nearest_centroid(x, centroids, chunk_size=chunk_size)
    return indices, dists
