"""Volume rendering that evaluates a field only where it matters: density at the samples an
occupancy grid keeps (and, without gradients, none behind the point where a ray became
opaque), colour only where a sample's weight shows. SceneModel's sparse path and its
model.resample proposal pass."""

from __future__ import annotations

import math

import torch

from models.rendering import composite_weights, composited, sample_deltas

WEIGHT_MIN = 1e-4  # colour is evaluated only where a sample's weight exceeds this
TRANSMITTANCE_MIN = 1e-4  # and renders stop evaluating a ray once its transmittance falls below
SEGMENTS = 4  # the pieces a ray's samples are evaluated in for that


def sparse_render(
    field, points, keep, t, dirs, viewdirs, progress, colour=None, noisy=None, white_bkgd=False
):
    """Volume rendering of a field with density and colour heads: density at the kept samples
    (renders, without gradients: segment by segment along the rays, none behind the point
    where a ray's transmittance fell under TRANSMITTANCE_MIN, as its later samples could
    add at most that much); then colour where a sample's weight exceeds WEIGHT_MIN, summed
    into the rays' colour as it is computed (no (R, S, 3) buffer), with what the colour
    head takes from the direction computed once per ray (NeRFField.ray_condition).
    composite's result, the same weights. Gathers go by flat index (index_select): a
    CPU's advanced indexing with two index tensors, and its backward, cost several times
    more."""
    R, S = t.shape
    sigma, segments = sparse_density(field, points, keep, t, dirs, progress)
    weights = composite_weights(sigma if noisy is None else noisy(sigma), t, dirs)
    per_ray = hasattr(field, "ray_condition")
    condition = field.ray_condition(viewdirs) if per_ray else None
    rgb = points.new_zeros(R, 3)
    for r, flat, h_k in segments:
        w = weights.view(R * S).index_select(0, flat)
        show = w.detach() > WEIGHT_MIN
        if colour is not None:
            show &= colour.index_select(0, r)
        i = show.nonzero()[:, 0]
        r, w, h_k = r.index_select(0, i), w.index_select(0, i), h_k.index_select(0, i)
        if per_ray:
            on_ray = None if condition is None else condition.index_select(0, r)
            rgb_k = field.colour_on_rays(h_k, on_ray)
        else:
            rgb_k = field.colour(h_k, viewdirs.index_select(0, r), 2)
        rgb = rgb.index_add(0, r, w[:, None] * rgb_k.float())
    return composited(rgb, weights, t, white_bkgd)


def sparse_density(field, points, keep, t, dirs, progress):
    """Density (R, S) of a field with a density head at the kept samples (zero elsewhere)
    and, per segment, (rays, flat sample indices, trunk features) for the colour head; the
    segments and the early stop are sparse_render's."""
    R, S = t.shape
    rendering = not torch.is_grad_enabled()
    deltas = sample_deltas(t, dirs).view(R * S)
    optical = points.new_zeros(R)
    sigma = points.new_zeros(R, S)
    stop = -math.log(TRANSMITTANCE_MIN) if rendering else math.inf
    segments = []
    points = points.reshape(R * S, 3)
    for seg in torch.arange(S, device=t.device).chunk(SEGMENTS if rendering else 1):
        r, c = (keep[:, seg] & (optical < stop)[:, None]).nonzero(as_tuple=True)
        flat = r * S + seg[c]
        sigma_k, h_k = field.density(points.index_select(0, flat), progress)
        sigma_k = sigma_k.float()
        sigma.view(R * S).index_copy_(0, flat, sigma_k)
        if rendering:
            optical.index_add_(0, r, sigma_k * deltas.index_select(0, flat))
        segments.append((r, flat, h_k))
    return sigma, segments
