"""Export cameras in the formats other tools open, in the input data's world.

`export_cameras` writes into out_dir (an experiment's poses/):
- transforms.json: nerfstudio / instant-ngp. OpenGL camera-to-world `transform_matrix`,
  `file_path` relative to the json pointing at the image file, `camera_model` (OPENCV with k1 k2
  p1 p2 [k3], or PINHOLE), `w` `h` `fl_x` `fl_y` `cx` `cy` at that file's size (top level when
  every frame shares them, else per frame);
- colmap/: a COLMAP text model written by pycolmap (no points); OPENCV cameras (FULL_OPENCV
  when k3 is set) or PINHOLE, one per distinct camera; image names relative to the folder that
  world_from_input.json's `colmap_image_path` names;
- poses_bounds.npy: LLFF rows [3x5 pose (down, right, back) | near far], hwf at each file's size
  (LLFF keeps one focal and a centred principal point: fy, cx, cy are not in it);
- world_from_input.json: the similarity T from the input's world to posefree's (x = T @
  [x_input, 1]), with a sentence saying what it is. Every file holds the cameras moved back by
  T's inverse (centres and near / far divided by its scale), so they sit on the input's poses.

Distortion: the learned cameras are pinhole cameras of the training images. Where the camera
start undistorted the photos (sfm/distortion.json), or the reader kept the input's distortion
without applying it, the exported cameras carry that distortion, so that they describe the image
files: its coefficients are defined on normalised coordinates of a reference focal f0, and a
learned focal f describes the same pixel map with k1 (f / f0)^2, k2 (f / f0)^4, k3 (f / f0)^6,
p1 and p2 (f / f0) (exact when the principal point is the one the distortion was fitted at).
The instant-ngp / nerfstudio fisheye term k4 is not exported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.ExifTags import Base

from dataio.llff import opencv_to_llff
from dataio.scene import SceneData
from geometry.alignment import HEADLINE_ALIGNMENT, align, apply_similarity
from geometry.frames import CV_GL_FLIP, move_cameras, similarity_scale
from geometry.poses import rigid_inverse
from utils.errors import DataError
from utils.io import write_json_atomic

# Exported OpenCV distortion terms and the power of focal / reference focal each scales with.
DISTORTION_POWERS = {"k1": 2, "k2": 4, "p1": 1, "p2": 1, "k3": 6}
FRAME_FILE = "world_from_input.json"


@dataclass
class InputFrame:
    """What an export knows of the data the cameras came from (every field optional).

    world_from_input: (4, 4) similarity, x_ours = T @ [x_input, 1]; None: the cameras' own world.
    image_paths: the image file of each exported camera; None: file names as given.
    distortion: {k1, k2, p1, p2, k3: (N,)} OpenCV distortion of each camera (any subset), on
        normalised coordinates of distortion_focal (N,) (fx in pixels of the training images)."""

    world_from_input: np.ndarray | None = None
    image_paths: list[Path] | None = None
    distortion: dict[str, np.ndarray] | None = None
    distortion_focal: np.ndarray | None = None
    aligned_scale: float | None = None  # align_to_input's scale, when the cameras went through it


def input_frame(
    scene: SceneData, ids: list[int], undistorted_with: dict | None = None
) -> InputFrame:
    """The InputFrame of the cameras of scene's views `ids`: its world_from_input, its original
    image files (extras["feature_images"]) and distortion: `undistorted_with` (the start's
    sfm/distortion.json: {"k1", "k2"[, "p1", "p2"], "focal_px": [fx, fy]}) where the photos
    were undistorted, else the reader's extras["distortion"] at the ground-truth focal."""
    T = scene.extras.get("world_from_input")
    listed = scene.extras.get("feature_images") or []
    frame = InputFrame(
        world_from_input=None if T is None else np.asarray(T, dtype=np.float64),
        image_paths=[Path(listed[i]) for i in ids] if len(listed) == scene.n_images else None,
    )
    if undistorted_with is not None:
        frame.distortion = {
            k: np.full(len(ids), float(undistorted_with.get(k, 0.0)))
            for k in ("k1", "k2", "p1", "p2")
        }
        frame.distortion_focal = np.full(len(ids), float(undistorted_with["focal_px"][0]))
    elif scene.extras.get("distortion") and scene.K_gt is not None:
        given = scene.extras["distortion"]
        frame.distortion = {
            k: np.asarray(given[k], dtype=np.float64)[ids] for k in DISTORTION_POWERS if k in given
        }
        frame.distortion_focal = scene.K_gt[ids, 0, 0].double().numpy()
    return frame


