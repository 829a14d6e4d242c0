"""Export learned cameras in the formats other tools read (LLFF, COLMAP text, transforms.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dataio.llff import opencv_to_llff
from geometry.poses import rigid_inverse
from geometry.rotations import matrix_to_quaternion

# OpenCV camera axes (x right, y down, z forward) -> OpenGL/NeRF (x right, y up, z back).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def export_cameras(
    out_dir: Path,
    c2w: np.ndarray,
    K: np.ndarray,
    H: int,
    W: int,
    names: list[str],
    near: float,
    far: float,
) -> None:
    """c2w (N, 4, 4) OpenCV, K (N, 3, 3) with pixel centres at +0.5."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, name in enumerate(names):
        frames.append(
            {
                "file_path": name,
                "transform_matrix": (c2w[i] @ CV_TO_GL).tolist(),  # OpenCV -> OpenGL camera axes
                "fl_x": float(K[i, 0, 0]),
                "fl_y": float(K[i, 1, 1]),
                "cx": float(K[i, 0, 2]),
                "cy": float(K[i, 1, 2]),
            }
        )
    with open(out_dir / "transforms.json", "w") as f:
        json.dump(
            {"w": W, "h": H, "camera_convention": "OpenGL c2w", "frames": frames}, f, indent=1
        )

    # LLFF: 3x5 [R | t | hwf] with axes [down, right, back], then near and far.
    hwf = np.stack([np.full(len(names), H), np.full(len(names), W), K[:, 0, 0]], -1)[..., None]
    rows = np.concatenate([opencv_to_llff(c2w), hwf], axis=-1).reshape(len(names), 15)
    bounds = np.tile([near, far], (len(names), 1))
    np.save(out_dir / "poses_bounds.npy", np.concatenate([rows, bounds], axis=-1))

    # COLMAP text model: world-to-camera, PINHOLE cameras, pixel centres at +0.5 (as COLMAP).
    colmap = out_dir / "colmap"
    colmap.mkdir(exist_ok=True)
    with open(colmap / "cameras.txt", "w") as f:
        f.write("# CAMERA_ID MODEL WIDTH HEIGHT fx fy cx cy\n")
        for i in range(len(names)):
            f.write(
                f"{i + 1} PINHOLE {W} {H} {K[i, 0, 0]} {K[i, 1, 1]} {K[i, 0, 2]} {K[i, 1, 2]}\n"
            )
    with open(colmap / "images.txt", "w") as f:
        f.write("# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n")
        for i, name in enumerate(names):
            w2c = rigid_inverse(c2w[i])
            q = matrix_to_quaternion(torch.as_tensor(w2c[:3, :3])).numpy()
            t = w2c[:3, 3]
            f.write(f"{i + 1} {' '.join(map(str, q))} {' '.join(map(str, t))} {i + 1} {name}\n\n")
    (colmap / "points3D.txt").write_text("# no points\n")
