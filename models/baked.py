"""A trained grid field baked into a sparse voxel lattice for fast renders (render.py --baked,
the viewer unless --no-baked).

A frame of the grid field costs, per sample, twelve grid_sample reads of its factorised planes
and lines and two MLP layers before the colour head. Baking evaluates the field once at the nodes
of an R^3 lattice over its box (the grid encoding's, field coordinates) and keeps, per node, the
density's logit (before its softplus) and the point's part of the colour head's first
pre-activation (NeRFField: `rgb_hidden`'s feature block applied to `feature(h)`, width // 2
values; without view directions, the `rgb` layer's trunk block). A render reads, per sample, one
trilinear interpolation of those values and finishes the colour head as the field does: the
view direction's (and appearance code's) block once per ray (NeRFField.ray_condition), the ReLU
and the last layer per sample. So the image keeps its view dependence; what changes is that the
field's values are interpolated between nodes instead of its features (the density after its
softplus, as DVGO's post-activation does). The samples are placed as the field's renders place
them (SceneModel.render_rays: stratified, model.resample's proposal, the occupancy grid's empty
cells without density), so a frame differs from the field's only by that interpolation.

Storage: the density logits at every node, (R, R, R) float32 (EMPTY_LOGIT where the occupancy
grid marks the cell empty), and an (R, R, R) int32 index of each node's row in a float16 table
of colour parts (row 0: zeros), with rows only for the nodes of the lattice cells that hold
samples carrying weight in renders of the training views (visible_cells) and one node more on
every side: what lies inside objects or behind what the photos show has no colour. The
occupancy grid's empty cells are skipped as in the field's renders (occupied_cells: exactly
when R - 1 is a multiple of its resolution, as 385 and 128 are). The reads are compiled with
torch.compile when a C++ compiler is available (models/compile.py): one fused loop over the
eight corners instead of some twenty tensor passes.

Grid fields (model.encoding grid, NeRFField, no fine field); SIREN fields and the frequency
encoding are their MLP and are not baked.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from geometry.rays import pixel_centers
from models.compile import compile_or_eager
from models.grid import REBUILD_MARGIN, lattice_cells
from models.rendering import composite_weights, composited
from models.sparse import WEIGHT_MIN
from utils.errors import ConfigError

EMPTY_LOGIT = -60.0  # softplus(-60) = 9e-27: no density, even over the last sample's 1e10 interval


def trilinear_rows(index: torch.Tensor, table: torch.Tensor, x: torch.Tensor, cell=None):
    """Trilinear interpolation of a sparse lattice at points x (N, 3) in [-1, 1] (x, y, z):
    index (Z, Y, X) int rows of table (M, C) for each node (None: table is a dense (Z, Y, X, C)
    lattice). Returns (N, C). cell: lattice_cells(shape, x) when the caller has it."""
    if index is None:
        Z, Y, X = table.shape[:3]
        table = table.reshape(Z * Y * X, -1)
    else:
        Z, Y, X = index.shape
    base, f = lattice_cells((Z, Y, X), x) if cell is None else cell
    flat = None if index is None else index.reshape(-1)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]

    def row(offset: int) -> torch.Tensor:
        at = base + offset
        return table[at if flat is None else flat[at].long()].float()

    c00 = row(0) * (1 - fx) + row(1) * fx
    c01 = row(X) * (1 - fx) + row(X + 1) * fx
    c10 = row(X * Y) * (1 - fx) + row(X * Y + 1) * fx
    c11 = row(X * Y + X) * (1 - fx) + row(X * Y + X + 1) * fx
    return (c00 * (1 - fy) + c01 * fy) * (1 - fz) + (c10 * (1 - fy) + c11 * fy) * fz


def baked_weights(logits, extent, points, t, dirs, occupied=None):
    """Volume-rendering weights (R, S) of the baked density at points (R, S, 3) with ray
    parameters t (R, S) along dirs (R, 3); none in the lattice cells that `occupied`
    (Z, Y, X) bool, indexed by each cell's first node, marks empty (occupied_cells: as the
    field's renders skip the occupancy grid's empty cells; outside the box counts as occupied)."""
    x = points.reshape(-1, 3) / extent
    cell = lattice_cells(logits.shape, x)
    density = F.softplus(trilinear_rows(None, logits[..., None], x, cell)[:, 0])
    if occupied is not None:
        outside = (x.abs() > 1).any(-1)
        density = density * (occupied.reshape(-1)[cell[0]] | outside)
    return composite_weights(density.view(t.shape), t, dirs)


def occupied_cells(mask: torch.Tensor, R: int) -> torch.Tensor:
    """(R, R, R) bool (z, y, x): whether the occupancy grid `mask` (G, G, G) (x, y, z; the
    lattice's box) holds the centre of the lattice cell whose first node is there (the last
    node of each axis starts no cell). With R - 1 a multiple of G (385 nodes, 128 cells) each
    lattice cell lies in one occupancy cell and the skipping is the field's exactly."""
    g = mask.shape[0]
    centres = (torch.arange(R, device=mask.device) + 0.5) / (R - 1)  # in [0, 1]
    at = (centres * g).long().clamp(max=g - 1)
    return mask[at][:, at][:, :, at].permute(2, 1, 0).contiguous()


