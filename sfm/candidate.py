"""One candidate camera start of cameras.init auto and what is done with its views: its score
on the tracks (sfm/scoring.py), the per-view check of the views it placed (sfm/view_check.py),
PnP for the views it left out or misplaced, and the views dropped when nothing places them.
sfm/candidates.py runs the candidates and keeps one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sfm.pnp import absolute_pose
from sfm.scoring import (
    MEDIAN_TOLERANCE,
    PNP_MIN_POINTS,
    WITHIN_TOLERANCE,
    track_fit,
    triangulated_tracks,
    undistorted_tracks,
)
from sfm.view_check import ViewVerdict, check_views


@dataclass
class Candidate:
    """One start: c2w (n, 4, 4) OpenCV and focal (n, 2) fx, fy in pixels of the training views,
    registered (n,) bool, radial (n, 2) distortion k1, k2 (0: pinhole); fit: its score on the
    tracks (track_fit, keypoints undistorted with its own distortion); failed: why it has
    none."""

    name: str
    c2w: np.ndarray | None = None
    focal: np.ndarray | None = None
    registered: np.ndarray | None = None
    radial: np.ndarray | None = None
    forward_facing: bool = True
    seconds: float = 0.0
    fit: dict = field(default_factory=dict)
    failed: str | None = None
    failed_check: dict[int, ViewVerdict] = field(default_factory=dict)  # views it misplaced
    verdicts: dict[int, ViewVerdict] = field(default_factory=dict)  # its last check, every view

    @property
    def usable(self) -> bool:
        return self.failed is None and self.fit.get("usable", False)

    def beats(self, other: Candidate) -> bool:
        """Clearly better on the tracks than `other`: more registered views, else more
        observations within 2 px by more than the score's noise (WITHIN_TOLERANCE), else a
        median re-projection error lower by more than MEDIAN_TOLERANCE. Differences inside the
        noise decide nothing: candidates that fit alike are a tie, which the earlier one wins
        (sfm/candidates.py), so the same capture keeps the same candidate on every run."""
        a, b = self.fit, other.fit
        if a["n_registered"] != b["n_registered"]:
            return a["n_registered"] > b["n_registered"]
        if abs(a["within_2px"] - b["within_2px"]) > WITHIN_TOLERANCE:
            return a["within_2px"] > b["within_2px"]
        return a["median_px"] < b["median_px"] * (1 - MEDIAN_TOLERANCE)


def register_missing(cand: Candidate, principal: np.ndarray, tracks, H: int, W: int) -> list[int]:
    """PnP for the views `cand` left out, against the tracks triangulated from its registered
    views (in place). Returns the views still unregistered (too few correspondences)."""
    points, ok = triangulated_tracks(cand.c2w, cand.focal, principal, cand.registered, tracks)
    left = []
    for k in np.flatnonzero(~cand.registered):
        obs = (tracks.obs_image == int(k)) & ok[tracks.obs_track]
        fx, fy = np.median(cand.focal[cand.registered], axis=0)
        c2w, inliers = None, 0
        if int(obs.sum()) >= PNP_MIN_POINTS:
            uv = tracks.obs_uv[obs].double().numpy()
            xyz = points[tracks.obs_track[obs]].numpy()
            c2w, inliers = absolute_pose(uv, xyz, (fx, fy), principal[k], W, H)
        if c2w is None or inliers < PNP_MIN_POINTS:
            left.append(int(k))
            continue
        cand.c2w[k], cand.focal[k], cand.registered[k] = c2w, (fx, fy), True
    return left


def score(cand: Candidate, principal: np.ndarray, tracks, W: int) -> None:
    """The candidate's fit to the tracks (track_fit, with its own lens); views without support
    leave its registered views (in place)."""
    seen = pinhole_tracks(cand, principal, tracks)
    cand.fit = track_fit(cand.c2w, cand.focal, principal, cand.registered, seen, W)
    cand.registered = np.array(cand.fit.pop("supported"))


def screen(cand: Candidate, principal: np.ndarray, tracks, H: int, W: int) -> dict:
    """The per-view check (sfm/view_check.py) of the candidate's registered views: the views
    that fail leave its registered views and it is scored again without them (in place).
    Returns {view: verdict} of the views that failed."""
    if not cand.registered.any():
        return {}
    seen = pinhole_tracks(cand, principal, tracks)
    verdicts = check_views(cand.c2w, cand.focal, principal, cand.registered, seen, H, W)
    cand.verdicts = verdicts
    failed = {k: v for k, v in verdicts.items() if not v.passed}
    if failed:
        cand.registered[list(failed)] = False
        score(cand, principal, tracks, W)
    return failed


def place_missing(kept: Candidate, principal: np.ndarray, tracks, H: int, W: int) -> list[int]:
    """PnP for the views the kept candidate left out or misplaced (register_missing), then the
    view check of the views it placed: a view PnP cannot place, or places where the check
    fails, is dropped (its camera parked on a kept view's). Returns the dropped views."""
    missing = np.flatnonzero(~kept.registered)
    left = register_missing(kept, principal, pinhole_tracks(kept, principal, tracks), H, W)
    placed = [int(k) for k in missing if k not in left]
    if placed:
        seen = pinhole_tracks(kept, principal, tracks)
        verdicts = check_views(kept.c2w, kept.focal, principal, kept.registered, seen, H, W)
        left += [k for k in placed if not verdicts[k].passed]
    park(kept, left)
    return sorted(left)


def park(kept: Candidate, left) -> None:
    """Dropped views leave the registered views; their cameras become the nearest kept view's
    (placeholders until the scene drops them)."""
    left = list(left)
    if not left:
        return
    kept.registered[left] = False
    done = np.flatnonzero(kept.registered)
    nearest = [int(done[np.argmin(np.abs(done - k))]) for k in left]
    kept.c2w[left], kept.focal[left] = kept.c2w[nearest], kept.focal[nearest]


def pinhole_tracks(c: Candidate, principal: np.ndarray, tracks):
    """The tracks as the candidate's pinhole camera sees them: keypoints undistorted with its k1
    (the tracks themselves when it has none)."""
    reg = c.registered
    return undistorted_tracks(tracks, c.radial[reg], c.focal[reg], principal[reg])
