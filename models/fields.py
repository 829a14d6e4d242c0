"""Radiance fields: NeRF (ReLU MLP + positional encoding) and SIREN (sine MLP).

Each maps points (N, 3) and unit view directions (N, 3) to colour (N, 3) in [0, 1] and
non-negative density (N,). `progress` in [0, 1] drives BARF's coarse-to-fine encoding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.encoding import encoded_dim, positional_encoding

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
    ):
        super().__init__()
        self.pos_levels, self.dir_levels = pos_levels, dir_levels
        self.c2f = tuple(c2f) if c2f is not None else None
        self.skips = set(skips)
        self.use_viewdirs = use_viewdirs
        in_pos = encoded_dim(3, pos_levels)
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

    def forward(self, points, dirs, progress: float | None = None):
        x_enc = positional_encoding(points, self.pos_levels, progress, self.c2f)
        h = x_enc
        for i, layer in enumerate(self.trunk):
            h = torch.relu(layer(h))
            if i in self.skips:
                h = torch.cat([h, x_enc], dim=-1)
        # softplus, not ReLU: a ReLU density dies (zero everywhere, no gradient) at high lr.
        # The shift starts the field nearly transparent (density about 0.05), so early renders
        # come from the far end rather than from a fog at the cameras.
        sigma = F.softplus(self.sigma(h)[..., 0] - DENSITY_SHIFT)
        if self.use_viewdirs:
            d_enc = positional_encoding(dirs, self.dir_levels)
            h = torch.relu(self.rgb_hidden(torch.cat([self.feature(h), d_enc], dim=-1)))
        return torch.sigmoid(self.rgb(h)), sigma


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
        self, depth=8, width=128, use_viewdirs=True, omega0=30.0, hidden_omega0=1.0, sigma_mul=10.0
    ):
        super().__init__()
        self.use_viewdirs = use_viewdirs
        self.sigma_mul = sigma_mul
        layers = [SineLayer(3, width, omega0, first=True)]
        layers += [SineLayer(width, width, hidden_omega0, first=False) for _ in range(depth - 1)]
        self.trunk = nn.Sequential(*layers)
        self.sigma = nn.Linear(width, 1)
        if use_viewdirs:
            self.rgb_hidden = SineLayer(width + 3, width // 2, hidden_omega0, first=False)
            self.rgb = nn.Linear(width // 2, 3)
        else:
            self.rgb = nn.Linear(width, 3)

    def forward(self, points, dirs, progress: float | None = None):
        h = self.trunk(points)
        sigma = torch.relu(self.sigma(h)[..., 0] * self.sigma_mul)
        if self.use_viewdirs:
            h = self.rgb_hidden(torch.cat([h, dirs], dim=-1))
        return torch.sigmoid(self.rgb(h)), sigma


def build_field(model_cfg) -> nn.Module:
    if model_cfg.framework == "NeRF":
        return NeRFField(
            model_cfg.net_depth,
            model_cfg.net_width,
            model_cfg.skips,
            model_cfg.use_viewdirs,
            model_cfg.pos_enc_levels,
            model_cfg.dir_enc_levels,
            model_cfg.barf_c2f,
        )
    if model_cfg.framework == "SirenNeRF":
        return SirenField(
            model_cfg.net_depth,
            model_cfg.net_width,
            model_cfg.use_viewdirs,
            model_cfg.siren_omega0,
            model_cfg.siren_hidden_omega0,
            model_cfg.siren_sigma_mul,
        )
    raise ValueError(f"model.framework must be NeRF or SirenNeRF, not {model_cfg.framework!r}.")
