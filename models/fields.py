"""Radiance fields: NeRF (ReLU MLP) and SIREN (sine MLP) over an encoding of the position:
frequency (NeRF's positional encoding) or grid (models/grid.py: factorised feature planes and
lines, read with grid_sample; the MLP is then a small decoder).

Each maps points (N, 3) and unit view directions (N, 3) to colour (N, 3) in [0, 1] and
non-negative density (N,). `progress` in [0, 1] drives BARF's coarse-to-fine encoding.
NeRFField also splits in two (density, then colour of the samples that matter) for the
renderer's empty-space skipping.

With appearance_dim A > 0 (model.appearance_dim) the colour head also reads a per-image
appearance code (NeRF-W, Martin-Brualla et al. 2021), so each photo's exposure and white balance
can differ; the density never sees it. The code rides in the direction argument, (N, 3 + A):
the unit direction, then the code. Both are per-ray inputs of the colour head, so every path
that hands a ray's direction to it (dense or sparse samples, one direction per ray or per
sample) hands over the code too. A direction without a code, (N, 3), reads as a zero code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.encoding import encoded_dim, positional_encoding
from models.grid import GridEncoding
from utils.errors import ConfigError

DENSITY_SHIFT = 3.0


def appearance_code(dirs: torch.Tensor, appearance_dim: int) -> torch.Tensor | None:
    """The appearance codes (..., A) packed behind the directions dirs (..., 3 + A) (zeros when
    dirs is (..., 3)); None when the field has none (A = 0)."""
    width = dirs.shape[-1]
    if width not in (3, 3 + appearance_dim):
        raise ValueError(
            f"directions of width {width}: the field takes 3 (a direction) or {3 + appearance_dim}"
            " (a direction and an appearance code)"
        )
    if appearance_dim == 0:
        return None
    if width == 3:
        return dirs.new_zeros(*dirs.shape[:-1], appearance_dim)
    return dirs[..., 3:]


class NeRFField(nn.Module):
    def __init__(
        self,
        depth=8,
        width=128,
        skips=(4,),
        use_viewdirs=True,
        pos_levels=10,
        dir_levels=4,
        c2f=None,
        grid: GridEncoding | None = None,
        appearance_dim: int = 0,
    ):
        super().__init__()
        self.pos_levels, self.dir_levels = pos_levels, dir_levels
        self.appearance_dim = appearance_dim
        self.c2f = tuple(c2f) if c2f is not None else None
        self.skips = set(skips)
        self.use_viewdirs = use_viewdirs
        self.grid = grid
        in_pos = 3 + grid.dim if grid is not None else encoded_dim(3, pos_levels)
        layers, dim = [], in_pos
        for i in range(depth):
            layers.append(nn.Linear(dim, width))
            dim = width + in_pos if i in self.skips else width
        self.trunk = nn.ModuleList(layers)
        self.sigma = nn.Linear(dim, 1)
        if use_viewdirs:
            self.feature = nn.Linear(dim, width)
            self.rgb_hidden = nn.Linear(
                width + encoded_dim(3, dir_levels) + appearance_dim, width // 2
            )
            self.rgb = nn.Linear(width // 2, 3)
        else:
            self.rgb = nn.Linear(dim + appearance_dim, 3)

    def encode(self, points, progress=None) -> torch.Tensor:
        if self.grid is not None:
            return torch.cat([points, self.grid(points).to(points.dtype)], -1)
        return positional_encoding(points, self.pos_levels, progress, self.c2f)

    def forward(self, points, dirs, progress=None):
        """points (..., 3); dirs (..., 3) of the same leading shape, or (R, 3) for points
        (R, S, 3): one direction per ray, encoded once per ray. Returns colour (..., 3) and
        density (...) in float32.

        Written for speed without changing the function: the encoded input is cast once to the
        autocast dtype (concatenating bfloat16 with float32 would promote every skip and colour
        layer back to float32), and the linear layers that NeRF feeds a concatenation ([h, x]
        after a skip, [feature, direction] for colour) apply the two column blocks of their
        weight separately, so no (samples x width) concatenation is built and the direction
        block runs once per ray.
        """
        sigma, h = self.density(points, progress)
        return self.colour(h, dirs, points.dim()), sigma

    def density(self, points, progress=None):
        """Density (...) in float32 and the trunk's features h for `colour`."""
        dtype = compute_dtype(points)
        if self.grid is not None and not self.skips and len(self.trunk) > 0:
            h, x_enc = self._grid_first_layer(points, dtype), None
            trunk = list(self.trunk)[1:]
        else:
            h = x_enc = self.encode(points, progress).to(dtype)
            trunk = self.trunk
        after_skip = False
        for i, layer in enumerate(trunk):
            h = torch.relu(split_linear(layer, h, x_enc)) if after_skip else linear_relu(layer, h)
            after_skip = i in self.skips
        if after_skip:  # a skip after the last trunk layer feeds the heads a concatenation
            h = torch.cat([h, x_enc], dim=-1)
        # softplus, not ReLU: a ReLU density dies (zero everywhere, no gradient) at high lr.
        # The shift starts the field nearly transparent (density about 0.05), so early renders
        # come from the far end rather than from a fog at the cameras.
        return F.softplus(self.sigma(h)[..., 0].float() - DENSITY_SHIFT), h

    def _grid_first_layer(self, points, dtype):
        """relu(trunk[0](cat([points, grid features]))) without building the (N, 3 + D)
        concatenation: the two column blocks of the weight apply separately, the grid's
        features stay channels first (D, N) and the matmul reads their transpose in place."""
        layer = self.trunk[0]
        w = layer.weight.to(dtype)
        feats = self.grid.features(points).to(dtype)
        h = torch.addmm(layer.bias.to(dtype), points.reshape(-1, 3).to(dtype), w[:, :3].t())
        h = h.addmm_(feats.t(), w[:, 3:].t())
        h = h.relu_() if not torch.is_grad_enabled() else torch.relu(h)
        return h.view(*points.shape[:-1], h.shape[-1])  # (-1 fails on no points)

    def colour(self, h, dirs, points_dim: int):
        """Colour (..., 3) in float32 from the trunk features of `density` and the view
        directions, with their appearance codes when the field has them (one per point, or one
        per ray when dirs has one dimension fewer than the points, points_dim)."""
        code = appearance_code(dirs, self.appearance_dim)
        per_ray = dirs.dim() == points_dim - 1
        if self.use_viewdirs:
            cond = positional_encoding(dirs[..., :3], self.dir_levels).to(h.dtype)
            if code is not None:
                cond = torch.cat([cond, code.to(h.dtype)], -1)
            if per_ray:
                cond = cond[..., None, :]
            h = torch.relu(split_linear(self.rgb_hidden, self.feature(h), cond))
        elif code is not None:  # colour without view dependence: the code joins the features
            code = code.to(h.dtype)
            logits = split_linear(self.rgb, h, code[..., None, :] if per_ray else code)
            return torch.sigmoid(logits.float())
        return torch.sigmoid(self.rgb(h).float())

    def ray_condition(self, dirs: torch.Tensor) -> torch.Tensor | None:
        """What the colour head takes from each ray, once per ray: the directions' (and
        appearance codes') block of its first layer with the bias, (R, width // 2), or of the
        rgb layer without view directions; None when the colour depends on the point alone.
        colour_on_rays applies it to samples."""
        code = appearance_code(dirs, self.appearance_dim)
        if self.use_viewdirs:
            cond = positional_encoding(dirs[..., :3], self.dir_levels)
            if code is not None:
                cond = torch.cat([cond, code], -1)
            layer = self.rgb_hidden
        elif code is not None:
            cond, layer = code, self.rgb
        else:
            return None
        k = layer.in_features - cond.shape[-1]
        dtype = compute_dtype(cond)
        return F.linear(cond.to(dtype), layer.weight[:, k:].to(dtype), layer.bias.to(dtype))

    def colour_on_rays(self, h: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """Colour (N, 3) in float32 of N samples with trunk features h (N, width) whose rays'
        ray_condition rows are `condition` (N, ...), gathered per sample: colour() with the
        direction encoding and its matmul done per ray instead of per sample."""
        if self.use_viewdirs:
            f = self.feature(h)
            w = self.rgb_hidden.weight[:, : f.shape[-1]].to(f.dtype)
            h = torch.relu(torch.addmm(condition.to(f.dtype), f, w.t()))
        elif condition is not None:
            w = self.rgb.weight[:, : h.shape[-1]].to(h.dtype)
            return torch.sigmoid(torch.addmm(condition.to(h.dtype), h, w.t()).float())
        return torch.sigmoid(self.rgb(h).float())


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype linear layers compute in here: the autocast dtype when autocast is on."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class _LinearReLU(torch.autograd.Function):
    """relu(x @ w.T + b) in x's dtype, saving only x and the output for the backward pass (the
    mask comes from the output), with the ReLU applied in place on the matmul's result: one
    activation-sized buffer and one element-wise pass fewer than linear then relu, which is
    measurable on a CPU, where a bfloat16 element-wise pass costs a sizeable part of the matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        w = weight.to(x.dtype)
        y = torch.addmm(bias.to(x.dtype), x.reshape(-1, x.shape[-1]), w.t()).relu_()
        ctx.save_for_backward(x, w, y)
        ctx.param_dtypes = weight.dtype, bias.dtype
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, w, y = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad.reshape(y.shape).to(y.dtype), y, 0)
        grad_x = (g @ w).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = (g.t() @ x.reshape(-1, x.shape[-1])).to(ctx.param_dtypes[0])
        return grad_x, grad_w, g.sum(0).to(ctx.param_dtypes[1])


def linear_relu(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """torch.relu(layer(x)) computed in `compute_dtype(x)` (see _LinearReLU)."""
    return _LinearReLU.apply(x, layer.weight, layer.bias)


def split_linear(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """layer(cat([a, b], -1)) without building the concatenation; b may broadcast against a
    (e.g. one row per ray against one row per sample)."""
    k = a.shape[-1]
    weight = layer.weight
    return F.linear(a, weight[:, :k]) + F.linear(b, weight[:, k:], layer.bias)


class SineLayer(nn.Module):
    """sin(omega0 * (W x + b)) with SIREN's initialisation (Sitzmann et al. 2020): the first
    layer's weights U(-1/in, 1/in); later layers U(-sqrt(6/in)/omega0, sqrt(6/in)/omega0)."""

    def __init__(self, in_dim, out_dim, omega0, first):
        super().__init__()
        self.omega0 = omega0
        self.linear = nn.Linear(in_dim, out_dim)
        bound = 1 / in_dim if first else math.sqrt(6 / in_dim) / omega0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x):
        return torch.sin(self.omega0 * self.linear(x))


