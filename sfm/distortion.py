"""The lens distortion of the kept camera start, removed from the photos once.

The kept start's camera is SIMPLE_RADIAL (COLMAP's mappers, and the Ceres adjustment of our
track bundle adjustment: sfm/colmap.py) with a radial k1 (the maps here take k2 too, for RADIAL
cameras); the field renders a pinhole camera. The
photos (every view of the scene: one physical camera) and the tracks' keypoints are undistorted
once, at the start's focal and principal point, rather than distorting every rendered ray: every
later consumer (training, held-out views, videos, registration, the track loss) then shares one
pinhole model, at the cost of one bilinear resampling. The parameters are saved in
<exp>/sfm/distortion.json; sfm/start.py applies them again on a resume and in eval.py /
render.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from geometry.distortion import distort
from utils.io import write_json_atomic

DISTORTION_FILE = "distortion.json"
# Below this displacement at the image corners (pixels of the training images) the photos are
# left as they are: resampling would blur them more than the distortion moves them.
MIN_CORNER_SHIFT_PX = 0.25


def corner_shift_px(k, focal: torch.Tensor, principal: torch.Tensor, H: int, W: int) -> float:
    """How far the distortion k = (k1, k2[, p1, p2]) moves the farthest image corner, in pixels."""
    corners = torch.tensor([[0.0, 0.0], [W, 0.0], [0.0, H], [W, H]], dtype=torch.float64)
    xy = (corners - principal.double()) / focal.double()
    return float(((distort(xy, k) - xy) * focal.double()).norm(dim=-1).max())


def save(out_dir: Path, k, focal: torch.Tensor, principal: torch.Tensor) -> None:
    """k = (k1, k2) (RADIAL) or (k1, k2, p1, p2) (OPENCV)."""
    tangential = len(k) >= 4 and (k[2] != 0 or k[3] != 0)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        Path(out_dir) / DISTORTION_FILE,
        {
            "model": "OPENCV" if tangential else "RADIAL",
            "k1": float(k[0]),
            "k2": float(k[1]),
            **({"p1": float(k[2]), "p2": float(k[3])} if tangential else {}),
            "focal_px": [float(f) for f in focal],
            "principal_px": [float(c) for c in principal],
        },
    )


def load(sfm_dir: Path) -> dict | None:
    """The saved distortion (save's dict: model, k1, k2[, p1, p2], focal_px, principal_px) of
    an experiment's sfm/ folder, or None when its photos were left as they are."""
    path = Path(sfm_dir) / DISTORTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def coefficients(saved: dict) -> tuple[float, float, float, float]:
    """(k1, k2, p1, p2) of a loaded distortion (p1 = p2 = 0 for RADIAL)."""
    return tuple(float(saved.get(key, 0.0)) for key in ("k1", "k2", "p1", "p2"))
