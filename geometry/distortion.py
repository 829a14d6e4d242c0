"""Lens distortion (COLMAP's RADIAL / OPENCV without k3; SIMPLE_RADIAL is k2 = 0):
x_d = x (1 + k1 r^2 + k2 r^4) + (2 p1 x y + p2 (r^2 + 2 x^2), p1 (r^2 + 2 y^2) + 2 p2 x y)
in normalised camera coordinates x = (u - c) / f, r = |x|, with k = (k1, k2) or
(k1, k2, p1, p2). Pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNDISTORT_ITERS = 20


def _factor(xy: torch.Tensor, k) -> torch.Tensor:
    r2 = (xy**2).sum(-1, keepdim=True)
    return 1 + k[0] * r2 + k[1] * r2**2


def _tangential(xy: torch.Tensor, k) -> torch.Tensor:
    """The decentring term (p1, p2 = k[2], k[3]); zero for a radial k."""
    if len(k) < 4 or (k[2] == 0 and k[3] == 0):
        return torch.zeros_like(xy)
    p1, p2 = k[2], k[3]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    return torch.stack(
        [2 * p1 * x * y + p2 * (r2 + 2 * x * x), p1 * (r2 + 2 * y * y) + 2 * p2 * x * y], -1
    )


def distort(xy: torch.Tensor, k) -> torch.Tensor:
    """(..., 2) undistorted normalised coordinates -> distorted ones; k = (k1, k2[, p1, p2])."""
    return xy * _factor(xy, k) + _tangential(xy, k)


def undistort(xy_d: torch.Tensor, k, iters: int = UNDISTORT_ITERS) -> torch.Tensor:
    """(..., 2) distorted normalised coordinates -> undistorted ones (fixed-point iteration
    x <- (x_d - tangential(x)) / (1 + k1 |x|^2 + k2 |x|^4), which converges for the small
    distortions of real lenses)."""
    xy = xy_d.clone()
    for _ in range(iters):
        xy = (xy_d - _tangential(xy, k)) / _factor(xy, k)
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
