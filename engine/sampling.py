"""What one training step renders: groups of rays, each a camera id and a pixel per ray.

"rgb": random pixels of the training images (the photometric loss; with a depth prior also
its depth there, "prior"; with training.ray_mining a share of them drawn where the recent error
is, each with its loss weight, "weight"); "track": whole feature
tracks' observations (the reprojection loss); "smooth": square patches (depth smoothness).
Every group goes through one render call, so the MLP runs once per step.
"""

from __future__ import annotations

import math

import torch

from geometry.rays import pixel_centers
from losses.tracks import track_pairs
from utils.errors import ConfigError, TrainingError


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


class ErrorMap:
    """The photometric error of the training images as training goes, per square tile of
    `tile` pixels: a running mean (half the old value, half the new) of the mean absolute
    colour error of the rays drawn in a tile, which training.ray_mining draws its rays from.
    Every tile starts at 1, above any real error, so the mined rays visit every tile once before
    they follow the error. Tiles at the right and bottom edges may hold fewer pixels."""

    def __init__(self, n_images: int, H: int, W: int, tile: int, device):
        self.H, self.W, self.tile = H, W, tile
        self.rows, self.cols = math.ceil(H / tile), math.ceil(W / tile)
        self.err = torch.ones(n_images * self.rows * self.cols, device=device)

    def tile_of(self, cam_ids: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
        """Flat tile index of pixels (pix = row * W + column) of the images cam_ids."""
        row, col = torch.div(pix, self.W, rounding_mode="floor"), pix % self.W
        return (cam_ids * self.rows + row // self.tile) * self.cols + col // self.tile

    def _box(self, tiles: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Top row, left column, height and width of each tile (smaller at the edges)."""
        rc = tiles % (self.rows * self.cols)
        top, left = (rc // self.cols) * self.tile, (rc % self.cols) * self.tile
        return top, left, (self.H - top).clamp(max=self.tile), (self.W - left).clamp(max=self.tile)

    def pixels_in(self, tiles: torch.Tensor) -> torch.Tensor:
        """Number of pixels of each tile (fewer at the right and bottom edges)."""
        _, _, h, w = self._box(tiles)
        return h * w

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n pixels, each from a tile drawn with probability proportional to its error and
        uniformly within it: (n,) camera ids, (n,) pixel indices."""
        tiles = torch.multinomial(self.err, n, replacement=True)
        top, left, h, w = self._box(tiles)
        row = top + (torch.rand(n, device=tiles.device) * h).long().clamp(max=h - 1)
        col = left + (torch.rand(n, device=tiles.device) * w).long().clamp(max=w - 1)
        per_image = self.rows * self.cols
        return torch.div(tiles, per_image, rounding_mode="floor"), row * self.W + col

    def probability(self, tiles: torch.Tensor) -> torch.Tensor:
        """Probability that draw() gives a given pixel of each of these tiles."""
        return self.err[tiles] / self.err.sum() / self.pixels_in(tiles)

    def observe(self, tiles: torch.Tensor, error: torch.Tensor) -> None:
        """Fold the rays' mean absolute colour errors (R,) into their tiles (R,)."""
        # a floor: a tile that reached no error at all keeps a chance (and the sum stays > 0)
        new = 0.5 * self.err[tiles] + 0.5 * error.to(self.err.dtype)
        self.err[tiles] = new.clamp_min(1e-6)


class BatchSampler:
    """images: (n_train, H*W, 3) on the device. sample(progress) returns {group: dict} with
    "cam_ids" (R,) long and "uv" (R, 2) pixel coordinates (centres at +0.5) in every group,
    "target" (R, 3) colours for "rgb" and "smooth", and the track sampler's fields for "track".

    training.ray_mining > 0: that share of the photometric rays comes from an ErrorMap (drawn
    where the recent error is, refreshed by observe() with each step's render), the rest
    uniformly; each ray's loss weight is (uniform probability / its probability) **
    training.ray_mining_alpha, scaled to a mean of 1: alpha 1 keeps the expected loss the plain
    mean over all pixels (importance sampling: the hard pixels are seen more often, each
    weighing less), alpha 0 trains on the hard pixels as drawn."""

    def __init__(self, cfg, images: torch.Tensor, H: int, W: int, n_rays: int):
        self.cfg, self.images, self.H, self.W = cfg, images, H, W
        self.n_rays, self.device = n_rays, images.device
        self.tracks: TrackSampler | None = None
        self.prior: torch.Tensor | None = None  # (n_train, H*W) depth, NaN where unknown
        tc = cfg.training
        self.errors = None
        # the first mined_rays photometric rays of a step are drawn by error (ray_mining)
        self.mined_rays = round(tc.ray_mining * n_rays) if tc.ray_mining > 0 else 0
        if tc.ray_mining > 0:
            if tc.rays_from == "one":
                raise ConfigError(
                    "training.ray_mining draws rays from every training image; it cannot be "
                    "used with training.rays_from one."
                )
            self.errors = ErrorMap(images.shape[0], H, W, tc.ray_mining_tile, self.device)
        self.last_tiles: torch.Tensor | None = None  # the photometric rays' tiles (ray_mining)

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
        cam_ids, uv, target, weight = self.sample_rays()
        groups = {"rgb": {"cam_ids": cam_ids, "uv": uv, "target": target}}
        if weight is not None:
            groups["rgb"]["weight"] = weight
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
        """n_rays training pixels: (R,) camera ids, (R, 2) uv, (R, 3) colours and (R,) loss
        weights (None: uniformly random pixels, the plain mean)."""
        n_img, n_pix = self.images.shape[0], self.images.shape[1]
        tc = self.cfg.training
        if tc.rays_from == "one":
            cam_ids = torch.randint(n_img, (1,), device=self.device).expand(self.n_rays)
        else:
            cam_ids = torch.randint(n_img, (self.n_rays,), device=self.device)
        pix = torch.randint(n_pix, (self.n_rays,), device=self.device)
        weight = None
        if self.errors is not None:
            mined = self.mined_rays
            if mined:
                cam_mined, pix_mined = self.errors.draw(mined)
                cam_ids = torch.cat([cam_mined, cam_ids[mined:]])
                pix = torch.cat([pix_mined, pix[mined:]])
            tiles = self.errors.tile_of(cam_ids, pix)
            uniform, share = 1.0 / (n_img * n_pix), mined / self.n_rays  # the share drawn
            p = (1 - share) * uniform + share * self.errors.probability(tiles)
            weight = (uniform / p) ** tc.ray_mining_alpha
            weight = weight / weight.mean()
            self.last_tiles = tiles
        uv = torch.stack([pix % self.W, torch.div(pix, self.W, rounding_mode="floor")], -1) + 0.5
        return cam_ids, uv.float(), self.images[cam_ids, pix], weight

    def observe(self, rgb: torch.Tensor, target: torch.Tensor) -> None:
        """The photometric rays' rendered colours (R, 3) against their targets, after a step's
        render: their error goes into the ErrorMap (training.ray_mining)."""
        if self.errors is not None and self.last_tiles is not None:
            error = (rgb.detach() - target).abs().mean(-1)
            self.errors.observe(self.last_tiles, error)
            self.last_tiles = None

    def state_dict(self) -> dict:
        return {} if self.errors is None else {"errors": self.errors.err.clone()}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's error map, when it has one of this map's size (else a fresh map)."""
        saved = state.get("errors")
        if self.errors is not None and saved is not None and saved.shape == self.errors.err.shape:
            self.errors.err.copy_(saved.to(self.errors.err.device))

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
