"""Making semantic IDs unique: items that share all their codes must still be told apart by the recommender.

Two strategies:

- ``"extra_code"`` (TIGER §3.1, default): append one level; the items of a group that share an ID get 0, 1, 2, ...
  in item-index order, everyone else 0. The level is appended even when nothing collides (its size is then 1), so
  every artifact of a method has the same number of levels; its size is the largest group. With a ``popularity``
  per item (MMGRec, Liu et al. 2024: a popularity token), a group's items are ranked by descending popularity
  instead (ties by item index), so the most popular item of every group gets 0: the extra code then carries
  information a recommender can learn (code 0 is the safest guess) rather than an arbitrary catalogue order.
- ``"reassign"`` (in the spirit of LC-Rec / LETTER, which keep IDs at l codes with a balanced last level): within
  each (l-1)-prefix, items that collide keep the one closest to the shared code, and the others move, greedily by
  distance, to the nearest last-level code that no item of that prefix uses. Greedy smallest-distance-first rather
  than Sinkhorn: groups are small, and greedy never moves a non-colliding item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Union

import torch
from torch import Tensor

CollisionStrategy = Literal["extra_code", "reassign"]
STRATEGIES: tuple[str, ...] = ("extra_code", "reassign")
CollisionOrder = Literal["index", "popularity"]
ORDERS: tuple[str, ...] = ("index", "popularity")
LastDistances = Union[Tensor, Callable[[Tensor], Tensor]]
"""The cost of giving items last-level codes: an (n, k) matrix, or a function from (r,) item indices to their (r, k)
rows, so that a large catalogue computes them only for the items that collide."""


class CollisionStats(NamedTuple):
    """How much a code matrix collides.

    Attributes:
        collision_rate: fraction of items whose ID is shared with at least one other item.
        max_group: largest number of items sharing one ID (1 when all IDs are unique).
        n_groups: number of IDs shared by two or more items.
    """

    collision_rate: float
    max_group: int
    n_groups: int


def _groups(codes: Tensor) -> tuple[Tensor, Tensor]:
    """(n,) group index of each row among identical rows, and (g,) size of each group."""
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return inverse, counts


def collision_stats(codes: Tensor) -> CollisionStats:
    """Collision statistics of ``codes`` (n, l) int64."""
    inverse, counts = _groups(codes)
    shared = counts[inverse] > 1
    return CollisionStats(
        collision_rate=float(shared.float().mean()),
        max_group=int(counts.max()),
        n_groups=int((counts > 1).sum()),
    )


def assert_unique(codes: Tensor) -> None:
    """Raises ValueError naming colliding items if two rows of ``codes`` (n, l) are equal."""
    inverse, counts = _groups(codes)
    if int(counts.max()) > 1:
        group = int(counts.argmax())
        items = torch.nonzero(inverse == group).flatten()[:10].tolist()
        raise ValueError(
            f"semantic IDs are not unique: {int((counts > 1).sum())} IDs are shared; e.g. items {items} all have "
            f"ID {codes[items[0]].tolist()}"
        )


def append_collision_code(codes: Tensor, popularity: Tensor | None = None) -> Tensor:
    """The extra level: the rank of each item within its group of identical IDs.

    Args:
        codes: (n, l) int64.
        popularity: (n,) real, e.g. training interaction counts; None ranks a group in item-index order (TIGER),
            otherwise by descending popularity with ties in item-index order (MMGRec).

    Returns:
        (n, l + 1) int64; the new last column is in [0, max_group).
    """
    n = codes.shape[0]
    inverse, counts = _groups(codes)
    if popularity is None:
        order = torch.argsort(inverse, stable=True)
    else:
        _check_popularity(popularity, n)
        # Two stable sorts make a lexicographic order: group, then descending popularity, then item index.
        by_popularity = torch.argsort(-popularity.to(device=codes.device, dtype=torch.float64), stable=True)
        order = by_popularity[torch.argsort(inverse[by_popularity], stable=True)]
    starts = torch.cumsum(counts, dim=0) - counts  # first position of each group in ``order``
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(n, device=codes.device) - starts[inverse[order]]
    return torch.cat([codes, rank.unsqueeze(1)], dim=1)


def _check_popularity(popularity: Tensor, n: int) -> None:
    if popularity.shape != (n,):
        raise ValueError(f"popularity must have one entry per item, shape ({n},), got {tuple(popularity.shape)}")
    if not bool(torch.isfinite(popularity.double()).all()):
        bad = torch.nonzero(~torch.isfinite(popularity.double())).flatten()[:10].tolist()
        raise ValueError(f"popularity holds NaN or inf (items {bad})")


def reassign_last_level(codes: Tensor, distances: LastDistances) -> Tensor:
    """Keeps IDs at l codes by moving colliding items to free last-level codes of their prefix.

    Args:
        codes: (n, l) int64, last column in [0, k).
        distances: (n, k) float, cost of giving item i last-level code j (e.g. squared distance from its last
            residual to that codebook row); or a function giving those rows for (r,) item indices, called once,
            for the colliding items.

    Returns:
        (n, l) int64 with unique rows; only colliding items' last code changes.

    Raises:
        ValueError: if some (l-1)-prefix holds more than k items (no assignment can make them unique).
    """
    n = codes.shape[0]
    if isinstance(distances, Tensor) and distances.shape[0] != n:
        raise ValueError(f"codes has {n} rows but distances has {distances.shape[0]}")
    id_inverse, id_counts = _groups(codes)
    colliding = id_counts[id_inverse] > 1
    # Only colliding items keep or move codes, so only their rows of the costs are read.
    pool = torch.nonzero(colliding).flatten()
    rows = distances[pool.to(distances.device)] if isinstance(distances, Tensor) else distances(pool)
    cost = rows.detach().float().cpu()  # (r, k): row i is item pool[i]
    k = cost.shape[1]
    position = torch.full((n,), -1, dtype=torch.int64)
    position[pool.cpu()] = torch.arange(pool.numel())
    # With one level, every item shares the empty prefix.
    prefix = codes[:, :-1] if codes.shape[1] > 1 else torch.zeros(n, 1, dtype=codes.dtype, device=codes.device)
    prefix_inverse, prefix_counts = _groups(prefix)
    if int(prefix_counts.max()) > k:
        group = int(prefix_counts.argmax())
        first = int(torch.nonzero(prefix_inverse == group)[0])
        raise ValueError(
            f"collision strategy 'reassign': prefix {codes[first, :-1].tolist()} holds {int(prefix_counts.max())} "
            f"items but the last level has only {k} codes; use collision='extra_code' or a larger codebook"
        )
    out = codes.clone()
    # Each prefix's items in item order, from one sort: a scan of all items per prefix would be quadratic.
    by_prefix = torch.argsort(prefix_inverse, stable=True).cpu()
    ends = torch.cumsum(prefix_counts, dim=0).cpu()
    for group in torch.unique(prefix_inverse[colliding]).tolist():
        members = by_prefix[int(ends[group] - prefix_counts[group]) : int(ends[group])]
        last = codes[members, -1].cpu()
        used = torch.zeros(k, dtype=torch.bool)
        used[last] = True
        movers = []
        for code in torch.unique(last).tolist():
            holders = members[last == code]
            if holders.numel() > 1:
                # The holder closest to the shared code keeps it; the rest move.
                keep = int(cost[position[holders], code].argmin())
                movers.extend(h for j, h in enumerate(holders.tolist()) if j != keep)
        free = torch.nonzero(~used).flatten()
        block = cost[position[movers]][:, free].clone()  # (m, f)
        for _ in range(len(movers)):
            flat = int(block.argmin())
            row, col = divmod(flat, block.shape[1])
            out[movers[row], -1] = int(free[col])
            block[row, :] = float("inf")
            block[:, col] = float("inf")
    return out


def resolve_collisions(
    codes: Tensor,
    *,
    strategy: CollisionStrategy,
    codebook_size: int,
    distances: LastDistances | None = None,
    popularity: Tensor | None = None,
) -> tuple[Tensor, tuple[int, ...]]:
    """Makes every semantic ID unique and checks it.

    Args:
        codes: (n, l) int64 in [0, codebook_size).
        strategy: ``"extra_code"`` or ``"reassign"`` (see the module docstring).
        codebook_size: codes per level k.
        distances: (n, k) float or a function of item indices (:func:`reassign_last_level`), needed by
            ``"reassign"``.
        popularity: (n,) real, orders each group's extra code by descending popularity (``"extra_code"`` only);
            None for item-index order.

    Returns:
        The unique codes, (n, l + 1) for ``"extra_code"`` and (n, l) for ``"reassign"``, and the size of each level.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"collision strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "extra_code":
        out = append_collision_code(codes, popularity)
        sizes = (codebook_size,) * codes.shape[1] + (int(out[:, -1].max()) + 1,)
    else:
        if popularity is not None:
            raise ValueError("popularity orders the extra code of strategy 'extra_code'; 'reassign' does not use it")
        if distances is None:
            raise ValueError("collision strategy 'reassign' needs the (n, k) last-level distances")
        out = reassign_last_level(codes, distances)
        sizes = (codebook_size,) * codes.shape[1]
    assert_unique(out)
    return out, sizes
