"""A global start from the tracks for captures around an object: cameras.init auto's own
candidate beside COLMAP's mappers (tracks_global).

tracks_ceres starts every view at identity, which only works when the views look the same way.
Around an object the views' orientations must come from their two-view geometry first, as in a
global SfM pipeline, but from our verified tracks rather than COLMAP's database, so that auto has
an alternative that does not share a mapper's mistakes:
1. pairs: each view with the views sharing the most tracks with it (N_PAIR_NEIGHBOURS, at least
   view_check.PAIR_MIN_TRACKS tracks); the relative pose of each pair from an essential matrix
   (pycolmap's LO-RANSAC, view_check.two_view_pose);
2. rotation averaging of those relative rotations (pycolmap.run_rotation_averaging, GLOMAP's
   robust L1 + IRLS); a view without a usable pair stays unregistered;
3. global positioning of the cameras and the tracks' points from the rotations and the tracks'
   rays (pycolmap.run_global_positioning: no relative translation needed, so a pair's poor
   baseline does not matter);
4. Ceres rounds on every track from there (sfm/track_ceres.py, SIMPLE_RADIAL, focal refined);
   views rotation averaging left out are added by PnP against the tracks the others triangulate.
An essential matrix needs the focal, which the start only guesses (cameras.focal_init default:
the image width); a wrong one bends the pair rotations by degrees, which step 4 mostly takes
out but not everywhere. So steps 1-3 run a second time with the focal one Ceres round of the
first pass ends with, when it moved by more than REFOCUS_RATIO.
The result is put in our frame the way COLMAP's models are (sfm.colmap.normalise).
"""

from __future__ import annotations

import math
import time

import numpy as np

from dataio.tracks.features import quiet_colmap
from sfm.view_check import shared_tracks, two_view_pose, view_keypoints

N_PAIR_NEIGHBOURS = 8  # pairs each view brings: rotation averaging wants loops, not only a chain
# Looser than the view check's evidence (30 tracks, half of them inliers): rotation averaging
# rejects the pairs that disagree with the rest, and a view's weak pairs may be all it has.
PAIR_MIN_TRACKS = 15
PAIR_MIN_INLIER_RATIO = 0.25
REFOCUS_RATIO = 0.05  # a first pass that moves the focal by more than this runs a second one
RANDOM_SEED = 0


def view_pairs(tracks, n: int) -> list[tuple[int, int]]:
    """(a, b), a < b: every view with its N_PAIR_NEIGHBOURS strongest partners."""
    shared = shared_tracks(tracks, n)
    pairs = set()
    for k in range(n):
        for j in np.argsort(-shared[k], kind="stable")[:N_PAIR_NEIGHBOURS]:
            if j != k and shared[k, j] >= PAIR_MIN_TRACKS:
                pairs.add((min(k, int(j)), max(k, int(j))))
    return sorted(pairs)


