"""The dense depth prior's loss (training.w_depth_prior; the prior: sfm/stereo.py).

A photometric ray whose pixel has a prior depth d is charged the weight it puts away from d:
sum_i w_i |log(z_i / d)| over its samples at depths z_i, plus the light it lets through,
(1 - sum_i w_i), at its last sample's depth. Unlike a loss on the expected depth, which a fog
spread evenly around d satisfies, this is zero only when all the ray's weight sits at d: it
concentrates the density on the surface the photos agree on (DS-NeRF's idea, a robust L1 in
log depth instead of its KL term, so a wrong prior pixel pulls no harder than a right one).
"""

from __future__ import annotations

import torch


def depth_prior_loss(
    weights: torch.Tensor, depths: torch.Tensor, prior: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{'depth_prior': mean over the rays with a prior of the weight spent away from it}.

    weights (R, S) volume-rendering weights, depths (R, S) camera z-depth of the samples,
    prior (R,) the prior depth per ray, NaN where it has none (those rays count for nothing;
    zero, with a graph, when no ray has one)."""
    has = torch.isfinite(prior)
    if not bool(has.any()):
        return {"depth_prior": weights.sum() * 0.0}
    w, z, d = weights[has], depths[has].clamp_min(1e-6), prior[has, None]
    off = torch.log(z / d).abs()
    through = (1 - w.sum(-1)).clamp_min(0)
    per_ray = (w * off).sum(-1) + through * off[:, -1]
    return {"depth_prior": per_ray.mean()}
