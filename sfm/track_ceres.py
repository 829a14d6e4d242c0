"""Bundle adjustment of the feature tracks with Ceres (pycolmap's bundle adjuster), from any start.

The start's cameras and the tracks' points go through sfm.colmap.adjust_on_tracks (Cauchy loss
of 1 px, one shared camera) in rounds: after each round the points are triangulated again with
the adjusted cameras and the next round starts from them, until the median re-projection error
stops falling (points a round left at a wrong depth, down-weighted by the robust loss, come back
into play). Where the start cannot triangulate anything (every view at identity, NeRF--'s start)
each track's point starts on its first observation's ray at the scene's middle depth.

Why rounds and a robust loss: from identity a single round leaves the cameras well short of
what a second one reaches, and a squared loss lets the wrong tracks pull them off; a third round
rarely changes anything, hence MIN_ROUNDS and MAX_ROUNDS. This is cameras.init auto's
tracks_ceres candidate (sfm/runners.py); its accuracy per scene is in docs/results.md
(bench/cameras.py).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from geometry.rays import pixels_to_rays
from sfm.scoring import (
    agreed_tracks,
    intrinsics,
    track_fit,
    triangulated_tracks,
    undistorted_tracks,
)

MAX_ROUNDS = 4
MIN_ROUNDS = 2
ROUND_ITERATIONS = 50  # Levenberg-Marquardt iterations a round (more change nothing)
MIN_GAIN = 0.01  # a round that lowers the median error by less than this fraction is the last


def first_ray_points(c2w, focal, principal, tracks, depth: float) -> torch.Tensor:
    """(n_tracks, 3) float64: each track's first observation's ray at camera depth `depth`."""
    c2w, focal, principal = (
        torch.as_tensor(x, dtype=torch.float64) for x in (c2w, focal, principal)
    )
    lengths = torch.bincount(tracks.obs_track, minlength=int(tracks.n_tracks))
    first = torch.cumsum(lengths, 0) - lengths
    img = tracks.obs_image[first]
    K = intrinsics(focal, principal)[img]
    origins, dirs = pixels_to_rays(tracks.obs_uv[first].double(), K, c2w[img])
    return origins + depth * dirs


def collapsed(c2w) -> bool:
    """Whether every camera centre is the same point (nothing can be triangulated)."""
    centres = np.asarray(c2w)[:, :3, 3]
    return bool(np.abs(centres - centres[0]).max() < 1e-9)


def adjust(
    c2w,
    focal,
    principal,
    tracks,
    H: int,
    W: int,
    depth: float,
    lens: bool = True,
    refine_focal: bool = True,
    log=print,
    on_round=None,
    registered=None,
    max_rounds: int = MAX_ROUNDS,
):
    """Ceres rounds (module docstring) on the registered views of the start (numpy c2w (n, 4, 4)
    OpenCV, focal (n, 2), principal (n, 2) px; registered (n,) bool, default every view; the
    others keep their cameras), at most max_rounds of them. lens: a SIMPLE_RADIAL camera (k1
    refined) rather than a pinhole; refine_focal False holds the focal. on_round(rounds_done,
    c2w, focal) after each round. Returns c2w, focal, radial (n, 2), the tracks' points
    triangulated with the result ((n_tracks, 3), usable (n_tracks,)) and a summary (rounds,
    seconds, median_px_end, inlier_fraction_2px), in the start's frame up to Ceres' gauge
    (callers pick the frame)."""
    from sfm.colmap import adjust_on_tracks

    t0 = time.perf_counter()
    n = len(c2w)
    registered = np.ones(n, dtype=bool) if registered is None else np.asarray(registered, bool)
    if collapsed(c2w):
        xyz = first_ray_points(c2w, focal, principal, tracks, depth)
        points = (xyz, torch.ones(int(tracks.n_tracks), dtype=torch.bool))
    else:
        points = triangulated_tracks(c2w, focal, principal, registered, tracks)
    previous, rounds, radial = math.inf, 0, np.zeros((n, 2))
    while rounds < max_rounds:
        c2w, focal, radial, _, _ = adjust_on_tracks(
            c2w, focal, principal, registered, tracks, H, W, points, robust=True,
            max_iterations=ROUND_ITERATIONS, refine_focal=refine_focal, refine_lens=lens,
        )  # fmt: skip
        rounds += 1
        seen = undistorted_tracks(tracks, radial, focal, principal)  # the round's lens removed
        points = triangulated_tracks(c2w, focal, principal, registered, seen)
        fit = track_fit(c2w, focal, principal, registered, seen, W)
        if on_round is not None:
            on_round(rounds, c2w, focal)
        if rounds >= MIN_ROUNDS and fit["median_px"] > (1 - MIN_GAIN) * previous:
            break
        previous = fit["median_px"]
    summary = {
        "solver": "ceres",
        "rounds": rounds,
        "seconds": time.perf_counter() - t0,
        "median_px_end": fit["median_px"],
        "inlier_fraction_2px": fit["within_2px"],
    }
    camera = ("SIMPLE_RADIAL" if lens else "pinhole") + ("" if refine_focal else ", focal held")
    log(
        f"track bundle adjustment (Ceres, {camera}): {rounds} rounds in "
        f"{summary['seconds']:.1f} s, "
        f"median re-projection error {fit['median_px']:.2f} px "
        f"({100 * fit['within_2px']:.1f}% within 2 px), "
        f"focal {np.median(focal[registered, 0]):.1f} px"
        + (f", k1 {radial[0, 0]:.4f}" if lens else "")
    )
    return c2w, focal, radial, points, summary


def adjust_cameras(
    cameras, tracks, scene, lens: bool, refine_focal: bool, log=print, on_round=None
):
    """adjust() from the current state of `cameras` (models.cameras.Cameras, left unchanged), the
    result put in the scene's frame: from a collapsed start (identity) LLFF's frame as COLMAP's
    models get it (sfm.colmap.normalise, which also reads the layout), otherwise the similarity
    that best maps the adjusted cameras onto the start (rotation-aware alignment: the start's
    frame and scale, which the scene's near / far assume). on_round(rounds, cameras) sees a copy
    of the cameras after each round. Returns c2w, focal, radial (numpy), forward_facing and the
    summary."""
    import copy

    from geometry.alignment import align, apply_similarity
    from sfm.colmap import normalise

    with torch.no_grad():
        start = cameras.c2w().double().cpu().numpy()
        focal = cameras.focal_px().double().cpu().numpy()
    principal = cameras.principal.double().cpu().numpy()
    depth = math.sqrt(scene.near * scene.far)

    def report(rounds, c2w, focal):
        seen = copy.deepcopy(cameras)
        seen.set_initial(
            c2w_init=torch.from_numpy(c2w).float(), focal=torch.from_numpy(focal).float()
        )
        on_round(rounds, seen)

    c2w, focal, radial, (xyz, ok), summary = adjust(
        start, focal, principal, tracks, cameras.H, cameras.W, depth, lens, refine_focal, log,
        None if on_round is None else report,
    )  # fmt: skip
    if collapsed(start):
        c2w, forward = normalise(
            c2w, view_depths(c2w, focal, radial, principal, xyz, ok, tracks), xyz[ok].numpy(),
            np.ones(len(c2w), bool), scene,
        )  # fmt: skip
    else:
        adjusted = torch.from_numpy(c2w)
        s, R, t = align(adjusted, torch.from_numpy(start), "rotation-aware")
        c2w, forward = apply_similarity(adjusted, s, R, t).numpy(), scene.forward_facing
    return c2w, focal, radial, forward, summary


def view_depths(c2w, focal, radial, principal, xyz, ok, tracks) -> list[np.ndarray]:
    """Per view, the camera-space depths of the points it sees whose depth three views agree on
    (sfm.scoring.agreed_tracks), which set the scene's scale through LLFF's near bound (the
    nearest view's 0.1 percentile; normalise_forward_facing). Every triangulated point counts
    when no view sees an agreed one (tracks of two views only).

    One mismatched pair of keypoints, which two views triangulate anywhere along their epipolar
    line, otherwise sets it: a single such point far too near puts the whole scene several
    times too far for NDC, its content crowded into the last few samples of every ray."""
    seen = undistorted_tracks(tracks, radial, focal, principal)
    agreed = agreed_tracks(c2w, focal, principal, xyz, ok, seen)
    for use in (agreed, torch.as_tensor(ok, dtype=torch.bool)):
        depths = []
        for k in range(len(c2w)):
            mine = tracks.obs_track[tracks.obs_image == k]
            depths.append((xyz[mine[use[mine]]].numpy() - c2w[k, :3, 3]) @ c2w[k, :3, 2])
        if any((d > 0).any() for d in depths):
            break
    return depths