def _reconstruction(tracks, n: int, f: float, principal, H: int, W: int):
    """A pycolmap Reconstruction of the views (one SIMPLE_PINHOLE camera, image_id = view + 1)
    with the tracks as points (at the origin: global positioning places them)."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(
            model="SIMPLE_PINHOLE",
            width=W,
            height=H,
            params=[f, float(principal[0, 0]), float(principal[0, 1])],
            camera_id=1,
        )
    )
    image = tracks.obs_image.cpu().numpy()
    track = tracks.obs_track.cpu().numpy()
    uv = tracks.obs_uv.cpu().double().numpy()
    index_in_view = np.zeros(len(image), dtype=np.int64)
    for v in range(n):
        at = np.flatnonzero(image == v)
        index_in_view[at] = np.arange(len(at))
        points = pycolmap.Point2DList([pycolmap.Point2D(uv[i]) for i in at])
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=f"view{v}", points2D=points, camera_id=1, image_id=v + 1)
        )
    order = np.argsort(track, kind="stable")
    ends = np.cumsum(np.bincount(track, minlength=tracks.n_tracks))
    for t in range(tracks.n_tracks):
        elements = pycolmap.Track()
        for i in order[(ends[t - 1] if t else 0) : ends[t]]:
            elements.add_element(int(image[i]) + 1, int(index_in_view[i]))
        rec.add_point3D(np.zeros(3), elements)
    return rec


def global_poses(tracks, keypoints, n: int, f: float, principal, H: int, W: int, pairs):
    """Steps 1-3 with focal f (keypoints: view_check.view_keypoints of the tracks): c2w (n, 4,
    4) OpenCV (identity where unregistered), registered (n,) bool and the number of pairs with
    a usable two-view pose."""
    import pycolmap

    focal = np.full((n, 2), f)
    graph = pycolmap.PoseGraph()
    used = 0
    for a, b in pairs:
        pose = two_view_pose(
            a, b, focal, principal, keypoints, H, W, PAIR_MIN_INLIER_RATIO, PAIR_MIN_TRACKS
        )
        if pose is None:
            continue
        edge = pycolmap.PoseGraphEdge(pose[0])
        edge.num_matches = pose[1]
        graph.add_edge(a + 1, b + 1, edge)
        used += 1
    c2w = np.tile(np.eye(4), (n, 1, 1))
    registered = np.zeros(n, dtype=bool)
    if used == 0:
        return c2w, registered, used
    rec = _reconstruction(tracks, n, f, principal, H, W)
    rotations = pycolmap.RotationEstimatorOptions()
    rotations.random_seed = RANDOM_SEED
    positions = pycolmap.GlobalPositionerOptions()
    positions.random_seed = RANDOM_SEED
    with quiet_colmap():
        placed = pycolmap.run_rotation_averaging(rotations, graph, rec, [])
        placed = placed and pycolmap.run_global_positioning(positions, graph, rec)
    if not placed:
        return c2w, registered, used
    for v in range(n):
        image = rec.image(v + 1)
        if image.has_pose:
            w2c = np.eye(4)
            w2c[:3, :4] = image.cam_from_world().matrix()
            c2w[v] = np.linalg.inv(w2c)
            registered[v] = True
    return c2w, registered, used


def _add_by_pnp(c2w, focal, registered, principal, tracks, H: int, W: int) -> int:
    """Register the views rotation averaging left out by PnP against the tracks the others
    triangulate, again while that adds views (a new view brings its own tracks); in place.
    Returns how many were added."""
    from sfm.candidate import Candidate, register_missing

    cand = Candidate("tracks_global")
    cand.c2w, cand.focal, cand.registered = c2w, focal, registered
    before = int(registered.sum())
    while True:
        missing = int((~cand.registered).sum())
        if missing == 0 or len(register_missing(cand, principal, tracks, H, W)) == missing:
            return int(registered.sum()) - before


def global_start(cameras, tracks, scene, log=print):
    """tracks_global (module docstring) from the cameras' focal guess. Returns c2w (n, 4, 4)
    OpenCV in our frame (placeholders where unregistered: the nearest registered view by
    index), focal (n, 2), registered (n,) bool, radial (n, 2) and forward_facing (numpy)."""
    import torch

    from sfm.colmap import _nearest_registered, normalise
    from sfm.track_ceres import adjust, view_depths
    from utils.errors import DataError

    t0 = time.perf_counter()
    n, H, W = cameras.n, cameras.H, cameras.W
    principal = cameras.principal.double().cpu().numpy()
    with torch.no_grad():
        f = float(np.median(cameras.focal_px().double().cpu().numpy()))
    depth = math.sqrt(scene.near * scene.far)
    pairs = view_pairs(tracks, n)
    keypoints = view_keypoints(tracks, n)  # one index for both passes
    for attempt in range(2):
        c2w, registered, used = global_poses(tracks, keypoints, n, f, principal, H, W, pairs)
        if registered.sum() < 2:
            raise DataError(
                f"tracks_global: rotation averaging placed {int(registered.sum())} of {n} views "
                f"({used} of {len(pairs)} view pairs had a usable two-view pose)"
            )
        # one round reads the focal off this pass; the full rounds run once, after the last
        c2w, focal, radial, _, _ = adjust(
            c2w, np.full((n, 2), f), principal, tracks, H, W, depth, lens=True,
            refine_focal=True, log=log, registered=registered, max_rounds=1,
        )  # fmt: skip
        if not registered.all():
            _add_by_pnp(c2w, focal, registered, principal, tracks, H, W)
        refined = float(np.median(focal[registered, 0]))
        log(
            f"tracks_global: pass {attempt + 1} from focal {f:.1f} px: {int(registered.sum())}/"
            f"{n} views from {used}/{len(pairs)} view pairs, focal -> {refined:.1f} px"
        )
        if abs(refined / f - 1) <= REFOCUS_RATIO:
            break
        f = refined
    c2w, focal, radial, (xyz, ok), _ = adjust(
        c2w, focal, principal, tracks, H, W, depth, lens=True, refine_focal=True, log=log,
        registered=registered,
    )  # fmt: skip
    depths = view_depths(c2w, focal, radial, principal, xyz, ok, tracks)
    depths = [d if registered[k] else d[:0] for k, d in enumerate(depths)]
    c2w, forward = normalise(c2w, depths, xyz[ok].numpy(), registered, scene)
    nearest = _nearest_registered(registered.tolist())
    c2w, focal, radial = c2w[nearest], focal[nearest], radial[nearest]
    log(f"tracks_global: {time.perf_counter() - t0:.1f} s")
    return c2w, focal, registered, radial, forward
