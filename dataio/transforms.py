"""instant-ngp / nerfstudio / Blender `transforms.json` scenes.

Files: `<data_dir>/transforms.json` (instant-ngp, nerfstudio), or Blender's
`transforms_train.json` + `transforms_test.json` (`transforms_val.json` when there is no test
file); data_dir may also name one json file. Each frame has `file_path` (relative to its json,
with or without the image's extension) and `transform_matrix` (camera-to-world, OpenGL camera
axes: x right, y up, z back). Intrinsics are shared (top level) or per frame: `fl_x` / `fl_y` /
`cx` / `cy` / `w` / `h` (pixels, centres at +0.5 as COLMAP's and ours), or Blender's
`camera_angle_x` (`camera_angle_y`) with the principal point at the image centre. OpenCV
distortion (k1 k2 k3 k4 p1 p2, where given) is kept in extras["distortion"]; with the gt /
noisy_gt starts k1 k2 p1 p2 are removed from the photos (sfm/initialise.py:
remove_input_distortion).
Split: Blender's files, or nerfstudio's `train_filenames` / `test_filenames`
(`val_filenames`), else every test_every-th frame as LLFF.

World frame (input_world_frame, shared with the COLMAP reader): the cameras' layout decides
(geometry.poses.is_forward_facing).
- Walk around an object: translated so the point the optical axes meet (their least-squares
  focus; the mean centre when they are parallel) is the origin, and scaled so the farthest camera
  sits on the unit sphere. Photos with a transparent background (Blender renders) are a bounded
  object (NeRF's Blender bounds 2..6 at camera radius 4: near = 0.5, far = 1.5 camera radii);
  other photos are unbounded (SceneData.unbounded): near 0.1 camera radii and far 100, for the
  contracted ray space of models.scene_model.
- Forward-facing: as LLFF, the average camera becomes the identity; the file has no depth
  bounds, so the scale is a guess: the centres spread FORWARD_SPREAD, near 1, far 100.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataio.images import IMAGE_EXTENSIONS, read_image, resize_image, same_aspect, scaled_size
from dataio.llff import BOUND_FACTOR
from dataio.scene import SceneData
from geometry.frames import CV_GL_FLIP, move_cameras, similarity_scale
from geometry.poses import average_pose, is_forward_facing, object_centred_frame, rigid_inverse
from utils.errors import DataError

DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")

# Depth bounds in camera radii (the farthest camera's distance to the scene centre, 1 after
# normalisation): Blender's near 2 / far 6 at radius 4, and an unbounded capture's range.
BOUNDED_NEAR, BOUNDED_FAR = 0.5, 1.5
UNBOUNDED_NEAR, UNBOUNDED_FAR = 0.1, 100.0
# Forward-facing without bounds: largest distance of a centre from the mean centre (LLFF's
# scenes after their near-bound scaling spread 0.25-0.8), near and far.
FORWARD_SPREAD, FORWARD_NEAR, FORWARD_FAR = 0.5, 1.0, 100.0


def input_world_frame(
    c2w: np.ndarray, bounded: bool, depth_bounds: np.ndarray | None = None
) -> tuple[np.ndarray, float, float, bool]:
    """Our world for cameras (N, 4, 4) OpenCV c2w of an input's world (see the module
    docstring): (world_from_input (4, 4) similarity, near, far, forward_facing).

    bounded: an object photographed on a transparent background (Blender). depth_bounds: (N, 2)
    near / far scene depth of each camera in input units where known (a COLMAP model's points);
    a forward-facing capture is then scaled as LLFF's (nearest bound at 1 / BOUND_FACTOR)."""
    forward = bool(is_forward_facing(c2w))
    if forward:
        world_from_avg = rigid_inverse(average_pose(c2w))
        if depth_bounds is not None:
            scale = 1.0 / (depth_bounds.min() * BOUND_FACTOR)
            near, far = depth_bounds.min() * scale, depth_bounds.max() * scale
        else:
            moved = world_from_avg @ c2w
            spread = np.linalg.norm(moved[:, :3, 3] - moved[:, :3, 3].mean(0), axis=1).max()
            scale = FORWARD_SPREAD / max(spread, 1e-12)
            near, far = FORWARD_NEAR, FORWARD_FAR
        # Scaling about the origin after the rigid move: LLFF's order (scale, then the average
        # pose of the scaled cameras) gives the same similarity.
        world_from_input = np.diag([scale, scale, scale, 1.0]) @ world_from_avg
    else:
        world_from_input = object_centred_frame(c2w)
        near, far = (BOUNDED_NEAR, BOUNDED_FAR) if bounded else (UNBOUNDED_NEAR, UNBOUNDED_FAR)
    return world_from_input, float(near), float(far), forward


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} ({e}); restore the file.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DataError(f"{path} has no 'frames' list; it is not a transforms.json.")
    return meta


