"""The per-view check of a camera start: evidence for each registered view that does not come
from the view's own fit.

A start is scored on the re-projection of its tracks (sfm/scoring.py), but a view can fit its
own observations and still be placed wrongly: the tracks it shares with one other view are
triangulated from its own bad pose, and a mapper that mis-registers a view also triangulates
points that agree with it. Two tests that the view's pose cannot bend:
- leave-one-out re-projection: the tracks it sees are triangulated from the other registered
  views alone and projected into it (a point behind it counts as a miss: cheirality); a view
  whose observations mostly land far from their tracks is misplaced;
- two-view rotations: for its neighbours (the views sharing the most tracks with it), the
  relative rotation estimated from their shared keypoints alone (an essential matrix with the
  start's intrinsics, pycolmap's LO-RANSAC) against the start's relative rotation; a view that
  disagrees with most of its neighbours is misplaced. This one still speaks where the first
  has no evidence (tracks seen by the view and a single other one).
A view fails when either test has evidence against it. sfm/candidates.py re-registers a failed
view by PnP against the views that pass and drops it (named in a warning) when that fails too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from geometry.poses import rigid_inverse
from sfm.scoring import PNP_MIN_POINTS, reprojection_errors, triangulated_tracks

# Leave-one-out: an observation agrees when it lands within LOO_PX of its track triangulated
# from the other views (looser than the score's 2 px: the track loses the view's own ray); a
# view fails when fewer than LOO_MIN_AGREEING of its observations with such a track agree.
LOO_PX = 4.0
LOO_MIN_AGREEING = 0.5
# Two-view rotations: the neighbours compared (the views sharing the most tracks, at least
# PAIR_MIN_TRACKS), and the disagreement (degrees) past which a pair counts against the view.
# Mis-registrations are tens of degrees; two-view estimates of good pairs are well within it.
N_NEIGHBOURS = 6
PAIR_MIN_TRACKS = 30
MAX_ROTATION_DISAGREEMENT_DEG = 10.0
PAIR_MIN_INLIER_RATIO = 0.5  # a two-view estimate with fewer inliers than this is no evidence
# A view with a single neighbour has one two-view estimate, itself a few degrees off on a weak
# pair: it fails the view only when it is off by more than a mis-registration's tens of degrees,
# and a smaller disagreement names the view weakly placed instead of dropping a good view.
SINGLE_PAIR_MAX_DEG = 30.0
# A view that passes is still named as weakly placed (kept, with a warning) when its evidence is
# thin or lukewarm: few observations to test, under WEAK_LOO_AGREEING of them agreeing, or a
# two-view rotation median over WEAK_ROTATION_DEG. Such views carry most of a start's worst
# errors (a few degrees) without being wrong enough to fail.
WEAK_LOO_AGREEING = 0.75
WEAK_ROTATION_DEG = 5.0
WEAK_MIN_OBSERVATIONS = 30


@dataclass
class ViewVerdict:
    """The check of one view: passed, why not (empty when it passed), the leave-one-out
    fraction of its observations that agree and how many had a track to test (0: no evidence),
    and the two-view rotations: disagreement median (deg; nan without neighbours), how many
    neighbours were compared and how many disagreed; weak: why a view that passed is weakly
    placed (empty when it is not)."""

    view: int
    passed: bool
    why: str
    loo_agreeing: float
    loo_observations: int
    rotation_median_deg: float
    n_neighbours: int
    n_disagreeing: int
    weak: str = ""


def _subset(tracks, keep: torch.Tensor) -> SimpleNamespace:
    """The observations `keep` (bool over observations) of `tracks`, their tracks renumbered."""
    trk = tracks.obs_track[keep]
    ids, new = torch.unique(trk, return_inverse=True)
    return SimpleNamespace(
        obs_image=tracks.obs_image[keep],
        obs_uv=tracks.obs_uv[keep],
        obs_track=new,
        n_tracks=len(ids),
    )


def leave_one_out(c2w, focal, principal, registered, tracks, k: int) -> tuple[float, int]:
    """(fraction within LOO_PX, number tested) of view k's observations whose track at least two
    other registered views triangulate (see the module docstring)."""
    registered = np.asarray(registered, dtype=bool)
    others = registered.copy()
    others[k] = False
    reg = torch.as_tensor(others)
    mine = tracks.obs_image == k
    seen_by_k = torch.zeros(tracks.n_tracks, dtype=torch.bool)
    seen_by_k[tracks.obs_track[mine]] = True
    sub = _subset(tracks, seen_by_k[tracks.obs_track] & (reg[tracks.obs_image] | mine))
    in_others = reg[sub.obs_image]
    n_others = torch.bincount(sub.obs_track[in_others], minlength=sub.n_tracks)
    points, ok = triangulated_tracks(c2w, focal, principal, others, sub)
    testable = (n_others >= 2) & torch.isfinite(points).all(-1)
    at_k = (sub.obs_image == k) & testable[sub.obs_track]
    if not bool(at_k.any()):
        return math.nan, 0
    trk = sub.obs_track[at_k]
    err = reprojection_errors(
        c2w, focal, principal, points, sub.obs_image[at_k], trk, sub.obs_uv[at_k]
    )
    err = torch.where(ok[trk], err, torch.full_like(err, math.inf))  # behind another view
    return float((err < LOO_PX).double().mean()), int(at_k.sum())


def _pinhole(focal, principal, H: int, W: int):
    import pycolmap

    return pycolmap.Camera(
        model="PINHOLE", width=W, height=H, params=[*map(float, focal), *map(float, principal)]
    )


def view_keypoints(tracks, n: int) -> list[dict[int, np.ndarray]]:
    """For each of the n views, {track id: its keypoint (u, v)}, built in one pass."""
    image = tracks.obs_image.cpu().numpy()
    track = tracks.obs_track.cpu().numpy()
    uv = tracks.obs_uv.cpu().double().numpy()
    out: list[dict[int, np.ndarray]] = [{} for _ in range(n)]
    for v, t, x in zip(image.tolist(), track.tolist(), uv):
        out[v][t] = x
    return out


def two_view_pose(
    a: int,
    b: int,
    focal,
    principal,
    keypoints: list[dict[int, np.ndarray]],
    H: int,
    W: int,
    min_inlier_ratio: float,
    min_tracks: int = PAIR_MIN_TRACKS,
):
    """cam_b <- cam_a (pycolmap.Rigid3d: rotation and unit translation) from the keypoints the
    two views share (view_keypoints; an essential matrix with the given intrinsics, pycolmap's
    LO-RANSAC) and its inlier count, or None when the estimate is no evidence (fewer than
    min_tracks shared tracks, or inliers under min_tracks or min_inlier_ratio of them)."""
    import pycolmap

    shared = sorted(keypoints[a].keys() & keypoints[b].keys())
    if len(shared) < min_tracks:
        return None
    pa = np.stack([keypoints[a][t] for t in shared])
    pb = np.stack([keypoints[b][t] for t in shared])
    options = pycolmap.RANSACOptions()
    options.max_error = 2.0
    options.random_seed = 0
    options.min_num_trials = 50  # COLMAP's 1000 dominate the check's time; the confidence stops it
    options.max_num_trials = 2000
    result = pycolmap.estimate_relative_pose(
        _pinhole(focal[a], principal[a], H, W),
        pa,
        _pinhole(focal[b], principal[b], H, W),
        pb,
        options,
    )
    if result is None or result["num_inliers"] < max(min_tracks, min_inlier_ratio * len(shared)):
        return None
    return result["cam2_from_cam1"], int(result["num_inliers"])


def two_view_rotation(a: int, b: int, focal, principal, keypoints, H: int, W: int):
    """The rotation cam_b <- cam_a (3, 3) from the keypoints the two views share, or None when
    the estimate is no evidence (two_view_pose with PAIR_MIN_INLIER_RATIO)."""
    pose = two_view_pose(a, b, focal, principal, keypoints, H, W, PAIR_MIN_INLIER_RATIO)
    return None if pose is None else np.asarray(pose[0].rotation.matrix())


def _angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def shared_tracks(tracks, n: int) -> np.ndarray:
    """(n, n) how many tracks each pair of views shares (every ordered pair of observations of
    a track, without materialising a views x tracks table)."""
    order = np.argsort(tracks.obs_track.numpy(), kind="stable")
    img, trk = tracks.obs_image.numpy()[order], tracks.obs_track.numpy()[order]
    lengths = np.bincount(trk, minlength=tracks.n_tracks)
    starts = np.cumsum(lengths) - lengths
    per_obs = lengths[trk]
    rep = np.repeat(np.arange(len(trk)), per_obs)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(per_obs) - per_obs, per_obs)
    partner = starts[trk[rep]] + within  # the other observations of the same track
    a, b = img[rep], img[partner]
    shared = np.zeros((n, n), dtype=np.int64)
    np.add.at(shared, (a[a != b], b[a != b]), 1)
    return shared


def neighbours(registered, tracks) -> dict[int, list[int]]:
    """For each registered view, the registered views sharing the most tracks with it (at least
    PAIR_MIN_TRACKS; N_NEIGHBOURS at most), strongest first."""
    reg = np.flatnonzero(np.asarray(registered, dtype=bool))
    n = len(np.asarray(registered))
    shared = shared_tracks(tracks, n)
    out = {}
    for k in reg:
        order = [int(j) for j in reg[np.argsort(-shared[k, reg], kind="stable")] if j != k]
        out[int(k)] = [j for j in order if shared[k, j] >= PAIR_MIN_TRACKS][:N_NEIGHBOURS]
    return out


def check_views(
    c2w, focal, principal, registered, tracks, H: int, W: int
) -> dict[int, ViewVerdict]:
    """The per-view check (module docstring) of every registered view of a start: c2w (n, 4, 4)
    OpenCV, focal (n, 2) and principal (n, 2) px, registered (n,) bool, tracks as a pinhole
    camera sees them (pixels of the training images). A misplaced view also spoils the others'
    leave-one-out tracks, so the check runs in rounds: the worst failing view (by its two-view
    rotations, then by its leave-one-out fraction) leaves the trusted views and the rest are
    checked again without it, until every trusted view passes. Returns {view: verdict}."""
    c2w = np.asarray(c2w, dtype=np.float64)
    trusted = np.asarray(registered, dtype=bool).copy()
    w2c = rigid_inverse(c2w)
    near = neighbours(trusted, tracks)
    keypoints = view_keypoints(tracks, len(c2w))
    pair_cache: dict[tuple[int, int], float] = {}

    def disagreement(a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in pair_cache:
            i, j = key
            R = two_view_rotation(i, j, focal, principal, keypoints, H, W)
            start = w2c[j, :3, :3] @ c2w[i, :3, :3]  # cam_j <- cam_i under the start
            pair_cache[key] = math.nan if R is None else _angle_deg(R @ start.T)
        return pair_cache[key]

    removed: dict[int, ViewVerdict] = {}
    while True:
        verdicts = {
            int(k): _verdict(int(k), c2w, focal, principal, trusted, tracks, near, disagreement)
            for k in np.flatnonzero(trusted)
        }
        failed = [v for v in verdicts.values() if not v.passed]
        if not failed:
            return dict(sorted({**removed, **verdicts}.items()))
        worst = max(failed, key=_badness)
        removed[worst.view] = worst
        trusted[worst.view] = False


def _badness(v: ViewVerdict) -> tuple:
    share = v.n_disagreeing / v.n_neighbours if v.n_neighbours else 0.0
    rot = 0.0 if math.isnan(v.rotation_median_deg) else v.rotation_median_deg
    loo = 1.0 if math.isnan(v.loo_agreeing) else v.loo_agreeing
    return (share > 0.5, rot, -loo)


def _verdict(k, c2w, focal, principal, trusted, tracks, near, disagreement) -> ViewVerdict:
    """View k's check against the trusted views."""
    loo, n_loo = leave_one_out(
        c2w, focal, principal, trusted | (np.arange(len(trusted)) == k), tracks, k
    )
    angles = [d for j in near.get(k, []) if trusted[j] and not math.isnan(d := disagreement(k, j))]
    bad = sum(d > MAX_ROTATION_DISAGREEMENT_DEG for d in angles)
    reasons = []
    if n_loo >= PNP_MIN_POINTS and loo < LOO_MIN_AGREEING:
        reasons.append(
            f"{100 * loo:.0f}% of its {n_loo} observations land within {LOO_PX:g} px of "
            "their tracks triangulated from the other views"
        )
    alone = len(angles) == 1 and angles[0] <= SINGLE_PAIR_MAX_DEG  # weak below, not failed
    if angles and 2 * bad > len(angles) and not alone:
        reasons.append(
            f"its rotation disagrees with the two-view estimates of {bad} of its "
            f"{len(angles)} neighbours by over {MAX_ROTATION_DISAGREEMENT_DEG:g} deg "
            f"(median {np.median(angles):.1f} deg)"
        )
    rot = float(np.median(angles)) if angles else math.nan
    weak = []
    if not reasons:
        if n_loo < WEAK_MIN_OBSERVATIONS:
            weak.append(f"only {n_loo} observations on tracks the other views triangulate")
        elif loo < WEAK_LOO_AGREEING:
            weak.append(f"{100 * loo:.0f}% of its {n_loo} observations agree")
        if rot > WEAK_ROTATION_DEG:
            weak.append(f"two-view rotations {rot:.1f} deg off (median of {len(angles)})")
    return ViewVerdict(
        view=k,
        passed=not reasons,
        weak="; ".join(weak),
        why="; ".join(reasons),
        loo_agreeing=loo,
        loo_observations=n_loo,
        rotation_median_deg=rot,
        n_neighbours=len(angles),
        n_disagreeing=bad,
    )
