"""Residual quantization with a stack of codebooks, shared by RQ-KMeans and the RQ-VAE.

TIGER §3.1: level 0 quantizes the vector, each later level quantizes what the previous levels left over
(r_{l+1} = r_l - e_l), and the quantized vector is the sum of the chosen codebook rows.

:func:`residual_quantize` returns every level's residual and chosen row, (b, l, d) each, which training needs;
encoding a whole catalogue for export needs only the codes (:func:`residual_codes`) and, for items whose IDs
collide, the last residual's distances to the last codebook (:func:`last_residual_distances`): both walk the rows in
blocks and keep one block's residual at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor

from genrec.features.matrix import ENCODE_ROWS, Matrix, block, take
from genrec.tokenizer.kmeans import nearest_centroid, squared_distances

Encoder = Callable[[Tensor], Tensor]
"""Maps a (b, d) float32 block of input rows to the (b, d') vectors the codebooks quantize (the RQ-VAE's encoder)."""


class Quantization(NamedTuple):
    """Output of :func:`residual_quantize`.

    Attributes:
        codes: (b, l) int64 in [0, k), the semantic ID of each row.
        quantized: (b, d) float, sum over levels of the chosen codebook rows (differentiable w.r.t. the codebooks).
        residuals: (b, l, d) float, the vector each level quantized (residuals[:, 0] is the input).
        selected: (b, l, d) float, the codebook row chosen at each level.
    """

    codes: Tensor
    quantized: Tensor
    residuals: Tensor
    selected: Tensor


def lookup(codebooks: Tensor, codes: Tensor) -> Tensor:
    """Codebook rows of each code.

    Args:
        codebooks: (l, k, d) float.
        codes: (b, l) int64 in [0, k).

    Returns:
        (b, l, d) float.
    """
    levels = torch.arange(codebooks.shape[0], device=codes.device)
    return codebooks[levels.unsqueeze(0), codes]


def decode_codes(codebooks: Tensor, codes: Tensor) -> Tensor:
    """The quantized vector of each semantic ID: the sum of its codebook rows.

    Args:
        codebooks: (l, k, d) float.
        codes: (b, l) int64 in [0, k).

    Returns:
        (b, d) float.
    """
    return reduce(lookup(codebooks, codes), "b l d -> b d", "sum")


def residual_quantize(x: Tensor, codebooks: Tensor) -> Quantization:
    """Greedy residual quantization: at every level, the nearest codebook row to the current residual.

    Args:
        x: (b, d) float.
        codebooks: (l, k, d) float.

    Returns:
        A :class:`Quantization`.
    """
    residual = x
    codes, residuals, selected = [], [], []
    for codebook in codebooks:
        index, _ = nearest_centroid(residual.detach(), codebook.detach())
        # F.embedding, not codebook[index]: the backward of advanced indexing accumulates rows in parallel on CPU
        # in no fixed order, so fits at one seed differed from process to process; embedding's backward does not.
        chosen = F.embedding(index, codebook)
        residuals.append(residual)
        codes.append(index)
        selected.append(chosen)
        # The chain uses the detached row: each codebook then learns only from its own level's loss, and the
        # encoder still gets gradients through every residual.
        residual = residual - chosen.detach()
    selected_t = torch.stack(selected, dim=1)
    return Quantization(
        codes=torch.stack(codes, dim=1),
        quantized=reduce(selected_t, "b l d -> b d", "sum"),
        residuals=torch.stack(residuals, dim=1),
        selected=selected_t,
    )


def last_level_distances(quantization: Quantization, codebooks: Tensor) -> Tensor:
    """Squared distance from every row's last residual to every last-level code (used to move colliding items).

    Args:
        quantization: output of :func:`residual_quantize` on n rows.
        codebooks: (l, k, d) float.

    Returns:
        (n, k) float.
    """
    return squared_distances(quantization.residuals[:, -1].detach(), codebooks[-1].detach())


@torch.no_grad()
def _walk(z: Tensor, codebooks: Tensor) -> tuple[Tensor, Tensor]:
    """Codes (b, l) of ``z`` (b, d) as :func:`residual_quantize` picks them, and the residual the last level saw."""
    residual = z
    codes = []
    for level, codebook in enumerate(codebooks):
        index, _ = nearest_centroid(residual, codebook)
        codes.append(index)
        if level < codebooks.shape[0] - 1:
            residual = residual - codebook[index]
    return torch.stack(codes, dim=1), residual


@torch.no_grad()
def residual_codes(
    x: Matrix, codebooks: Tensor, *, encoder: Encoder | None = None, chunk_size: int = ENCODE_ROWS
) -> Tensor:
    """The codes of :func:`residual_quantize` for every row of ``x``, ``chunk_size`` rows at a time.

    Holds one block's residual, never (n, l, d) residuals. The distance blocks are those of
    :func:`residual_quantize` when ``chunk_size`` is a multiple of its 16384 rows, so the codes are the same bits
    (with an ``encoder``, when ``x`` has at most ``chunk_size`` rows: a network need not give a row the same bits
    in a batch of another size).

    Args:
        x: (n, d) tensor, array or memmap.
        codebooks: (l, k, d') float.
        encoder: maps each block of rows to what is quantized; None: the rows themselves.
        chunk_size: rows per block.

    Returns:
        (n, l) int64 in [0, k), on ``codebooks.device``.
    """
    codebooks = codebooks.detach()
    # One output, not a list of per-block codes: those, kept between large freed blocks, fragment the heap.
    codes = torch.empty(x.shape[0], codebooks.shape[0], dtype=torch.int64, device=codebooks.device)
    for start in range(0, x.shape[0], chunk_size):
        z = block(x, start, start + chunk_size).to(codebooks.device)
        codes[start : start + z.shape[0]] = _walk(z if encoder is None else encoder(z), codebooks)[0]
    return codes


@torch.no_grad()
def last_residual_distances(
    x: Matrix, codebooks: Tensor, rows: Tensor, *, encoder: Encoder | None = None, chunk_size: int = ENCODE_ROWS
) -> Tensor:
    """Squared distance from the last residual of some rows to every last-level code, as
    :func:`last_level_distances` gives it for all rows: what moving colliding items needs.

    Args:
        x: (n, d) tensor, array or memmap.
        codebooks: (l, k, d') float.
        rows: (r,) int64 row indices.
        encoder: as for :func:`residual_codes`.
        chunk_size: rows per block.

    Returns:
        (r, k) float; row i is ``rows[i]``'s.
    """
    codebooks = codebooks.detach()
    out = [torch.zeros(0, codebooks.shape[1], device=codebooks.device)]
    for start in range(0, rows.numel(), chunk_size):
        z = take(x, rows[start : start + chunk_size]).to(codebooks.device)
        _, residual = _walk(z if encoder is None else encoder(z), codebooks)
        out.append(squared_distances(residual, codebooks[-1]))
    return torch.cat(out)
