"""Pose and focal errors against ground truth, with the alignment named in every result.

Alignments (learned cameras -> ground truth, similarity transforms):
- "rotation-aware": global rotation from the chordal mean of R_gt_i R_pred_i^T projected to
  SO(3), then scale and translation from the camera centres (least squares). Measures the
  rotations alone; absorbs an error shared by all cameras.
- "centre-only": Umeyama with scale on the camera centres (the papers' way); depends on how
  well the centres were learned.
- "pairwise" (SPARF/TrackNeRF, few views): every ordered camera pair (a, b) gives a scale
  |c_gt_a - c_gt_b| / |c_a - c_b| and the rigid transform that maps camera a exactly onto its
  ground truth; the pair with the smallest mean rotation error x mean translation error wins.
  Reported only for <= PAIRWISE_MAX_CAMERAS cameras, as those papers do.
Rotation error: geodesic angle of R_aligned R_gt^T in degrees.
Translation errors are distances between aligned and ground-truth centres after dividing both by
the RMS distance of the ground-truth centres to their centroid (unit-scale trajectory); x100 is
how the papers print them.
"""

from __future__ import annotations

import numpy as np
import torch

from geometry.rotations import geodesic_angle

TRANSLATION_NORMALISATION = "ground-truth centres divided by their RMS distance to their centroid"
ALIGNMENTS = ("rotation-aware", "centre-only", "pairwise")
HEADLINE_ALIGNMENT = "rotation-aware"
PAIRWISE_MAX_CAMERAS = 9
# Below this scale the learned centres have collapsed to a point (the identity start).
_DEGENERATE_SCALE = 1e-12


def trajectory_unit(centres: torch.Tensor) -> float:
    """The length translation errors are divided by: the RMS distance of the (N, 3)
    ground-truth camera centres to their centroid (1 when they coincide)."""
    unit = float(((centres - centres.mean(0)) ** 2).sum(-1).mean().sqrt())
    return unit if unit > 1e-12 else 1.0


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


def _pairwise(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor):
    """SPARF/TrackNeRF pairwise alignment over every ordered pair (a, b), a != b.

    c2w_pred, c2w_gt: (N, 3|4, 4) float64, N >= 2. Returns (s, R, t, (a, b)) of the pair with the
    smallest mean rotation error x mean translation error. A pair whose learned centres coincide
    gets scale 0 (every centre lands on c_gt_a), as Umeyama does for collapsed centres.
    """
    R_pred, R_gt = c2w_pred[:, :3, :3], c2w_gt[:, :3, :3]
    c_pred, c_gt = c2w_pred[:, :3, 3], c2w_gt[:, :3, 3]
    n = len(c_pred)
    if n < 2:
        raise ValueError(f"pairwise alignment needs at least 2 cameras, got {n}")
    a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = a != b
    a, b = a[keep], b[keep]  # (P,) ordered pairs
    d_pred = (c_pred[a] - c_pred[b]).norm(dim=-1)
    d_gt = (c_gt[a] - c_gt[b]).norm(dim=-1)
    s = torch.where(d_pred > _DEGENERATE_SCALE, d_gt / d_pred.clamp_min(_DEGENERATE_SCALE), 0.0)
    R = R_gt[a] @ R_pred[a].transpose(1, 2)  # (P, 3, 3): camera a's rotation exactly
    t = c_gt[a] - s[:, None] * (R @ c_pred[a][..., None])[..., 0]  # camera a's centre exactly
    rot = geodesic_angle(R[:, None] @ R_pred[None], R_gt[None]).mean(-1)  # (P,)
    c_aligned = s[:, None, None] * torch.einsum("pij,nj->pni", R, c_pred) + t[:, None]
    trans = (c_aligned - c_gt[None]).norm(dim=-1).mean(-1)
    best = int(torch.argmin(rot * trans))
    return float(s[best]), R[best], t[best], (int(a[best]), int(b[best]))


def align(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor, alignment: str):
    """Returns (s, R, t) mapping the learned world frame onto the ground-truth one:
    x_gt = s R x_pred + t. c2w_pred, c2w_gt: (N, 3|4, 4)."""
    R_pred, R_gt = c2w_pred[:, :3, :3], c2w_gt[:, :3, :3]
    c_pred, c_gt = c2w_pred[:, :3, 3], c2w_gt[:, :3, 3]
    if alignment == "centre-only":
        return umeyama(c_pred, c_gt)
    if alignment == "rotation-aware":
        R = project_to_so3((R_gt @ R_pred.transpose(1, 2)).sum(0))
        s, t = _scale_translation(c_pred @ R.T, c_gt)
        return s, R, t
    if alignment == "pairwise":
        return _pairwise(c2w_pred, c2w_gt)[:3]
    raise ValueError(f"unknown alignment {alignment!r}; use one of {ALIGNMENTS}")


def apply_similarity(c2w: torch.Tensor, s: float, R: torch.Tensor, t: torch.Tensor):
    """Move cameras (N, 3|4, 4) by the similarity x -> s R x + t: rotations R R_i, centres
    s R c_i + t. Returns (N, 4, 4) in the dtype of c2w."""
    c2w = torch.as_tensor(c2w)
    R, t = torch.as_tensor(R, dtype=c2w.dtype), torch.as_tensor(t, dtype=c2w.dtype)
    out = torch.eye(4, dtype=c2w.dtype).repeat(len(c2w), 1, 1)
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ R.T + t
    return out


def gt_to_learned(c2w_gt_new, c2w_pred, c2w_gt, alignment: str = HEADLINE_ALIGNMENT):
    """Map ground-truth cameras that were not trained (held-out views) into the learned frame.

    The alignment (learned -> ground truth) is fitted on the trained cameras c2w_pred / c2w_gt
    (N, 3|4, 4); c2w_gt_new (M, 3|4, 4) goes through its inverse. Returns ((M, 4, 4) float64
    c2w in the learned frame, the fitted scale s). When the learned centres have collapsed to a
    point (s = 0, e.g. the identity start) the rotations are still mapped and every centre is
    put at the learned centroid.
    """
    c2w_pred = torch.as_tensor(c2w_pred, dtype=torch.float64)[:, :3, :4]
    c2w_gt = torch.as_tensor(c2w_gt, dtype=torch.float64)[:, :3, :4]
    c2w_gt_new = torch.as_tensor(c2w_gt_new, dtype=torch.float64)[:, :3, :4]
    s, R, t = align(c2w_pred, c2w_gt, alignment)
    if s > _DEGENERATE_SCALE:
        return apply_similarity(c2w_gt_new, 1.0 / s, R.T, -(R.T @ t) / s), s
    out = apply_similarity(c2w_gt_new, 0.0, R.T, c2w_pred[:, :3, 3].mean(0))
    return out, s


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
        s, R, t, pair = _pairwise(c2w_pred, c2w_gt)
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


def _summary(c2w_pred, c2w_gt, alignment: str) -> dict:
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
        report[alignment]["identity_start"] = _summary(identity, c2w_gt, alignment)
        if c2w_start is not None:
            report[alignment]["start"] = _summary(c2w_start, c2w_gt, alignment)
    if focal_pred is not None and focal_gt is not None:
        report["focal_error_percent"] = focal_error_percent(focal_pred, focal_gt)
        report["focal_error"] = focal_errors(focal_pred, focal_gt)
    return report