def align_to_input(c2w: np.ndarray, c2w_input: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Cameras learned from a start other than the input's own poses (cameras.init identity,
    auto, colmap) live in a world of their own: move them onto the input's cameras of the same
    views, c2w_input (N, 4, 4) in posefree's world (the reader's ground truth), by the
    similarity eval.py's headline errors use (rotation-aware, fitted on these views), so that
    the export lands in the input's world. Returns (c2w (N, 4, 4), its scale), or the cameras
    unchanged and None when their centres have collapsed to a point (nothing to fit)."""
    pred = torch.as_tensor(np.asarray(c2w, dtype=np.float64))
    s, R, t = align(
        pred, torch.as_tensor(np.asarray(c2w_input, dtype=np.float64)), HEADLINE_ALIGNMENT
    )
    if s <= 1e-9:
        return np.asarray(c2w, dtype=np.float64), None
    return apply_similarity(pred, s, R, t).numpy(), float(s)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file upright (EXIF orientation applied, as our readers)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(Base.Orientation, 1) in (5, 6, 7, 8):  # a quarter turn
                w, h = h, w
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"cannot read image {path} ({e}); restore it to export its camera."
        ) from None
    return h, w


def _distortion(frame: InputFrame, K: np.ndarray) -> dict[str, np.ndarray]:
    """{k1, k2, p1, p2 [, k3]: (N,)}: frame.distortion at the focal of the cameras K (N, 3, 3);
    {} when it has no nonzero term (pinhole cameras)."""
    given = frame.distortion or {}
    if not any(np.any(np.asarray(v) != 0) for v in given.values()):
        return {}
    ratio = K[:, 0, 0] / np.asarray(frame.distortion_focal, dtype=np.float64)
    out = {k: np.zeros(len(K)) for k in ("k1", "k2", "p1", "p2")}
    for k, v in given.items():
        out[k] = np.asarray(v, dtype=np.float64) * ratio ** DISTORTION_POWERS[k]
    return out


def export_cameras(
    out_dir: Path,
    c2w: np.ndarray,
    K: np.ndarray,
    H: int,
    W: int,
    names: list[str],
    near: float,
    far: float,
    frame: InputFrame | None = None,
) -> None:
    """Write cameras c2w (N, 4, 4) OpenCV in posefree's world, K (N, 3, 3) at H x W (pixel
    centres at +0.5), with the scene's near / far, in the formats of the module docstring, in
    the world of `frame` (input_frame; None: as they are). names: the images' file names, written
    where frame gives no image files."""
    frame = frame or InputFrame()
    n = len(names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = np.eye(4) if frame.world_from_input is None else frame.world_from_input
    scale = similarity_scale(T)
    c2w_in = move_cameras(np.linalg.inv(T), np.asarray(c2w, dtype=np.float64))
    paths = frame.image_paths
    if paths is not None and len(paths) != n:
        raise ValueError(f"{len(paths)} image paths for {n} cameras")
    sizes = np.array([_image_size(p) for p in paths] if paths else [(H, W)] * n)
    # Intrinsics at each file's size: pixel centres at +0.5, so the principal point scales too.
    K_out = np.asarray(K, dtype=np.float64).copy()
    K_out[:, :2] *= np.stack([sizes[:, 1] / W, sizes[:, 0] / H], -1)[:, :, None]
    distortion = _distortion(frame, np.asarray(K, dtype=np.float64))

    files = [os.path.relpath(p.resolve(), out_dir.resolve()) for p in paths] if paths else names
    _write_transforms_json(out_dir / "transforms.json", c2w_in, K_out, sizes, files, distortion)
    image_root = os.path.commonpath([str(p.resolve().parent) for p in paths]) if paths else None
    colmap_names = [os.path.relpath(p.resolve(), image_root) for p in paths] if paths else names
    _write_colmap(out_dir / "colmap", c2w_in, K_out, sizes, colmap_names, distortion)
    bounds = (near / scale, far / scale)
    _write_poses_bounds(out_dir / "poses_bounds.npy", c2w_in, K_out, sizes, *bounds)
    colmap_images = None if image_root is None else os.path.relpath(image_root, out_dir / "colmap")
    _write_frame_note(
        out_dir / FRAME_FILE, frame.world_from_input, scale, colmap_images, frame.aligned_scale
    )


def _write_transforms_json(path, c2w, K, sizes, files, distortion) -> None:
    frames = []
    for i, file in enumerate(files):
        camera = {
            "w": int(sizes[i, 1]),
            "h": int(sizes[i, 0]),
            "fl_x": float(K[i, 0, 0]),
            "fl_y": float(K[i, 1, 1]),
            "cx": float(K[i, 0, 2]),
            "cy": float(K[i, 1, 2]),
            **{k: float(v[i]) for k, v in distortion.items()},
        }
        # OpenCV -> OpenGL camera axes (nerfstudio's and instant-ngp's convention).
        c2w_gl = (c2w[i] @ CV_GL_FLIP).tolist()
        frames.append({"file_path": Path(file).as_posix(), "transform_matrix": c2w_gl, **camera})
    shared = {k: v for k, v in frames[0].items() if k not in ("file_path", "transform_matrix")}
    if all(all(f[k] == v for k, v in shared.items()) for f in frames):
        frames = [{k: f[k] for k in ("file_path", "transform_matrix")} for f in frames]
    else:
        shared = {}
    model = "OPENCV" if distortion else "PINHOLE"
    write_json_atomic(path, {"camera_model": model, **shared, "frames": frames})


def _write_colmap(folder: Path, c2w, K, sizes, names, distortion) -> None:
    import pycolmap

    rec = pycolmap.Reconstruction()
    camera_ids = {}
    for i, name in enumerate(names):
        params = [K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]]
        model = "PINHOLE"
        if distortion:
            model = "OPENCV"
            params += [distortion[k][i] for k in ("k1", "k2", "p1", "p2")]
            if "k3" in distortion and distortion["k3"][i] != 0:
                model = "FULL_OPENCV"  # its k4 k5 k6 (a rational denominator) stay 0
                params += [distortion["k3"][i], 0.0, 0.0, 0.0]
        key = (model, int(sizes[i, 1]), int(sizes[i, 0]), *map(float, params))
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            camera = pycolmap.Camera(
                model=model, width=key[1], height=key[2], params=key[3:], camera_id=camera_ids[key]
            )
            rec.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(
            name=Path(name).as_posix(), camera_id=camera_ids[key], image_id=i + 1
        )
        # COLMAP stores world-to-camera (cam_from_world), in OpenCV camera axes as ours.
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rigid_inverse(c2w[i])[:3]))
    folder.mkdir(parents=True, exist_ok=True)
    rec.write_text(str(folder))


def _write_poses_bounds(path: Path, c2w, K, sizes, near: float, far: float) -> None:
    n = len(c2w)
    hwf = np.concatenate([sizes.astype(np.float64), K[:, 0, 0:1]], -1)[..., None]
    rows = np.concatenate([opencv_to_llff(c2w), hwf], axis=-1).reshape(n, 15)
    np.save(path, np.concatenate([rows, np.tile([near, far], (n, 1))], axis=-1))


def _write_frame_note(
    path: Path, T: np.ndarray | None, scale: float, colmap_images, aligned_scale=None
) -> None:
    if T is None:
        about = (
            "The scene had no world of its own (no input poses): world_from_input is the "
            "identity and the cameras here are in posefree's world."
        )
    else:
        about = (
            "world_from_input maps a point of the input data's world to posefree's world: "
            "x = T @ [x_input, 1], a similarity (scale, rotation, translation); the cameras "
            "here were moved back by its inverse into the input's world (centres and near / far "
            "divided by the scale), and T maps them to posefree's."
        )
        if aligned_scale is not None:
            about += (
                " They were learned from a start other than the input's own poses, in a world "
                "of their own, and were first moved onto the input's cameras of the same views "
                "by the similarity fitted on them (rotation-aware, as eval.py; its scale is "
                "aligned_scale)."
            )
    if colmap_images is not None:
        about += (
            " COLMAP stores no image folder: the image names in colmap/ are relative to "
            "colmap_image_path (given from colmap/)."
        )
    note = {
        "about": about,
        "world_from_input": (np.eye(4) if T is None else T).tolist(),
        "scale": scale,
        "colmap_image_path": colmap_images,
        "aligned_scale": aligned_scale,
    }
    write_json_atomic(path, note)
