"""An (n, d) feature matrix that may not fit in memory, read in blocks of rows.

A matrix is a torch tensor, a numpy array or an ``np.memmap`` (a ``.npy`` file opened with ``mmap_mode="r"``). The
functions here hand out float32 torch copies of a few rows at a time, so a caller that loops over blocks never holds
a float copy of the whole matrix; for a tensor the block is a view when it already is float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import numpy as np
import torch
from torch import Tensor

Matrix = Union[Tensor, np.ndarray]
"""A (n, d) tensor, numpy array or np.memmap."""

CHUNK_ROWS = 16384
"""Rows per block by default: 25 MB of float32 at d = 384."""

ENCODE_ROWS = 4 * CHUNK_ROWS
"""Rows per block when a whole catalogue is encoded for export: a multiple of k-means' 16384-row distance blocks, so
codes come out the same bits as from encoding all rows at once, and large enough that a catalogue of up to 65,536
items still passes an encoder network in one call, as it did before export worked in blocks."""


def block(x: Matrix, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of ``x`` as float32 torch (on ``x.device`` for a tensor, on the CPU for an array)."""
    if isinstance(x, Tensor):
        return x[start:stop].float()
    # np.array copies: from_numpy of a read-only memmap would alias the mapped file (and warn that it is read-only).
    return torch.from_numpy(np.array(x[start:stop], dtype=np.float32))


def take(x: Matrix, index: Tensor) -> Tensor:
    """Rows ``index`` (r,) int64 of ``x`` as (r, d) float32 torch; sorted indices read a memmap front to back."""
    if isinstance(x, Tensor):
        return x[index.to(x.device)].float()
    return torch.from_numpy(np.asarray(x[index.cpu().numpy()], dtype=np.float32))


def nonfinite_rows(x: Matrix, *, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """(r,) int64 indices of the rows of ``x`` (n, d) that hold NaN or inf, checked ``chunk_rows`` rows at a time."""
    bad = [torch.zeros(0, dtype=torch.int64)]
    for start in range(0, x.shape[0], chunk_rows):
        # In the matrix's own dtype, not float32: a float64 value beyond float32's range is finite here.
        if isinstance(x, Tensor):
            finite = torch.isfinite(x[start : start + chunk_rows]).all(dim=1).cpu()
        else:
            finite = torch.from_numpy(np.isfinite(x[start : start + chunk_rows]).all(axis=1))
        bad.append(torch.nonzero(~finite).flatten() + start)
    return torch.cat(bad)


def map_blocks(fn: Callable[[Tensor], Tensor], x: Tensor, *, chunk_rows: int = ENCODE_ROWS) -> Tensor:
    """``fn`` applied to ``x`` (n, ...) ``chunk_rows`` rows at a time and concatenated: for row-wise functions whose
    intermediate results would be large for all rows at once (a decoder's hidden layers, a codebook lookup)."""
    return torch.cat([fn(x[start : start + chunk_rows]) for start in range(0, x.shape[0], chunk_rows)])
