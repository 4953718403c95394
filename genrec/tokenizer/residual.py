"""Residual quantization with a stack of codebooks, shared by RQ-KMeans and the RQ-VAE.

TIGER §3.1: level 0 quantizes the vector, each later level quantizes what the previous levels left over
(r_{l+1} = r_l - e_l), and the quantized vector is the sum of the chosen codebook rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor

from genrec.tokenizer.kmeans import nearest_centroid, squared_distances


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