def baked_colour(index, part, extent, points, condition, weight, bias):
    """Colour (N, 3) at points (N, 3) with the colour head's per-ray block `condition` (N, P):
    NeRFField.colour_on_rays with the per-point block read from the lattice."""
    h = trilinear_rows(index, part, points / extent) + condition
    return torch.sigmoid(F.linear(torch.relu(h), weight, bias))


_compiled: dict = {}


def _fn(fn, compiled: bool):
    """fn compiled (once per process), or fn itself."""
    if not compiled:
        return fn
    if fn not in _compiled:
        _compiled[fn] = compile_or_eager(fn)
    return _compiled[fn]


class BakedField:
    """A NeRFField's density and colour read from a sparse lattice (the module docstring). It has
    the field's interface where SceneModel renders (density, ray_condition, colour_on_rays,
    colour, and a call for the reference path) and the field's colour head weights. Not a
    module: it holds no parameters and is never trained or saved."""

    def __init__(self, field, logits, index, part, extent, occupied=None, compiled: bool = True):
        self.source = field
        self.occupied = occupied  # occupied_cells of the model's occupancy grid, or None
        self.index, self.extent = index, extent
        self.logits = logits  # (R, R, R) density logits at every node (z, y, x)
        self.part = part  # (M, P) the colour head's per-point pre-activation block
        self.read = _fn(trilinear_rows, compiled)
        self.compiled = compiled
        self.use_viewdirs = field.use_viewdirs

    @property
    def nodes(self) -> int:
        return self.index.shape[0]

    @property
    def rows(self) -> int:
        return self.part.shape[0]

    def nbytes(self) -> int:
        held = (self.index, self.logits, self.part, self.occupied)
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def _coords(self, points: torch.Tensor) -> torch.Tensor:
        return points.reshape(-1, 3).float() / self.extent

    def density(self, points, progress=None):
        """Density (...) and, as the features the colour head needs, the points themselves."""
        logit = self.read(None, self.logits[..., None], self._coords(points))[:, 0]
        return F.softplus(logit).view(points.shape[:-1]), points

    def weights(self, points, t, dirs):
        """composite_weights of the baked density at points (R, S, 3) (SceneModel._proposal)."""
        read = _fn(baked_weights, self.compiled)
        return read(self.logits, self.extent, points, t, dirs, self.occupied)

    def render(self, points, t, dirs, viewdirs, colour=None, white_bkgd=False):
        """sparse_render's result for the baked field at points (R, S, 3): the density at every
        sample (a read costs less than deciding which to skip), colour where a sample's weight
        exceeds WEIGHT_MIN on the rays whose colour is wanted (colour: (R,) bool or None)."""
        weights = self.weights(points, t, dirs)
        show = weights > WEIGHT_MIN
        if colour is not None:
            show &= colour[:, None]
        r, c = show.nonzero(as_tuple=True)
        rgb = points.new_zeros(t.shape[0], 3)
        if len(r) == 0:  # no colour wanted (visible_cells' probe has no colour part)
            return composited(rgb, weights, t, white_bkgd)
        condition = self.source.ray_condition(viewdirs)
        rgb_k = self.colour_on_rays(points[r, c], None if condition is None else condition[r])
        rgb = rgb.index_add(0, r, weights[r, c, None] * rgb_k)
        return composited(rgb, weights, t, white_bkgd)

    def ray_condition(self, dirs):
        return self.source.ray_condition(dirs)

    def colour_on_rays(self, h, condition):
        """Colour (N, 3) of points h (N, 3) on rays with ray_condition rows `condition`."""
        field = self.source
        if self.use_viewdirs:  # one compiled read and colour head (baked_colour)
            return _fn(baked_colour, self.compiled)(
                self.index,
                self.part,
                self.extent,
                h.reshape(-1, 3).float(),
                condition.float(),
                field.rgb.weight,
                field.rgb.bias,
            )
        part = self.read(self.index, self.part, self._coords(h))
        if condition is not None:
            part = part + condition.float()
        if condition is None:
            part = part + field.rgb.bias
        return torch.sigmoid(part)

    def colour(self, h, dirs, points_dim: int):
        """colour_on_rays with directions per point (..., 3 + A), or per ray (R, 3 + A) for
        points (R, S, 3)."""
        if dirs.dim() == points_dim - 1:
            dirs = dirs[:, None, :].expand(*h.shape[:-1], dirs.shape[-1])
        flat_dirs = dirs.reshape(-1, dirs.shape[-1])
        rgb = self.colour_on_rays(h.reshape(-1, 3), self.ray_condition(flat_dirs))
        return rgb.view(*h.shape[:-1], 3)

    def __call__(self, points, dirs, progress=None):
        sigma, h = self.density(points, progress)
        return self.colour(h, dirs, points.dim()), sigma


