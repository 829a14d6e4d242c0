"""Linear (DLT) triangulation of many points at once, each seen in a variable number of views."""

from __future__ import annotations

import torch


def triangulate(
    uv: torch.Tensor, P: torch.Tensor, point_ids: torch.Tensor, n_points: int
) -> torch.Tensor:
    """Least-squares points from their observations (homogeneous DLT, rows normalised).

    uv: (M, 2) pixel observations; P: (M, 3, 4) projection K [R | t] (w2c) of each
    observation's camera; point_ids: (M,) long, which point each observation sees.
    Returns (n_points, 4) homogeneous points (nan where a point has under two observations);
    divide by the last coordinate for euclidean ones (near 0: a point at infinity).
    """
    rows = torch.stack(
        [uv[:, :1] * P[:, 2] - P[:, 0], uv[:, 1:2] * P[:, 2] - P[:, 1]], 1
    )  # (M, 2, 4)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ata = torch.einsum("mri,mrj->mij", rows, rows).reshape(len(uv), 16)
    acc = torch.zeros(n_points, 16, dtype=uv.dtype, device=uv.device)
    acc.index_add_(0, point_ids, ata)
    _, vecs = torch.linalg.eigh(acc.reshape(n_points, 4, 4))
    points = vecs[..., 0]  # the eigenvector of the smallest eigenvalue
    seen = torch.bincount(point_ids, minlength=n_points)
    return torch.where((seen >= 2)[:, None], points, torch.full_like(points, float("nan")))
