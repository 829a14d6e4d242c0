"""Starting cameras: the one place that writes them (cameras.init and cameras.focal_init).

A new experiment's cameras are built at identity with NeRF--'s default focal
(engine.experiment.build_model); init_cameras then applies the start the config asks for:
ground truth, ground truth plus se(3) noise, COLMAP's incremental reconstruction, and, when
tracks.ba_iters > 0, the track bundle adjustment on top of any of them. check_camera_init
validates the choice before an experiment directory is created.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from dataio.scene import SceneData
from geometry.poses import rigid_inverse, se3_exp
from models.cameras import Cameras
from sfm.distortion import MIN_CORNER_SHIFT_PX, corner_shift_px
from sfm.distortion import save as save_distortion
from utils.errors import ConfigError


def check_camera_init(cfg, scene: SceneData) -> None:
    """Raise ConfigError when cameras.init / focal_init cannot work for this scene."""
    mode, focal = cfg.cameras.init, cfg.cameras.focal_init
    if mode in ("gt", "noisy_gt") and scene.c2w_gt is None:
        raise ConfigError(
            f"cameras.init: {mode} needs ground-truth poses, which {scene.name} does not have; "
            "use cameras.init: identity."
        )
    if focal == "gt" and scene.K_gt is None:
        raise ConfigError(
            f"cameras.focal_init: gt needs known intrinsics, which {scene.name} does not "
            "have; use cameras.focal_init: default."
        )


def noisy_poses(c2w_gt: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """BARF/SPARF protocol: w2c_start = w2c_gt @ exp(xi), xi ~ N(0, sigma^2 I6) from `seed`.
    c2w_gt (N, 4, 4) -> c2w_start (N, 4, 4) float32."""
    gen = torch.Generator().manual_seed(int(seed))
    xi = torch.randn(len(c2w_gt), 6, generator=gen, dtype=torch.float64) * sigma
    w2c_start = rigid_inverse(c2w_gt.double()) @ se3_exp(xi)
    return rigid_inverse(w2c_start).float()


def starting_poses(cfg, scene: SceneData) -> torch.Tensor | None:
    """(n_train, 4, 4) c2w for the gt / noisy_gt starts; None for identity and colmap."""
    mode = cfg.cameras.init
    if mode not in ("gt", "noisy_gt"):
        return None
    c2w_gt = scene.c2w_gt[scene.train_ids].float()
    if mode == "gt":
        return c2w_gt.clone()
    seed = cfg.cameras.noise_seed if cfg.cameras.noise_seed is not None else cfg.seed
    return noisy_poses(c2w_gt, cfg.cameras.noise_sigma, seed)


def remove_input_distortion(scene: SceneData, out_dir: Path, log=print) -> tuple | None:
    """gt / noisy_gt starts: the input's own distortion (k1, k2, p1, p2 of a transforms.json or
    a COLMAP model; the median over the training views) is written to <out_dir>/distortion.json,
    so the photos are undistorted at the input's focal and principal point as a kept candidate's
    would be (sfm/start.py), wherever the scene is loaded. Returns (k1, k2, p1, p2), or None
    when the input has none or it moves the image corners by less than MIN_CORNER_SHIFT_PX.
    Higher radial terms (k3, k4) are not modelled: the log names them when the input has
    them."""
    given = scene.extras.get("distortion") or {}
    keys = ("k1", "k2", "p1", "p2")
    if scene.K_gt is None or not any(key in given for key in keys):
        return None
    ids = torch.as_tensor(scene.train_ids)
    k = tuple(float(given[key][ids].median()) if key in given else 0.0 for key in keys)
    K = scene.K_gt[scene.train_ids[0]].double()
    focal, principal = torch.stack([K[0, 0], K[1, 1]]), K[:2, 2]
    shift = corner_shift_px(k, focal, principal, scene.H, scene.W)
    if shift < MIN_CORNER_SHIFT_PX:
        return None
    save_distortion(out_dir, k, focal, principal)
    ignored = [key for key, v in given.items() if key not in keys and bool(v.abs().any())]
    log(
        f"the input's lens distortion (k1 {k[0]:.4f}, k2 {k[1]:.4f}, p1 {k[2]:.5f}, p2 "
        f"{k[3]:.5f}; {shift:.1f} px at the corners) is removed from the photos"
        + (f"; its {', '.join(ignored)} are not modelled" if ignored else "")
    )
    return k


def init_cameras(
    cfg,
    scene: SceneData,
    cameras: Cameras,
    tracks=None,
    cache_dir: Path | None = None,
    log: Callable[[str], object] = print,
    on_round: Callable[[int], object] | None = None,
    out_dir: Path | None = None,
) -> dict | None:
    """Write the starting cameras of a new experiment into `cameras` (in place).

    tracks: dataio.tracks Tracks (needed when tracks.ba_iters > 0); cache_dir: where COLMAP's
    database and result are cached (cameras.init colmap); on_round(iterations, cameras=None):
    called during the bundle adjustment, with the cameras it adjusts when they are a copy
    (benchmarks record errors over time); out_dir: where cameras.init
    auto writes its candidates (<exp>/sfm). Returns the summary of auto's choice or of the
    bundle adjustment, or None when neither ran."""
    check_camera_init(cfg, scene)
    if cfg.cameras.focal_init == "gt":
        K = scene.K_gt[scene.train_ids].float()
        cameras.set_initial(focal=torch.stack([K[:, 0, 0], K[:, 1, 1]], -1), principal=K[:, :2, 2])
    if cfg.cameras.init == "auto":
        from sfm.candidates import choose_start

        return choose_start(cfg, scene, cameras, tracks, cache_dir, out_dir, log, on_round)
    poses = starting_poses(cfg, scene)
    if poses is not None:
        cameras.set_initial(c2w_init=poses)
        if out_dir is not None:
            remove_input_distortion(scene, out_dir, log)
    if cfg.cameras.init == "colmap":
        from sfm.colmap import colmap_init

        start = colmap_init(scene, cfg.tracks, cache_dir, log=log)
        c2w, focal, registered = start.c2w, start.focal, start.registered
        keep_focal = cfg.cameras.focal_init == "gt"
        cameras.set_initial(c2w_init=c2w, focal=None if keep_focal else focal)
        log(
            f"cameras.init colmap: {sum(registered)}/{len(registered)} training images registered"
            + ("" if keep_focal else f", focal {float(focal[:, 0].mean()):.1f} px")
        )
        missing = [scene.image_names[i] for i, ok in zip(scene.train_ids, registered) if not ok]
        if missing:
            log(
                f"WARN cameras.init colmap: {len(missing)} view(s) not registered start from "
                f"their nearest registered view: {', '.join(missing)} (cameras.init auto "
                "registers them against the model)"
            )
    if cfg.tracks.ba_iters <= 0:
        return None
    if tracks is None:
        raise ValueError("tracks.ba_iters > 0 needs the scene's tracks (build_tracks)")
    if cfg.cameras.init == "gt":
        log(
            f"WARN tracks.ba_iters {cfg.tracks.ba_iters}: the track bundle adjustment (pinhole) "
            "starts from the ground-truth cameras and will move them; --tracks:ba_iters 0 keeps "
            "them as given"
        )
    if cfg.tracks.ba_solver == "ceres":
        return track_adjustment(cameras, tracks, scene, log, on_round)
    from sfm.track_ba import bundle_adjust

    return bundle_adjust(
        cameras,
        tracks,
        depth_init=math.sqrt(scene.near * scene.far),
        max_iters=cfg.tracks.ba_iters,
        huber_delta=cfg.tracks.huber_delta,
        log=log,
        callback=on_round,
        retry_focal_fixed=cfg.tracks.ba_retry_focal_fixed,
        focal_sweep_if_poor=cfg.tracks.ba_focal_sweep,
    )


def track_adjustment(cameras: Cameras, tracks, scene: SceneData, log=print, on_round=None):
    """Ceres rounds on the tracks from the cameras as they are (sfm/track_ceres.py, pinhole;
    the focal refined when the cameras learn it), written back as their new start. Used by
    tracks.ba_iters before training and by cameras.guard on a poor start. Returns the
    adjustment's summary."""
    from sfm.track_ceres import adjust_cameras

    learn_focal = any(p.requires_grad for p in cameras.focal_parameters())
    c2w, focal, _, _, summary = adjust_cameras(
        cameras, tracks, scene, lens=False, refine_focal=learn_focal, log=log, on_round=on_round
    )
    with torch.no_grad():
        cameras.set_initial(
            c2w_init=torch.from_numpy(c2w).float(),
            focal=torch.from_numpy(focal).float() if learn_focal else None,
        )
    return summary
