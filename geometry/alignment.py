"""Similarity alignment of two camera sets (learned -> ground truth), pure functions.

Every fit returns (s, R, t) with x_gt = s R x_pred + t, for cameras c2w (N, 3|4, 4):
- "rotation-aware": global rotation from the chordal mean of R_gt_i R_pred_i^T projected to
  SO(3), then scale and translation from the camera centres (least squares). Measures the
  rotations alone; absorbs an error shared by all cameras.
- "centre-only": Umeyama with scale on the camera centres (the papers' way); depends on how
  well the centres were learned.
- "pairwise" (SPARF/TrackNeRF, few views): every ordered camera pair (a, b) gives a scale
  |c_gt_a - c_gt_b| / |c_a - c_b| and the rigid transform that maps camera a exactly onto its
  ground truth; the pair with the smallest mean rotation error x mean translation error wins.
The errors measured after an alignment are evaluation.pose_metrics' business.
"""

from __future__ import annotations

import torch

from geometry.rotations import geodesic_angle

ALIGNMENTS = ("rotation-aware", "centre-only", "pairwise")
HEADLINE_ALIGNMENT = "rotation-aware"
# The pairwise alignment is reported only up to this many cameras, as SPARF/TrackNeRF do.
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


def pairwise_alignment(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor):
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
        return pairwise_alignment(c2w_pred, c2w_gt)[:3]
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
