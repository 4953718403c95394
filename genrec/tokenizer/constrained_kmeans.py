"""Size-constrained k-means and ColaRec's hierarchical item IDs.

ColaRec (Wang et al., "Content-Based Collaborative Generation for Recommender Systems", CIKM 2024) gives every item
a generative ID built from collaborative item embeddings: hierarchical k-means whose clusters are size-constrained
(2 levels x 32 clusters in the paper), then the item's index within its leaf cluster as the last code. The size
bound keeps the tree balanced, so the leaf index, and with it the last level's vocabulary, stays small; the index
makes IDs unique by construction, with no collision step.

Plain torch on ``x.device``; nothing here knows about Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange, reduce
from torch import Tensor

from genrec.tokenizer.collisions import assert_unique
from genrec.tokenizer.kmeans import kmeans_plusplus, reseed_empty, squared_distances


class ConstrainedKMeansResult(NamedTuple):
    """Output of :func:`size_constrained_kmeans`.

    Attributes:
        centroids: (k, d) float32, the mean of each cluster's points (a cluster left empty keeps its last centre).
        assignment: (n,) int64 in [0, k); every cluster holds at most ``max_size`` points.
        inertia: sum over points of the squared distance to their cluster's centroid.
        iterations: Lloyd iterations run.
    """

    centroids: Tensor
    assignment: Tensor
    inertia: float
    iterations: int


class HierarchicalCodes(NamedTuple):
    """Output of :func:`hierarchical_codes`.

    Attributes:
        codes: (n, l + 1) int64, unique rows; column j < l is the cluster on level j within the item's parent
            cluster, the last column the item's rank within its leaf by distance to the leaf centroid.
        level_sizes: (branching..., largest leaf): the number of codes each column can take.
        reconstruction: (n, d) float32, the centroid (mean) of each item's leaf cluster.
    """

    codes: Tensor
    level_sizes: tuple[int, ...]
    reconstruction: Tensor


def capacity_assign(distances: Tensor, max_size: int) -> Tensor:
    """Assigns points to clusters, at most ``max_size`` per cluster, greedily by ascending distance.

    The result is the greedy matching over all (point, cluster) pairs taken in ascending (distance, point, cluster)
    order, a pair accepted when its point is still free and its cluster not full. Running that greedy literally is
    a sequential scan of n * k pairs; instead this runs its vectorised equivalent, point-proposing deferred
    acceptance: every free point proposes to its nearest cluster not yet tried (skipping full clusters that hold only
    closer points), each cluster keeps its ``max_size`` closest candidates and frees the rest, until no point is
    free. With both sides ranking pairs by the same
    distance (ties by index), the stable matching is unique and equals the greedy one (globally ranked pairs).

    Args:
        distances: (n, k) float, e.g. squared distances of points to centroids.
        max_size: capacity of every cluster; k * max_size >= n.

    Returns:
        (n,) int64 in [0, k), each value used at most ``max_size`` times.

    Raises:
        ValueError: if the clusters cannot hold all points.
    """
    n, k = distances.shape
    if k * max_size < n:
        raise ValueError(f"{k} clusters of at most {max_size} points cannot hold {n} points (need k * max_size >= n)")
    device = distances.device
    preferences = torch.argsort(distances, dim=1, stable=True)  # (n, k) clusters, nearest first, ties by index
    ranked = distances.gather(1, preferences)  # (n, k) the distances in that order
    steps = rearrange(torch.arange(k, device=device), "k -> 1 k")
    position = torch.zeros(n, dtype=torch.long, device=device)  # first preference a point may still propose to
    threshold = torch.full((k,), math.inf, dtype=distances.dtype, device=device)  # worst held distance once full
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)
    free = rows
    # Terminates: a point refused by all k clusters would mean k full clusters, k * max_size < n points.
    while free.numel() > 0:
        # Skip the clusters that are full of points closer than this one: they would refuse it now and, only ever
        # trading up, for good. This collapses chains of refusals into one round. A cluster with room has an
        # infinite threshold, so every free point has a cluster left to try.
        hopeful = (ranked[free] <= threshold[preferences[free]]) & (steps >= rearrange(position[free], "f -> f 1"))
        first = hopeful.to(torch.uint8).argmax(dim=1)  # the first hopeful preference (argmax returns the first max)
        assignment[free] = preferences[free, first]
        position[free] = first + 1
        # Rank every point inside the cluster it is held by or proposes to: by distance, then by point index
        # (two stable sorts); whoever ranks at or past the capacity is refused and free again.
        by_distance = torch.argsort(distances[rows, assignment], stable=True)
        order = by_distance[torch.argsort(assignment[by_distance], stable=True)]
        counts = torch.bincount(assignment, minlength=k)
        starts = torch.cumsum(counts, dim=0) - counts
        rank = rows - starts[assignment[order]]
        worst = order[rank == max_size - 1]  # the last point a full cluster keeps
        threshold[assignment[worst]] = distances[worst, assignment[worst]]
        free = order[rank >= max_size]
        assignment[free] = -1
    return assignment


def size_constrained_kmeans(
    x: Tensor,
    k: int,
    *,
    max_size: int | None = None,
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    name: str = "size-constrained k-means",
) -> ConstrainedKMeansResult:
    """Lloyd's k-means whose assignment step respects a cluster size bound (:func:`capacity_assign`).

    k-means++ seeding; a cluster left empty is re-seeded on the point worst served by its centre, as in
    ``genrec.tokenizer.kmeans.kmeans``. The greedy capacity assignment is not an exact minimiser, so the objective
    need not fall monotonically: the best iterate is returned.

    Args:
        x: (n, d) float, finite, n >= k.
        k: number of clusters.
        max_size: most points per cluster; default ceil(n / k), the tightest bound that holds every point.
        max_iter: Lloyd iterations at most.
        tol: stop once the inertia improves by less than this fraction in an iteration.
        seed: seed of the k-means++ draws; the result is deterministic for a seed on a given device.
        name: what is being clustered, for error messages.

    Returns:
        A :class:`ConstrainedKMeansResult`.

    Raises:
        ValueError: if ``x`` is not 2-D or not finite, n < k, or k * max_size < n.
    """
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (n, d) matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1 or max_iter < 1:
        raise ValueError(f"{name}: k and max_iter must be >= 1, got k={k}, max_iter={max_iter}")
    if n < k:
        raise ValueError(f"{name}: cannot make {k} clusters of {n} points; use fewer clusters or more points")
    max_size = math.ceil(n / k) if max_size is None else max_size
    if k * max_size < n:
        raise ValueError(
            f"{name}: {k} clusters of at most max_size={max_size} points cannot hold {n} points; "
            f"max_size must be >= ceil(n / k) = {math.ceil(n / k)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: the points hold NaN or inf")
    x = x.float()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    centroids = kmeans_plusplus(x, k, generator=generator)
    best: ConstrainedKMeansResult | None = None
    previous = math.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        assignment = capacity_assign(squared_distances(x, centroids), max_size)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        filled = rearrange(counts > 0, "k -> k 1")
        centroids = torch.where(filled, sums / rearrange(counts.clamp_min(1), "k -> k 1").float(), centroids)
        served = reduce((x - centroids[assignment]).pow(2), "n d -> n", "sum")  # (n,) squared distance to own mean
        inertia = float(served.sum())
        if best is None or inertia < best.inertia:
            best = ConstrainedKMeansResult(centroids.clone(), assignment, inertia, iterations)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty and float(served.max()) > 0:
            # Skipped when every point sits on its centre: then no move can help.
            reseed_empty(centroids, empty, x, served)
            previous = math.inf  # the objective jumped; do not declare convergence on this step
            continue
        if previous < math.inf and previous - inertia <= tol * previous:
            break
        previous = inertia
    sizes = torch.bincount(best.assignment, minlength=k)
    assert int(sizes.max()) <= max_size, f"{name}: a cluster holds {int(sizes.max())} > {max_size} points"
    return best._replace(iterations=iterations)


def _rank_by_distance(x: Tensor, centre: Tensor) -> Tensor:
    """(g,) int64 rank of each row of ``x`` (g, d) by squared distance to ``centre`` (d,): 0 = closest, ties by
    row index."""
    distances = reduce((x - rearrange(centre, "d -> 1 d")).pow(2), "g d -> g", "sum")
    order = torch.argsort(distances, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=x.device)
    return rank


def hierarchical_codes(
    x: Tensor,
    branching: Sequence[int] = (32, 32),
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> HierarchicalCodes:
    """ColaRec's item IDs: hierarchical size-constrained k-means, then the item's index within its leaf.

    Level 0 splits all items into ``branching[0]`` clusters of at most ceil(n / branching[0]) items; level j splits
    each level-(j-1) cluster of g items into ``branching[j]`` clusters of at most ceil(g / branching[j]) items. A
    cluster with no more items than ``branching[j]`` puts each item in a cluster of its own, numbered by distance to
    the cluster's mean (closest first). The last code is the item's rank within its leaf by distance to the leaf
    centroid, closest first, so rows are unique by construction.

    Args:
        x: (n, d) float, finite, e.g. L2-normalised collaborative item embeddings.
        branching: clusters per level, e.g. (32, 32) as in ColaRec.
        max_iter: Lloyd iterations at most per clustering.
        tol: relative inertia improvement below which a clustering stops.
        seed: base seed; the i-th clustering run (level by level, parent clusters in code order) uses ``seed + i``.

    Returns:
        A :class:`HierarchicalCodes`.

    Raises:
        ValueError: if ``x`` is not a non-empty (n, d) matrix or a branching factor is < 1.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix of item vectors, got shape {tuple(x.shape)}")
    branching = tuple(int(b) for b in branching)
    if not branching or min(branching) < 1:
        raise ValueError(f"branching must be a non-empty sequence of positive cluster counts, got {branching}")
    x = x.float()
    n = x.shape[0]
    codes = torch.zeros(n, len(branching) + 1, dtype=torch.long, device=x.device)
    groups = [torch.arange(n, device=x.device)]  # item indices of each cluster of the current level
    runs = 0
    for level, k in enumerate(branching):
        children: list[Tensor] = []
        for members in groups:
            points = x[members]
            if members.numel() <= k:
                assignment = _rank_by_distance(points, reduce(points, "g d -> d", "mean"))
            else:
                assignment = size_constrained_kmeans(
                    points,
                    k,
                    max_size=math.ceil(members.numel() / k),
                    max_iter=max_iter,
                    tol=tol,
                    seed=seed + runs,
                    name=f"level {level}, cluster {runs}",
                ).assignment
                runs += 1
            codes[members, level] = assignment
            counts = torch.bincount(assignment, minlength=k)
            split = torch.split(members[torch.argsort(assignment, stable=True)], counts.tolist())
            children.extend(child for child in split if child.numel() > 0)
        groups = children
    # ColaRec: the item's index within its leaf cluster is the last code.
    reconstruction = torch.empty_like(x)
    for members in groups:
        centre = reduce(x[members], "g d -> d", "mean")
        codes[members, -1] = _rank_by_distance(x[members], centre)
        reconstruction[members] = centre
    assert_unique(codes)
    return HierarchicalCodes(codes, (*branching, max(g.numel() for g in groups)), reconstruction)
