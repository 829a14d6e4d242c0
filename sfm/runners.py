"""The candidate starts of cameras.init auto (sfm/candidates.py chooses among them).

Each runner takes (cfg, scene, cameras, tracks, cache_dir, log, on_round) and returns the
training views' c2w (n, 4, 4) OpenCV, focal (n, 2) px, registered (n,) bool, radial (n, 2)
k1 k2 and whether the cameras are forward-facing (numpy), or raises DataError when it finds
no model. CANDIDATES is the order they run in, cheapest first; TRACK_CANDIDATES run only for
forward-facing captures (they start every view at identity).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from sfm.scoring import triangulated_tracks

CANDIDATES = ("tracks_ceres", "colmap_global", "colmap_incremental", "tracks_ba")
TRACK_CANDIDATES = ("tracks_ceres", "tracks_ba")  # forward-facing captures only


def _colmap(mapper: str):
    def run(cfg, scene, cameras, tracks, cache_dir, log, on_round):
        from sfm.colmap import colmap_init

        start = colmap_init(scene, cfg.tracks, cache_dir, log, mapper=mapper)
        return (
            start.c2w.double().numpy(),
            start.focal.double().numpy(),
            np.array(start.registered),
            start.radial.numpy(),
            start.forward_facing,
        )

    return run


def _tracks_ceres(cfg, scene, cameras, tracks, cache_dir, log, on_round):
    """Ceres bundle adjustment of every verified track from the identity start, for
    forward-facing captures (sfm/track_ceres.py: SIMPLE_RADIAL, Cauchy loss of 1 px, rounds
    until the median error stops falling), in LLFF's frame as COLMAP's models get it. As
    accurate as COLMAP global with the final adjustment on fern, flower and horns, and the one
    start that works on leaves, in 3-11 s (measured: sfm/track_ceres.py, the README's table)."""
    from sfm.track_ceres import adjust_cameras

    c2w, focal, radial, forward, _ = adjust_cameras(
        cameras, tracks, scene, lens=True, refine_focal=True, log=log, on_round=on_round
    )
    return c2w, focal, np.ones(cameras.n, dtype=bool), radial, forward


def _tracks_ba(cfg, scene, cameras, tracks, cache_dir, log, on_round):
    """Our track bundle adjustment from identity (L-BFGS, pinhole), then the final adjustment
    COLMAP's models end with (Ceres, SIMPLE_RADIAL; sfm.colmap.adjust_on_tracks)."""
    from sfm.colmap import adjust_on_tracks
    from sfm.track_ba import bundle_adjust

    cams = copy.deepcopy(cameras)  # the kept candidate is written into `cameras` at the end
    bundle_adjust(
        cams,
        tracks,
        depth_init=math.sqrt(scene.near * scene.far),
        max_iters=cfg.tracks.ba_iters if cfg.tracks.ba_iters > 0 else 3000,
        huber_delta=cfg.tracks.huber_delta,
        log=log,
        callback=None if on_round is None else (lambda done: on_round(done, cams)),
        retry_focal_fixed=cfg.tracks.ba_retry_focal_fixed,
        focal_sweep_if_poor=cfg.tracks.ba_focal_sweep,
    )
    with torch.no_grad():
        c2w, focal = cams.c2w().double().numpy(), cams.focal_px().double().numpy()
    principal = cams.principal.double().numpy()
    registered = np.ones(cams.n, dtype=bool)
    points = triangulated_tracks(c2w, focal, principal, registered, tracks)
    c2w, focal, radial, _ = adjust_on_tracks(
        c2w, focal, principal, registered, tracks, cams.H, cams.W, points
    )
    log(
        f"tracks_ba final adjustment (Ceres, SIMPLE_RADIAL): focal {focal[0, 0]:.1f} px, "
        f"k1 {radial[0, 0]:.4f}"
    )
    return c2w, focal, registered, radial, True


RUNNERS = {
    "tracks_ceres": _tracks_ceres,
    "colmap_global": _colmap("global"),
    "colmap_incremental": _colmap("incremental"),
    "tracks_ba": _tracks_ba,
}
