"""Sampling along rays and volume rendering, pure functions (batch of rays leading)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def stratified_t(
    n_rays: int,
    n_samples: int,
    near: float,
    far: float,
    perturb: bool,
    device=None,
    linear_disparity: bool = False,
) -> torch.Tensor:
    """(n_rays, n_samples) sorted ray parameters in [near, far]; one uniform draw per bin when
    perturbed, bin midpoints otherwise. linear_disparity spaces samples evenly in 1/t."""
    edges = torch.linspace(0, 1, n_samples + 1, device=device)
    if perturb:
        s = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_rays, n_samples, device=device)
    else:
        s = ((edges[:-1] + edges[1:]) / 2).expand(n_rays, n_samples)
    if linear_disparity:
        return 1 / (1 / near * (1 - s) + 1 / far * s)
    return near + (far - near) * s


def contract(x: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360's scene contraction of points (..., 3): x inside the unit ball, else
    (2 - 1 / |x|) x / |x|, so all of space lands inside the ball of radius 2 (continuous, and
    |contract(x)| grows monotonically with |x|)."""
    norm = x.norm(dim=-1, keepdim=True)
    outside = norm > 1
    safe = torch.where(outside, norm, torch.ones_like(norm))  # no 0 / 0 at the origin
    return torch.where(outside, (2 - 1 / safe) * (x / safe), x)


