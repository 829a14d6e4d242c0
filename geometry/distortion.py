"""Radial lens distortion (COLMAP's RADIAL; SIMPLE_RADIAL is k2 = 0):
x_d = x (1 + k1 |x|^2 + k2 |x|^4) in normalised camera coordinates x = (u - c) / f, with
k = (k1, k2). Pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNDISTORT_ITERS = 20


def _factor(xy: torch.Tensor, k) -> torch.Tensor:
    r2 = (xy**2).sum(-1, keepdim=True)
    return 1 + k[0] * r2 + k[1] * r2**2


def distort(xy: torch.Tensor, k) -> torch.Tensor:
    """(..., 2) undistorted normalised coordinates -> distorted ones; k = (k1, k2)."""
    return xy * _factor(xy, k)


def undistort(xy_d: torch.Tensor, k, iters: int = UNDISTORT_ITERS) -> torch.Tensor:
    """(..., 2) distorted normalised coordinates -> undistorted ones (fixed-point iteration
    x <- x_d / (1 + k1 |x|^2 + k2 |x|^4), which converges for the small distortions of real
    lenses)."""
    xy = xy_d.clone()
    for _ in range(iters):
        xy = xy_d / _factor(xy, k)
    return xy


def undistort_pixels(
    uv: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor, k
) -> torch.Tensor:
    """(N, 2) distorted pixels (centres at +0.5) -> where a pinhole camera with the same focal
    (fx, fy) and principal point would see them; focal, principal: (2,) or (N, 2)."""
    return undistort((uv - principal) / focal, k) * focal + principal


def undistort_image(
    image: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor, k
) -> torch.Tensor:
    """(H, W, C) image from the distorted camera -> the same size image a pinhole camera with
    the same focal and principal point would take (bilinear; edge pixels repeat where the
    pinhole view reaches past the photo)."""
    H, W = image.shape[:2]
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5,
        torch.arange(W, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    f, c = focal.double(), principal.double()
    src = distort((torch.stack([u, v], -1) - c) / f, k) * f + c  # where each pixel came from
    grid = torch.stack([src[..., 0] / W * 2 - 1, src[..., 1] / H * 2 - 1], -1)
    out = F.grid_sample(
        image.permute(2, 0, 1)[None].double(),
        grid[None],
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out[0].permute(1, 2, 0).to(image.dtype)
