"""`cameras.init: colmap`: start the cameras from COLMAP's incremental SfM (pycolmap, CPU).

Mapping runs on the feature database the tracks use (dataio.tracks.features.feature_database:
same SIFT features and verified matches, built once and cached), so asking for both costs one
extraction.
The result is cached next to it (colmap-<key>.npz) and mapped into the world frame the rest of
the code expects for the scene (see `normalise_forward_facing` / `normalise_bounded`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dataio.llff import BOUND_FACTOR
from dataio.scene import SceneData
from dataio.tracks.features import RANDOM_SEED, cache_key, feature_database, quiet_colmap
from geometry.poses import average_pose, is_forward_facing, object_centred_frame, rigid_inverse
from utils.errors import DataError
from utils.io import write_atomic

# Bump when the cameras computed from the same database change, so cached results are redone.
COLMAP_INIT_VERSION = 4  # 2: distortion kept; 4: the layout picks the frame
# LLFF's near bound of an image: this percentile of its points' camera-space depths.
NEAR_PERCENTILE = 0.1
# Forward-facing captures have small baselines: COLMAP's default initial pair needs 16 degrees
# of triangulation angle and 100 inliers, which such a capture may never offer (no model at
# all, as on LLFF's flower); these lower ones let it start.
FORWARD_FACING_INIT_MIN_TRI_ANGLE = 4.0
FORWARD_FACING_INIT_MIN_NUM_INLIERS = 50


def normalise_forward_facing(
    c2w: np.ndarray, depths: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """LLFF's world frame for SfM cameras: scale so the nearest image's near depth (the
    NEAR_PERCENTILE percentile of the camera-space depths of its points) is 1 / BOUND_FACTOR,
    then move every pose by the inverse of the average pose (average camera = identity).
    COLMAP's points come filtered by its mapper; the track adjustment passes only points three
    views agree on (sfm.track_ceres.view_depths): one stray point sets this scale.

    c2w: (N, 4, 4) OpenCV c2w; depths: per camera, (P_i,) depths of the points it sees (empty
    allowed, at least one non-empty). Returns (c2w (N, 4, 4), world_from_sfm (4, 4))."""
    nears = [np.percentile(d[d > 0], NEAR_PERCENTILE) for d in depths if (d > 0).any()]
    scale = 1.0 / (min(nears) * BOUND_FACTOR)
    scaled = c2w.copy()
    scaled[:, :3, 3] *= scale
    world_from_scaled = rigid_inverse(average_pose(scaled))
    return world_from_scaled @ scaled, world_from_scaled @ np.diag([scale, scale, scale, 1.0])


def normalise_bounded(
    c2w: np.ndarray, points: np.ndarray, near: float, far: float
) -> tuple[np.ndarray, np.ndarray]:
    """A bounded scene's frame for SfM cameras: the origin at the median of the sparse points
    (the object), scaled so the mean camera distance to it is (near + far) / 2, the middle of
    the scene's depth range (DTU's near / far are the camera distances -+ the object radius);
    COLMAP's orientation is kept (bounded rendering does not depend on it).

    c2w: (N, 4, 4) OpenCV c2w; points: (P, 3) sparse points. Returns (c2w, world_from_sfm)."""
    centre = np.median(points, axis=0)
    dist = np.linalg.norm(c2w[:, :3, 3] - centre, axis=1).mean()
    scale = 0.5 * (near + far) / dist
    world_from_sfm = np.diag([scale, scale, scale, 1.0])
    world_from_sfm[:3, 3] = -scale * centre
    out = c2w.copy()
    out[:, :3, 3] = scale * (c2w[:, :3, 3] - centre)  # a similarity moves centres only
    return out, world_from_sfm


def normalise_around_object(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A walk around an object in an unbounded scene: geometry.poses.object_centred_frame (the
    cameras' focus point at the origin, the farthest camera at distance 1, where the scene
    contraction expects them). Returns (c2w, world_from_sfm)."""
    world_from_sfm = object_centred_frame(c2w)
    scale = world_from_sfm[0, 0]
    out = c2w.copy()
    out[:, :3, 3] = c2w[:, :3, 3] * scale + world_from_sfm[:3, 3]
    return out, world_from_sfm


