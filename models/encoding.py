"""Positional encoding with BARF's optional coarse-to-fine band weighting."""

from __future__ import annotations

import math

import torch


def positional_encoding(
    x: torch.Tensor,
    n_levels: int,
    progress: float | None = None,
    c2f: tuple[float, float] | None = None,
) -> torch.Tensor:
    """(..., D) -> (..., D + 2 D n_levels): [x, sin(2^k pi x), cos(2^k pi x)] for k < n_levels.

    With a BARF schedule c2f = (start, end) and training progress p in [0, 1], band k is
    weighted by (1 - cos(pi * clamp(L (p - start) / (end - start) - k, 0, 1))) / 2; the raw
    input is always kept.
    """
    if n_levels == 0:
        return x
    freqs = (2.0 ** torch.arange(n_levels, dtype=x.dtype, device=x.device)) * math.pi
    spectrum = x[..., None, :] * freqs[:, None]  # (..., L, D)
    enc = torch.cat([torch.sin(spectrum), torch.cos(spectrum)], dim=-1)  # (..., L, 2D)
    if c2f is not None and progress is not None:
        enc = enc * band_weights(n_levels, progress, c2f).to(x)[:, None]
    return torch.cat([x, enc.flatten(-2)], dim=-1)


def band_weights(
    n_levels: int, progress: float | torch.Tensor, c2f: tuple[float, float]
) -> torch.Tensor:
    """(n_levels,) BARF band weights at training progress in [0, 1] (a float, or a 0-d tensor
    when the field is compiled)."""
    start, end = c2f
    alpha = (progress - start) / (end - start) * n_levels
    device = progress.device if torch.is_tensor(progress) else None
    k = torch.arange(n_levels, dtype=torch.float32, device=device)
    return (1 - torch.cos(math.pi * (alpha - k).clamp(0, 1))) / 2


def encoded_dim(dim: int, n_levels: int) -> int:
    return dim * (1 + 2 * n_levels)
