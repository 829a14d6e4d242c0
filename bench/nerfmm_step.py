"""The NeRF-- training step as its public code runs it, re-written plainly: the baseline that
bench/throughput.py measures our step against, on the same machine, in the same process.

Structure (NeRF--, Wang et al. 2021, `tasks/any_folder/train.py`): one training image per step;
the ray directions of the whole image from the current focal; 32 random rows x 32 random
columns (1024 rays); the image's pose from its axis-angle and translation parameters; NDC
rays; 128 stratified samples between 0 and 1; positional encoding (10 bands for positions, 4
for directions, raw input kept); the official NeRF MLP (8 x 128, the input concatenated again
after layer 4, a density head, a 128 feature layer, a 64 colour layer for the view direction);
volume rendering with a cumulative product of (1 - alpha + 1e-10); mean squared error;
backward; three Adam optimisers (field, focal, poses). Float32, eager, no fused kernels.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def encode(x: torch.Tensor, levels: int) -> torch.Tensor:
    freqs = 2.0 ** torch.arange(levels, dtype=torch.float32, device=x.device) * math.pi
    spectrum = x.unsqueeze(-1) * freqs  # (..., 3, L)
    enc = torch.cat([torch.sin(spectrum), torch.cos(spectrum)], dim=-1)
    return torch.cat([x, enc.flatten(-2)], dim=-1)


class OfficialNerf(nn.Module):
    def __init__(self, pos_dim: int, dir_dim: int, width: int = 128, depth: int = 8):
        super().__init__()
        half = depth // 2
        self.layers0 = nn.Sequential(
            *[m for i in range(half) for m in (nn.Linear(pos_dim if i == 0 else width, width),)]
        )
        self.layers1 = nn.Sequential(
            *[
                m
                for i in range(depth - half)
                for m in (nn.Linear(width + pos_dim if i == 0 else width, width),)
            ]
        )
        self.fc_density = nn.Linear(width, 1)
        self.fc_feature = nn.Linear(width, width)
        self.rgb_layers = nn.Linear(width + dir_dim, width // 2)
        self.fc_rgb = nn.Linear(width // 2, 3)

    def forward(self, pos_enc: torch.Tensor, dir_enc: torch.Tensor) -> torch.Tensor:
        x = pos_enc
        for layer in self.layers0:
            x = torch.relu(layer(x))
        x = torch.cat([x, pos_enc], dim=-1)
        for layer in self.layers1:
            x = torch.relu(layer(x))
        density = self.fc_density(x)
        feat = self.fc_feature(x)
        x = torch.relu(self.rgb_layers(torch.cat([feat, dir_enc], dim=-1)))
        return torch.cat([self.fc_rgb(x), density], dim=-1)


def axis_angle_to_matrix(r: torch.Tensor) -> torch.Tensor:
    theta = r.norm() + 1e-15
    k = r / theta
    zero = torch.zeros((), device=r.device)
    Kx = torch.stack(
        [
            torch.stack([zero, -k[2], k[1]]),
            torch.stack([k[2], zero, -k[0]]),
            torch.stack([-k[1], k[0], zero]),
        ]
    )
    eye = torch.eye(3, device=r.device)
    return eye + torch.sin(theta) * Kx + (1 - torch.cos(theta)) * Kx @ Kx


class NerfmmStep:
    """One NeRF-- optimisation step over `images` (N, H, W, 3) with the shapes given."""

    def __init__(self, images, depth=8, width=128, n_samples=128, n_rays=1024, device="cpu"):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        n, self.H, self.W = images.shape[:3]
        self.n_samples = n_samples
        self.side = int(math.isqrt(n_rays))
        self.model = OfficialNerf(3 + 3 * 2 * 10, 3 + 3 * 2 * 4, width, depth).to(self.device)
        self.r = nn.Parameter(torch.zeros(n, 3, device=self.device))
        self.t = nn.Parameter(torch.zeros(n, 3, device=self.device))
        self.f = nn.Parameter(torch.ones(2, device=self.device))
        self.opt_nerf = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.opt_focal = torch.optim.Adam([self.f], lr=1e-3)
        self.opt_pose = torch.optim.Adam([self.r, self.t], lr=1e-3)

    def n_ray_samples(self) -> int:
        return self.side * self.side * self.n_samples

    def step(self) -> float:
        H, W, dev = self.H, self.W, self.device
        i = int(torch.randint(self.images.shape[0], (1,)))
        fx, fy = self.f[0] ** 2 * W, self.f[1] ** 2 * H
        y, x = torch.meshgrid(
            torch.arange(H, dtype=torch.float32, device=dev),
            torch.arange(W, dtype=torch.float32, device=dev),
            indexing="ij",
        )
        dirs_cam = torch.stack(
            [(x - 0.5 * W) / fx, -(y - 0.5 * H) / fy, -torch.ones_like(x)], dim=-1
        )  # (H, W, 3), the whole image every step
        r_id = torch.randperm(H, device=dev)[: self.side]
        c_id = torch.randperm(W, device=dev)[: self.side]
        dirs_sel = dirs_cam[r_id][:, c_id]  # (s, s, 3)
        target = self.images[i][r_id][:, c_id]
        c2w = torch.cat([axis_angle_to_matrix(self.r[i]), self.t[i][:, None]], dim=1)
        rays_d = (c2w[:3, :3] @ dirs_sel.reshape(-1, 3).T).T.reshape(dirs_sel.shape)
        rays_o = c2w[:3, 3].expand_as(rays_d)
        # NDC (near plane z = -1, as NeRF's get_ndc_rays)
        t0 = -(1.0 + rays_o[..., 2]) / rays_d[..., 2]
        rays_o = rays_o + t0[..., None] * rays_d
        ox, oy, oz = rays_o[..., 0], rays_o[..., 1], rays_o[..., 2]
        dx, dy, dz = rays_d[..., 0], rays_d[..., 1], rays_d[..., 2]
        o_ndc = torch.stack([-fx / (W / 2) * ox / oz, -fy / (H / 2) * oy / oz, 1 + 2 / oz], -1)
        d_ndc = torch.stack(
            [
                -fx / (W / 2) * (dx / dz - ox / oz),
                -fy / (H / 2) * (dy / dz - oy / oz),
                -2 / oz,
            ],
            -1,
        )
        t_vals = torch.linspace(0, 1, self.n_samples, device=dev)
        t_noise = torch.rand(*d_ndc.shape[:2], self.n_samples, device=dev) / self.n_samples
        t_vals = t_vals + t_noise  # (s, s, S)
        points = o_ndc[..., None, :] + d_ndc[..., None, :] * t_vals[..., None]  # (s, s, S, 3)
        viewdir = d_ndc / d_ndc.norm(dim=-1, keepdim=True)
        pos_enc = encode(points, 10)
        dir_enc = encode(viewdir, 4)[..., None, :].expand(*points.shape[:-1], -1)
        raw = self.model(pos_enc, dir_enc)  # (s, s, S, 4)
        rgb = torch.sigmoid(raw[..., :3])
        sigma = torch.relu(raw[..., 3])
        dists = t_vals[..., 1:] - t_vals[..., :-1]
        dists = torch.cat([dists, torch.full_like(dists[..., :1], 1e10)], dim=-1)
        alpha = 1.0 - torch.exp(-sigma * dists)
        trans = torch.cumprod(1.0 - alpha + 1e-10, dim=-1)
        trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
        weight = alpha * trans
        rgb_rendered = (weight[..., None] * rgb).sum(dim=-2)
        loss = torch.mean((rgb_rendered - target) ** 2)
        self.opt_nerf.zero_grad()
        self.opt_focal.zero_grad()
        self.opt_pose.zero_grad()
        loss.backward()
        self.opt_nerf.step()
        self.opt_focal.step()
        self.opt_pose.step()
        return loss.item()  # NeRF-- logs every step's loss

    def mlp_layers(self) -> list[tuple[int, int]]:
        return [
            (m.in_features, m.out_features)
            for m in self.model.modules()
            if isinstance(m, nn.Linear)
        ]
