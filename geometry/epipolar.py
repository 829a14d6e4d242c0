"""Two-view epipolar geometry (numpy): fundamental matrices and the symmetric epipolar distance.

Every F here satisfies x_b^T F x_a = 0 for homogeneous pixels x = (u, v, 1) of views a and b,
pixel centres at +0.5 (docs/conventions.md).
"""

from __future__ import annotations

import numpy as np

from geometry.poses import rigid_inverse


def scale_fundamental(F_src: np.ndarray, train_from_src_a, train_from_src_b) -> np.ndarray:
    """F (3, 3) between source images of views a and b (x_b^T F x_a = 0) -> F between their
    training images, given each view's per-axis (sx, sy) factor uv_train = uv_src * (sx, sy)."""
    D_a = np.diag([1.0 / train_from_src_a[0], 1.0 / train_from_src_a[1], 1.0])
    D_b = np.diag([1.0 / train_from_src_b[0], 1.0 / train_from_src_b[1], 1.0])
    return D_b.T @ F_src @ D_a


def epipolar_distance(F: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance in pixels: max of the distance of uv_b to the line F x_a and
    of uv_a to the line F^T x_b. F (3, 3) or (P, 3, 3), uv_a / uv_b (P, 2) -> (P,)."""
    x_a = np.concatenate([uv_a, np.ones((len(uv_a), 1))], axis=1)
    x_b = np.concatenate([uv_b, np.ones((len(uv_b), 1))], axis=1)
    line_b = np.einsum("...ij,...j->...i", F, x_a)
    line_a = np.einsum("...ji,...j->...i", F, x_b)
    alg = np.abs((x_b * line_b).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d_b = alg / np.hypot(line_b[:, 0], line_b[:, 1])
        d_a = alg / np.hypot(line_a[:, 0], line_a[:, 1])
    return np.nan_to_num(np.maximum(d_a, d_b), nan=np.inf)


def fundamental_from_cameras(
    K_a: np.ndarray, c2w_a: np.ndarray, K_b: np.ndarray, c2w_b: np.ndarray
) -> np.ndarray:
    """F (3, 3) with x_b^T F x_a = 0 for two pinhole cameras (K (3, 3), OpenCV c2w (4, 4))."""
    b_from_a = rigid_inverse(c2w_b) @ c2w_a
    R, t = b_from_a[:3, :3], b_from_a[:3, 3]
    t_cross = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    return np.linalg.inv(K_b).T @ t_cross @ R @ np.linalg.inv(K_a)
