"""Changes of frame for camera poses (numpy, c2w (..., 4, 4), column vectors): the camera-axis
flip between OpenCV and OpenGL, and a similarity of the world applied to cameras.

OpenCV camera axes (ours, COLMAP's): x right, y down, z forward. OpenGL / NeRF / Blender /
instant-ngp / nerfstudio: x right, y up, z back. The flip negates the camera's y and z axes and
is its own inverse, so one matrix maps either way, on the camera side:
c2w_opengl = c2w_opencv @ CV_GL_FLIP and c2w_opencv = c2w_opengl @ CV_GL_FLIP.
"""

from __future__ import annotations

import numpy as np

CV_GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def similarity_scale(T: np.ndarray) -> float:
    """The scale s of a similarity T = [s R | t] (4, 4)."""
    return float(np.cbrt(np.linalg.det(T[:3, :3])))


def move_cameras(T: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Cameras (..., 4, 4) c2w moved by the similarity x -> T @ [x, 1] (4, 4): centres mapped by
    T, rotations by its rotation part, so they stay rigid c2w. Its inverse moves them back."""
    out = T @ c2w
    out[..., :3, :3] /= similarity_scale(T)
    out[..., 3, :] = [0.0, 0.0, 0.0, 1.0]
    return out