def unit_ball_exit(origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(R,) ray parameter where rays o + t d (origins, dirs (R, 3)) leave the unit ball; for a
    ray that misses it, where it passes nearest the centre (t may be negative: ball behind)."""
    a = (dirs * dirs).sum(-1)
    b = (origins * dirs).sum(-1)  # half of the quadratic's linear coefficient
    c = (origins * origins).sum(-1) - 1
    disc = b * b - a * c
    # not clamp_min(0): a ray tangent to the sphere (disc exactly 0, which float32 does hit)
    # would get sqrt's infinite slope, and with it a NaN camera gradient (a DTU test-time
    # refinement went NaN on one such ray in a batch of 1024); the value moves by at most 1e-6 / a
    return (-b + disc.clamp_min(1e-12).sqrt()) / a


def contracted_t(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    n_samples: int,
    near: float,
    far: float,
    perturb: bool,
) -> torch.Tensor:
    """(R, n_samples) sorted ray parameters in [near, far] for an unbounded (contracted) scene:
    evenly spaced in t inside the unit ball and linearly in disparity (1 / t) beyond it, so
    samples stay about evenly spaced in contracted space and the far field costs as many as the
    ball (nerfstudio's piecewise sampler, with the break at each ray's exit from the ball).

    Samples are uniform (stratified as stratified_t) in s = g(t), g(t) = t up to the break b
    and b (2 - b / t) beyond it (continuous with a continuous slope; g(inf) = 2 b); u in [0, 1]
    is s normalised (contracted_u)."""
    n_rays = origins.shape[0]
    device = origins.device
    edges = torch.linspace(0, 1, n_samples + 1, device=device)
    if perturb:
        u = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(n_rays, n_samples, device=device)
    else:
        u = ((edges[:-1] + edges[1:]) / 2).expand(n_rays, n_samples)
    return contracted_t_at(origins, dirs, u, near, far)


def _contraction_break(origins, dirs, near: float) -> torch.Tensor:
    # the break stays above 0 so that the disparity part is finite when near is 0
    return unit_ball_exit(origins, dirs).clamp(min=max(near, 1e-3))[:, None]  # (R, 1)


def contracted_t_at(origins, dirs, u: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """The ray parameters t (R, N) at normalised positions u (R, N) in [0, 1] of
    contracted_t's spacing."""
    brk = _contraction_break(origins, dirs, near).clamp(max=far)
    s_far = brk * (2 - brk / far)
    s = near + (s_far - near) * u
    beyond = brk * brk / (2 * brk - s).clamp_min(1e-12)
    return torch.where(s <= brk, s, beyond)


def contracted_u(origins, dirs, t: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """contracted_t_at's inverse: the normalised positions u (R, N) of ray parameters t."""
    brk = _contraction_break(origins, dirs, near).clamp(max=far)
    s_far = brk * (2 - brk / far)
    s = torch.where(t <= brk, t, brk * (2 - brk / t.clamp_min(1e-12)))
    return ((s - near) / (s_far - near)).clamp(0, 1)


def sample_deltas(t: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(R, S) lengths of the intervals the samples at sorted ray parameters t (R, S) stand for
    along rays dirs (R, 3): t-steps times |dir|, the last interval extended to 1e10."""
    deltas = t[:, 1:] - t[:, :-1]
    deltas = torch.cat([deltas, torch.full_like(deltas[:, :1], 1e10)], dim=-1)
    return deltas * dirs.norm(dim=-1, keepdim=True)


def composite_weights(sigma: torch.Tensor, t: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(R, S) volume-rendering weights alpha_i T_i of densities sigma (R, S) at sorted ray
    parameters t (R, S) along rays dirs (R, 3) (intervals: sample_deltas)."""
    deltas = sample_deltas(t, dirs)
    alpha = 1 - torch.exp(-sigma * deltas)
    # Transmittance T_i = prod_{j<i} (1 - alpha_j), computed as exp of a cumulative sum of
    # -sigma*delta so that it stays exact and differentiable when some alpha is 1.
    optical = torch.cumsum(sigma * deltas, dim=-1)
    trans = torch.exp(-torch.cat([torch.zeros_like(optical[:, :1]), optical[:, :-1]], dim=-1))
    return alpha * trans


def composite(
    rgb: torch.Tensor,
    sigma: torch.Tensor,
    t: torch.Tensor,
    dirs: torch.Tensor,
    white_bkgd: bool = False,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Volume rendering quadrature (Max 1995, as in NeRF).

    rgb (R, S, 3), sigma (R, S), t (R, S) sorted ray parameters, dirs (R, 3) ray directions;
    weights: composite_weights(sigma, t, dirs) when already computed.
    Returns rgb (R, 3), t (R,) = the expected ray parameter, acc (R,) opacity, weights (R, S)
    and t_samples (R, S) = t (the samples the weights belong to).
    """
    if weights is None:
        weights = composite_weights(sigma, t, dirs)
    return composited((weights[..., None] * rgb).sum(dim=-2), weights, t, white_bkgd)


def composited(rgb: torch.Tensor, weights: torch.Tensor, t: torch.Tensor, white_bkgd: bool):
    """composite's result from the weighted sum of the samples' colours rgb (R, 3) and the
    weights (R, S) at ray parameters t (R, S)."""
    acc = weights.sum(dim=-1)
    if white_bkgd:
        rgb = rgb + (1 - acc[:, None])
    t_mean = (weights * t).sum(dim=-1) + (1 - acc) * t[:, -1]
    return {"rgb": rgb, "t": t_mean, "acc": acc, "weights": weights, "t_samples": t}


def sample_pdf(
    bins: torch.Tensor, weights: torch.Tensor, n_samples: int, deterministic: bool
) -> torch.Tensor:
    """Inverse-transform sampling of the piecewise-constant pdf given by weights over bins.

    bins (R, S + 1) sorted edges, weights (R, S). Returns (R, n_samples) samples (no grad).
    """
    if deterministic:
        u = torch.linspace(0, 1, n_samples, device=bins.device).expand(bins.shape[0], n_samples)
    else:
        u = torch.rand(bins.shape[0], n_samples, device=bins.device)
    return invert_cdf(bins, weights.detach() + 1e-5, u.contiguous())


def invert_cdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The points (R, N) at cumulative probabilities u (R, N) of the piecewise-constant pdf of
    positive weights (R, S) over sorted bin edges bins (R, S + 1) (no grad)."""
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = bins.gather(-1, below), bins.gather(-1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return (bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)).detach()


def sample_edges(u: torch.Tensor) -> torch.Tensor:
    """(R, S + 1) edges of the intervals that sorted samples at positions u (R, S) in [0, 1]
    stand for: the midpoints between neighbours, and 0 and 1 at the ends."""
    mids = (u[:, 1:] + u[:, :-1]) / 2
    return torch.cat([torch.zeros_like(u[:, :1]), mids, torch.ones_like(u[:, :1])], -1)


def resample_positions(
    u: torch.Tensor, weights: torch.Tensor, n_samples: int, perturb: bool, padding: float = 0.01
) -> torch.Tensor:
    """(R, n_samples) sorted positions in [0, 1] where the weight is: drawn from the
    piecewise-constant pdf of weights (R, S) over the intervals of samples at sorted positions
    u (R, S) in [0, 1] (sample_edges). Each interval takes the largest weight of itself and its
    two neighbours (a surface near an edge, which the next stratified draw may put in the
    neighbour, keeps samples on both sides; mip-NeRF 360's dilation), plus padding / S, so
    about that share of the samples spreads over the whole ray and content the weights missed
    can still be found. Stratified in the cdf: one draw in each 1 / n_samples of it when
    perturbed (sorted without a sort), the middle of each otherwise."""
    R, S = u.shape
    w = F.max_pool1d(weights.detach()[:, None], 3, stride=1, padding=1)[:, 0] + padding / S
    offset = torch.rand(R, n_samples, device=u.device) if perturb else 0.5
    cdf_u = (torch.arange(n_samples, device=u.device, dtype=u.dtype) + offset) / n_samples
    return invert_cdf(sample_edges(u.detach()), w, cdf_u.expand(R, n_samples).contiguous())
