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


# The track candidate from identity: Ceres rounds, the points re-triangulated between them.
CERES_ROUNDS = 2
CERES_ITERATIONS = 50


def _tracks_ceres(cfg, scene, cameras, tracks, cache_dir, log, on_round):
    """Ceres bundle adjustment of every verified track from the identity start (pycolmap,
    SIMPLE_RADIAL, Cauchy loss of 1 px), for forward-facing captures: the views at identity with
    the default focal, each track's point on its first observation's ray at the scene's middle
    depth sqrt(near * far). A second round starts from the points triangulated with the first
    round's cameras (points the first round left at a wrong depth, down-weighted by the robust
    loss, come back into play). The cameras go to LLFF's frame as COLMAP's do (sfm.colmap.
    normalise, which also reads the layout from them).
    Measured from identity against poses_bounds.npy (rotation-aware median, focal error; one
    thread, tracks cached): fern 0.028 deg / 2.4% in 7 s, flower 0.027 / 0.29% in 13 s, horns
    0.021 / 0.18%, room 0.122 / 0.12%, leaves 0.133 / 1.4% in 25 s: each as good as COLMAP
    global with the final adjustment (0.027, 0.025, 0.021, 0.118) or our L-BFGS adjustment
    (leaves 0.121 in about 100 s; room needed its focal sweep). One round leaves flower at
    0.095 deg; a third changes nothing; a squared loss instead of Cauchy leaves fern at 0.59."""
    from sfm.colmap import adjust_on_tracks, normalise
    from sfm.track_ba import track_points

    n = cameras.n
    with torch.no_grad():
        inv_depth = torch.full((int(tracks.n_tracks),), 1 / math.sqrt(scene.near * scene.far))
        xyz = track_points(cameras, tracks, inv_depth).double()
        c2w, focal = cameras.c2w().double().numpy(), cameras.focal_px().double().numpy()
    principal = cameras.principal.double().numpy()
    registered = np.ones(n, dtype=bool)
    points = (xyz, torch.ones(int(tracks.n_tracks), dtype=torch.bool))
    for _ in range(CERES_ROUNDS):
        c2w, focal, radial, _ = adjust_on_tracks(
            c2w, focal, principal, registered, tracks, cameras.H, cameras.W, points,
            robust=True, max_iterations=CERES_ITERATIONS,
        )  # fmt: skip
        points = triangulated_tracks(c2w, focal, principal, registered, tracks)
    xyz, ok = points
    depths = []  # camera-space depths of the points each view sees (LLFF's near bound)
    for k in range(n):
        mine = tracks.obs_track[tracks.obs_image == k]
        seen = xyz[mine[ok[mine]]].numpy()
        depths.append((seen - c2w[k, :3, 3]) @ c2w[k, :3, 2])
    c2w, forward = normalise(c2w, depths, xyz[ok].numpy(), registered, scene)
    log(
        f"tracks_ceres ({CERES_ROUNDS} Ceres rounds from identity, SIMPLE_RADIAL): focal "
        f"{focal[0, 0]:.1f} px, k1 {radial[0, 0]:.4f}"
    )
    return c2w, focal, registered, radial, forward


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
