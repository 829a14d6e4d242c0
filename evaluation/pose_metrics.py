"""Pose and focal errors against ground truth, with the alignment named in every result.

Alignments (learned cameras -> ground truth, similarity transforms) are fitted in
geometry.alignment: "rotation-aware" (the headline), "centre-only" (the papers' way) and
"pairwise" (SPARF/TrackNeRF, reported only for <= PAIRWISE_MAX_CAMERAS cameras).
Rotation error: geodesic angle of R_aligned R_gt^T in degrees.
Translation errors are distances between aligned and ground-truth centres after dividing both by
the RMS distance of the ground-truth centres to their centroid (unit-scale trajectory); x100 is
how the papers print them.
"""

from __future__ import annotations

import numpy as np
import torch

from geometry.alignment import (
    ALIGNMENTS,
    HEADLINE_ALIGNMENT,
    PAIRWISE_MAX_CAMERAS,
    align,
    pairwise_alignment,
    trajectory_unit,
)
from geometry.rotations import geodesic_angle

TRANSLATION_NORMALISATION = "ground-truth centres divided by their RMS distance to their centroid"


def pose_errors(c2w_pred, c2w_gt, alignment: str = HEADLINE_ALIGNMENT) -> dict:
    """Rotation (deg) and translation (unit-scale ground truth; also x100 as papers print it)
    errors after aligning the learned cameras to the ground truth.

    c2w_pred, c2w_gt: (N, 4, 4) or (N, 3, 4). Returns a dict of floats and per-camera lists,
    with the alignment's name and the fitted similarity (x_gt = scale R x_pred + t).
    """
    c2w_pred = torch.as_tensor(c2w_pred, dtype=torch.float64)[:, :3, :4]
    c2w_gt = torch.as_tensor(c2w_gt, dtype=torch.float64)[:, :3, :4]
    pair = None
    if alignment == "pairwise":
        s, R, t, pair = pairwise_alignment(c2w_pred, c2w_gt)
    else:
        s, R, t = align(c2w_pred, c2w_gt, alignment)
    R_aligned = R @ c2w_pred[:, :3, :3]
    c_aligned = s * c2w_pred[:, :3, 3] @ R.T + t
    c_gt = c2w_gt[:, :3, 3]
    unit = trajectory_unit(c_gt)
    rot = torch.rad2deg(geodesic_angle(R_aligned, c2w_gt[:, :3, :3])).numpy()
    trans = ((c_aligned - c_gt).norm(dim=-1) / unit).numpy()
    out = {
        "alignment": alignment,
        "n_cameras": len(rot),
        "rot_mean_deg": float(rot.mean()),
        "rot_median_deg": float(np.median(rot)),
        "rot_max_deg": float(rot.max()),
        "trans_mean": float(trans.mean()),
        "trans_median": float(np.median(trans)),
        "trans_mean_x100": float(trans.mean() * 100),
        "trans_median_x100": float(np.median(trans) * 100),
        "similarity": {"scale": float(s), "R": R.tolist(), "t": t.tolist()},
        "rot_deg_per_camera": rot.tolist(),
        "trans_per_camera": trans.tolist(),
    }
    if pair is not None:
        out["pair"] = list(pair)
    return out


def focal_error_percent(focal_pred, focal_gt) -> float:
    """Mean |f - f_gt| / f_gt in percent over the given focal values (any matching shapes)."""
    f, g = (
        torch.as_tensor(focal_pred, dtype=torch.float64),
        torch.as_tensor(focal_gt, dtype=torch.float64),
    )
    return float(((f - g).abs() / g).mean() * 100)


def focal_errors(focal_pred, focal_gt) -> dict:
    """|f - f_gt| / f_gt in percent: mean, median and per camera (rows of (N, ...) inputs)."""
    f = torch.as_tensor(focal_pred, dtype=torch.float64)
    g = torch.as_tensor(focal_gt, dtype=torch.float64)
    f, g = torch.broadcast_tensors(f, g)
    err = ((f - g).abs() / g * 100).reshape(len(f), -1).mean(-1).numpy()
    return {
        "mean_percent": float(err.mean()),
        "median_percent": float(np.median(err)),
        "per_camera_percent": err.tolist(),
    }


def _aggregate_pose_errors(c2w_pred, c2w_gt, alignment: str) -> dict:
    """pose_errors without the per-camera lists and the fitted similarity."""
    errors = pose_errors(c2w_pred, c2w_gt, alignment)
    return {k: v for k, v in errors.items() if not k.endswith("per_camera") and k != "similarity"}


def report_alignments(n_cameras: int) -> tuple[str, ...]:
    """The alignments camera_report uses for n cameras (pairwise only for few views)."""
    if n_cameras <= PAIRWISE_MAX_CAMERAS:
        return ALIGNMENTS
    return tuple(a for a in ALIGNMENTS if a != "pairwise")


def camera_report(c2w_pred, c2w_gt, focal_pred=None, focal_gt=None, c2w_start=None) -> dict:
    """Errors under every alignment (pairwise with <= PAIRWISE_MAX_CAMERAS cameras), with the
    identity start's errors (and, when given, the actual starting poses' errors) beside them,
    and the focal error. c2w_*: (N, 3|4, 4); focal_*: (N, 2) or broadcastable."""
    c2w_gt = torch.as_tensor(c2w_gt, dtype=torch.float64)
    identity = torch.eye(4, dtype=torch.float64).expand(len(c2w_gt), 4, 4)
    alignments = report_alignments(len(c2w_gt))
    report = {
        "translation_normalisation": TRANSLATION_NORMALISATION,
        "rotation_error": "geodesic angle of R_aligned R_gt^T, degrees",
        "headline_alignment": HEADLINE_ALIGNMENT,
        "alignments": list(alignments),
    }
    for alignment in alignments:
        report[alignment] = pose_errors(c2w_pred, c2w_gt, alignment)
        report[alignment]["identity_start"] = _aggregate_pose_errors(identity, c2w_gt, alignment)
        if c2w_start is not None:
            report[alignment]["start"] = _aggregate_pose_errors(c2w_start, c2w_gt, alignment)
    if focal_pred is not None and focal_gt is not None:
        report["focal_error_percent"] = focal_error_percent(focal_pred, focal_gt)
        report["focal_error"] = focal_errors(focal_pred, focal_gt)
    return report
