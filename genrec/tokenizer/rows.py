"""The input of k-means and residual quantization, read in blocks of rows so it never has to be in memory whole.

:class:`Rows` is an (n, d) matrix (a tensor, a numpy array or an ``np.memmap``, :mod:`genrec.features.matrix`)
minus the codebook rows that earlier residual levels chose for each row. Level j of residual k-means sees
r_j = x - e_0 - ... - e_{j-1} (TIGER §3.1); rather than keeping the (n, d) residual, every block recomputes it
from the input block and the (n,) codes of the earlier levels, which is exact: the subtractions run in the same
order as an in-memory ``residual = residual - centroids[assignments]`` would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from genrec.features.matrix import CHUNK_ROWS, Matrix, block, nonfinite_rows, take


class Rows:
    """An (n, d) matrix minus the rows its earlier levels chose, handed out as float32 blocks on ``device``.

    Args:
        data: (n, d) tensor, numpy array or memmap.
        device: where blocks go; default the tensor's device, or the CPU for an array.
    """

    def __init__(self, data: Matrix, *, device: torch.device | str | None = None) -> None:
        if data.ndim != 2:
            raise ValueError(f"expected a (n, d) matrix, got shape {tuple(data.shape)}")
        self.data = data
        self.device = torch.device(device) if device is not None else (
            data.device if isinstance(data, Tensor) else torch.device("cpu")
        )
        self.centroids: list[Tensor] = []  # (k, d) float per earlier level
        self.assignments: list[Tensor] = []  # (n,) int64 per earlier level, on ``device``

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def then(self, centroids: Tensor, assignments: Tensor) -> Rows:
        """These rows minus ``centroids[assignments]``: the next level's residual.

        Args:
            centroids: (k, d) float.
            assignments: (n,) int64 in [0, k).
        """
        out = Rows(self.data, device=self.device)
        out.centroids = [*self.centroids, centroids.to(self.device)]
        out.assignments = [*self.assignments, assignments.to(self.device)]
        return out

    def _subtract(self, x: Tensor, index: slice | Tensor) -> Tensor:
        x = x.to(self.device)
        for centroids, assignments in zip(self.centroids, self.assignments):
            x = x - centroids[assignments[index]]
        return x

    def block(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop``: (stop - start, d) float32."""
        return self._subtract(block(self.data, start, stop), slice(start, stop))

    def take(self, index: Tensor) -> Tensor:
        """Rows ``index`` (r,) int64: (r, d) float32; sort the indices to read a memmap front to back."""
        return self._subtract(take(self.data, index), index.to(self.device))

    def blocks(self, chunk_size: int = CHUNK_ROWS) -> Iterator[tuple[int, Tensor]]:
        """(start, rows start:start + chunk_size) over the whole matrix."""
        for start in range(0, self.shape[0], chunk_size):
            yield start, self.block(start, start + chunk_size)

    def materialize(self) -> Tensor:
        """All rows at once: (n, d) float32 (what k-means does when they fit its sample)."""
        return self.block(0, self.shape[0])

    def check_finite(self, *, name: str, chunk_size: int = CHUNK_ROWS) -> None:
        """Raises ValueError naming the rows with NaN or inf (of the input: the codebook rows are finite)."""
        rows = nonfinite_rows(self.data, chunk_rows=chunk_size)
        if rows.numel():
            raise ValueError(f"{name}: {rows.numel()} rows have NaN or inf, first rows {rows[:10].tolist()}")


def as_rows(x: Matrix | Rows) -> Rows:
    """``x`` as :class:`Rows` (unchanged if it is one)."""
    return x if isinstance(x, Rows) else Rows(x)

