"""The RQ-VAE item tokenizer of TIGER (Rajput et al., NeurIPS 2023, §3.1 and appendix), as a plain module.

Encoder MLP d -> 512 -> 256 -> 128 -> 32 (ReLU), ``levels`` residual codebooks of ``codebook_size`` codes in the
32-d latent space, decoder mirrored. Loss = reconstruction MSE + sum over levels of
||sg[r] - e||² + beta ||r - sg[e]||² (beta = 0.25), with the straight-through estimator for the decoder's input.

Against codebook collapse (few codes used, many colliding IDs) the module standardises its input and initialises
each level's codebook by k-means on the first batch's residuals (TIGER §3.1); the LightningModule also re-seeds
codes that went unused for a whole epoch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.tokenizer.kmeans import kmeans
from genrec.tokenizer.residual import Quantization, decode_codes, residual_quantize


class RQVAEOutput(NamedTuple):
    """Output of :meth:`RQVAE.forward`.

    Attributes:
        codes: (b, l) int64 in [0, k).
        quantized: (b, d_latent) float, sum of the chosen codebook rows.
        reconstruction: (b, d) float, the decoder's output in the input's (unstandardised) space.
        residuals: (b, l, d_latent) float, what each level quantized (detached).
        reconstruction_loss: scalar, MSE in the standardised input space.
        quantization_loss: scalar, codebook + beta * commitment, summed over levels.
        loss: scalar, their sum.
    """

    codes: Tensor
    quantized: Tensor
    reconstruction: Tensor
    residuals: Tensor
    reconstruction_loss: Tensor
    quantization_loss: Tensor
    loss: Tensor


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers through ``dims`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Residual-quantized variational autoencoder.

    Args:
        input_dim: width d of the item vectors.
        encoder_dims: encoder layer widths after the input; the last is the latent width d_latent (the decoder
            mirrors them).
        levels: number of code levels l.
        codebook_size: codes per level k.
        beta: commitment weight (TIGER: 0.25).
    """

    def __init__(
        self,
        *,
        input_dim: int,
        encoder_dims: tuple[int, ...] = (512, 256, 128, 32),
        levels: int = 3,
        codebook_size: int = 256,
        beta: float = 0.25,
    ) -> None:
        super().__init__()
        if not encoder_dims or min(input_dim, levels, codebook_size, *encoder_dims) < 1:
            raise ValueError(
                f"input_dim, encoder_dims, levels and codebook_size must be >= 1, got {input_dim}, {encoder_dims}, "
                f"{levels}, {codebook_size}"
            )
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.levels = levels
        self.codebook_size = codebook_size
        self.beta = beta
        dims = [input_dim, *encoder_dims]
        latent_dim = encoder_dims[-1]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, latent_dim) / latent_dim**0.5)
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor, *, seed: int = 0) -> None:
        """Sets the input standardisation from ``x`` and k-means-initialises every codebook on its residuals.

        Args:
            x: (b, d) float, b >= codebook_size (TIGER uses the first training batch).
            seed: k-means++ seed.
        """
        if x.shape[0] < self.codebook_size:
            raise ValueError(
                f"RQ-VAE k-means init needs at least codebook_size={self.codebook_size} rows, got a batch of "
                f"{x.shape[0]}; raise the batch size"
            )
        self.mean.copy_(x.mean(dim=0))
        # Floor the std: constant feature columns would otherwise blow up to inf.
        self.std.copy_(x.std(dim=0).clamp_min(1e-6))
        residual = self.encoder((x - self.mean) / self.std)
        for level in range(self.levels):
            result = kmeans(residual, self.codebook_size, seed=seed + level, name=f"RQ-VAE init level {level}")
            self.codebooks[level] = result.centroids
            residual = residual - result.centroids[result.assignments]
        self.initialized.fill_(True)

    def encode(self, x: Tensor) -> Tensor:
        """(b, d) item vectors -> (b, d_latent) continuous latents (before quantization)."""
        return self.encoder((x - self.mean) / self.std)

    def quantize(self, z: Tensor) -> Quantization:
        """Residual quantization of latents ``z`` (b, d_latent); see :class:`Quantization`."""
        return residual_quantize(z, self.codebooks)

    def decode(self, quantized: Tensor) -> Tensor:
        """(b, d_latent) quantized latents -> (b, d) reconstructions in the input's space."""
        return self.decoder(quantized) * self.std + self.mean

    def decode_codes(self, codes: Tensor) -> Tensor:
        """(b, l) int64 codes -> (b, d_latent) quantized latents (the sum of their codebook rows)."""
        return decode_codes(self.codebooks, codes)

    def forward(self, x: Tensor) -> RQVAEOutput:
        """Encodes, quantizes and decodes a batch, with the training losses.

        Args:
            x: (b, d) float item vectors.

        Returns:
            An :class:`RQVAEOutput`.
        """
        z = self.encode(x)
        q = self.quantize(z)
        residuals = q.residuals.detach()
        # VQ-VAE loss per level: the codebook row moves to the residual, the residual commits to the row.
        codebook_loss = F.mse_loss(q.selected, residuals, reduction="none").mean(dim=(0, 2)).sum()
        commitment_loss = F.mse_loss(q.residuals, q.selected.detach(), reduction="none").mean(dim=(0, 2)).sum()
        # Straight-through: the decoder sees the quantized value, the encoder gets the decoder's gradient.
        z_q = z + (q.quantized - z).detach()
        standardized = self.decoder(z_q)
        reconstruction_loss = F.mse_loss(standardized, (x - self.mean) / self.std)
        quantization_loss = codebook_loss + self.beta * commitment_loss
        return RQVAEOutput(
            codes=q.codes,
            quantized=q.quantized.detach(),
            reconstruction=(standardized * self.std + self.mean).detach(),
            residuals=residuals,
            reconstruction_loss=reconstruction_loss,
            quantization_loss=quantization_loss,
            loss=reconstruction_loss + quantization_loss,
        )

    @torch.no_grad()
    def reseed_codes(self, dead: Tensor, residuals: Tensor, *, generator: torch.Generator | None = None) -> int:
        """Moves dead codes onto random residuals of the current batch, so they get picked again.

        Args:
            dead: (l, k) bool, codes to re-seed.
            residuals: (b, l, d_latent) float, the batch's residuals per level.
            generator: random source.

        Returns:
            Number of codes re-seeded.
        """
        total = 0
        for level in range(self.levels):
            index = torch.nonzero(dead[level]).flatten()
            if index.numel() == 0:
                continue
            pool = residuals[:, level]
            pick = torch.randint(pool.shape[0], (index.numel(),), generator=generator, device=pool.device)
            self.codebooks[level, index] = pool[pick].to(self.codebooks.dtype)
            total += index.numel()
        return total
