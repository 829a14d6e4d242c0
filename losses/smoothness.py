"""Edge-aware depth smoothness on rendered image patches (TrackNeRF / monodepth style)."""

from __future__ import annotations

import torch


def depth_smoothness(disparity: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'smooth': mean L1 of disparity gradients weighted by exp(-|image gradient|)}.

    disparity: (B, P, P) inverse depth (or NDC ray parameter, linear in disparity) of B rendered
    patches; image: (B, P, P, 3) the observed colours of the same pixels. Depth may jump where
    the image has an edge, so gradients there are down-weighted.
    """
    d_dx = (disparity[:, :, 1:] - disparity[:, :, :-1]).abs()
    d_dy = (disparity[:, 1:, :] - disparity[:, :-1, :]).abs()
    i_dx = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(-1)
    i_dy = (image[:, 1:, :] - image[:, :-1, :]).abs().mean(-1)
    loss = (d_dx * torch.exp(-i_dx)).mean() + (d_dy * torch.exp(-i_dy)).mean()
    return {"smooth": loss}
