"""A factorised feature grid (TensoRF's vector-matrix decomposition), the `grid` encoding, and
an occupancy grid that skips empty space.

VMGrid: for each of the three axis pairs (xy, xz, yz) a plane P (C, R, R) and a line L (C, R)
along the remaining axis; the features at x are [P_xy(x, y) * L_z(z), P_xz(x, z) * L_y(y),
P_yz(y, z) * L_x(x)] (3C), read with F.grid_sample (bilinear / linear, align_corners=True, the
border value outside [-1, 1]). Memory grows like R^2, not R^3.

GridEncoding stacks `levels` VMGrids, each at half the previous one's resolution, and
concatenates their features. Coarse to fine: it starts at `resolution[0]` nodes per axis and
doubles the cells (R -> 2R - 1) at each upsampling step until `resolution[1]`. With
align_corners=True the finer lattice contains the coarser one, and a bilinear function
restricted to a sub-cell is bilinear, so upsampling the parameters by bilinear interpolation
keeps the encoded function exactly (the rendered image does not change across the step); the
new cells then learn finer detail, which is also what lets joint pose refinement start coarse
(BARF's argument, with grid resolution in place of frequency bands).

Upsampling replaces each parameter's data in place (`param.data = ...`, between steps, when no
autograd graph holds the old shape), so optimisers keep their parameter references; the caller
drops their Adam moments (engine/callbacks.py). A checkpoint stores the current shapes;
loading resizes the parameters first.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from utils.errors import ConfigError

PAIRS = ((0, 1, 2), (0, 2, 1), (1, 2, 0))  # (plane axis u, plane axis v, line axis)
PLANE_AXES = [[u, v] for u, v, _ in PAIRS]
LINE_AXES = [w for _, _, w in PAIRS]


def refine(resolution: int) -> int:
    """Nodes per axis after one upsampling step (every cell split in two)."""
    return 2 * resolution - 1


# Channels each grid_sample call reads: the planes and lines are read as (3 C / k, k, R, R) and
# (3 C / k, k, R, 1), a view, with each plane's coordinates repeated C / k times. On a CPU a call
# walks its points once per channel of a batch entry, so a batch entry of two channels (two
# R x R images, 1.2 MB at 385 nodes) stays in the core's cache where sixteen do not: the
# forward and backward of a training step's reads ran 1.2-1.7x faster (2 cores, 193 and 385
# nodes). CPU only: a GPU's grid_sample runs a thread per point, and the repeated coordinates
# would be extra traffic there (unmeasured).
CHANNELS_PER_READ = 2


def read_split(channels: int) -> int:
    """Batch entries each plane is read as (channels / CHANNELS_PER_READ, or every channel apart
    when that does not divide)."""
    return channels // CHANNELS_PER_READ if channels % CHANNELS_PER_READ == 0 else channels


def sample_coords(x: torch.Tensor, split: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_sample's coordinates of points x (N, 3) in [-1, 1] for the three planes (3 split, N,
    1, 2) and the three lines (3 split, N, 1, 2; the first coordinate 0), each plane's repeated
    `split` times (read_split), contiguous: grid_sample reads a strided grid five times slower."""
    n = x.shape[0]
    uv = x[:, PLANE_AXES].transpose(0, 1)
    wl = torch.zeros(3, n, 2, dtype=x.dtype, device=x.device)
    wl[..., 1] = x[:, LINE_AXES].t()
    if split == 1:
        return uv.contiguous().view(3, n, 1, 2), wl.view(3, n, 1, 2)
    shape = (3, split, n, 2)
    return (
        uv[:, None].expand(shape).reshape(3 * split, n, 1, 2),
        wl[:, None].expand(shape).reshape(3 * split, n, 1, 2),
    )


