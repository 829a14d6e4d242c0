"""What the browser viewer (vis/viewer.py, view.py) shows of an experiment, built without a server.

Conventions: our c2w have OpenCV camera axes (x right, y down, z forward), and so do viser's
frustums and its client camera (`wxyz` is the rotation R of P_world = R p_camera + t, looking
along +z with -y up), so a pose crosses over as its rotation's quaternion and its centre; the
client camera's field of view is vertical (radians) and its aspect is width over height, which
give the pinhole K a render needs (pixel centres at +0.5, principal point at the image centre).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import viser.transforms as vtf

from engine.experiment import needs_tracks, prepare_tracks, tracks_cache_dir
from evaluation.pose_metrics import pose_errors
from geometry.alignment import HEADLINE_ALIGNMENT
from sfm.candidates import saved_summary
from sfm.scoring import triangulated_tracks
from sfm.start import apply_saved_start
from utils.errors import DataError
from vis.videos import path_from_options

THUMBNAIL_HEIGHT = 96
MAX_POINTS = 20000
# rotation error (degrees) at the two ends of the colour scale (log scale between them)
GOOD_DEG, BAD_DEG = 0.05, 5.0
NO_GT_COLOUR = (40, 110, 220)
GT_COLOUR = (150, 150, 150)
MARK_COLOURS = {"dropped": (230, 40, 40), "re-registered": (240, 150, 0), "weak": (200, 0, 200)}


# ------------------------------------------------------------------------------ conversions
def c2w_to_viser(c2w) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) or (3, 4) OpenCV camera-to-world -> viser (wxyz (4,), position (3,))."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return vtf.SO3.from_matrix(c2w[:3, :3]).wxyz, c2w[:3, 3].copy()


def viser_to_c2w(wxyz, position) -> np.ndarray:
    """viser (wxyz, position) -> (4, 4) OpenCV camera-to-world, float64."""
    c2w = np.eye(4)
    c2w[:3, :3] = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def intrinsics_from_fov(fov: float, aspect: float, height: int) -> tuple[np.ndarray, int, int]:
    """A vertical field of view (radians) and aspect (width / height) at `height` pixels ->
    (K (3, 3), H, W), square pixels, principal point at the centre."""
    H = max(2, int(height))
    W = max(2, int(round(H * aspect)))
    f = 0.5 * H / math.tan(0.5 * fov)
    return np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]), H, W


def fov_of(K, H: int) -> float:
    """Vertical field of view (radians) of intrinsics K at image height H."""
    return 2.0 * math.atan(0.5 * H / float(np.asarray(K)[1, 1]))


def error_colour(err_deg: float) -> tuple[int, int, int]:
    """Green at GOOD_DEG or less, through yellow, red at BAD_DEG or more (log scale)."""
    if not math.isfinite(err_deg):
        return MARK_COLOURS["dropped"]
    x = (math.log10(max(err_deg, GOOD_DEG)) - math.log10(GOOD_DEG)) / (
        math.log10(BAD_DEG) - math.log10(GOOD_DEG)
    )
    x = min(max(x, 0.0), 1.0)
    r, g = (int(255 * min(1, 2 * x)), int(200 * min(1, 2 * (1 - x))))
    return (r, g, 40)


# ----------------------------------------------------------------------------------- content
@dataclass
class ViewerScene:
    """Everything the page shows, as numpy arrays in the learned world.

    names / c2w (n, 4, 4) / K (n, 3, 3): the learned training cameras at (H, W);
    thumbnails: (n, h, w, 3) uint8 photos; errors_deg: (n,) rotation error against the aligned
    ground truth (None without it); colours: one RGB per camera; gt_c2w: (n, 4, 4) ground truth
    mapped into the learned world by the inverse of the headline alignment (None without it);
    marks: view name -> dropped | re-registered | weak; dropped_gt: name -> aligned ground-truth
    c2w of a dropped view (when known); points (m, 3) / point_colours (m, 3) uint8: the
    triangulated tracks (empty without tracks); metrics: metrics.json (empty without it);
    path (F, 4, 4) / path_type: render.py's camera path (spiral or orbit) from these cameras."""

    names: list[str]
    c2w: np.ndarray
    K: np.ndarray
    H: int
    W: int
    thumbnails: np.ndarray
    photos: np.ndarray
    colours: list[tuple[int, int, int]]
    errors_deg: np.ndarray | None = None
    gt_c2w: np.ndarray | None = None
    marks: dict[str, str] = field(default_factory=dict)
    dropped_gt: dict[str, np.ndarray] = field(default_factory=dict)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    point_colours: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    metrics: dict = field(default_factory=dict)
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    frustum_scale: float = 0.1
    forward_facing: bool = False
    path: np.ndarray | None = None
    path_type: str = ""

    @property
    def n(self) -> int:
        return len(self.names)


