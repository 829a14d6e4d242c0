"""What one training step renders: groups of rays, each a camera id and a pixel per ray.

"rgb": random pixels of the training images (the photometric loss; with a depth prior also
its depth there, "prior"); "track": whole feature
tracks' observations (the reprojection loss); "smooth": square patches (depth smoothness).
Every group goes through one render call, so the MLP runs once per step.
"""

from __future__ import annotations

import torch

from geometry.rays import pixel_centers
from losses.tracks import track_pairs
from utils.errors import TrainingError


def in_window(progress: float, start: float, stop: float = 1.0) -> bool:
    return start <= progress < stop


class TrackSampler:
    """Chooses whole tracks per step until their observations fill the budget `n_obs`.

    Tracks are drawn uniformly (not observations), so long tracks are not over-sampled; when
    every observation fits in the budget all tracks are used each step.
    """

    def __init__(self, tracks, n_obs: int):
        self.obs_image = tracks.obs_image
        self.obs_uv = tracks.obs_uv
        self.obs_track = tracks.obs_track
        self.lengths = tracks.lengths().to(self.obs_track.device)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.n_tracks = int(tracks.n_tracks)
        self.n_obs = int(n_obs)
        self.use_all = self.obs_track.numel() <= self.n_obs
        if self.use_all:
            self.all_pairs = track_pairs(self.obs_track)

    def sample(self) -> dict[str, torch.Tensor]:
        """Observations to render (image, uv) and the pairs among them, as indices into those
        observations: {'image' (B,), 'uv' (B, 2), 'src' (P,), 'dst' (P,), 'pair_track' (P,)}."""
        device = self.obs_track.device
        if self.use_all:
            obs = torch.arange(self.obs_track.numel(), device=device)
            src, dst = self.all_pairs
        else:
            order = torch.randperm(self.n_tracks, device=device)
            # Take tracks in random order while the running observation count fits the budget.
            chosen = order[torch.cumsum(self.lengths[order], 0) <= self.n_obs]
            chosen, _ = torch.sort(chosen)
            lengths = self.lengths[chosen]
            obs = torch.repeat_interleave(self.starts[chosen], lengths) + (
                torch.arange(int(lengths.sum()), device=device)
                - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
            )
            src, dst = track_pairs(self.obs_track[obs])
        return {
            "image": self.obs_image[obs],
            "uv": self.obs_uv[obs],
            "src": src,
            "dst": dst,
            "pair_track": self.obs_track[obs][src],
        }


class BatchSampler:
    """images: (n_train, H*W, 3) on the device. sample(progress) returns {group: dict} with
    "cam_ids" (R,) long and "uv" (R, 2) pixel coordinates (centres at +0.5) in every group,
    "target" (R, 3) colours for "rgb" and "smooth", and the track sampler's fields for "track"."""

    def __init__(self, cfg, images: torch.Tensor, H: int, W: int, n_rays: int):
        self.cfg, self.images, self.H, self.W = cfg, images, H, W
        self.n_rays, self.device = n_rays, images.device
        self.tracks: TrackSampler | None = None
        self.prior: torch.Tensor | None = None  # (n_train, H*W) depth, NaN where unknown

    def use_tracks(self, tracks) -> None:
        """Sample track observations from now on (when training.w_track > 0)."""
        if self.cfg.training.w_track > 0 and tracks is not None:
            self.tracks = TrackSampler(tracks, self.cfg.tracks.n_obs)

    def use_depth_prior(self, depth) -> None:
        """Look up each photometric ray's prior depth from now on: depth (n_train, H, W), NaN
        where there is none (when training.w_depth_prior > 0)."""
        if self.cfg.training.w_depth_prior > 0 and depth is not None:
            self.prior = depth.reshape(depth.shape[0], -1).to(self.device)

    def sample(self, progress: float) -> dict[str, dict]:
        cam_ids, uv, target = self.sample_rays()
        groups = {"rgb": {"cam_ids": cam_ids, "uv": uv, "target": target}}
        if self.prior is not None:
            pix = (uv[:, 1] - 0.5).long() * self.W + (uv[:, 0] - 0.5).long()
            groups["rgb"]["prior"] = self.prior[cam_ids, pix]
        t = self.cfg.tracks
        if self.tracks is not None and in_window(progress, t.start, t.stop):
            track = self.tracks.sample()
            groups["track"] = {"cam_ids": track["image"], **track}
        if self.cfg.training.w_smooth > 0 and in_window(progress, self.cfg.smoothness.start):
            cam_ids, uv, target = self.sample_patches()
            groups["smooth"] = {"cam_ids": cam_ids, "uv": uv, "target": target}
        return groups

    def sample_rays(self):
        """n_rays uniformly random training pixels: (R,) camera ids, (R, 2) uv, (R, 3) colours."""
        n_img, n_pix = self.images.shape[0], self.images.shape[1]
        if self.cfg.training.rays_from == "one":
            cam_ids = torch.randint(n_img, (1,), device=self.device).expand(self.n_rays)
        else:
            cam_ids = torch.randint(n_img, (self.n_rays,), device=self.device)
        pix = torch.randint(n_pix, (self.n_rays,), device=self.device)
        uv = torch.stack([pix % self.W, torch.div(pix, self.W, rounding_mode="floor")], -1) + 0.5
        return cam_ids, uv.float(), self.images[cam_ids, pix]

    def sample_patches(self):
        """Square patches for the smoothness loss: (B*P*P,) camera ids, uv and target colours."""
        P, n = self.cfg.smoothness.patch_size, self.cfg.smoothness.n_patches
        if P < 2 or P > min(self.H, self.W):
            raise TrainingError(
                f"smoothness.patch_size {P} must be between 2 and the image size {self.W}x{self.H}."
            )
        cam = torch.randint(self.images.shape[0], (n,), device=self.device)
        u0 = torch.randint(self.W - P + 1, (n,), device=self.device)
        v0 = torch.randint(self.H - P + 1, (n,), device=self.device)
        grid = pixel_centers(P, P, self.device).reshape(1, -1, 2)
        uv = grid + torch.stack([u0, v0], -1)[:, None, :].float()
        pix = (uv[..., 1] - 0.5).long() * self.W + (uv[..., 0] - 0.5).long()
        cam_ids = cam[:, None].expand(n, P * P)
        return cam_ids.reshape(-1), uv.reshape(-1, 2), self.images[cam_ids, pix]
