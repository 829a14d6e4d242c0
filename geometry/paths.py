"""Camera paths for free-viewpoint videos, pure functions of camera-to-world tensors (OpenCV
axes: x right, y down, z forward):
- spiral: around the average pose, looking at a focus point in front of it (the path of
  LLFF/NeRF's render_path_spiral, written in OpenCV axes);
- interpolate: through key poses (rotation slerp, centre Catmull-Rom spline), passing through
  every key pose exactly.
"""

from __future__ import annotations

import math

import roma
import torch

from geometry.poses import focus_point, look_at
from geometry.rotations import matrix_to_quaternion, quaternion_to_matrix

# LLFF's focus depth: a weighted harmonic mean of 0.9 x near and 5 x far (render_path_spiral).
FOCUS_NEAR_FACTOR, FOCUS_FAR_FACTOR, FOCUS_FAR_WEIGHT = 0.9, 5.0, 0.75


def spiral_radii(c2w: torch.Tensor, c2w_avg: torch.Tensor, percentile: float = 90) -> torch.Tensor:
    """(3,) spiral radii along the average camera's x, y, z axes: the given percentile of
    |centre - average centre| of the cameras c2w (N, 3|4, 4), measured in that frame (LLFF)."""
    offsets = (c2w[:, :3, 3] - c2w_avg[:3, 3]) @ c2w_avg[:3, :3]
    return torch.quantile(offsets.abs(), percentile / 100.0, dim=0)


def focus_depth_from_bounds(near: float, far: float) -> float:
    """Depth the spiral looks at, from the scene's depth bounds (LLFF's render_path_spiral)."""
    close, inf = FOCUS_NEAR_FACTOR * near, FOCUS_FAR_FACTOR * far
    return 1.0 / ((1 - FOCUS_FAR_WEIGHT) / close + FOCUS_FAR_WEIGHT / inf)


def spiral_angles(n_frames: int, n_rots: float) -> torch.Tensor:
    """(F,) angles theta_i = 2 pi n_rots i / F, i = 0..F-1 (the last frame is not the first)."""
    return torch.arange(n_frames, dtype=torch.float64) * (2 * math.pi * n_rots / n_frames)


def spiral_path(
    c2w_avg: torch.Tensor,
    radii: torch.Tensor,
    focus_depth: float,
    n_frames: int,
    n_rots: float = 2,
    z_rate: float = 0.5,
) -> torch.Tensor:
    """Spiral of n_frames cameras around c2w_avg (4, 4).

    In the average camera's frame the centre of frame i is
    (r_x cos theta_i, r_y sin theta_i, r_z sin(z_rate theta_i)), theta_i from spiral_angles,
    radii (3,) = (r_x, r_y, r_z); every camera looks at the focus point
    c_avg + focus_depth z_avg, with its y axis as close to the average camera's as possible.
    Returns c2w (F, 4, 4) float64.
    """
    c2w_avg, radii = c2w_avg.double(), radii.double()
    theta = spiral_angles(n_frames, n_rots)
    local = (
        torch.stack([torch.cos(theta), torch.sin(theta), torch.sin(z_rate * theta)], dim=-1) * radii
    )
    centres = local @ c2w_avg[:3, :3].T + c2w_avg[:3, 3]
    focus = c2w_avg[:3, 3] + focus_depth * c2w_avg[:3, 2]
    return look_at(centres, focus, c2w_avg[:3, 1])


def catmull_rom(points: torch.Tensor, frames_per_segment: int) -> torch.Tensor:
    """Uniform Catmull-Rom spline through points (K, D), K >= 2, with frames_per_segment samples
    per segment: sample k * frames_per_segment is points[k] exactly. The end tangents come from
    mirrored phantom points. Returns ((K - 1) * frames_per_segment + 1, D)."""
    p = torch.cat([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    u = torch.arange(frames_per_segment, dtype=points.dtype) / frames_per_segment
    u = u[:, None]
    out = []
    for k in range(len(points) - 1):
        p0, p1, p2, p3 = p[k], p[k + 1], p[k + 2], p[k + 3]
        out.append(
            p1
            + 0.5
            * (
                (p2 - p0) * u
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
                + (3 * p1 - p0 - 3 * p2 + p3) * u**3
            )
        )
    out.append(points[-1:])
    return torch.cat(out)


def interpolate_path(c2w_keys: torch.Tensor, frames_per_segment: int) -> torch.Tensor:
    """Smooth path through the key cameras c2w_keys (K, 3|4, 4), K >= 2: rotations by slerp
    along the shortest arc, centres by a Catmull-Rom spline. Frame k * frames_per_segment is
    key k. Returns ((K - 1) * frames_per_segment + 1, 4, 4) float64."""
    keys = c2w_keys.double()
    if len(keys) < 2 or frames_per_segment < 1:
        raise ValueError(
            f"interpolation needs >= 2 keys and >= 1 frame per segment, got {len(keys)} keys and "
            f"{frames_per_segment} frames"
        )
    centres = catmull_rom(keys[:, :3, 3], frames_per_segment)
    quat_xyzw = roma.quat_wxyz_to_xyzw(matrix_to_quaternion(keys[:, :3, :3]))
    u = torch.arange(frames_per_segment, dtype=torch.float64) / frames_per_segment
    quats = [roma.unitquat_slerp(quat_xyzw[k], quat_xyzw[k + 1], u) for k in range(len(keys) - 1)]
    quats.append(quat_xyzw[-1:])
    R = quaternion_to_matrix(roma.quat_xyzw_to_wxyz(torch.cat(quats)))
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(centres), 1, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = centres
    return c2w


# Cameras spread over more than this azimuth (radians) surround the object: orbit all round.
ORBIT_FULL_CIRCLE_RAD = 1.6 * math.pi


def orbit_path(c2w: torch.Tensor, n_frames: int, radius_scale: float = 1.0) -> torch.Tensor:
    """(F, 4, 4) c2w circling a capture taken around an object: about the cameras' focus point
    (geometry.poses.focus_point; the mean centre when their axes are parallel), in the plane
    through the mean camera centre perpendicular to their mean up direction (-y in OpenCV axes),
    at their mean distance from that axis (times radius_scale), every frame looking at the
    focus point. A full circle when the cameras surround the object; otherwise back and forth
    over the arc they cover (the far side was never photographed). c2w: (N, 4, 4)."""
    c2w = c2w.double()
    centre = focus_point(c2w)
    centres = c2w[:, :3, 3]
    if centre is None:
        centre = centres.mean(0)
    up = -c2w[:, :3, 1].mean(0)
    up = up / up.norm()
    offsets = centres - centre
    height = float((offsets @ up).mean())
    radial = offsets - (offsets @ up)[:, None] * up
    radius = float(radial.norm(dim=-1).mean()) * radius_scale
    e1 = radial.mean(0) if radial.mean(0).norm() > 1e-6 * radius else radial[0]
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    azimuth = torch.atan2(radial @ e2, radial @ e1)  # around 0: e1 points at the cameras
    lo, hi = float(azimuth.min()), float(azimuth.max())
    t = torch.arange(n_frames, dtype=torch.float64) / n_frames
    if hi - lo > ORBIT_FULL_CIRCLE_RAD:
        angles = 2 * math.pi * t
    else:  # ping-pong over the covered arc, slowing at its ends
        angles = lo + (hi - lo) * (1 - torch.cos(2 * math.pi * t)) / 2
    ring = centre + height * up
    ring = ring + radius * (torch.cos(angles)[:, None] * e1 + torch.sin(angles)[:, None] * e2)
    return look_at(ring, centre, -up)