def _thumbnails(photos: np.ndarray, height: int = THUMBNAIL_HEIGHT) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, h, w, 3) uint8, h = min(height, H), by area averaging."""
    imgs = torch.from_numpy(photos).permute(0, 3, 1, 2).float()
    H, W = imgs.shape[-2:]
    h = min(height, H)
    w = max(1, round(W * h / H))
    small = torch.nn.functional.interpolate(imgs, size=(h, w), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _frustum_scale(centres: np.ndarray, near: float) -> float:
    """Half the median distance from a camera to its nearest other camera (a camera apart from
    its neighbours), else a tenth of the near bound."""
    if len(centres) >= 2:
        d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        spacing = float(np.median(d.min(axis=1)))
        if spacing > 0 and math.isfinite(spacing):
            return 0.5 * spacing
    return 0.1 * max(float(near), 1e-3)


def _marks(exp_dir: Path) -> dict[str, str]:
    summary = saved_summary(exp_dir) or {}
    marks = {name: "weak" for name in summary.get("view_check", {}).get("weak", {})}
    marks.update({name: "re-registered" for name in summary.get("registered_by_pnp", [])})
    marks.update({name: "dropped" for name in summary.get("dropped", [])})
    return marks


def _tracks_of(exp_dir: Path, cfg, scene):
    """The experiment's tracks for its current training views, read from their cache (None
    when the run used none or the cache is gone: never extracts features here)."""
    if not needs_tracks(cfg) or not any(tracks_cache_dir(cfg, exp_dir).glob("tracks-*.npz")):
        return None
    dropped = set((saved_summary(exp_dir) or {}).get("dropped", []))
    ids = [i for i, name in enumerate(scene.image_names) if name in dropped]
    original = sorted(set(scene.train_ids) | set(ids))
    if cfg.data.get("train_views"):
        original = [int(i) for i in cfg.data.train_views]
    # the scene as training saw it before the camera start dropped views (the tracks' cache key)
    before = dataclasses.replace(scene, train_ids=original, extras={})
    try:
        tracks = prepare_tracks(cfg, before, exp_dir, log=lambda s: None)
        tracks, _ = apply_saved_start(before, exp_dir, tracks)
    except Exception:  # noqa: BLE001 - the points are an extra: a page without them still serves
        return None
    return tracks if tracks is not None and before.train_ids == scene.train_ids else None


def _points(scene, c2w, K, tracks, max_points: int = MAX_POINTS):
    """Triangulated track points in front of their views, with the colour of one observation;
    the farthest 2% dropped (forward-facing tracks reach towards infinity)."""
    focal = torch.from_numpy(np.stack([K[:, 0, 0], K[:, 1, 1]], -1))
    principal = torch.from_numpy(K[:, :2, 2].copy())
    points, ok = triangulated_tracks(
        torch.from_numpy(c2w), focal, principal, np.ones(len(c2w), bool), tracks
    )
    first = torch.searchsorted(tracks.obs_track, torch.arange(tracks.n_tracks))
    img, uv = tracks.obs_image[first], tracks.obs_uv[first]
    H, W = scene.H, scene.W
    u = uv[:, 0].long().clamp(0, W - 1)
    v = uv[:, 1].long().clamp(0, H - 1)
    train = torch.as_tensor(scene.train_ids)[img]
    colours = (scene.images[train, v, u] * 255).round().clamp(0, 255).to(torch.uint8)
    points, colours = points[ok].numpy(), colours[ok].numpy()
    if len(points) > 10:
        dist = np.linalg.norm(points - np.median(c2w[:, :3, 3], axis=0), axis=-1)
        near = dist <= np.percentile(dist, 98)
        points, colours = points[near], colours[near]
    return points[:max_points], colours[:max_points]


def build_viewer_scene(exp_dir, cfg, scene, model, tracks=False) -> ViewerScene:
    """The content of the page for a loaded experiment (engine.experiment.load_experiment), or
    for a run training (train.py --viewer passes its own `tracks`, None without any; by
    default they are read from the experiment's cache)."""
    exp_dir = Path(exp_dir)
    with torch.no_grad():
        c2w = model.cam_param.c2w().double().cpu().numpy()
        K = model.cam_param.K().double().cpu().numpy()
    names = [scene.image_names[i] for i in scene.train_ids]
    photos = (scene.images[scene.train_ids] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    view = ViewerScene(
        names=names,
        c2w=c2w,
        K=K,
        H=scene.H,
        W=scene.W,
        thumbnails=_thumbnails(photos),
        photos=photos,
        colours=[NO_GT_COLOUR] * len(names),
        marks=_marks(exp_dir),
        forward_facing=bool(scene.forward_facing),
    )
    metrics_path = exp_dir / "metrics.json"
    if metrics_path.is_file():
        view.metrics = json.loads(metrics_path.read_text())
    up = -c2w[:, :3, 1].mean(axis=0)
    view.up = up / max(np.linalg.norm(up), 1e-12)
    view.frustum_scale = _frustum_scale(c2w[:, :3, 3], scene.near)
    if scene.c2w_gt is not None and len(names) >= 3:
        gt = scene.c2w_gt.double()
        errors = pose_errors(c2w, gt[scene.train_ids], HEADLINE_ALIGNMENT)
        view.errors_deg = np.asarray(errors["rot_deg_per_camera"])
        view.colours = [error_colour(e) for e in view.errors_deg]
        sim = errors["similarity"]  # x_gt = s R x_ours + t  ->  x_ours = R^T (x_gt - t) / s
        if sim["scale"] > 1e-12:
            view.gt_c2w = gt_in_learned_world(gt[scene.train_ids].numpy(), sim)
        else:  # cameras all at one point (the identity start) fit no similarity: on them
            view.gt_c2w = c2w.copy()
        dropped = [i for i, n in enumerate(scene.image_names) if view.marks.get(n) == "dropped"]
        if dropped and sim["scale"] > 1e-12:
            aligned = gt_in_learned_world(gt[dropped].numpy(), sim)
            view.dropped_gt = {scene.image_names[i]: a for i, a in zip(dropped, aligned)}
    for k, name in enumerate(names):
        if view.marks.get(name) in MARK_COLOURS and view.errors_deg is None:
            view.colours[k] = MARK_COLOURS[view.marks[name]]
    if tracks is False:
        tracks = _tracks_of(exp_dir, cfg, scene)
    if tracks is not None and tracks.n_tracks > 0:
        view.points, view.point_colours = _points(scene, c2w, K, tracks)
    view.path_type, view.path = render_path(cfg, scene, model, c2w)
    return view


def render_path(cfg, scene, model, c2w) -> tuple[str, np.ndarray | None]:
    """render.py's path from the cameras c2w (its `render` section; a path file's type falls
    back to auto, which has no file here); ("", None) when the section gives no path."""
    opts = dict(cfg.render)
    if opts["render_type"] == "path":
        opts["render_type"] = "auto"
    try:
        kind, path = path_from_options(opts, torch.as_tensor(c2w), model, scene)
    except DataError:  # e.g. an interpolation order naming cameras the start dropped
        return "", None
    return kind, path.numpy()


def gt_in_learned_world(gt_c2w: np.ndarray, similarity: dict) -> np.ndarray:
    """Ground-truth c2w (n, 4, 4) mapped into the learned world by the inverse of the fitted
    similarity x_gt = s R x_ours + t (pose_errors' 'similarity')."""
    s, R, t = similarity["scale"], np.asarray(similarity["R"]), np.asarray(similarity["t"])
    out = np.repeat(np.eye(4)[None], len(gt_c2w), axis=0)
    out[:, :3, :3] = R.T @ gt_c2w[:, :3, :3]
    out[:, :3, 3] = (gt_c2w[:, :3, 3] - t) @ R / s
    return out
