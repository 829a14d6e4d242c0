"""The optimised graph: radiance field(s) plus learnable cameras, and rendering of rays.

Parameter names are what refine recipes select by: `field.*` (coarse network), `field_fine.*`
(fine network, when used), `cam_param.*` (cameras) and `appearance` (per-image appearance codes,
model.appearance_dim > 0).

Appearance codes reach the fields packed behind the unit view directions (models/fields.py), so
the renderer routes them wherever it routes a ray's direction.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from geometry.rays import (
    ndc_rays,
    ndc_to_world_depth,
    ndc_to_world_points,
    pixel_centers,
    pixels_to_rays,
)
from models.cameras import Cameras
from models.compile import compile_or_eager
from models.fields import build_field, grid_bound
from models.grid import OccupancyGrid
from models.rendering import (
    composite,
    composite_weights,
    contracted_t,
    contracted_t_at,
    contracted_u,
    resample_positions,
    sample_pdf,
    stratified_t,
)
from models.rendering import contract as contract_points
from models.sparse import sparse_density, sparse_render
from utils.errors import ConfigError

# NDC t of a forward-facing scene's nearest content: every frame puts it at depth 1 / 0.75
# (dataio/llff.py, sfm/colmap.py), NDC t 0.25; 0.2 leaves a margin (fit_grid_box)
NDC_CONTENT_T = 0.2
BOX_MARGIN = 1.05  # fit_grid_box: the training rays' reach times this


class SceneModel(nn.Module):
    def __init__(
        self,
        model_cfg,
        cameras: Cameras,
        use_ndc: bool,
        near: float,
        far: float,
        autocast: str = "none",
        compile_field: bool = False,
        contract: bool = False,
    ):
        super().__init__()
        self.cfg = model_cfg
        self.cam_param = cameras
        self.use_ndc = use_ndc
        # In NDC the ray parameter spans [0, 1] from the near plane (z = 1) to infinity.
        self.near, self.far = (0.0, 1.0) if use_ndc else (float(near), float(far))
        self.grid_bound = grid_bound(model_cfg, use_ndc or contract, near, far)
        if model_cfg.resample > 0 and model_cfg.n_importance > 0:
            raise ConfigError(
                "model.resample and model.n_importance are two ways to place a ray's samples; "
                "set one of them to 0."
            )
        self.field = build_field(model_cfg, self.grid_bound)
        self.field_fine = (
            build_field(model_cfg, self.grid_bound) if model_cfg.n_importance > 0 else None
        )
        self.occupancy = None
        if model_cfg.occupancy:
            # the threshold is an opacity over one sample step (the cube's width / n_samples)
            step = 2 * self.grid_bound / model_cfg.n_samples
            sigma = -math.log(1 - model_cfg.occupancy_threshold) / step
            self.occupancy = OccupancyGrid(model_cfg.occupancy_resolution, self.grid_bound, sigma)
        # NeRF-W: one code per training image (camera), zero at the start so that every image
        # starts with the same appearance; no random draw, so the fields' initialisation is the
        # same with and without codes.
        self.appearance = (
            nn.Parameter(torch.zeros(cameras.n, model_cfg.appearance_dim))
            if model_cfg.appearance_dim > 0
            else None
        )
        # Unbounded scene in euclidean rays (mip-NeRF 360): the field sees contract(x) / 2, so its
        # input stays in the unit ball like NDC's (the positional encoding's lowest band,
        # sin(pi x), has period 2), and samples go linearly in disparity beyond the unit ball.
        if contract and use_ndc:
            raise ValueError("scene contraction is for euclidean rays; NDC is already bounded")
        self.contract = bool(contract)
        self.autocast = autocast
        # Renders (no gradient) skip empty cells, stop each ray once it is opaque and colour
        # only the samples that show (_run_sparse), with or without model.occupancy; False
        # evaluates every sample, the reference those shortcuts are checked against
        # (bench/render_speed.py). Training is not affected: it stops no ray early (its
        # gradient reaches samples behind an opaque one) and skips empty cells only with
        # model.occupancy.
        self.render_shortcuts = True
        # torch.compile of each field's forward (training.compile), built on first use; kept in
        # a plain dict so that state_dict keys do not change.
        self.compile_field = compile_field
        self._compiled: dict[str, tuple[nn.Module, object]] = {}
        # models/baked.py's BakedField: renders (no gradient) read the field from it when set
        self.baked = None

    def reset_field(self) -> None:
        """Fresh field weights (the pre-train/refine recipe); cameras and the grid box are
        kept."""
        box = self.grids()[0].extent.clone() if self.grids() else None
        self.field = build_field(self.cfg, self.grid_bound).to(self.cam_param.t.device)
        if self.field_fine is not None:
            self.field_fine = build_field(self.cfg, self.grid_bound).to(self.cam_param.t.device)
        if box is not None:
            self.set_grid_box(box)
        if self.appearance is not None:  # the codes meant something only to the old colour head
            with torch.no_grad():
                self.appearance.zero_()

    def fields(self) -> list[nn.Module]:
        return [f for f in (self.field, self.field_fine) if f is not None]

    def field_parameters(self):
        return [p for f in self.fields() for p in f.parameters()]

    def grids(self) -> list:
        """The grid encodings of the fields (model.encoding grid), else []."""
        return [f.grid for f in self.fields() if getattr(f, "grid", None) is not None]

    @torch.no_grad()
    def fit_grid_box(self) -> list[float] | None:
        """NDC with a grid encoding (model.grid_bound null): widen the box the grids and the
        occupancy grid cover along x and y to hold every training ray from the scene's nearest
        content to infinity (NDC t from NDC_CONTENT_T), with a margin; z keeps [-1, 1]. NDC's x
        and y span [-1, 1] only for the average camera: the others' frusta reach past it, and
        there the grid would repeat its border values (a noticeable share of the training pixels
        would be rendered mostly from outside the cube). Called once on a new experiment, after
        the cameras' start; the box is saved with the grids. Returns the half-widths, or None
        where the cube stays."""
        grids = self.grids()
        if not (self.use_ndc and grids and self.cfg.grid_bound is None):
            return None
        cams = self.cam_param
        c2w, K = cams.c2w(), cams.K()
        H, W = cams.H, cams.W
        u = torch.tensor([0.0, W / 2, W], device=c2w.device)
        v = torch.tensor([0.0, H / 2, H], device=c2w.device)
        uv = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)  # rim + centre
        ids = torch.arange(cams.n, device=c2w.device).repeat_interleave(len(uv))
        origins, dirs, _ = self.rays(ids, uv.repeat(cams.n, 1), c2w, K)
        t = torch.linspace(NDC_CONTENT_T, 1.0, 9, device=c2w.device)
        points = origins[:, None] + t[None, :, None] * dirs[:, None]
        reach = points[..., :2].abs().amax((0, 1)) * BOX_MARGIN
        half = torch.ones(3, device=c2w.device)
        half[:2] = torch.maximum(reach, half[:2])
        self.set_grid_box(half)
        return half.tolist()

    @torch.no_grad()
    def set_grid_box(self, extent: torch.Tensor) -> None:
        """The box (half-widths per axis) every grid encoding and the occupancy grid cover: one
        box for all of them."""
        for grid in self.grids():
            grid.extent.copy_(extent)
        if self.occupancy is not None:
            self.occupancy.extent.copy_(extent)

    def field_param_groups(
        self, lr_field: float, lr_grid: float, lr_appearance: float = 0.0
    ) -> list[dict]:
        """Adam groups: the grids' planes and lines at lr_grid, the MLPs at lr_field, the
        appearance codes (when the model has them) at lr_appearance."""
        grid_ids = {id(p) for g in self.grids() for p in g.parameters()}
        mlp = [p for p in self.field_parameters() if id(p) not in grid_ids]
        grid = [p for g in self.grids() for p in g.parameters()]
        return (
            [{"params": mlp, "lr": lr_field}]
            + ([{"params": grid, "lr": lr_grid}] if grid else [])
            + ([{"params": [self.appearance], "lr": lr_appearance}] if self.has_appearance else [])
        )

    @property
    def has_appearance(self) -> bool:
        return self.appearance is not None

    def appearance_of(self, image_ids: torch.Tensor) -> torch.Tensor | None:
        """(R, A) appearance codes of training images image_ids (R,) (the camera index of each
        ray); None when the model has no codes."""
        return None if self.appearance is None else self.appearance[image_ids]

    def appearance_code(self, image: int | None = None) -> torch.Tensor | None:
        """(A,) the code a view renders with when none is given: training image `image`'s, or
        the mean of all training codes (None); None when the model has no codes."""
        if self.appearance is None:
            return None
        return self.appearance.mean(0) if image is None else self.appearance[image]

    def _with_appearance(self, viewdirs, appearance):
        """viewdirs (R, 3) with the rays' codes packed behind them (models/fields.py):
        appearance (R, A) or (A,) for all rays, None for appearance_code()'s mean."""
        if self.appearance is None:
            if appearance is not None:
                raise ValueError("appearance codes given to a model without them (dim 0)")
            return viewdirs
        if appearance is None:
            appearance = self.appearance_code()
        appearance = appearance.to(viewdirs.dtype).expand(viewdirs.shape[0], -1)
        return torch.cat([viewdirs, appearance], -1)

    def rays(self, cam_ids: torch.Tensor, uv: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor):
        """Rays (origins, dirs, unit view dirs) for pixels uv (B, 2) of cameras cam_ids (B,),
        given all cameras' c2w (N, 4, 4) and K (N, 3, 3) (computed once per step)."""
        K_rays = K[cam_ids]
        origins, dirs = pixels_to_rays(uv, K_rays, c2w[cam_ids])
        viewdirs = dirs / dirs.norm(dim=-1, keepdim=True)
        if self.use_ndc:
            H, W = self.cam_param.H, self.cam_param.W
            fx, fy = K_rays[:, 0, 0], K_rays[:, 1, 1]
            origins, dirs = ndc_rays(origins, dirs, fx, fy, H, W, near=1.0)
        return origins, dirs, viewdirs

    def points_at(self, origins, dirs, t, K_rays) -> torch.Tensor:
        """(B, 3) world points at ray parameters t (B,) (a render's "t") along rays from `rays`
        (origins, dirs in NDC when the model uses NDC; K_rays (B, 3, 3) the intrinsics each ray
        was made with)."""
        points = origins + t[:, None] * dirs
        if self.use_ndc:
            H, W = self.cam_param.H, self.cam_param.W
            points = ndc_to_world_points(points, K_rays[:, 0, 0], K_rays[:, 1, 1], H, W, near=1.0)
        return points

    def _field_fn(self, name: str, field: nn.Module):
        if not self.compile_field:
            return field
        cached = self._compiled.get(name)
        if cached is None or cached[0] is not field:  # reset_field replaces the module
            cached = (field, compile_or_eager(field))
            self._compiled[name] = cached
        return cached[1]

    def _points(self, origins, dirs, t):
        """(R, S, 3) the field's points at ray parameters t (R, S) (contracted when so)."""
        points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
        return contract_points(points) / 2 if self.contract else points

    def _run_field(self, field, origins, dirs, viewdirs, t, progress, name="field", colour=None):
        points = self._points(origins, dirs, t)
        if field is self.baked:
            return field.render(points, t, dirs, viewdirs, colour, self.cfg.white_bkgd)
        ctx = self._autocast(points)
        fn = self._field_fn(name, field)
        if self.compile_field and progress is not None:
            # a tensor, not a Python float: a compiled graph would specialise on every value
            progress = torch.tensor(float(progress), device=points.device)
        rendering = not torch.is_grad_enabled()
        with ctx:
            if rendering and not self.render_shortcuts:
                pass  # the reference: every sample's density and colour
            elif self.occupancy is not None or (rendering and hasattr(field, "density")):
                return self._run_sparse(field, points, dirs, viewdirs, t, progress, colour)
            # view directions once per ray (R, 3): the field broadcasts them over the samples
            rgb, sigma = fn(points, viewdirs, progress)  # float32 (the fields cast back)
        return composite(rgb, self._noisy(sigma), t, dirs, self.cfg.white_bkgd)

    def _autocast(self, points):
        if self.autocast == "bf16":
            return torch.autocast(points.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _noisy(self, sigma):
        if self.training and self.cfg.raw_noise_std > 0:
            return torch.relu(sigma + torch.randn_like(sigma) * self.cfg.raw_noise_std)
        return sigma

    def _run_sparse(self, field, points, dirs, viewdirs, t, progress, colour=None):
        """Empty-space skipping (model.occupancy): density only at samples in occupied cells
        (and, in renders, none behind opaque ones), colour only where a sample's weight exceeds
        WEIGHT_MIN (zero elsewhere) on rays whose colour is wanted (colour: (R,) bool, None =
        every ray; the others' rgb is their background). models/sparse.py."""
        keep = self._kept(points)
        if not hasattr(field, "density"):  # SIREN: one pass over the kept samples
            rgb, sigma = self._siren_at(field, points, keep, viewdirs, progress)
            return composite(rgb, self._noisy(sigma), t, dirs, self.cfg.white_bkgd)
        return sparse_render(
            field,
            points,
            keep,
            t,
            dirs,
            viewdirs,
            progress,
            colour,
            self._noisy,
            self.cfg.white_bkgd,
        )

    def _kept(self, points):
        """(R, S) bool: the samples the occupancy grid keeps; all without one (a render of a
        field without the grid: early termination alone)."""
        if self.occupancy is not None:
            return self.occupancy.occupied(points)
        return torch.ones(points.shape[:-1], dtype=torch.bool, device=points.device)

    @staticmethod
    def _siren_at(field, points, keep, viewdirs, progress):
        """(rgb (R, S, 3), sigma (R, S)) of a field without a density head at the kept samples
        (zero elsewhere), in one pass."""
        rows, cols = keep.nonzero(as_tuple=True)
        rgb_k, sigma_k = field(points[rows, cols], viewdirs[rows], progress)
        rgb = points.new_zeros(*keep.shape, 3).index_put((rows, cols), rgb_k.float())
        return rgb, points.new_zeros(keep.shape).index_put((rows, cols), sigma_k.float())

    @torch.no_grad()
    def _proposal(self, field, origins, dirs, viewdirs, t, progress) -> torch.Tensor:
        """model.resample: the volume-rendering weights (R, S) of the field's density at the
        samples t, without gradients, with the render shortcuts (empty cells skipped, rays
        stopped once opaque) unless they are off (then every sample, the reference)."""
        points = self._points(origins, dirs, t)
        if field is self.baked:
            return field.weights(points, t, dirs)
        with self._autocast(points):
            if hasattr(field, "density") and self.render_shortcuts:
                sigma = sparse_density(field, points, self._kept(points), t, dirs, progress)[0]
            elif hasattr(field, "density"):
                sigma = field.density(points, progress)[0].float()
            else:
                keep = (
                    self._kept(points) if self.render_shortcuts else torch.ones_like(t, dtype=bool)
                )
                sigma = self._siren_at(field, points, keep, viewdirs, progress)[1]
        return composite_weights(sigma, t, dirs)

    def _positions(self, origins, dirs, t):
        """The samples' positions u in [0, 1] in the sampler's own spacing: linear in t, or
        contracted_t's."""
        if self.contract:
            return contracted_u(origins, dirs, t, self.near, self.far)
        return (t - self.near) / (self.far - self.near)

    def _at_positions(self, origins, dirs, u):
        """_positions' inverse: ray parameters t at positions u."""
        if self.contract:
            return contracted_t_at(origins, dirs, u, self.near, self.far)
        return self.near + u * (self.far - self.near)

    def _max_density(self, points):
        """The larger density of the coarse and the fine field at (M, 3) points."""
        out = [
            f.density(points)[0] if hasattr(f, "density") else f(points, points)[1]
            for f in self.fields()
        ]
        return torch.stack(out).amax(0)

    @torch.no_grad()
    def update_occupancy(self) -> float:
        """Refresh the occupancy grid from the fields' density (the larger of coarse and fine);
        returns the occupied fraction."""
        return self.occupancy.update(self._max_density)

    @torch.no_grad()
    def rebuild_occupancy(self, resolution: int | None = None) -> float:
        """A fresh occupancy grid from the trained field (OccupancyGrid.rebuild): at the end of
        training (its own resolution: checkpoints keep their shapes) and when an experiment is
        loaded to render or evaluate (model.occupancy_render_resolution, a new grid: finer
        cells skip more empty space, so a frame renders faster). Returns the occupied fraction."""
        old = self.occupancy
        if resolution is not None and resolution != old.resolution:
            self.occupancy = OccupancyGrid(resolution, old.bound, old.threshold, old.decay).to(
                old.density.device
            )
            self.set_grid_box(old.extent)
        return self.occupancy.rebuild(self._max_density)

    def render_rays(
        self,
        origins,
        dirs,
        viewdirs,
        progress: float | None = None,
        perturb: bool = False,
        appearance: torch.Tensor | None = None,
        colour: torch.Tensor | None = None,
        n_samples: int | None = None,
        n_importance: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render rays; returns rgb (B, 3), t (B,) (the ray parameter), acc (B,) and, with a fine
        network, rgb_coarse / t_coarse. appearance: the rays' codes (B, A), or one (A,) for
        all; None renders with the mean of the training codes (model.appearance_dim > 0).
        colour: (B,) bool, the rays whose rgb is used (None: all); with model.occupancy and
        the NeRF field the others skip the colour head (a track or smoothness ray needs only
        its depth), and their rgb is not their colour. n_samples, n_importance: samples per ray
        in place of model.n_samples / n_importance (a preview takes fewer; model.resample's
        count scales with n_samples). With model.resample the output has u_samples (B, S), the
        samples' positions normalised to [0, 1] in the sampler's spacing."""
        viewdirs = self._with_appearance(viewdirs, appearance)
        n_samples = self.cfg.n_samples if n_samples is None else int(n_samples)
        n_importance = self.cfg.n_importance if n_importance is None else int(n_importance)
        if self.contract:
            t = contracted_t(origins, dirs, n_samples, self.near, self.far, perturb)
        else:
            t = stratified_t(
                origins.shape[0],
                n_samples,
                self.near,
                self.far,
                perturb,
                device=origins.device,
            )
        u = None
        field = self.field
        if self.baked is not None and not torch.is_grad_enabled():
            field = self.baked
        if self.cfg.resample > 0:
            # a caller's fewer samples (a preview) take proportionally fewer resampled ones
            n = self.cfg.resample
            if not torch.is_grad_enabled() and self.cfg.render_resample is not None:
                n = self.cfg.render_resample  # a render
            n = max(1, round(n * n_samples / self.cfg.n_samples))
            weights = self._proposal(field, origins, dirs, viewdirs, t, progress)
            u = resample_positions(self._positions(origins, dirs, t), weights, n, perturb)
            t = self._at_positions(origins, dirs, u)
        out = self._run_field(field, origins, dirs, viewdirs, t, progress, colour=colour)
        if u is not None:
            out["u_samples"] = u  # the samples' positions, normalised (the ray-weight losses)
        if self.field_fine is None or n_importance == 0:
            return out
        mids = (t[:, 1:] + t[:, :-1]) / 2
        t_fine = sample_pdf(mids, out["weights"][:, 1:-1], n_importance, not perturb)
        t_all, _ = torch.sort(torch.cat([t, t_fine], dim=-1), dim=-1)
        fine = self._run_field(
            self.field_fine, origins, dirs, viewdirs, t_all, progress, "field_fine", colour
        )
        fine["rgb_coarse"], fine["t_coarse"] = out["rgb"], out["t"]
        fine["weights_coarse"] = out["weights"]
        return fine

    @torch.no_grad()
    def render_image(
        self,
        c2w: torch.Tensor,
        K: torch.Tensor,
        progress: float | None = None,
        chunk: int = 4096,
        appearance: torch.Tensor | None = None,
        n_samples: int | None = None,
        n_importance: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render a full (H, W) image from one camera (c2w (4, 4), K (3, 3)) in chunks of rays;
        returns rgb (H, W, 3) and the ray parameter t (H, W) (depth_from_t) on the CPU.
        appearance: the (A,) code to render with; None = the mean of the training codes.
        n_samples, n_importance: samples per ray, None = the model's (render_rays)."""
        H, W = self.cam_param.H, self.cam_param.W
        device = self.cam_param.t.device
        uv = pixel_centers(H, W, device).reshape(-1, 2)
        ids = torch.zeros(uv.shape[0], dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        rgbs, ts = [], []
        for start in range(0, uv.shape[0], chunk):
            sl = slice(start, start + chunk)
            o, d, v = self.rays(ids[sl], uv[sl], c2w[None], K[None])
            out = self.render_rays(
                o, d, v, progress, False, appearance, None, n_samples, n_importance
            )
            rgbs.append(out["rgb"].cpu())
            ts.append(out["t"].cpu())
        self.train(was_training)
        return {"rgb": torch.cat(rgbs).reshape(H, W, 3), "t": torch.cat(ts).reshape(H, W)}

    def depth_from_t(self, t: torch.Tensor) -> torch.Tensor:
        """Camera z-depth in world units from a render's ray parameter t: NDC t (0 at the near
        plane z = 1, 1 at infinity) is converted; euclidean rays have unit z, so t is depth."""
        return ndc_to_world_depth(t) if self.use_ndc else t