@dataclass
class SfmStart:
    """Cameras of the training views from a COLMAP model, in our world frame.

    c2w (n, 4, 4) float32 OpenCV camera-to-world; focal (n, 2) float32 fx, fy in training
    pixels; registered: n bools; radial (n, 2) float64 distortion k1, k2 of normalised
    coordinates; forward_facing: the layout of the registered cameras (geometry.poses.
    is_forward_facing), which chose the frame."""

    c2w: torch.Tensor
    focal: torch.Tensor
    registered: list[bool]
    radial: torch.Tensor
    forward_facing: bool


def normalise(c2w, depths, points, registered, scene: SceneData):
    """Our world frame for a model's cameras, decided by their layout: forward-facing -> LLFF's
    (normalise_forward_facing); around an object in a known bounded scene (DTU, Blender) ->
    normalise_bounded; around an object otherwise (a capture assumed forward-facing that is
    not, an unbounded one) -> normalise_around_object. Returns (c2w, forward_facing)."""
    forward = bool(is_forward_facing(c2w[np.asarray(registered)]))
    if forward:
        return normalise_forward_facing(c2w, depths)[0], True
    if not scene.forward_facing and not scene.unbounded:
        return normalise_bounded(c2w, points, scene.near, scene.far)[0], False
    return normalise_around_object(c2w)[0], False


def _nearest_registered(registered: list[bool]) -> list[int]:
    """For each view, itself when registered, else the registered view nearest by index (the
    earlier one on a tie)."""
    done = np.flatnonzero(registered)
    return [
        k if registered[k] else int(done[np.argmin(np.abs(done - k))])
        for k in range(len(registered))
    ]


MAPPERS = ("incremental", "global")


