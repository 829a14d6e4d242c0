"""Radiance fields: NeRF (ReLU MLP) and SIREN (sine MLP) over an encoding of the position:
frequency (NeRF's positional encoding) or grid (models/grid.py: factorised feature planes and
lines, read with grid_sample; the MLP is then a small decoder).

Each maps points (N, 3) and unit view directions (N, 3) to colour (N, 3) in [0, 1] and
non-negative density (N,). `progress` in [0, 1] drives BARF's coarse-to-fine encoding.
NeRFField also splits in two (density, then colour of the samples that matter) for the
renderer's empty-space skipping.
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
    ):
        super().__init__()
        self.pos_levels, self.dir_levels = pos_levels, dir_levels
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
            self.rgb_hidden = nn.Linear(width + encoded_dim(3, dir_levels), width // 2)
            self.rgb = nn.Linear(width // 2, 3)
        else:
            self.rgb = nn.Linear(dim, 3)

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
        x_enc = self.encode(points, progress).to(dtype)
        h = x_enc
        after_skip = False
        for i, layer in enumerate(self.trunk):
            h = torch.relu(split_linear(layer, h, x_enc)) if after_skip else linear_relu(layer, h)
            after_skip = i in self.skips
        if after_skip:  # a skip after the last trunk layer feeds the heads a concatenation
            h = torch.cat([h, x_enc], dim=-1)
        # softplus, not ReLU: a ReLU density dies (zero everywhere, no gradient) at high lr.
        # The shift starts the field nearly transparent (density about 0.05), so early renders
        # come from the far end rather than from a fog at the cameras.
        return F.softplus(self.sigma(h)[..., 0].float() - DENSITY_SHIFT), h

    def colour(self, h, dirs, points_dim: int):
        """Colour (..., 3) in float32 from the trunk features of `density` and the view
        directions (one per point, or one per ray when dirs has one dimension fewer than the
        points, points_dim)."""
        if self.use_viewdirs:
            d_enc = positional_encoding(dirs, self.dir_levels).to(h.dtype)
            if dirs.dim() == points_dim - 1:  # one direction per ray
                d_enc = d_enc[..., None, :]
            h = torch.relu(split_linear(self.rgb_hidden, self.feature(h), d_enc))
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
    measurable on a CPU where a bfloat16 element-wise pass costs a third of the matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        w = weight.to(x.dtype)
        y = torch.addmm(bias.to(x.dtype), x.reshape(-1, x.shape[-1]), w.t()).relu_()
        ctx.save_for_backward(x, w, y)
        ctx.param_dtypes = weight.dtype, bias.dtype
        return y.view(*x.shape[:-1], -1)

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
    ):
        super().__init__()
        self.use_viewdirs = use_viewdirs
        self.sigma_mul = sigma_mul
        self.grid = grid
        in_dim = 3 + grid.dim if grid is not None else 3
        layers = [SineLayer(in_dim, width, omega0, first=True)]
        layers += [SineLayer(width, width, hidden_omega0, first=False) for _ in range(depth - 1)]
        self.trunk = nn.Sequential(*layers)
        self.sigma = nn.Linear(width, 1)
        if use_viewdirs:
            self.rgb_hidden = SineLayer(width + 3, width // 2, hidden_omega0, first=False)
            self.rgb = nn.Linear(width // 2, 3)
        else:
            self.rgb = nn.Linear(width, 3)

    def forward(self, points, dirs, progress: float | None = None):
        x = points if self.grid is None else torch.cat([points, self.grid(points)], -1)
        h = self.trunk(x)
        sigma = torch.relu(self.sigma(h)[..., 0].float() * self.sigma_mul)
        if self.use_viewdirs:
            if dirs.dim() == points.dim() - 1:  # one direction per ray
                dirs = dirs[..., None, :].expand(*h.shape[:-1], 3)
            h = self.rgb_hidden(torch.cat([h, dirs.to(h.dtype)], dim=-1))
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
        )
    raise ConfigError(f"model.framework must be NeRF or SirenNeRF, not {model_cfg.framework!r}.")
