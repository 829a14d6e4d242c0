"""LLFF forward-facing captures: poses_bounds.npy plus images_8 / images_4 / images_WxH / images.

The world frame is NeRF's: translations and bounds scaled so the nearest bound is 1/0.75 (room
in front of the near plane for NDC), then every pose moved by the inverse of the average pose,
so the average camera is the identity (in OpenCV axes here).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataio.images import list_images, load_images, same_aspect, scaled_size
from dataio.scene import SceneData
from geometry.poses import average_pose, rigid_inverse
from utils.errors import DataError

# NeRF's bd_factor: the nearest bound lands at 1 / 0.75 after scaling.
BOUND_FACTOR = 0.75

_FOLDER_RE = re.compile(r"^images(_\d+|_\d+x\d+)?$")


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """(N, 3, 4) LLFF c2w with axes [down, right, back] -> (N, 4, 4) OpenCV c2w."""
    c2w = np.tile(np.eye(4), (len(poses), 1, 1))
    # LLFF [down, right, back] -> OpenCV [right, down, forward]: x = col 1, y = col 0, z = -col 2.
    c2w[:, :3, :3] = np.stack([poses[:, :, 1], poses[:, :, 0], -poses[:, :, 2]], axis=2)
    c2w[:, :3, 3] = poses[:, :, 3]
    return c2w


def opencv_to_llff(c2w: np.ndarray) -> np.ndarray:
    """(N, 3|4, 4) OpenCV c2w -> (N, 3, 4) LLFF c2w with axes [down, right, back]."""
    # OpenCV [right, down, forward] -> LLFF [down, right, back]: inverse of llff_to_opencv.
    rot = np.stack([c2w[:, :3, 1], c2w[:, :3, 0], -c2w[:, :3, 2]], axis=2)
    return np.concatenate([rot, c2w[:, :3, 3:4]], axis=2)


def _first_image_size(folder: Path) -> tuple[int, int] | None:
    """(height, width) of the first image in folder, None when it holds no image."""
    files = list_images(folder)
    if not files:
        return None
    try:
        with Image.open(files[0]) as im:
            return im.size[::-1]  # PIL's size is (width, height)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {files[0]} ({e}); replace or remove it.") from None


def choose_image_folder(
    data_dir: Path,
    full_size: tuple[int, int],
    image_dir: str | None,
    downscale: float,
    target_width: int | None,
) -> tuple[Path, tuple[int, int] | None]:
    """Pick the image folder to read and the (height, width) to resize to (None = keep its own
    size); full_size: (height, width) of the photos poses_bounds.npy describes.

    image_dir wins; otherwise the folder whose images already have the wanted width
    (images_<downscale> first), else the smallest larger folder resized down (or the largest
    one resized up when none is larger)."""
    full_h, full_w = full_size
    if image_dir is not None:
        folder = data_dir / image_dir
        if not folder.is_dir():
            found = sorted(p.name for p in data_dir.iterdir() if _FOLDER_RE.match(p.name))
            raise DataError(
                f"image folder {folder} does not exist; set data.image_dir to one of {found}."
            )
        if target_width is None:
            return folder, None
        return folder, scaled_size(full_h, full_w, target_width, 1.0)

    want_h, want_w = scaled_size(full_h, full_w, target_width, downscale)
    sizes = {}
    for sub in sorted(data_dir.iterdir()):
        if sub.is_dir() and _FOLDER_RE.match(sub.name):
            size = _first_image_size(sub)
            if size is not None:
                sizes[sub] = size
    if not sizes:
        raise DataError(
            f"{data_dir} has no image folder (images, images_<N> or images_<W>x<H>) with images; "
            "point data.data_dir at an LLFF scene folder."
        )
    if target_width is None and float(downscale).is_integer():
        named = data_dir / f"images_{int(downscale)}"
        if named in sizes:
            return named, None
    for sub, (h, w) in sizes.items():
        if w == want_w and abs(h - want_h) <= 1:
            return sub, None
    larger = [s for s in sizes if sizes[s][1] >= want_w]
    if larger:
        source = min(larger, key=lambda s: sizes[s][1])
    else:
        source = max(sizes, key=lambda s: sizes[s][1])
    return source, (want_h, want_w)


def largest_image_folder(data_dir: Path, n_images: int, size: tuple[int, int]) -> list[Path]:
    """The highest-resolution images of an LLFF scene (for feature extraction): files of the
    widest image folder holding exactly `n_images` images with the aspect ratio of `size`
    (height, width), in sorted name order; [] when no folder qualifies."""
    best, best_width = [], 0
    for sub in sorted(data_dir.iterdir()):
        if not (sub.is_dir() and _FOLDER_RE.match(sub.name)):
            continue
        files = list_images(sub)
        found = _first_image_size(sub) if len(files) == n_images else None
        if found is not None and found[1] > best_width and same_aspect(found, size):
            best, best_width = files, found[1]
    return best


def load_llff(
    data_dir: str | Path,
    image_dir: str | None = None,
    downscale: float = 8,
    target_width: int | None = None,
    test_every: int = 8,
    name: str | None = None,
) -> SceneData:
    """Read an LLFF scene folder (see module docstring for the world frame).

    Row i of poses_bounds.npy belongs to the i-th image in sorted file-name order; hwf is for
    the full-resolution photos, so the focal is scaled by image size / full size."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"scene folder {data_dir} does not exist; check data.data_dir.")
    pb_path = data_dir / "poses_bounds.npy"
    if not pb_path.is_file():
        raise DataError(
            f"{pb_path} is missing; an LLFF scene needs it (use data.type folder for photos "
            "without poses)."
        )
    try:
        poses_bounds = np.load(pb_path).astype(np.float64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {pb_path} ({e}); restore the file.") from None
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or not np.isfinite(poses_bounds).all():
        raise DataError(
            f"{pb_path} has shape {poses_bounds.shape} or non-finite values; expected finite "
            "(N, 17) rows of [3x5 pose | near far]."
        )
    poses = poses_bounds[:, :15].reshape(-1, 3, 5)
    bounds = poses_bounds[:, 15:17]
    full_h, full_w, focal_full = poses[0, :, 4]
    full_size = (int(round(full_h)), int(round(full_w)))

    folder, size = choose_image_folder(data_dir, full_size, image_dir, downscale, target_width)
    paths = list_images(folder)
    if not paths:
        raise DataError(f"image folder {folder} holds no images (.png, .jpg); check the scene.")
    if len(paths) != len(poses):
        raise DataError(
            f"{pb_path} has {len(poses)} pose rows but {folder} holds {len(paths)} images; "
            "each image needs exactly one row (row i = i-th image in sorted name order)."
        )
    images = load_images(paths, size)
    n, h, w = images.shape[:3]
    if not same_aspect(full_size, (h, w)):
        raise DataError(
            f"images in {folder} are {w}x{h} but {pb_path} says the photos are "
            f"{full_size[1]}x{full_size[0]}; use an image folder with the same aspect ratio."
        )

    c2w = llff_to_opencv(poses[:, :, :4])
    if bounds.min() <= 0:
        raise DataError(f"{pb_path} has non-positive near bounds; regenerate it.")
    scale = 1.0 / (bounds.min() * BOUND_FACTOR)
    c2w[:, :3, 3] *= scale
    bounds = bounds * scale
    world_from_avg = rigid_inverse(average_pose(c2w))
    c2w = world_from_avg @ c2w

    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = focal_full * w / full_w
    K[:, 1, 1] = focal_full * h / full_h
    K[:, 0, 2] = w / 2.0
    K[:, 1, 2] = h / 2.0
    K[:, 2, 2] = 1.0

    test_ids = list(range(0, n, test_every)) if test_every and test_every > 0 else []
    held_out = set(test_ids)
    train_ids = [i for i in range(n) if i not in held_out]
    world_from_input = world_from_avg @ np.diag([scale, scale, scale, 1.0])
    return SceneData(
        name=name or data_dir.name,
        images=torch.from_numpy(images),
        image_names=[p.name for p in paths],
        train_ids=train_ids,
        test_ids=test_ids,
        c2w_gt=torch.from_numpy(c2w.astype(np.float32)),
        K_gt=torch.from_numpy(K.astype(np.float32)),
        near=float(bounds.min()),
        far=float(bounds.max()),
        forward_facing=True,
        extras={
            "image_dir": str(folder),
            "bounds": torch.from_numpy(bounds.astype(np.float32)),
            "hwf_full": (float(full_h), float(full_w), float(focal_full)),
            # Maps points of poses_bounds.npy's world (x_input) to ours: x = T @ [x_input, 1].
            "world_from_input": torch.from_numpy(world_from_input.astype(np.float32)),
            "scale": float(scale),
            # Highest-resolution version of each image (feature tracks extract SIFT there).
            "feature_images": [str(p) for p in largest_image_folder(data_dir, n, (h, w)) or paths],
        },
    )
