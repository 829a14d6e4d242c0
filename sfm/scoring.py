"""A camera start scored on the feature tracks (sfm/candidates.py's rule): triangulate every
verified track with the start's cameras and re-project it.

A view counts as registered only when at least PNP_MIN_POINTS of its observations re-project
within 2 px; a start is usable with a plausible focal (FOCAL_RATIO_RANGE of the image width, a
field of view of about 11 to 118 degrees) and at least MIN_REGISTERED of the views registered.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from geometry.distortion import undistort_pixels
from geometry.poses import rigid_inverse
from geometry.triangulation import triangulate

MIN_REGISTERED = 0.5
FOCAL_RATIO_RANGE = (0.3, 5.0)
PNP_MIN_POINTS = 12
# The score's own noise: adjusting the same cameras again moves the fraction within 2 px by about
# a tenth of a percent and the median by a few percent, so smaller changes decide nothing.
WITHIN_TOLERANCE = 0.002  # of the observations within 2 px
MEDIAN_TOLERANCE = 0.05  # relative rise of the median re-projection error


def intrinsics(focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) pinhole K from focal (n, 2) and principal point (n, 2)."""
    K = torch.zeros(len(focal), 3, 3, dtype=focal.dtype)
    K[:, 0, 0], K[:, 1, 1], K[:, :2, 2], K[:, 2, 2] = focal[:, 0], focal[:, 1], principal, 1
    return K


def _projections(c2w: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor):
    return intrinsics(focal, principal) @ rigid_inverse(c2w)[:, :3]


def triangulated_tracks(c2w, focal, principal, registered, tracks):
    """(n_tracks, 3) float64 points triangulated from the registered views' observations and
    (n_tracks,) bool: triangulated and in front of every registered view that sees it."""
    c2w, focal, principal = (
        torch.as_tensor(x, dtype=torch.float64) for x in (c2w, focal, principal)
    )
    reg = torch.as_tensor(np.asarray(registered), dtype=torch.bool)
    P = _projections(c2w, focal, principal)
    keep = reg[tracks.obs_image]
    img, uv, trk = tracks.obs_image[keep], tracks.obs_uv[keep].double(), tracks.obs_track[keep]
    X = triangulate(uv, P[img], trk, tracks.n_tracks)
    finite = torch.isfinite(X).all(-1) & (X[:, 3].abs() > 1e-12)
    points = X[:, :3] / X[:, 3:].where(finite[:, None], torch.ones_like(X[:, 3:]))
    depth = (P[img, 2, :3] * points[trk]).sum(-1) + P[img, 2, 3]
    behind = torch.zeros(tracks.n_tracks, dtype=torch.bool).index_put_(
        (trk,), depth <= 0, accumulate=True
    )
    return points, finite & ~behind


def reprojection_errors(c2w, focal, principal, points, img, trk, uv) -> torch.Tensor:
    """(M,) float64 re-projection errors (px) of observations uv (M, 2) in views img (M,) of
    tracks trk (M,) at points (n_tracks, 3); inf where the point is behind the view."""
    P = _projections(*(torch.as_tensor(x, dtype=torch.float64) for x in (c2w, focal, principal)))
    points = torch.as_tensor(points, dtype=torch.float64)
    X = torch.cat([points[trk], torch.ones(len(trk), 1, dtype=torch.float64)], -1)
    proj = torch.einsum("mij,mj->mi", P[img], X)
    err = (proj[:, :2] / proj[:, 2:].clamp_min(1e-12) - uv.double()).norm(dim=-1)
    return torch.where(proj[:, 2] > 0, err, torch.full_like(err, math.inf))


def agreed_tracks(c2w, focal, principal, points, ok, tracks, min_views: int = 3) -> torch.Tensor:
    """(n_tracks,) bool: the tracks whose depth several views agree on: seen by at least
    `min_views` views, triangulated (ok) to `points` (n_tracks, 3) and re-projecting within 2 px
    in every one of them. Two views alone can place a mismatched keypoint pair anywhere along
    their epipolar line with no re-projection error; a third view catches it."""
    trk = tracks.obs_track
    err = reprojection_errors(c2w, focal, principal, points, tracks.obs_image, trk, tracks.obs_uv)
    bad = ~(err < 2)  # inf behind a camera
    n = tracks.n_tracks
    missed = torch.zeros(n, dtype=torch.bool).index_put_((trk,), bad, accumulate=True)
    views = torch.bincount(trk, minlength=n)
    return torch.as_tensor(ok, dtype=torch.bool) & ~missed & (views >= min_views)


def track_fit(c2w, focal, principal, registered, tracks, width: int) -> dict:
    """The candidate's score on the tracks: re-projection errors (px) of every observation in a
    registered view, of the tracks triangulated from those views (a track it cannot triangulate
    or that lies behind a camera counts as a miss). A view counts as registered only when at
    least PNP_MIN_POINTS of its observations fit within 2 px ("supported": a camera placed
    without evidence, such as a photo that shares no track, is not registered)."""
    points, ok = triangulated_tracks(c2w, focal, principal, registered, tracks)
    reg = torch.as_tensor(np.asarray(registered), dtype=torch.bool)
    in_reg = reg[tracks.obs_image]
    multi = torch.bincount(tracks.obs_track[in_reg], minlength=tracks.n_tracks) >= 2
    seen = in_reg & multi[tracks.obs_track]
    img, trk = tracks.obs_image[seen], tracks.obs_track[seen]
    err = reprojection_errors(c2w, focal, principal, points, img, trk, tracks.obs_uv[seen])
    err = torch.where(ok[trk], err, torch.full_like(err, math.inf))
    fitting = torch.bincount(img[err < 2], minlength=len(reg))
    supported = reg & (fitting >= PNP_MIN_POINTS)
    ratio = float(np.median(np.asarray(focal)[np.asarray(registered), 0])) / width
    n_reg = int(supported.sum())
    return {
        "n_registered": n_reg,
        "n_views": len(reg),
        "within_2px": float((err < 2).double().mean()) if len(err) else 0.0,
        "median_px": float(err.median()) if len(err) else math.inf,
        "n_observations": len(err),
        "focal_ratio": ratio,
        "usable": bool(
            FOCAL_RATIO_RANGE[0] <= ratio <= FOCAL_RATIO_RANGE[1]
            and n_reg >= max(2, math.ceil(MIN_REGISTERED * len(reg)))
        ),
        "supported": supported.tolist(),
    }


def undistorted_tracks(tracks, radial, focal, principal):
    """The tracks as a pinhole camera sees them: keypoints undistorted with the (n, 2) radial
    k1, k2 at the focal (n, 2) and principal point (n, 2) (medians over the given views: one
    physical camera); the tracks themselves when there is no distortion."""
    k = tuple(float(x) for x in np.median(np.asarray(radial), axis=0))
    if k == (0.0, 0.0):
        return tracks
    seen = copy.copy(tracks)
    seen.obs_uv = undistort_pixels(
        tracks.obs_uv.double(),
        torch.from_numpy(np.median(np.asarray(focal), axis=0)),
        torch.from_numpy(np.median(np.asarray(principal), axis=0)),
        k,
    ).float()
    return seen
