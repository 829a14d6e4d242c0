"""Camera pose from 2D-3D correspondences: the project's one PnP, pycolmap's LO-RANSAC
(P3P minimal solver) followed by a non-linear refinement of the inliers. cameras.init auto
places the views a candidate left out with it (sfm/candidate.py), and eval.py --register places
new photos on the points their matched training view renders (evaluation/registration.py)."""

from __future__ import annotations

import numpy as np

from geometry.poses import rigid_inverse

MIN_CORRESPONDENCES = 4  # P3P's three points and one to choose among its solutions


def absolute_pose(
    uv: np.ndarray,
    xyz: np.ndarray,
    focal: tuple[float, float],
    principal,
    W: int,
    H: int,
    max_error_px: float | None = None,
) -> tuple[np.ndarray | None, int]:
    """The (4, 4) OpenCV c2w of a pinhole camera (focal fx, fy and principal cx, cy in pixels of a
    W x H image) that sees the world points xyz (M, 3) at the pixels uv (M, 2) (centres at +0.5,
    COLMAP's convention and ours). max_error_px: the RANSAC inlier threshold (None: COLMAP's
    default). Returns (c2w, inlier count), c2w None when no pose was found."""
    import pycolmap

    if len(uv) < MIN_CORRESPONDENCES:
        return None, 0
    camera = pycolmap.Camera(
        model="PINHOLE", width=int(W), height=int(H), params=[*map(float, focal), *principal]
    )
    options = pycolmap.AbsolutePoseEstimationOptions()
    if max_error_px is not None:
        options.ransac.max_error = float(max_error_px)
    result = pycolmap.estimate_and_refine_absolute_pose(
        np.asarray(uv, dtype=np.float64), np.asarray(xyz, dtype=np.float64), camera, options
    )
    if result is None:
        return None, 0
    w2c = np.eye(4)
    w2c[:3] = result["cam_from_world"].matrix()
    return rigid_inverse(w2c), int(np.sum(result["inlier_mask"]))