def lattice_cells(shape, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells of points x (N, D) in [-1, 1] (x first) on a lattice of `shape` (D node counts,
    x's last: (Z, Y, X), or (H, W) for a plane), with align_corners and clamped to the border as
    grid_sample reads: the flat index of each cell's first node (N,) and the position in the
    cell (N, D) in [0, 1]. An axis of one node (a line read as an (R, 1) image) puts every point
    at its node, position 0."""
    sizes = list(shape)[::-1]  # x first
    cells = torch.tensor([s - 1 for s in sizes], dtype=x.dtype, device=x.device)
    last = (cells - 1).clamp_min(0)  # the last cell's first node
    q = (x.clamp(-1, 1) + 1) * 0.5 * cells
    i0 = torch.minimum(q.floor(), last)
    f = q - i0
    # a NaN coordinate (clamp keeps it) reads node 0 and gives NaN, not a read out of bounds
    i0 = torch.minimum(i0.long().clamp_min(0), last.long())
    flat = i0[:, -1]
    for axis in range(len(sizes) - 2, -1, -1):
        flat = flat * sizes[axis] + i0[:, axis]
    return flat, f


def read_gradient(grad: torch.Tensor, coords: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The gradient of the planes (3 k, C / k, R, R) or lines (3 k, C / k, R, 1) that
    grid_sample (bilinear, align_corners, border) read at coords (3 k, N, 1, 2), sample_coords'
    layout (each plane's coordinates repeated k times), from the reads' gradient grad
    (3 k, C / k, N, 1): what grid_sample's backward gives its input, without the coordinates'
    gradient, which that backward computes whether it is needed or not (reading every corner of
    every channel again). Each corner's weighted gradient is added to its node (index_add_)."""
    h, w = shape[-2], shape[-1]
    n = coords.shape[1]
    xy = coords.view(3, -1, n, 2)[:, 0]  # (3, N, 2): one plane's coordinates
    base, f = lattice_cells((h, w), xy.reshape(-1, 2))
    base, fx, fy = base.view(3, n), f[:, 0].view(3, n), f[:, 1].view(3, n)
    if w == 1:  # a line: linear along its nodes
        index = torch.stack([base, base + 1], 1)  # (3, 2, N)
        weight = torch.stack([1 - fy, fy], 1)
    else:
        gx, gy = 1 - fx, 1 - fy
        index = torch.stack([base, base + 1, base + w, base + w + 1], 1)  # (3, 4, N)
        weight = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], 1)
    g = grad.reshape(3, -1, n)  # (3, C, N)
    c = g.shape[1]
    out = grad.new_zeros(3, c, h * w)
    for k in range(3):
        out[k].index_add_(1, index[k].view(-1), (weight[k, None] * g[k, :, None]).view(c, -1))
    return out.view(shape)


READ = {"align_corners": True, "padding_mode": "border"}  # how the planes and lines are read
# grid_sampler_2d_backward's enums for READ: bilinear interpolation, border padding
BILINEAR, BORDER = 0, 1


