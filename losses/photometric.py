"""Photometric loss: mean squared error between rendered and observed colours."""

from __future__ import annotations

import torch


def photometric_loss(render: dict[str, torch.Tensor], target_rgb: torch.Tensor) -> dict:
    """{'rgb': MSE of the final render (+ the coarse render's MSE when a fine network exists)}."""
    loss = torch.mean((render["rgb"] - target_rgb) ** 2)
    if "rgb_coarse" in render:
        loss = loss + torch.mean((render["rgb_coarse"] - target_rgb) ** 2)
    return {"rgb": loss}


def mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))
