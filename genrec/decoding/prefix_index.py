"""Prefix index over a catalogue's semantic IDs: which code may follow a given prefix.

Every item is a path of ``L`` codes. The prefixes of length ``l`` are the *nodes* of depth ``l`` (depth 0 has one
node, the empty prefix). For each level ``l`` the index answers, for a batch of node ids of depth ``l``, the child
reached by every code of that level: a node id of depth ``l + 1``, the item index on the last level, or -1 where
the prefix does not exist in the catalogue. Beam search turns the -1 entries into ``-inf`` scores, so a decoded
path is always a real item, and reads the item index straight off the last level.

Two layouts give the same answer:

* ``dense``: per level a table ``(n_nodes, level_size)`` of child ids, one gather per decode step.
  TIGER-size catalogues (12k items, 3 x 256 codes + collision level) need about 4M entries in all.
* ``csr``: per level compressed sparse rows (``row_ptr``, sorted ``col`` codes, ``child`` ids). A lookup gathers
  each node's children (at most the level's largest fan-out) and scatters them into a ``(..., level_size)`` row of
  -1. Its memory is linear in the items whatever the codebook; the dense table is ``n_nodes * level_size``.

The layout of each level is chosen by measurement: a level whose dense table would exceed ``dense_limit`` entries is
CSR (memory decides); a level small enough that any layout is instant is dense; every level in between is built
both ways and the one whose lookup of a beam-sized batch of nodes is faster on the decoding device is kept
(:attr:`PrefixIndex.lookup_seconds` keeps the timings). Both layouts return identical tensors, so the choice changes
speed and memory only, never a result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

Layout = Literal["dense", "csr"]


@dataclass
class _Csr:
    """Children of one level in compressed sparse rows (see module docstring)."""

    row_ptr: torch.Tensor  # (n_nodes + 1,) int64: children of node i are entries row_ptr[i]:row_ptr[i+1]
    col: torch.Tensor  # (n_edges,) int64 code of each child, sorted within a row
    child: torch.Tensor  # (n_edges,) int64 child node id (item index on the last level)
    max_fanout: int


def _checked_codes(codes: torch.Tensor, level_sizes: tuple[int, ...]) -> torch.Tensor:
    """``codes`` as (n_items, l) int64 on the CPU, or a ValueError naming the first bad item and level."""
    codes = torch.as_tensor(codes)
    if codes.dim() != 2 or codes.shape[1] != len(level_sizes) or codes.shape[0] == 0:
        raise ValueError(
            f"codes must be a non-empty (n_items, {len(level_sizes)}) tensor for level_sizes={level_sizes}, "
            f"got shape {tuple(codes.shape)}"
        )
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    codes = codes.detach().to("cpu", torch.long)
    sizes = torch.tensor(level_sizes)
    bad = (codes < 0) | (codes >= sizes)
    if bad.any():
        item, level = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"code out of range: item {item} has code {int(codes[item, level])} on level {level}, "
            f"expected [0, {level_sizes[level]}); {int(bad.any(1).sum())} item(s) affected"
        )
    return codes


class PrefixIndex:
    """Per-level child tables of the catalogue's code trie.

    Args:
        codes: (n_items, l) int64, ``codes[i, j]`` in ``[0, level_sizes[j])``; row ``i`` is item ``i``'s semantic ID.
            Rows must be unique (append a collision level first, TIGER §3.1).
        level_sizes: number of codes on each level (``CodeVocab.level_sizes``).
        dense_limit: a level whose ``n_nodes * level_size`` exceeds this is stored as CSR (a memory bound: 2^25
            int64 entries are 256 MiB).
        layout: force one layout for every level instead of choosing (module docstring).
        measure_above: levels with at most this many dense entries are dense without measuring.
        device: where decoding will run: the layouts are timed there, and the index is moved there.
        probe: nodes per timed lookup (a batch of users times beams).

    Raises:
        ValueError: codes of the wrong shape, out of range, or two items sharing a semantic ID.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        level_sizes: tuple[int, ...] | list[int],
        *,
        dense_limit: int = 1 << 25,
        layout: Layout | None = None,
        measure_above: int = 1 << 18,
        device: torch.device | str | None = None,
        probe: int = 4096,
    ) -> None:
        level_sizes = tuple(int(s) for s in level_sizes)
        if layout not in (None, "dense", "csr"):
            raise ValueError(f"layout must be None, 'dense' or 'csr', got {layout!r}")
        codes = _checked_codes(codes, level_sizes)

        self.level_sizes = level_sizes
        self.n_items = codes.shape[0]
        self.codes = codes  # (n_items, l), kept for decoding checks and the item -> path direction
        self.tables: list[torch.Tensor | None] = []
        self.csr: list[_Csr | None] = []
        self.n_nodes: list[int] = []
        self.lookup_seconds: list[dict[str, float] | None] = []
        """Per level, the measured seconds of one probe lookup in each layout; None where nothing was measured."""
        device = torch.device(device) if device is not None else codes.device

        # Node ids of depth l+1 are the ranks of (parent id, code) pairs: parent ids stay below n_items, so the
        # key parent * size + code never overflows, whatever the number of levels.
        parent = torch.zeros(self.n_items, dtype=torch.long)
        n_parents = 1
        for level, size in enumerate(level_sizes):
            key = parent * size + codes[:, level]
            last = level == len(level_sizes) - 1
            if last:
                uniq, counts = torch.unique(key, return_counts=True)
                if (counts > 1).any():
                    raise ValueError(_duplicate_message(key, uniq[counts > 1], codes))
                edge_key, child = key, torch.arange(self.n_items)
            else:
                edge_key, child_of_item = torch.unique(key, return_inverse=True)
                child = torch.arange(edge_key.numel())
                parent = child_of_item
            self.n_nodes.append(n_parents)
            entries = n_parents * size
            seconds, built = None, {}
            if layout is not None:
                chosen = layout
            elif entries > dense_limit:
                chosen = "csr"
            elif entries <= measure_above:
                chosen = "dense"
            else:
                built = {"dense": _dense(edge_key, child, n_parents, size), "csr": _csr(edge_key, child, n_parents, size)}
                nodes = torch.randint(n_parents, (probe,), generator=torch.Generator().manual_seed(level))
                seconds = {name: time_lookup(name, _lookup(table, size, nodes, device), device)
                           for name, table in built.items()}
                chosen = min(seconds, key=seconds.get)
            self.lookup_seconds.append(seconds)
            table = built[chosen] if chosen in built else _BUILD[chosen](edge_key, child, n_parents, size)
            self.tables.append(table if chosen == "dense" else None)
            self.csr.append(table if chosen == "csr" else None)
            n_parents = edge_key.numel() if not last else n_parents

        self.to(device)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the tables (both layouts) and the codes."""
        tensors = [self.codes] + [t for t in self.tables if t is not None]
        tensors += [x for c in self.csr if c is not None for x in (c.row_ptr, c.col, c.child)]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def layouts(self) -> list[Layout]:
        """Layout of each level."""
        return ["dense" if t is not None else "csr" for t in self.tables]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: torch.device | str) -> PrefixIndex:
        """Moves every table to ``device`` (in place) and returns ``self``."""
        self.codes = self.codes.to(device)
        self.tables = [None if t is None else t.to(device) for t in self.tables]
        self.csr = [
            None if c is None else _Csr(c.row_ptr.to(device), c.col.to(device), c.child.to(device), c.max_fanout)
            for c in self.csr
        ]
        return self

    def children(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """Child of every node for every code of ``level``.

        Args:
            level: code level in ``[0, l)``.
            nodes: (...) int64 node ids of depth ``level`` (all zeros on level 0), in ``[0, n_nodes[level])``.

        Returns:
            (..., level_sizes[level]) int64: node id of depth ``level + 1`` (item index on the last level), -1 where
            that prefix is not in the catalogue. Both layouts return identical tensors.
        """
        table = self.tables[level]
        if table is not None:
            return table[nodes]
        return _csr_children(self.csr[level], self.level_sizes[level], nodes)

    def paths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every complete path stored in the tables, found by walking them from the root.

        Returns:
            items: (n_paths,) int64 item index at the end of each path.
            codes: (n_paths, l) int64 codes along each path. A correct index has one path per item and
            ``codes == self.codes[items]``.
        """
        nodes = torch.zeros(1, dtype=torch.long, device=self.device)
        prefix = torch.zeros(1, 0, dtype=torch.long, device=self.device)
        for level in range(self.levels):
            child = self.children(level, nodes)  # (n, k)
            parent_row, code = (child >= 0).nonzero(as_tuple=True)
            prefix = torch.cat([prefix[parent_row], code[:, None]], dim=1)
            nodes = child[parent_row, code]
        return nodes, prefix