def _json_files(data_dir: Path) -> list[tuple[Path, str | None]]:
    """[(json path, split name or None)] of a scene: one transforms.json, or Blender's split
    files (train, then test)."""
    if data_dir.is_file():
        return [(data_dir, None)]
    if not data_dir.is_dir():
        raise DataError(f"scene folder {data_dir} does not exist; check data.data_dir.")
    if (data_dir / "transforms.json").is_file():
        return [(data_dir / "transforms.json", None)]
    train = data_dir / "transforms_train.json"
    if not train.is_file():
        raise DataError(
            f"{data_dir} has neither transforms.json nor transforms_train.json; point "
            "data.data_dir at a transforms.json scene."
        )
    files = [(train, "train")]
    for name in ("test", "val"):
        if (data_dir / f"transforms_{name}.json").is_file():
            return [*files, (data_dir / f"transforms_{name}.json", "test")]
    return files


def _image_path(json_dir: Path, file_path: str) -> Path:
    """The image a frame's file_path names (relative to its json; the extension may be left
    out, as Blender's files do)."""
    path = (json_dir / file_path).resolve()
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        for candidate in (Path(f"{path}{ext}"), Path(f"{path}{ext.upper()}")):
            if candidate.is_file():
                return candidate
    raise DataError(f"image {path} (file_path {file_path!r}) does not exist; check the frames.")


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {key} is {value!r}, not a finite number.")
    return float(value)


def _intrinsics(cam: dict, size: tuple[int, int], where: str) -> np.ndarray:
    """(3, 3) K at the frame's image size (height, width) from its merged intrinsics; fl_x etc.
    are for the file's w x h, which may differ from the image's (a downscaled copy)."""
    h, w = size
    w_file = _number(cam.get("w", w), "w", where)
    h_file = _number(cam.get("h", h), "h", where)
    if w_file <= 0 or h_file <= 0 or not same_aspect((round(h_file), round(w_file)), (h, w)):
        raise DataError(
            f"{where}: the file's size {w_file:g}x{h_file:g} and the image's {w}x{h} differ in "
            "aspect ratio; fix w / h or the image."
        )
    if "fl_x" in cam:
        fx = _number(cam["fl_x"], "fl_x", where)
    elif "camera_angle_x" in cam:
        fx = 0.5 * w_file / math.tan(0.5 * _number(cam["camera_angle_x"], "camera_angle_x", where))
    else:
        raise DataError(f"{where} gives no focal length; add fl_x (pixels) or camera_angle_x.")
    if "fl_y" in cam:
        fy = _number(cam["fl_y"], "fl_y", where)
    elif "camera_angle_y" in cam and "fl_x" not in cam:
        fy = 0.5 * h_file / math.tan(0.5 * _number(cam["camera_angle_y"], "camera_angle_y", where))
    else:
        fy = fx  # square pixels
    cx = _number(cam.get("cx", w_file / 2), "cx", where)
    cy = _number(cam.get("cy", h_file / 2), "cy", where)
    if fx <= 0 or fy <= 0:
        raise DataError(f"{where}: focal {fx:g}, {fy:g} must be positive.")
    sx, sy = w / w_file, h / h_file
    # Pixel centres at +0.5 in the file and here, so the principal point scales like the focal.
    return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


def has_alpha(path: Path) -> bool:
    """Whether the image has an alpha channel (Blender renders: a transparent background)."""
    try:
        with Image.open(path) as im:
            return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace or remove it.") from None


def _split(
    frames: list[dict], test_every: int, split_lists: dict[str, list[str]]
) -> tuple[list[int], list[int]]:
    """Train / test ids: the files' split (frame["split"] from Blender's files, nerfstudio's
    *_filenames lists) or every test_every-th frame."""
    n = len(frames)
    if any(f["split"] is not None for f in frames):
        test = [i for i, f in enumerate(frames) if f["split"] == "test"]
        return [i for i in range(n) if i not in set(test)], test
    if split_lists.get("test") is not None:
        named = {Path(p).with_suffix("").as_posix().lstrip("./") for p in split_lists["test"]}
        test = [i for i, f in enumerate(frames) if f["key"] in named]
        train_named = split_lists.get("train")
        if train_named is None:
            return [i for i in range(n) if i not in set(test)], test
        named = {Path(p).with_suffix("").as_posix().lstrip("./") for p in train_named}
        return [i for i, f in enumerate(frames) if f["key"] in named and i not in set(test)], test
    test = list(range(0, n, test_every)) if test_every and test_every > 0 else []
    return [i for i in range(n) if i not in set(test)], test


