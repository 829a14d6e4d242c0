"""Feature-track reprojection loss (TrackNeRF); the observations it needs per step are drawn by
engine/sampling.py's TrackSampler.

For a track observed at pixels uv_a in image a and uv_b in image b: render the depth of the ray
through uv_a at the current camera a, back-project it to a world point X_a, project X_a into the
current camera b and compare with uv_b. Every ordered pair (a, b), a != b, of a track counts;
each track's pairs are averaged, so a track of 10 views weighs as much as one of 2 (TrackNeRF's
sum grows as n(n - 1)). Residuals are in pixels of the training images; the robust kernel is
Huber early, then optionally Cauchy or a hard gate once poses settle.
"""

from __future__ import annotations

import math

import torch

from geometry.rays import project

KERNELS = ("huber", "cauchy", "gate")


def track_pairs(obs_track: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair of distinct observations inside a track.

    obs_track: (M,) track id per observation, sorted (each track contiguous).
    Returns (P,) source and (P,) target observation indices; P = sum n_t (n_t - 1).
    """
    if obs_track.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=obs_track.device)
        return empty, empty
    if bool((obs_track[1:] < obs_track[:-1]).any()):
        raise ValueError("track observations must be sorted by track id")
    _, lengths = torch.unique_consecutive(obs_track, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    # All n_t^2 (i, j) combinations per track, then drop i == j; by observation identity, not
    # list position (a pitfall of the published code).
    n_sq = lengths * lengths
    track_of = torch.repeat_interleave(torch.arange(len(lengths), device=obs_track.device), n_sq)
    offset = torch.arange(int(n_sq.sum()), device=obs_track.device) - torch.repeat_interleave(
        torch.cumsum(n_sq, 0) - n_sq, n_sq
    )
    n = lengths[track_of]
    src = starts[track_of] + torch.div(offset, n, rounding_mode="floor")
    dst = starts[track_of] + offset % n
    keep = src != dst
    return src[keep], dst[keep]


def robust(err: torch.Tensor, kernel: str, delta: float, gate_px: float) -> torch.Tensor:
    """Robust cost of residual norms `err` (pixels): huber (quadratic up to delta), cauchy
    (delta^2 / 2 log(1 + e^2 / delta^2)) or gate (quadratic below gate_px, 0 above)."""
    if kernel == "huber":
        return torch.where(err <= delta, 0.5 * err**2, delta * (err - 0.5 * delta))
    if kernel == "cauchy":
        return 0.5 * delta**2 * torch.log1p((err / delta) ** 2)
    if kernel == "gate":
        return torch.where(err <= gate_px, 0.5 * err**2, torch.zeros_like(err))
    raise ValueError(f"track kernel must be one of {KERNELS}, not {kernel!r}")


def reprojection_loss(
    points_src: torch.Tensor,
    dst_uv: torch.Tensor,
    dst_w2c: torch.Tensor,
    dst_K: torch.Tensor,
    pair_track: torch.Tensor,
    kernel: str = "huber",
    delta: float = 1.0,
    gate_px: float = math.inf,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mean over tracks of the per-track mean robust reprojection cost.

    points_src: (P, 3) world points back-projected from each pair's source observation;
    dst_uv: (P, 2) the pair's target observation; dst_w2c (P, 4, 4), dst_K (P, 3, 3) the target
    camera; pair_track: (P,) track id of each pair (any integers). A point behind the target
    camera contributes nothing. Returns ({'track': loss}, (P,) residual norms in pixels).
    """
    proj = project(points_src, dst_K, dst_w2c)
    in_front = proj[:, 2] > 1e-6
    err = torch.linalg.norm(proj[:, :2] - dst_uv, dim=-1)
    err = torch.where(in_front, err, torch.zeros_like(err))
    cost = robust(err, kernel, delta, gate_px) * in_front
    if cost.numel() == 0:
        return {"track": points_src.sum() * 0}, err
    tracks, inverse = torch.unique(pair_track, return_inverse=True)
    per_track = torch.zeros(len(tracks), device=cost.device, dtype=cost.dtype)
    count = torch.zeros_like(per_track)
    per_track.index_add_(0, inverse, cost)
    count.index_add_(0, inverse, torch.ones_like(cost))
    return {"track": (per_track / count).mean()}, err.detach()
