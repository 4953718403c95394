"""Residual k-means (RQ-KMeans): k-means on the item vectors, then on the residuals, level by level.

GRID (Ju et al., CIKM 2025) found this training-free tokenizer as good as or better than an RQ-VAE at a fraction of
the cost. The codebooks are buffers, not parameters: nothing here is trained by gradient descent.

For catalogues beyond memory, :meth:`ResidualKMeans.fit` takes a numpy array or ``np.memmap`` and reads it in blocks
of rows: each level's k-means runs on a sample and refines on all rows (:mod:`genrec.tokenizer.kmeans`), and a
level's residual is recomputed block by block from the input and the earlier levels' codes
(:class:`~genrec.tokenizer.rows.Rows`) instead of being kept as an (n, d) matrix.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import torch
from torch import Tensor, nn

from genrec.features.matrix import CHUNK_ROWS, ENCODE_ROWS, Matrix
from genrec.tokenizer.kmeans import POINTS_PER_CENTROID, kmeans
from genrec.tokenizer.residual import Quantization, decode_codes, residual_codes, residual_quantize
from genrec.tokenizer.rows import Rows

log = logging.getLogger(__name__)


class LevelFit(NamedTuple):
    """How one level's k-means went.

    Attributes:
        iterations: Lloyd iterations (on the sample, if there was one).
        sample_size: rows those iterations ran on (n when all).
        refine_iterations: Lloyd iterations over all rows after the sample's.
        inertia: sum over rows of the squared distance of their residual to its centre.
        seconds: wall-clock time of the level.
    """

    iterations: int
    sample_size: int
    refine_iterations: int
    inertia: float
    seconds: float


class ResidualFit(NamedTuple):
    """Output of :meth:`ResidualKMeans.fit_predict`: ``codes`` (n, l) int64 of every row, and one
    :class:`LevelFit` per level."""

    codes: Tensor
    levels: list[LevelFit]


class ResidualKMeans(nn.Module):
    """Residual k-means quantizer with ``levels`` codebooks of ``codebook_size`` codes each.

    Args:
        input_dim: width d of the item vectors.
        levels: number of code levels l.
        codebook_size: codes per level k.
        max_iter: Lloyd iterations at most per level.
        tol: relative inertia improvement below which a level stops.
        seed: seed of the sample and k-means++ draws (level j uses ``seed + j``).
        max_points_per_centroid: a level with more rows than this times ``codebook_size`` is fitted on a sample of
            that many and refined on all rows (:func:`~genrec.tokenizer.kmeans.kmeans`); None: always all rows.
        refine_iter: Lloyd iterations at most over all rows after a sample's.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        levels: int = 3,
        codebook_size: int = 256,
        max_iter: int = 100,
        tol: float = 1e-4,
        seed: int = 0,
        max_points_per_centroid: int | None = POINTS_PER_CENTROID,
        refine_iter: int = 3,
    ) -> None:
        super().__init__()
        if input_dim < 1 or levels < 1 or codebook_size < 1:
            raise ValueError(
                f"input_dim, levels and codebook_size must be >= 1, got {input_dim}, {levels}, {codebook_size}"
            )
        self.levels = levels
        self.codebook_size = codebook_size
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.max_points_per_centroid = max_points_per_centroid
        self.refine_iter = refine_iter
        self.register_buffer("codebooks", torch.zeros(levels, codebook_size, input_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, x: Matrix, *, chunk_size: int = CHUNK_ROWS) -> ResidualKMeans:
        """Fits every level's codebook on ``x``; see :meth:`fit_predict`.

        Returns:
            self, with ``codebooks`` filled.
        """
        self.fit_predict(x, chunk_size=chunk_size)
        return self

    @torch.no_grad()
    def fit_predict(self, x: Matrix, *, chunk_size: int = CHUNK_ROWS) -> ResidualFit:
        """Fits every level's codebook on ``x`` and returns the codes of its rows, logging each level.

        Args:
            x: (n, d), n >= codebook_size, finite: a float tensor (fitted on its device), or a numpy array or memmap
                (fitted on the CPU, read ``chunk_size`` rows at a time).
            chunk_size: rows per block read and per distance block.

        Returns:
            A :class:`ResidualFit`; its codes are :meth:`encode_catalogue` of ``x`` with the fitted codebooks.
        """
        rows = Rows(x)
        codes, fits = [], []
        for level in range(self.levels):
            start = time.perf_counter()
            result = kmeans(
                rows,
                self.codebook_size,
                max_iter=self.max_iter,
                tol=self.tol,
                seed=self.seed + level,
                chunk_size=chunk_size,
                name=f"RQ-KMeans level {level}",
                max_points_per_centroid=self.max_points_per_centroid,
                refine_iter=self.refine_iter,
            )
            self.codebooks[level] = result.centroids.to(self.codebooks.device)
            rows = rows.then(result.centroids, result.assignments)
            codes.append(result.assignments)
            fits.append(LevelFit(result.iterations, result.sample_size, result.refine_iterations, result.inertia,
                                 time.perf_counter() - start))
            log.info("RQ-KMeans level %d: %d Lloyd iterations on %s of %s rows, %d over all rows, inertia %.6g, "
                     "%.1f s", level, result.iterations, f"{result.sample_size:,}", f"{rows.shape[0]:,}",
                     result.refine_iterations, result.inertia, fits[-1].seconds)
        self.fitted.fill_(True)
        return ResidualFit(torch.stack(codes, dim=1), fits)

    def quantize(self, x: Tensor) -> Quantization:
        """Residual quantization of ``x`` (b, d) with the fitted codebooks; see :class:`Quantization`."""
        if not bool(self.fitted):
            raise RuntimeError("ResidualKMeans.quantize called before fit()")
        return residual_quantize(x.float(), self.codebooks)

    def encode(self, x: Tensor) -> Tensor:
        """(b, d) float -> (b, l) int64 codes."""
        return self.quantize(x).codes

    def encode_catalogue(self, x: Matrix, *, chunk_size: int = ENCODE_ROWS) -> Tensor:
        """(n, l) int64 codes of every row of ``x`` (a tensor, array or memmap), ``chunk_size`` rows at a time:
        :meth:`encode` without the (n, l, d) residuals (:func:`~genrec.tokenizer.residual.residual_codes`)."""
        if not bool(self.fitted):
            raise RuntimeError("ResidualKMeans.encode_catalogue called before fit()")
        return residual_codes(x, self.codebooks, chunk_size=chunk_size)

    def decode(self, codes: Tensor) -> Tensor:
        """(b, l) int64 codes -> (b, d) float, the sum of their codebook rows."""
        return decode_codes(self.codebooks, codes)
