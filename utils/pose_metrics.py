"""Pose and focal errors against ground truth, with the alignment named in every result.

Alignments (learned cameras -> ground truth, similarity transforms):
- "rotation-aware": global rotation from the chordal mean of R_gt_i R_pred_i^T projected to
  SO(3), then scale and translation from the camera centres (least squares). Measures the
  rotations alone; absorbs an error shared by all cameras.
- "centre-only": Umeyama with scale on the camera centres (the papers' way); depends on how
  well the centres were learned.
Translation errors are distances between aligned and ground-truth centres after dividing both by
the RMS distance of the ground-truth centres to their centroid (unit-scale trajectory); x100 is
how the papers print them.
"""

from __future__ import annotations

import numpy as np
import torch

from models.rotations import geodesic_angle

TRANSLATION_NORMALISATION = "ground-truth centres divided by their RMS distance to their centroid"


def project_to_so3(M: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M)
    D = torch.eye(3, dtype=M.dtype)
    D[2, 2] = torch.sign(torch.linalg.det(U @ Vh))
    return U @ D @ Vh


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Similarity (s, R, t) minimising |dst - (s R src + t)|^2 over points (N, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    if var_s < 1e-12:  # every centre in one place (the identity start): no rotation information
        return 0.0, torch.eye(3, dtype=src.dtype), mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=src.dtype)
    D[2, 2] = torch.sign(torch.linalg.det(U @ Vh))
    R = U @ D @ Vh
    s = float((S * D.diagonal()).sum() / var_s)
    return s, R, mu_d - s * R @ mu_s


def _scale_translation(src: torch.Tensor, dst: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Least-squares (s >= 0, t) for dst ~ s src + t."""
    xs, xd = src - src.mean(0), dst - dst.mean(0)
    var_s = (xs**2).sum()
    s = float((xs * xd).sum() / var_s) if var_s > 1e-12 else 0.0
    s = max(s, 0.0)
    return s, dst.mean(0) - s * src.mean(0)


def align(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor, alignment: str):
    """Returns (s, R, t) mapping the learned world frame onto the ground-truth one."""
    R_pred, R_gt = c2w_pred[:, :3, :3], c2w_gt[:, :3, :3]
    c_pred, c_gt = c2w_pred[:, :3, 3], c2w_gt[:, :3, 3]
    if alignment == "centre-only":
        return umeyama(c_pred, c_gt)
    if alignment == "rotation-aware":
        R = project_to_so3((R_gt @ R_pred.transpose(1, 2)).sum(0))
        s, t = _scale_translation(c_pred @ R.T, c_gt)
        return s, R, t
    raise ValueError(f"unknown alignment {alignment!r}")


def pose_errors(c2w_pred, c2w_gt, alignment: str = "rotation-aware") -> dict:
    """Rotation (deg) and translation (unit-scale ground truth) errors after alignment.

    c2w_pred, c2w_gt: (N, 4, 4) or (N, 3, 4). Returns a dict of floats and per-camera lists.
    """
    c2w_pred = torch.as_tensor(c2w_pred, dtype=torch.float64)[:, :3, :4]
    c2w_gt = torch.as_tensor(c2w_gt, dtype=torch.float64)[:, :3, :4]
    s, R, t = align(c2w_pred, c2w_gt, alignment)
    R_aligned = R @ c2w_pred[:, :3, :3]
    c_aligned = s * c2w_pred[:, :3, 3] @ R.T + t
    c_gt = c2w_gt[:, :3, 3]
    unit = float(((c_gt - c_gt.mean(0)) ** 2).sum(-1).mean().sqrt())
    unit = unit if unit > 1e-12 else 1.0
    rot = torch.rad2deg(geodesic_angle(R_aligned, c2w_gt[:, :3, :3])).numpy()
    trans = ((c_aligned - c_gt).norm(dim=-1) / unit).numpy()
    return {
        "alignment": alignment,
        "rot_mean_deg": float(rot.mean()),
        "rot_median_deg": float(np.median(rot)),
        "rot_max_deg": float(rot.max()),
        "trans_mean": float(trans.mean()),
        "trans_median": float(np.median(trans)),
        "rot_deg_per_camera": rot.tolist(),
        "trans_per_camera": trans.tolist(),
    }


def focal_error_percent(focal_pred, focal_gt) -> float:
    """Mean |f - f_gt| / f_gt in percent over the given focal values (any matching shapes)."""
    f, g = (
        torch.as_tensor(focal_pred, dtype=torch.float64),
        torch.as_tensor(focal_gt, dtype=torch.float64),
    )
    return float(((f - g).abs() / g).mean() * 100)


def _summary(c2w_pred, c2w_gt, alignment: str) -> dict:
    errors = pose_errors(c2w_pred, c2w_gt, alignment)
    return {k: v for k, v in errors.items() if not k.endswith("per_camera")}


def camera_report(c2w_pred, c2w_gt, focal_pred=None, focal_gt=None, c2w_start=None) -> dict:
    """Errors under both alignments, with the identity start's errors (and, when given, the
    actual starting poses' errors) beside them, and the focal error."""
    c2w_gt = torch.as_tensor(c2w_gt, dtype=torch.float64)
    identity = torch.eye(4, dtype=torch.float64).expand(len(c2w_gt), 4, 4)
    report = {"translation_normalisation": TRANSLATION_NORMALISATION}
    for alignment in ("rotation-aware", "centre-only"):
        report[alignment] = pose_errors(c2w_pred, c2w_gt, alignment)
        report[alignment]["identity_start"] = _summary(identity, c2w_gt, alignment)
        if c2w_start is not None:
            report[alignment]["start"] = _summary(c2w_start, c2w_gt, alignment)
    if focal_pred is not None and focal_gt is not None:
        report["focal_error_percent"] = focal_error_percent(focal_pred, focal_gt)
    return report
