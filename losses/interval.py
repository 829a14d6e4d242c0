"""mip-NeRF 360's interval loss on the ray weights (Barron et al. 2022, eq. 15, which the paper
calls the distortion loss): pulls each ray's weights together into as few, as short intervals as
possible, which removes semi-transparent haze and floaters (and with them samples the occupancy
grid would otherwise keep). Not lens distortion (sfm/distortion.py, geometry/distortion.py).
Its term keeps the name of its weight, training.w_distortion."""

from __future__ import annotations

import torch


def interval_loss(
    weights: torch.Tensor, edges: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """{'distortion': mean over rays of sum_ij w_i w_j |u_i - u_j| + 1/3 sum_i w_i^2 d_i}.

    weights (R, S): the volume-rendering weights of S samples per ray standing for the
    intervals between sorted edges (R, S + 1) in [0, 1] (the ray's span normalised), u_i their
    centres and d_i their lengths. Without edges the samples are uniform in the sampler's own
    spacing (linear in NDC or euclidean t, linear in the contracted s of a 360 scene): the
    intervals [i, i + 1] / S. The double sum is computed in O(S) with cumulative sums (the
    u_i are sorted): sum_ij w_i w_j |u_i - u_j| = 2 sum_i w_i (u_i W_<i - sum_{j<i} w_j u_j),
    W_<i = sum_{j<i} w_j."""
    S = weights.shape[-1]
    if edges is None:
        u = (torch.arange(S, device=weights.device, dtype=weights.dtype) + 0.5) / S
        length = torch.full_like(u, 1 / S)
    else:
        u, length = (edges[..., 1:] + edges[..., :-1]) / 2, edges[..., 1:] - edges[..., :-1]
    wu = weights * u
    before_w = torch.cumsum(weights, -1) - weights
    before_wu = torch.cumsum(wu, -1) - wu
    pairs = 2 * (weights * (u * before_w - before_wu)).sum(-1)
    own = (weights**2 * length).sum(-1) / 3
    return {"distortion": (pairs + own).mean()}