def _run_mapper(features, n_train: int, forward_facing: bool, mapper: str = "incremental"):
    """COLMAP's incremental or global (GLOMAP) mapping of the training images; the model with
    the most registered images, or None."""
    import pycolmap

    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
    else:
        options = pycolmap.IncrementalPipelineOptions()
        if forward_facing:
            options.mapper.init_min_tri_angle = FORWARD_FACING_INIT_MIN_TRI_ANGLE
            options.mapper.init_min_num_inliers = FORWARD_FACING_INIT_MIN_NUM_INLIERS
    options.image_names = list(features.names)
    options.random_seed = RANDOM_SEED
    # COLMAP keeps its first model whatever its size and drops later ones smaller than this;
    # with few views, a later model may be the larger one.
    options.min_model_size = min(options.min_model_size, max(n_train // 2, 2))
    if mapper == "incremental":
        options.extract_colors = False
    run = pycolmap.global_mapping if mapper == "global" else pycolmap.incremental_mapping
    out = Path(tempfile.mkdtemp(prefix=".colmap-", dir=features.db_path.parent))
    try:
        with quiet_colmap():
            models = run(features.db_path, features.root, out, options)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not models:
        return None
    return max(models.values(), key=lambda r: r.num_reg_images())


def _from_model(model, features, scene: SceneData):
    """Cameras of the training views in COLMAP's world: c2w (n, 4, 4) OpenCV (identity where
    unregistered), focal (n, 2) at training resolution (nan where unregistered), registered,
    per-view camera-space depths of the points each sees, all sparse points (P, 3), and the
    radial distortion (k1, k2) of each view's camera ((n, 2); 0 for a model without one)."""
    n = len(features.names)
    index = {name: k for k, name in enumerate(features.names)}
    train_from_src = features.train_from_src(scene)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    focal = np.full((n, 2), np.nan)
    registered = [False] * n
    radial = np.zeros((n, 2))
    depths = [np.zeros(0) for _ in range(n)]
    for image_id in model.reg_image_ids():
        image = model.image(image_id)
        k = index.get(image.name)
        if k is None:
            continue
        w2c = np.eye(4)
        w2c[:3, :4] = image.cam_from_world().matrix()
        c2w[k] = rigid_inverse(w2c)  # COLMAP's camera axes are OpenCV's: only w2c -> c2w
        camera = model.camera(image.camera_id)
        focal[k] = [
            camera.focal_length_x * train_from_src[k, 0],
            camera.focal_length_y * train_from_src[k, 1],
        ]
        if camera.model.name in ("SIMPLE_RADIAL", "RADIAL"):  # of normalised coordinates: the
            radial[k, : len(camera.params) - 3] = camera.params[3:]  # same at any resolution
        registered[k] = True
        ids = [p.point3D_id for p in image.get_observation_points2D()]
        if ids:
            xyz = np.stack([model.point3D(i).xyz for i in ids])
            depths[k] = (xyz - c2w[k, :3, 3]) @ c2w[k, :3, 2]
    points = np.stack([p.xyz for p in model.points3D.values()]) if model.num_points3D() else None
    return c2w, focal, registered, depths, points, radial


def colmap_init(
    scene: SceneData,
    cfg_tracks: Mapping,
    cache_dir: Path,
    log: Callable = print,
    mapper: str = "incremental",
) -> SfmStart:
    """Initial cameras of the training views from pycolmap's incremental (or, mapper="global",
    global) SfM.

    scene: the loaded scene; cfg_tracks: the config's tracks section (the feature settings are
    shared with the tracks); cache_dir: the experiment's tracks/ folder (database and result
    are cached there). COLMAP uses one shared camera (SIMPLE_RADIAL, focal refined; one camera
    per image only when the feature images differ in size); the model with the most registered
    images is taken, as the mapper's own Ceres bundle adjustment left it (a further RADIAL
    adjustment here helped some scenes and hurt others; the final adjustment of a kept start
    decides the lens by agreement, sfm/candidates.py). The cameras' layout picks the world
    frame (normalise). A view COLMAP could not register starts from its nearest registered
    view by index. Raises DataError when COLMAP reconstructs nothing."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    features = feature_database(scene, cfg_tracks, cache_dir, log)
    names = [scene.image_names[i] for i in scene.train_ids]
    n = len(names)
    key = {
        "version": COLMAP_INIT_VERSION,
        "database": features.db_path.name,
        "forward_facing": scene.forward_facing,
        "near_far": [scene.near, scene.far],
        "mapper": mapper,
    }
    path = cache_dir / f"colmap-{cache_key(key)}.npz"
    if path.is_file():
        with np.load(path) as z:
            c2w, focal, radial = z["c2w"], z["focal"], z["radial"]
            registered, forward = z["registered"].tolist(), bool(z["forward_facing"])
        log(f"colmap {mapper} mapping: reusing {path}")
    else:
        model = _run_mapper(features, n, scene.forward_facing, mapper)
        if model is None or model.num_reg_images() < 2 or model.num_points3D() == 0:
            raise DataError(
                f"COLMAP could not reconstruct scene {scene.name!r} from its {n} training views "
                "(no image pair to start from); use cameras.init identity or noisy_gt."
            )
        c2w, focal, registered, depths, points, radial = _from_model(model, features, scene)
        c2w, forward = normalise(c2w, depths, points, registered, scene)
        nearest = _nearest_registered(registered)
        c2w, focal, radial = c2w[nearest], focal[nearest], radial[nearest]
        write_atomic(
            path,
            lambda f: np.savez(
                f,
                c2w=c2w,
                focal=focal,
                registered=np.array(registered),
                radial=radial,
                forward_facing=forward,
            ),
        )
        log(
            f"colmap {mapper} mapping: registered {sum(registered)}/{n} training views in "
            f"{time.perf_counter() - t0:.1f} s (focal {np.median(focal[:, 0]):.1f} px)"
        )
    return SfmStart(
        torch.from_numpy(np.asarray(c2w, dtype=np.float32)),
        torch.from_numpy(np.asarray(focal, dtype=np.float32)),
        [bool(r) for r in registered],
        torch.from_numpy(np.asarray(radial, dtype=np.float64)),
        forward,
    )


class Adjusted(NamedTuple):
    """adjust_on_tracks' result: numpy c2w (n, 4, 4), focal (n, 2), radial (n, 2), principal
    (n, 2), and cost, Ceres' final objective (half the sum of the robust loss of every
    observation's re-projection error in px; comparable between adjustments of the same
    tracks from different starts)."""

    c2w: np.ndarray
    focal: np.ndarray
    radial: np.ndarray
    principal: np.ndarray
    cost: float


def adjust_on_tracks(
    c2w,
    focal,
    principal,
    registered,
    tracks,
    H: int,
    W: int,
    points=None,
    refine_principal: bool = False,
    robust: bool = False,
    model: str = "SIMPLE_RADIAL",
    max_iterations: int = 300,
    refine_focal: bool = True,
    refine_lens: bool = True,
    radial_start=None,
):
    """The final adjustment of a start: its cameras, one shared camera (`model` SIMPLE_RADIAL:
    focal and k1, the model COLMAP's mappers end with; RADIAL: k1 and k2; with refine_principal
    the principal point too) and the tracks' points triangulated from it go through pycolmap's
    Ceres bundle adjuster. robust: a Cauchy loss of 1 px on the re-projection errors (the
    verified tracks still hold a few wrong matches, which a squared loss lets pull the cameras).

    c2w (n, 4, 4), focal (n, 2) px, principal (n, 2) px, registered (n,) bool (numpy); tracks:
    dataio Tracks (pixels of the training images); points: (n_tracks, 3) start points and
    (n_tracks,) bool usable (scoring.triangulated_tracks); radial_start: the lens (k1[, k2])
    Ceres starts from (None: 0). Returns Adjusted (views not registered keep their cameras)."""
    import pycolmap

    xyz, ok = points
    f = float(np.median(focal[registered].mean(-1)))
    cx, cy = np.median(principal[registered], axis=0)
    rec = pycolmap.Reconstruction()
    extra = {"SIMPLE_RADIAL": [0.0], "RADIAL": [0.0, 0.0]}[model]
    if radial_start is not None:
        extra = [float(k) for k in radial_start[: len(extra)]]
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(model=model, width=W, height=H, params=[f, cx, cy, *extra], camera_id=1)
    )
    obs_image = tracks.obs_image.cpu().numpy()
    obs_uv = tracks.obs_uv.double().cpu().numpy()
    obs_track = tracks.obs_track.cpu().numpy()
    use = registered[obs_image] & ok.cpu().numpy()[obs_track]
    index_in_image = {}
    for k in np.flatnonzero(registered):
        mine = np.flatnonzero(use & (obs_image == k))
        index_in_image.update({int(m): i for i, m in enumerate(mine)})
        image = pycolmap.Image(
            name=str(k), keypoints=obs_uv[mine], camera_id=1, image_id=int(k) + 1
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rigid_inverse(c2w[k])[:3]))
    for t in np.unique(obs_track[use]):
        members = np.flatnonzero(use & (obs_track == t))
        if len(members) < 2:
            continue
        track = pycolmap.Track(
            [pycolmap.TrackElement(int(obs_image[m]) + 1, index_in_image[int(m)]) for m in members]
        )
        rec.add_point3D(xyz[t].cpu().numpy().astype(np.float64), track)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = refine_principal
    options.refine_focal_length = refine_focal
    options.refine_extra_params = refine_lens
    options.print_summary = False
    options.ceres.solver_options.max_num_iterations = max_iterations
    if robust:
        options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        options.ceres.loss_function_scale = 1.0
    with quiet_colmap():
        pycolmap.bundle_adjustment(rec, options)
    c2w, focal, principal = c2w.copy(), focal.copy(), principal.copy()
    camera = rec.camera(1)
    for k in np.flatnonzero(registered):
        w2c = np.eye(4)
        w2c[:3] = rec.image(int(k) + 1).cam_from_world().matrix()
        c2w[k] = rigid_inverse(w2c)
        focal[k] = camera.params[0]
    principal[:] = camera.params[1:3]
    radial = np.zeros((len(c2w), 2))
    radial[:, : len(camera.params) - 3] = camera.params[3:]
    return Adjusted(c2w, focal, radial, principal, final_cost(rec, robust))


def final_cost(rec, robust: bool) -> float:
    """Ceres' objective at a pycolmap reconstruction's state: 0.5 sum rho(r^2) over every
    observation of a 3D point, rho the Cauchy loss of scale 1 px (robust) or the identity.
    Observations that project to no pixel (behind their camera) are left out."""
    camera, total = rec.camera(1), 0.0
    for image in rec.images.values():
        seen = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
        if not seen:
            continue
        xy = np.array([a for a, _ in seen])
        world = np.array([rec.points3D[b].xyz for _, b in seen])
        pose = image.cam_from_world()
        cam = world @ pose.rotation.matrix().T + pose.translation
        r2 = ((camera.img_from_cam(cam) - xy) ** 2).sum(1)
        total += 0.5 * float(np.nansum(np.log1p(r2) if robust else r2))
    return total
