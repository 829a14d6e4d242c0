"""The candidate starts of cameras.init auto (sfm/candidates.py chooses among them).

Each runner takes (cfg, scene, cameras, tracks, cache_dir, log, on_round) and returns the
training views' c2w (n, 4, 4) OpenCV, focal (n, 2) px, registered (n,) bool, radial (n, 2)
k1 k2 and whether the cameras are forward-facing (numpy), or raises DataError when it finds
no model. CANDIDATES is the order they run in, our own first; TRACK_CANDIDATES run only for
forward-facing captures (they start every view at identity), OBJECT_CANDIDATES only around an
object.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = ("tracks_ceres", "tracks_global", "colmap_global", "colmap_incremental")
TRACK_CANDIDATES = ("tracks_ceres",)  # forward-facing captures only (they start at identity)
OBJECT_CANDIDATES = ("tracks_global",)  # captures around an object only


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
    accurate as COLMAP global with the final adjustment on the LLFF scenes, the one start that
    works where both COLMAP mappers return a wrong model (leaves), and seconds of Ceres
    (docs/results.md, written by bench/cameras.py)."""
    from sfm.track_ceres import adjust_cameras

    c2w, focal, radial, forward, _ = adjust_cameras(
        cameras, tracks, scene, lens=True, refine_focal=True, log=log, on_round=on_round
    )
    return c2w, focal, np.ones(cameras.n, dtype=bool), radial, forward


def _tracks_global(cfg, scene, cameras, tracks, cache_dir, log, on_round):
    """Rotation averaging, global positioning and Ceres on the tracks, for captures around an
    object (sfm/track_global.py): an alternative to COLMAP's mappers that shares their
    features but not their pair geometry, positioning or bundle adjustment."""
    from sfm.track_global import global_start

    return global_start(cameras, tracks, scene, log=log)


RUNNERS = {
    "tracks_ceres": _tracks_ceres,
    "tracks_global": _tracks_global,
    "colmap_global": _colmap("global"),
    "colmap_incremental": _colmap("incremental"),
}
