"""Ray generation and NDC, pure functions. OpenCV camera axes; pixel (u, v) with the top-left
pixel centre at (0.5, 0.5)."""

from __future__ import annotations

import torch


def pixel_centers(H: int, W: int, device=None) -> torch.Tensor:
    """(H, W, 2) pixel centres (u, v) = (col + 0.5, row + 0.5)."""
    v, u = torch.meshgrid(
        torch.arange(H, device=device, dtype=torch.float32) + 0.5,
        torch.arange(W, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def pixels_to_rays(
    uv: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixels.

    uv: (B, 2) pixel coordinates; K: (B, 3, 3) or (3, 3); c2w: (B, 4, 4) or (B, 3, 4).
    Returns origins (B, 3) and directions (B, 3) in world space; directions have camera-space
    z = 1 (so depth along the ray equals camera z), not unit length.
    """
    K = K.expand(uv.shape[0], 3, 3) if K.dim() == 2 else K
    x = (uv[:, 0] - K[:, 0, 2]) / K[:, 0, 0]
    y = (uv[:, 1] - K[:, 1, 2]) / K[:, 1, 1]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    dirs = (c2w[:, :3, :3] @ dirs_cam[..., None])[..., 0]
    origins = c2w[:, :3, 3]
    return origins, dirs


def project(points_world: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """(B, 3) world points -> (B, 3) (u, v, depth) with K (B, 3, 3)|(3, 3), w2c (B, 4, 4)|(4, 4)."""
    p_cam = (w2c[..., :3, :3] @ points_world[..., None])[..., 0] + w2c[..., :3, 3]
    z = p_cam[..., 2:3]
    uv1 = (K @ (p_cam / z)[..., None])[..., 0]
    return torch.cat([uv1[..., :2], z], dim=-1)


def ndc_rays(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    fx: torch.Tensor,
    fy: torch.Tensor,
    H: int,
    W: int,
    near: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map world rays to normalised device coordinates (forward-facing scenes, OpenCV axes).

    A point (x, y, z), z >= near, maps to (2 fx x / (W z), 2 fy y / (H z), 1 - 2 near / z), so
    the frustum beyond the near plane becomes [-1, 1]^3 and ray parameter t in [0, 1] spans
    near..infinity linearly in disparity. Origins are first moved onto the near plane.
    fx, fy: (B,) focal lengths in pixels (the principal point is taken at the image centre).
    Returns NDC origins and directions, (B, 3) each; origin + 1 * direction is at infinity.
    """
    t = (near - origins[:, 2]) / dirs[:, 2]
    origins = origins + t[:, None] * dirs
    ax, ay = 2 * fx / W, 2 * fy / H
    ox_oz, oy_oz = origins[:, 0] / origins[:, 2], origins[:, 1] / origins[:, 2]
    o_ndc = torch.stack([ax * ox_oz, ay * oy_oz, 1 - 2 * near / origins[:, 2]], dim=-1)
    d_ndc = torch.stack(
        [
            ax * (dirs[:, 0] / dirs[:, 2] - ox_oz),
            ay * (dirs[:, 1] / dirs[:, 2] - oy_oz),
            2 * near / origins[:, 2],
        ],
        dim=-1,
    )
    return o_ndc, d_ndc


def ndc_to_world_depth(t_ndc: torch.Tensor, near: float = 1.0) -> torch.Tensor:
    """NDC ray parameter t in [0, 1) -> camera-space depth z for a ray starting at z = near
    (exact for rays whose origin lies on the near plane)."""
    return near / (1 - t_ndc).clamp_min(1e-6)


def ndc_to_world_points(
    p_ndc: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, H: int, W: int, near: float = 1.0
) -> torch.Tensor:
    """Inverse of the NDC map of `ndc_rays`: (B, 3) NDC points -> (B, 3) world points.

    z = 2 near / (1 - p_z), x = p_x W z / (2 fx), y = p_y H z / (2 fy); fx, fy (B,) must be the
    focals the rays were mapped with. p_z is kept below 1 so points at infinity stay finite.
    """
    z = 2 * near / (1 - p_ndc[:, 2]).clamp_min(1e-4)
    x = p_ndc[:, 0] * W * z / (2 * fx)
    y = p_ndc[:, 1] * H * z / (2 * fy)
    return torch.stack([x, y, z], dim=-1)
