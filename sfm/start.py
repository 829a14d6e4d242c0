"""What an experiment's camera start changed in its scene, redone wherever the scene is loaded
again (the new run itself, a resume, eval.py, render.py), from the files it saved in <exp>/sfm/:
- views no candidate could place (candidates.json "dropped") leave the training views;
- the kept camera's lens distortion (distortion.json) is removed from the photos and keypoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dataio.scene import SceneData
from geometry.distortion import undistort_image, undistort_pixels
from sfm.candidates import SUMMARY_FILE
from sfm.distortion import DISTORTION_FILE


def apply_saved_start(scene: SceneData, exp_dir: Path, tracks=None):
    """Apply the experiment's saved start to `scene` in place (once per loaded scene) and return
    the tracks as they now are (views dropped, keypoints undistorted; None stays None) and the
    names of the dropped views."""
    folder = Path(exp_dir) / "sfm"
    if scene.extras.get("start_applied"):
        return tracks, []
    scene.extras["start_applied"] = True
    dropped = []
    summary = folder / SUMMARY_FILE
    if summary.is_file():
        dropped = json.loads(summary.read_text()).get("dropped", [])
    if dropped:
        n = len(scene.train_ids)
        keep = [k for k, i in enumerate(scene.train_ids) if scene.image_names[i] not in dropped]
        scene.train_ids = [scene.train_ids[k] for k in keep]
        if tracks is not None:
            tracks = tracks.keep_views(keep, n)
    distortion = folder / DISTORTION_FILE
    if distortion.is_file():
        saved = json.loads(distortion.read_text())
        k = (saved["k1"], saved["k2"])
        focal = torch.tensor(saved["focal_px"], dtype=torch.float64)
        principal = torch.tensor(saved["principal_px"], dtype=torch.float64)
        scene.images = torch.stack(
            [undistort_image(img, focal, principal, k) for img in scene.images]
        )
        if tracks is not None:
            uv = undistort_pixels(tracks.obs_uv.double(), focal, principal, k)
            tracks.obs_uv = uv.to(tracks.obs_uv.dtype)
    return tracks, dropped
