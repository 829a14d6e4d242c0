"""What an experiment's camera start changed in its scene, redone wherever the scene is loaded
again (the new run itself, a resume, eval.py, render.py), from the files it saved in <exp>/sfm/:
- views no candidate could place (candidates.json "dropped") leave the training views;
- the kept cameras' layout decides the ray space: a capture the reader assumed forward-facing
  (a folder of photos) that turns out to walk around an object becomes an unbounded scene
  (euclidean rays with the scene contraction), and the reverse;
- the kept camera's lens distortion (distortion.json) is removed from the photos and keypoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dataio.scene import SceneData
from dataio.transforms import FORWARD_FAR, FORWARD_NEAR, UNBOUNDED_FAR, UNBOUNDED_NEAR
from geometry.distortion import undistort_image, undistort_pixels
from sfm.candidates import SUMMARY_FILE
from sfm.distortion import coefficients
from sfm.distortion import load as load_distortion


def apply_saved_start(scene: SceneData, exp_dir: Path, tracks=None):
    """Apply the experiment's saved start to `scene` in place (once per loaded scene). Returns
    the tracks as they now are (views dropped, keypoints undistorted; None stays None) and what
    changed the cameras a model needs: {"dropped": names, "layout": whether the ray space
    changed}."""
    folder = Path(exp_dir) / "sfm"
    changes = {"dropped": [], "layout": False}
    if scene.extras.get("start_applied"):
        return tracks, changes
    scene.extras["start_applied"] = True
    saved = {}
    if (folder / SUMMARY_FILE).is_file():
        saved = json.loads((folder / SUMMARY_FILE).read_text())
    dropped = changes["dropped"] = saved.get("dropped", [])
    forward = saved.get("forward_facing", scene.forward_facing)
    if forward != scene.forward_facing:
        changes["layout"] = True
        scene.forward_facing, scene.unbounded = forward, not forward
        scene.near, scene.far = (
            (FORWARD_NEAR, FORWARD_FAR) if forward else (UNBOUNDED_NEAR, UNBOUNDED_FAR)
        )
    if dropped:
        n = len(scene.train_ids)
        keep = [k for k, i in enumerate(scene.train_ids) if scene.image_names[i] not in dropped]
        scene.train_ids = [scene.train_ids[k] for k in keep]
        if tracks is not None:
            tracks = tracks.keep_views(keep, n)
    saved = load_distortion(folder)
    if saved is not None:
        k = coefficients(saved)
        focal = torch.tensor(saved["focal_px"], dtype=torch.float64)
        principal = torch.tensor(saved["principal_px"], dtype=torch.float64)
        scene.images = torch.stack(
            [undistort_image(img, focal, principal, k) for img in scene.images]
        )
        if tracks is not None:
            uv = undistort_pixels(tracks.obs_uv.double(), focal, principal, k)
            tracks.obs_uv = uv.to(tracks.obs_uv.dtype)
    return tracks, changes
