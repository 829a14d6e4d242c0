"""Photometric loss: mean squared error between rendered and observed colours."""

from __future__ import annotations

import torch


def photometric_loss(
    render: dict[str, torch.Tensor], target_rgb: torch.Tensor, weight: torch.Tensor | None = None
) -> dict:
    """{'rgb': MSE of the final render (+ the coarse render's MSE when a fine network exists)};
    weight (R,): each ray's weight in the mean (training.ray_mining), None: all equal."""

    def mse(rgb):
        squared = (rgb - target_rgb) ** 2
        return torch.mean(squared if weight is None else weight[:, None] * squared)

    loss = mse(render["rgb"])
    if "rgb_coarse" in render:
        loss = loss + mse(render["rgb_coarse"])
    return {"rgb": loss}


def mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))