def colour_part(field, h: torch.Tensor) -> torch.Tensor:
    """The per-point block of the colour head's first pre-activation from trunk features h:
    rgb_hidden's feature columns applied to feature(h) (no bias: ray_condition adds it), or the
    rgb layer's trunk columns without view directions."""
    if field.use_viewdirs:
        f = field.feature(h)
        return F.linear(f, field.rgb_hidden.weight[:, : f.shape[-1]])
    return F.linear(h, field.rgb.weight[:, : h.shape[-1]])


def inverse_softplus(sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.clamp_min(1e-7)
    return torch.where(s > 20, s, torch.log(torch.expm1(s)))


@torch.no_grad()
def bake(model, resolution: int | None = None, compiled: bool = True, log=print) -> BakedField:
    """The SceneModel's grid field baked at `resolution` nodes per axis of its box (None: its
    grid's finest level's, where interpolating the field's values loses least). Three passes,
    one z slab at a time: the density at every node the occupancy grid keeps; the nodes that
    carry weight in renders of the training views (visible_cells); the colour part at those
    and their neighbours (the module docstring). Raises ConfigError for a field that is not
    one grid NeRF field."""
    field = model.field
    if getattr(field, "grid", None) is None or model.field_fine is not None:
        raise ConfigError(
            "--baked needs one grid field (model.encoding grid, model.field nerf, no fine "
            "field): the other fields are their MLP and have nothing to bake"
        )
    R = field.grid.levels[0].resolution if resolution is None else int(resolution)
    if R < 2:
        raise ConfigError(f"the bake resolution must be at least 2 nodes per axis, not {R}")
    t0 = time.perf_counter()
    extent = field.grid.extent.detach().float()
    device = extent.device
    axis = torch.linspace(-1, 1, R, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    occupancy = model.occupancy
    threshold = occupancy.threshold * REBUILD_MARGIN if occupancy is not None else 0.0

    def slab(k: int) -> torch.Tensor:
        z = torch.full_like(xx, float(axis[k]))
        return torch.stack([xx, yy, z], -1).view(-1, 3) * extent

    logits = torch.full((R, R * R), EMPTY_LOGIT, device=device)
    for k in range(R):
        points = slab(k)
        at = (
            occupancy.occupied(points).nonzero()[:, 0]
            if occupancy is not None
            else torch.arange(R * R, device=device)
        )
        if len(at):
            logits[k, at] = inverse_softplus(field.density(points[at])[0].float())
    if model.cam_param.n > 0:
        seen = visible_cells(model, field, logits.view(R, R, R), extent, compiled)
    else:  # no cameras to look from: the cells whose first node has density
        seen = (F.softplus(logits) > threshold).view(R, R, R)
    # a seen cell's eight nodes and one more on every side (window [n - 2, n + 1] of cells)
    keep = F.max_pool3d(seen[None, None].half(), 4, stride=1, padding=2)[0, 0, :R, :R, :R]
    keep = keep.bool().reshape(R, R * R)
    index = torch.zeros(R, R * R, dtype=torch.int32, device=device)
    n = int(keep.sum())
    index[keep] = torch.arange(1, n + 1, dtype=torch.int32, device=device)
    width = colour_part(field, field.density(extent[None] * 0)[1]).shape[-1]
    part = torch.zeros(n + 1, width, dtype=torch.float16, device=device)
    for k in range(R):
        at = keep[k].nonzero()[:, 0]
        if len(at):
            rows = index[k, at].long()
            # the density again: a neighbour kept outside the occupancy grid has its own too
            sigma_k, h = field.density(slab(k)[at])
            logits[k, at] = inverse_softplus(sigma_k.float())
            part[rows] = colour_part(field, h).half()
    logits, index = logits.view(R, R, R), index.view(R, R, R)
    cells = occupied_cells(occupancy.mask, R) if occupancy is not None else None
    baked = BakedField(field, logits, index, part, extent, cells, compiled)
    log(
        f"baked the field at {R}^3 nodes: {n} kept ({n / R**3:.1%}), "
        f"{baked.nbytes() / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s"
    )
    return baked


@torch.no_grad()
def visible_cells(model, field, logits, extent, compiled, stride: int = 2) -> torch.Tensor:
    """(R, R, R) bool, per lattice cell (at its first node): whether a sample that carries
    weight (above sparse.WEIGHT_MIN) in a render of the training views (every `stride`-th
    pixel per axis) from the baked density alone lies in it: what the photos show. Cells behind
    the surfaces (the inside of objects, which the field fills with density too) are not."""
    R = logits.shape[0]
    cells = occupied_cells(model.occupancy.mask, R) if model.occupancy is not None else None
    probe = BakedField(field, logits, None, None, extent, cells, compiled)
    seen = torch.zeros(R**3, dtype=torch.bool, device=logits.device)
    H, W = model.cam_param.H, model.cam_param.W
    device = logits.device
    uv = pixel_centers(H, W, device)[::stride, ::stride].reshape(-1, 2)
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    previous = model.baked
    model.baked = probe
    try:
        for i in range(len(c2w)):
            for chunk in uv.split(8192):
                ids = torch.full((len(chunk),), i, dtype=torch.long, device=device)
                o, d, v = model.rays(ids, chunk, c2w, K)
                out = model.render_rays(o, d, v, 1.0, colour=torch.zeros_like(ids, dtype=bool))
                r, c = (out["weights"] > WEIGHT_MIN).nonzero(as_tuple=True)
                points = model._points(o[r], d[r], out["t_samples"][r, c][:, None])[:, 0]
                seen[lattice_cells((R, R, R), points / extent)[0]] = True
    finally:
        model.baked = previous
    return seen.view(R, R, R)