def grid_read(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """F.grid_sample(grid, coords, **READ); on a CPU with gradients recorded, through _GridRead."""
    if torch.is_grad_enabled() and grid.device.type == "cpu":
        return _GridRead.apply(grid, coords)
    return F.grid_sample(grid, coords, **READ)


class _GridRead(torch.autograd.Function):
    """F.grid_sample(grid, coords) (bilinear, align_corners, border) of the planes or lines,
    whose backward computes the coordinates' gradient only when they need one (read_gradient
    otherwise: the field's training steps while the cameras are fixed). CPU only: the saving is
    in grid_sample's CPU backward (CHANGELOG has the step times); a GPU's backward is another
    kernel, not measured against this one."""

    @staticmethod
    def forward(ctx, grid, coords):
        ctx.save_for_backward(grid, coords)
        return F.grid_sample(grid, coords, **READ)

    @staticmethod
    def backward(ctx, grad):
        grid, coords = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            mask = [ctx.needs_input_grad[0], True]
            return torch.ops.aten.grid_sampler_2d_backward(
                grad, grid, coords, BILINEAR, BORDER, READ["align_corners"], mask
            )
        return read_gradient(grad, coords, grid.shape), None


class VMGrid(nn.Module):
    """planes (3, C, R, R) for the axis pairs xy, xz, yz and lines (3, C, R, 1) along z, y, x,
    each read by one batched grid_sample call."""

    def __init__(self, channels: int, resolution: int, init_std: float = 0.1):
        super().__init__()
        self.channels = channels
        self.planes = nn.Parameter(init_std * torch.randn(3, channels, resolution, resolution))
        self.lines = nn.Parameter(init_std * torch.randn(3, channels, resolution, 1))

    @property
    def resolution(self) -> int:
        return self.planes.shape[-1]

    @property
    def split(self) -> int:
        return read_split(self.channels) if self.planes.device.type == "cpu" else 1

    def forward(
        self, x: torch.Tensor, out: torch.Tensor | None = None, coords=None
    ) -> torch.Tensor:
        """x (N, 3) in [-1, 1] -> (3 C, N) features, channels first (the layout grid_sample
        returns: a transposed (N, 3 C) copy would cost more than the lookups on a CPU), written
        into `out` (3 C, N) when given. coords: sample_coords(x, self.split), when the caller
        reads several grids at the same points."""
        n, k, c = x.shape[0], self.split, self.channels
        uv, wl = sample_coords(x.to(self.planes.dtype), k) if coords is None else coords
        r = self.resolution
        planes = self.planes.view(3 * k, c // k, r, r)
        lines = self.lines.view(3 * k, c // k, r, 1)
        p, q = grid_read(planes, uv), grid_read(lines, wl)
        if out is None:
            return (p * q).view(3 * c, n)
        return torch.mul(p, q, out=out.view(3 * k, c // k, n, 1))

    @torch.no_grad()
    def upsample(self, resolution: int) -> list[nn.Parameter]:
        """Resample the planes and lines to `resolution` nodes per axis; returns the parameters
        whose data changed."""
        self.planes.data = F.interpolate(
            self.planes.data, size=(resolution, resolution), mode="bilinear", align_corners=True
        )
        self.lines.data = F.interpolate(
            self.lines.data, size=(resolution, 1), mode="bilinear", align_corners=True
        )
        self.planes.grad = self.lines.grad = None
        return [self.planes, self.lines]

    def total_variation(self) -> torch.Tensor:
        """Mean squared difference of neighbouring nodes of the planes and lines."""
        planes, lines = self.planes, self.lines
        return (
            (planes.diff(dim=-1) ** 2).mean()
            + (planes.diff(dim=-2) ** 2).mean()
            + (lines.diff(dim=-2) ** 2).mean()
        )

    def l1(self) -> torch.Tensor:
        return self.planes.abs().mean() + self.lines.abs().mean()


class GridEncoding(nn.Module):
    """Multi-resolution VM features of points in the box [-extent, extent] (the cube
    [-bound, bound]^3 until SceneModel.fit_grid_box widens it; see the module docstring)."""

    def __init__(self, channels: int, levels: int, resolution: tuple[int, int], bound: float = 1.0):
        super().__init__()
        start, end = (int(r) for r in resolution)
        if levels < 1 or channels < 1:
            raise ConfigError("model.grid_levels and model.grid_channels must be at least 1")
        self.steps = 0
        r = start
        while r < end:
            r = refine(r)
            self.steps += 1
        if r != end:
            raise ConfigError(
                f"model.grid_resolution [{start}, {end}]: the end must be the start with its cells "
                f"halved some number of times (R -> 2R - 1: {start}, {refine(start)}, "
                f"{refine(refine(start))}, ...)"
            )
        coarsest = (start - 1) // 2 ** (levels - 1) + 1
        if (start - 1) % 2 ** (levels - 1) or coarsest < 2:
            raise ConfigError(
                f"model.grid_resolution starts at {start} nodes: with {levels} levels (each half "
                f"the previous one's cells) start - 1 must be divisible by {2 ** (levels - 1)}"
            )
        # half-widths of its box per axis (the cube of `bound` until SceneModel.fit_grid_box)
        self.register_buffer("extent", torch.full((3,), float(bound)))
        self.levels = nn.ModuleList(
            VMGrid(channels, (start - 1) // 2**k + 1) for k in range(levels)
        )
        self.register_buffer("n_upsampled", torch.zeros((), dtype=torch.long))
        self.dim = 3 * channels * levels

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points (..., 3) -> features (..., dim)."""
        return self.features(points).t().reshape(*points.shape[:-1], self.dim)

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """points (..., 3) -> features (dim, N) channels first, N the number of points: each
        level writes its rows in place when no gradient is recorded (autograd cannot follow
        out=); a linear layer reads the transpose without a copy (NeRFField.density).

        A NaN coordinate reads the grid's centre: torch's CPU grid_sample with border padding
        reads memory out of bounds at NaN (a segfault in the backward of a test-time pose
        refinement whose step went NaN, DTU 3 views); the NaN still reaches the loss through
        the samples' spacing, where the training loop's check stops on it."""
        x = torch.nan_to_num(points.reshape(-1, 3).float() / self.extent, nan=0.0)
        kinds = {(level.planes.dtype, level.split) for level in self.levels}
        if len(kinds) == 1:  # the levels share their coordinates
            dtype, split = kinds.pop()
            coords = sample_coords(x.to(dtype), split)
        else:
            coords = None
        if torch.is_grad_enabled():
            return torch.cat([level(x, coords=coords) for level in self.levels])
        out = x.new_empty(self.dim, x.shape[0])
        for level, rows in zip(self.levels, out.chunk(len(self.levels)), strict=True):
            level(x, out=rows, coords=coords)
        return out

    def upsample(self) -> list[nn.Parameter]:
        """One coarse-to-fine step (all levels); [] once at the final resolution."""
        if int(self.n_upsampled) >= self.steps:
            return []
        self.n_upsampled += 1
        changed = []
        for level in self.levels:
            changed += level.upsample(refine(level.resolution))
        return changed

    def total_variation(self) -> torch.Tensor:
        return sum(level.total_variation() for level in self.levels) / len(self.levels)

    def l1(self) -> torch.Tensor:
        return sum(level.l1() for level in self.levels) / len(self.levels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from before the box: the cube it was built with
        state_dict.setdefault(prefix + "extent", self.extent.clone())
        # a checkpoint saved after upsampling: take its shapes before copying its values
        for name, param in self.named_parameters():
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != param.shape:
                param.data = torch.empty_like(saved, device=param.device, dtype=param.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# rebuild's cells stay occupied down to this fraction of the threshold: a margin for density
# peaks between its random points (at the full threshold a few samples just above it were
# skipped; at half of it none were, and renders are no slower).
REBUILD_MARGIN = 0.5


class OccupancyGrid(nn.Module):
    """Which cells of the box [-extent, extent] (field coordinates; the cube [-bound, bound]^3 until
    the scene model fits the box to the training rays) may hold density: a
    (G, G, G) running maximum of the field's density, each update decaying the old values and
    taking the density at one random point per cell; a cell is occupied when its value or a
    neighbour's is above `threshold`, or above the grid's mean density when that is lower (as
    instant-ngp does: a young field fainter than the threshold everywhere would otherwise be
    emptied and, never evaluated again, never recover). The dilation keeps samples near a surface
    that the random point missed. Points outside the cube count as occupied. Until the first
    update every cell is occupied."""

    def __init__(self, resolution: int, bound: float, threshold: float, decay: float = 0.95):
        super().__init__()
        self.resolution, self.bound = int(resolution), float(bound)
        self.threshold, self.decay = float(threshold), float(decay)
        g = self.resolution
        self.register_buffer("density", torch.full((g, g, g), float("inf")))
        self.register_buffer("mask", torch.ones(g, g, g, dtype=torch.bool))
        # half-widths of its box per axis: the grid encoding's (SceneModel.fit_grid_box)
        self.register_buffer("extent", torch.full((3,), self.bound))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "extent", self.extent.clone())  # from before the box
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def cell_of(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat cell index, inside the cube) of points (..., 3)."""
        g = self.resolution
        x = (points.detach() / self.extent + 1) / 2 * g
        inside = ((x >= 0) & (x < g)).all(-1)
        ijk = x.long().clamp(0, g - 1)
        return (ijk[..., 0] * g + ijk[..., 1]) * g + ijk[..., 2], inside

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        """(...) bool: may the points hold density above the threshold."""
        cell, inside = self.cell_of(points)
        return self.mask.view(-1)[cell] | ~inside

    @torch.no_grad()
    def update(self, density_fn, chunk: int = 65536) -> float:
        """density_fn: (M, 3) field points -> (M,) density. Returns the occupied fraction."""
        g = self.resolution
        device = self.density.device
        idx = torch.arange(g, device=device)
        ijk = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1).view(-1, 3)
        points = ((ijk + torch.rand(ijk.shape, device=device)) / g * 2 - 1) * self.extent
        sigma = torch.cat([density_fn(p).float() for p in points.split(chunk)]).view(g, g, g)
        old = torch.where(torch.isinf(self.density), torch.zeros_like(sigma), self.density)
        self.density.copy_(torch.maximum(old * self.decay, sigma))
        threshold = min(self.threshold, float(self.density.mean()))
        above = (self.density > threshold).float()[None, None]
        self.mask.copy_(F.max_pool3d(above, 3, stride=1, padding=1)[0, 0] > 0)
        return float(self.mask.float().mean())

    @torch.no_grad()
    def rebuild(self, density_fn, samples: int = 2) -> float:
        """A fresh grid from the field as it is now, no history: the maximum density of
        `samples` random points per cell, then the dilation of update, at REBUILD_MARGIN of the
        threshold. The running maximum that training keeps (decay 0.95 an update) still holds
        what the young field was, so it marks far more of the cube occupied than the trained
        field needs; the rebuilt grid renders faster and the image does not visibly change.
        Returns the occupied fraction."""
        decay, threshold = self.decay, self.threshold
        self.density.zero_()
        self.decay, self.threshold = 1.0, threshold * REBUILD_MARGIN
        try:
            for _ in range(samples):
                fraction = self.update(density_fn)
        finally:
            self.decay, self.threshold = decay, threshold
        return fraction
