"""Product k-means (PQ): long, unordered semantic IDs, one code per subspace of the item features.

RPG (Hou et al., KDD 2025) gives every item a long ID (16 to 64 digits) from optimised product quantisation, so
that a model can predict all digits at once instead of one after another. Here: centre the features, rotate them
onto their principal axes (optionally whitened, as RPG does before OPQ), spread each axis's variance over all
subspaces with a seeded random rotation (a fixed-rotation stand-in for OPQ's learned one: without it the first
subspaces would hold the high-variance axes and the last ones noise), then k-means each subspace on its own. The
digits are exchangeable: none refines another, unlike residual k-means.

Codebooks are buffers, fitted in one pass; nothing is trained by gradient descent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from genrec.tokenizer.kmeans import kmeans, nearest_centroid, squared_distances


class ProductQuantization(NamedTuple):
    """Output of :meth:`ProductKMeans.quantize`: ``codes`` (b, m) int64 in [0, k), ``quantized`` (b, d) float."""

    codes: Tensor
    quantized: Tensor


class ProductKMeans(nn.Module):
    """Product quantizer: ``digits`` subspaces of the rotated features, ``codebook_size`` codes each.

    Args:
        input_dim: width d of the item vectors.
        digits: number of subspaces m, i.e. the ID length.
        codebook_size: codes per subspace k.
        whiten: scale each principal axis to unit variance before the random rotation (RPG's PCA step).
        max_iter: Lloyd iterations at most per subspace.
        tol: relative inertia improvement below which a subspace stops.
        seed: seed of the rotation and of the k-means++ draws (subspace j uses ``seed + j``).
    """

    def __init__(
        self,
        *,
        input_dim: int,
        digits: int = 32,
        codebook_size: int = 256,
        whiten: bool = False,
        max_iter: int = 50,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if input_dim < 1 or digits < 1 or codebook_size < 1:
            raise ValueError(f"input_dim, digits and codebook_size must be >= 1, got {input_dim}, {digits}, {codebook_size}")
        self.digits, self.codebook_size = digits, codebook_size
        self.whiten, self.max_iter, self.tol, self.seed = whiten, max_iter, tol, seed
        # Subspaces of equal width: the rotated space is zero-padded up to a multiple of ``digits``.
        self.sub_dim = -(-input_dim // digits)
        width = self.sub_dim * digits
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("rotation", torch.zeros(input_dim, width))  # x -> (x - mean) @ rotation
        self.register_buffer("codebooks", torch.zeros(digits, codebook_size, self.sub_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def _fit_rotation(self, x: Tensor) -> None:
        """Principal axes of ``x`` (optionally whitened) followed by a seeded random orthogonal rotation."""
        d, width = self.rotation.shape
        self.mean.copy_(x.mean(0))
        centred = x - self.mean
        # (d, d) covariance in float64: eigh of a near-singular float32 matrix can return slightly non-orthogonal axes.
        cov = (centred.double().T @ centred.double()) / max(1, x.shape[0] - 1)
        variance, axes = torch.linalg.eigh(cov)
        axes = axes.flip(1)  # largest variance first
        if self.whiten:
            # Axes with (numerically) no variance are left at their tiny scale instead of being blown up.
            scale = variance.flip(0).clamp_min(variance.max() * 1e-6).rsqrt()
            axes = axes * scale
        generator = torch.Generator().manual_seed(self.seed)
        random = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64)).Q
        padded = torch.zeros(d, width, dtype=torch.float64)
        padded[:, :d] = axes.cpu()
        self.rotation.copy_((padded @ random).to(self.rotation))

    def project(self, x: Tensor) -> Tensor:
        """(n, d) features -> (n, m, d / m) rotated sub-vectors."""
        return rearrange((x.float() - self.mean) @ self.rotation, "n (m s) -> n m s", m=self.digits)

    @torch.no_grad()
    def fit(self, x: Tensor) -> ProductKMeans:
        """Fits the rotation and every subspace's codebook on ``x`` (n, d) float, n >= codebook_size, finite."""
        if x.shape[0] < self.codebook_size:
            raise ValueError(f"product k-means: {x.shape[0]} items cannot fill {self.codebook_size} codes per digit")
        self._fit_rotation(x.float())
        parts = self.project(x)
        for j in range(self.digits):
            result = kmeans(
                parts[:, j].contiguous(),
                self.codebook_size,
                max_iter=self.max_iter,
                tol=self.tol,
                seed=self.seed + j,
                name=f"product k-means digit {j}",
            )
            self.codebooks[j] = result.centroids.to(self.codebooks)
        self.fitted.fill_(True)
        return self

    def quantize(self, x: Tensor) -> ProductQuantization:
        """Nearest code of every subspace, and the reconstruction of ``x`` (b, d) float from them."""
        codes = self.encode(x)
        return ProductQuantization(codes=codes, quantized=self.decode(codes))

    def encode(self, x: Tensor) -> Tensor:
        """(b, d) float -> (b, m) int64 codes: the nearest code of every subspace."""
        if not bool(self.fitted):
            raise RuntimeError("ProductKMeans.encode called before fit()")
        parts = self.project(x)
        return torch.stack([nearest_centroid(parts[:, j].contiguous(), self.codebooks[j])[0]
                            for j in range(self.digits)], dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """(b, m) int64 codes -> (b, d) float reconstruction in the input space (the rotation is orthogonal unless
        whitened; a whitened rotation is inverted by least squares)."""
        parts = self.codebooks[torch.arange(self.digits, device=codes.device), codes]  # (b, m, s)
        rotated = rearrange(parts, "b m s -> b (m s)")
        if self.whiten:
            return torch.linalg.lstsq(self.rotation.T, rotated.T).solution.T + self.mean
        return rotated @ self.rotation.T + self.mean

    def last_distances(self, x: Tensor) -> Tensor:
        """(b, k) squared distance of each item's last sub-vector to each code of the last digit (for collisions)."""
        return squared_distances(self.project(x)[:, -1], self.codebooks[-1])