def load_transforms(
    data_dir: str | Path,
    downscale: float = 1,
    target_width: int | None = None,
    test_every: int = 8,
    name: str | None = None,
) -> SceneData:
    """Read a transforms.json scene (see the module docstring for the formats and world frame)."""
    data_dir = Path(data_dir)
    frames: list[dict] = []
    split_lists: dict[str, list[str]] = {}
    for json_path, split in _json_files(data_dir):
        meta = _read_json(json_path)
        shared = {k: v for k, v in meta.items() if k != "frames"}
        for key in ("train", "test", "val"):
            if isinstance(meta.get(f"{key}_filenames"), list):
                split_lists.setdefault("test" if key == "val" else key, [])
                split_lists["test" if key == "val" else key] += meta[f"{key}_filenames"]
        for k, frame in enumerate(meta["frames"]):
            where = f"{json_path.name} frame {k}"
            if not isinstance(frame, dict) or "file_path" not in frame:
                raise DataError(f"{where} has no file_path; every frame names its image.")
            try:
                c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where} has no transform_matrix; add the camera pose.") from None
            if c2w.shape not in ((4, 4), (3, 4)) or not np.isfinite(c2w).all():
                raise DataError(f"{where}: transform_matrix is not a finite 4x4 matrix.")
            path = _image_path(json_path.parent, str(frame["file_path"]))
            rel = Path(str(frame["file_path"])).with_suffix("").as_posix().lstrip("./")
            frames.append(
                {
                    "path": path,
                    "key": rel,
                    "split": split,
                    "c2w_gl": c2w[:3],
                    "cam": {**shared, **frame},
                    "where": where,
                }
            )
    if not frames:
        raise DataError(f"{data_dir} lists no frames; add frames to its transforms.json.")

    # Images: every one resized to the first's size after data.downscale / target_width.
    first = read_image(frames[0]["path"])
    size = scaled_size(*first.shape[:2], target_width, downscale)
    H, W = size
    n = len(frames)
    images = np.empty((n, H, W, 3), dtype=np.float32)
    K = np.zeros((n, 3, 3))
    for i, f in enumerate(frames):
        img = first if i == 0 else read_image(f["path"])
        if not same_aspect(first.shape[:2], img.shape[:2]):
            raise DataError(
                f"images differ in aspect ratio: {frames[0]['path']} is "
                f"{first.shape[1]}x{first.shape[0]} but {f['path']} is "
                f"{img.shape[1]}x{img.shape[0]}; crop or remove the odd ones out."
            )
        K[i] = _intrinsics(f["cam"], img.shape[:2], f["where"])
        K[i, :2] *= np.array([W / img.shape[1], H / img.shape[0]])[:, None]
        images[i] = resize_image(img, H, W)
    del first

    # OpenGL camera axes -> OpenCV: flip the camera's y and z columns (the world is unchanged).
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3] = np.stack([f["c2w_gl"] for f in frames])
    c2w = c2w @ CV_GL_FLIP
    rot = c2w[:, :3, :3]
    if np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max() > 1e-3:
        raise DataError(f"{data_dir}: a transform_matrix is not a rigid transform; check the file.")

    bounded = has_alpha(frames[0]["path"])
    world_from_input, near, far, forward = input_world_frame(c2w, bounded)
    c2w_ours = move_cameras(world_from_input, c2w)

    train_ids, test_ids = _split(frames, test_every, split_lists)
    if not train_ids:
        raise DataError(f"{data_dir}: no training frames are left after the split.")
    distortion = {
        key: torch.tensor([float(f["cam"].get(key, 0.0)) for f in frames])
        for key in DISTORTION_KEYS
        if any(key in f["cam"] for f in frames)
    }
    root = data_dir if data_dir.is_dir() else data_dir.parent
    names = []
    for f in frames:
        try:
            names.append(f["path"].relative_to(root.resolve()).as_posix())
        except ValueError:
            names.append(f["path"].name)
    return SceneData(
        name=name or (data_dir.name if data_dir.is_dir() else data_dir.parent.name),
        images=torch.from_numpy(images),
        image_names=names,
        train_ids=train_ids,
        test_ids=test_ids,
        c2w_gt=torch.from_numpy(c2w_ours.astype(np.float32)),
        K_gt=torch.from_numpy(K.astype(np.float32)),
        near=float(near),
        far=float(far),
        forward_facing=forward,
        unbounded=not forward and not bounded,
        extras={
            # Maps points of the file's world (x_input) to ours: x = T @ [x_input, 1].
            "world_from_input": torch.from_numpy(world_from_input.astype(np.float32)),
            "scale": similarity_scale(world_from_input),
            # OpenCV distortion per image (k1 k2 [k3 k4] p1 p2 as given; k1 k2 p1 p2: see above).
            "distortion": distortion,
            "camera_model": str(frames[0]["cam"].get("camera_model", "OPENCV")),
            # Transparent background composited on white (Blender renders): model.white_bkgd.
            "white_background": bounded,
            # The original photos (feature tracks extract SIFT there).
            "feature_images": [str(f["path"]) for f in frames],
        },
    )