class SirenField(nn.Module):
    def __init__(
        self,
        depth=8,
        width=128,
        use_viewdirs=True,
        omega0=30.0,
        hidden_omega0=1.0,
        sigma_mul=10.0,
        grid: GridEncoding | None = None,
        appearance_dim: int = 0,
    ):
        super().__init__()
        self.use_viewdirs = use_viewdirs
        self.appearance_dim = appearance_dim
        self.sigma_mul = sigma_mul
        self.grid = grid
        in_dim = 3 + grid.dim if grid is not None else 3
        layers = [SineLayer(in_dim, width, omega0, first=True)]
        layers += [SineLayer(width, width, hidden_omega0, first=False) for _ in range(depth - 1)]
        self.trunk = nn.Sequential(*layers)
        self.sigma = nn.Linear(width, 1)
        if use_viewdirs:
            self.rgb_hidden = SineLayer(
                width + 3 + appearance_dim, width // 2, hidden_omega0, first=False
            )
            self.rgb = nn.Linear(width // 2, 3)
        else:
            self.rgb = nn.Linear(width + appearance_dim, 3)

    def forward(self, points, dirs, progress: float | None = None):
        x = points if self.grid is None else torch.cat([points, self.grid(points)], -1)
        h = self.trunk(x)
        sigma = torch.relu(self.sigma(h)[..., 0].float() * self.sigma_mul)
        code = appearance_code(dirs, self.appearance_dim)
        cond = dirs[..., :3] if self.use_viewdirs else None
        if code is not None:
            cond = code if cond is None else torch.cat([cond, code], -1)
        if cond is not None:
            if dirs.dim() == points.dim() - 1:  # one direction per ray
                cond = cond[..., None, :].expand(*h.shape[:-1], cond.shape[-1])
            h = torch.cat([h, cond.to(h.dtype)], dim=-1)
            if self.use_viewdirs:
                h = self.rgb_hidden(h)
        return torch.sigmoid(self.rgb(h).float()), sigma


ENCODINGS = ("frequency", "grid")


def build_grid(model_cfg, bound: float) -> GridEncoding | None:
    if model_cfg.encoding not in ENCODINGS:
        raise ConfigError(f"model.encoding must be frequency or grid, not {model_cfg.encoding!r}.")
    if model_cfg.encoding == "frequency":
        return None
    grid = GridEncoding(
        model_cfg.grid_channels, model_cfg.grid_levels, tuple(model_cfg.grid_resolution), bound
    )
    at = list(model_cfg.grid_upsample_at)
    if len(at) != grid.steps or at != sorted(at):
        raise ConfigError(
            f"model.grid_upsample_at {at}: the grid goes from {model_cfg.grid_resolution[0]} to "
            f"{model_cfg.grid_resolution[1]} nodes in {grid.steps} upsampling steps, so it needs "
            f"{grid.steps} increasing fractions of training"
        )
    return grid


def build_field(model_cfg, bound: float = 1.0) -> nn.Module:
    """The configured field; bound: the half-width of the cube the grid covers (field
    coordinates)."""
    grid = build_grid(model_cfg, bound)
    if model_cfg.framework == "NeRF":
        return NeRFField(
            model_cfg.net_depth,
            model_cfg.net_width,
            model_cfg.skips,
            model_cfg.use_viewdirs,
            model_cfg.pos_enc_levels,
            model_cfg.dir_enc_levels,
            model_cfg.barf_c2f,
            grid,
            model_cfg.appearance_dim,
        )
    if model_cfg.framework == "SirenNeRF":
        return SirenField(
            model_cfg.net_depth,
            model_cfg.net_width,
            model_cfg.use_viewdirs,
            model_cfg.siren_omega0,
            model_cfg.siren_hidden_omega0,
            model_cfg.siren_sigma_mul,
            grid,
            model_cfg.appearance_dim,
        )
    raise ConfigError(f"model.framework must be NeRF or SirenNeRF, not {model_cfg.framework!r}.")


def grid_bound(model_cfg, unit_space: bool, near: float, far: float) -> float:
    """Half-width of the cube a grid encoding covers, in field coordinates: model.grid_bound, or
    1 where the field sees a bounded space (NDC; contracted points, halved into the unit ball),
    or (far - near) / 2 for a bounded euclidean scene, whose readers put the object at the
    origin with the cameras around it (DTU: the unit sphere; Blender: about 1.3)."""
    if model_cfg.grid_bound is not None:
        return float(model_cfg.grid_bound)
    return 1.0 if unit_space else (float(far) - float(near)) / 2