def _dense(edge_key: torch.Tensor, child: torch.Tensor, n_parents: int, size: int) -> torch.Tensor:
    """(n_parents, size) child ids, -1 where a code has no child."""
    table = torch.full((n_parents * size,), -1, dtype=torch.long)
    table[edge_key] = child
    return table.view(n_parents, size)


def _csr(edge_key: torch.Tensor, child: torch.Tensor, n_parents: int, size: int) -> _Csr:
    """The same children as :func:`_dense`, in compressed sparse rows."""
    order = torch.argsort(edge_key)
    edge_key, child = edge_key[order], child[order]
    row_ptr = torch.zeros(n_parents + 1, dtype=torch.long)
    row_ptr[1:] = torch.cumsum(torch.bincount(edge_key // size, minlength=n_parents), 0)
    fanout = int((row_ptr[1:] - row_ptr[:-1]).max())
    return _Csr(row_ptr=row_ptr, col=edge_key % size, child=child, max_fanout=fanout)


_BUILD = {"dense": _dense, "csr": _csr}


def _csr_children(csr: _Csr, size: int, nodes: torch.Tensor) -> torch.Tensor:
    """:meth:`PrefixIndex.children` of one CSR level."""
    flat = nodes.reshape(-1)
    start = csr.row_ptr[flat]
    degree = csr.row_ptr[flat + 1] - start
    slot = torch.arange(csr.max_fanout, device=flat.device)
    present = slot < degree[:, None]  # (n, f)
    edge = torch.where(present, start[:, None] + slot, 0)
    # Absent slots write to a spare column ``size`` that is cut off afterwards: no data-dependent shapes.
    col = torch.where(present, csr.col[edge], size)
    child = torch.where(present, csr.child[edge], -1)
    out = torch.full((flat.numel(), size + 1), -1, dtype=torch.long, device=flat.device)
    out.scatter_(1, col, child)
    return out[:, :size].reshape(*nodes.shape, size)


def _lookup(table: torch.Tensor | _Csr, size: int, nodes: torch.Tensor, device: torch.device) -> Callable[[], object]:
    """A lookup of ``nodes`` in one level's ``table`` (either layout), on ``device``, for :func:`time_lookup`."""
    nodes = nodes.to(device)
    if isinstance(table, torch.Tensor):
        dense = table.to(device)
        return lambda: dense[nodes]
    moved = _Csr(table.row_ptr.to(device), table.col.to(device), table.child.to(device), table.max_fanout)
    return lambda: _csr_children(moved, size, nodes)


def time_lookup(layout: str, lookup: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds of ``lookup()`` on ``device`` after one warm-up call (``layout`` names it)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    lookup()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lookup()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _duplicate_message(key: torch.Tensor, dup_keys: torch.Tensor, codes: torch.Tensor) -> str:
    groups = []
    for k in dup_keys[:5]:
        items = (key == k).nonzero().flatten().tolist()
        groups.append(f"items {items} share {codes[items[0]].tolist()}")
    more = f" (and {len(dup_keys) - 5} more)" if len(dup_keys) > 5 else ""
    return (
        f"semantic IDs must be unique, {len(dup_keys)} collide: " + "; ".join(groups) + more
        + ". Append a collision level (TIGER §3.1) before building the index."
    )
