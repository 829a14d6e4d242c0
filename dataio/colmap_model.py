"""COLMAP scenes: photos plus a sparse model (cameras, images, points3D; .bin or .txt).

Files: the model in `model_dir` (data.colmap_model), else `<data_dir>/sparse/0`, else
`<data_dir>/sparse`; the photos in an image folder of data_dir picked as LLFF's
(dataio.llff.choose_image_folder: data.image_dir, else `images_<downscale>` or the folder whose
images have the wanted size, downscale and target_width counting from the model's camera size).
A model image is its name (a path relative to the folder) or, in a downscaled copy, the same
name with another extension. Only registered images (those with a pose) are read, in name order;
every test_every-th is a test view, as LLFF's.

Cameras: COLMAP's world-to-camera poses already use OpenCV camera axes. SIMPLE_PINHOLE, PINHOLE,
SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV without its rational terms (k4 k5 k6 = 0) give K
(pixel centres at +0.5, as ours) and OpenCV distortion (k1 k2 p1 p2 k3, those the models have)
kept in extras["distortion"] as transforms.json's (k1 k2 p1 p2 removed from the photos with the gt /
noisy_gt starts: sfm/initialise.py).

World frame: as transforms.json's (dataio.transforms.input_world_frame). A forward-facing capture
is scaled as LLFF's from the depths of the points each image sees (its 0.1 and 99.9 percentile,
as LLFF's imgs2poses); without points the scale is transforms.json's guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dataio.images import IMAGE_EXTENSIONS, load_images, same_aspect
from dataio.llff import choose_image_folder
from dataio.scene import SceneData
from dataio.transforms import has_alpha, input_world_frame
from geometry.frames import move_cameras, similarity_scale
from geometry.poses import rigid_inverse
from utils.errors import DataError

# COLMAP camera model -> names of its parameters (COLMAP's order); SIMPLE_* share one focal.
CAMERA_PARAMS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")
# FULL_OPENCV's rational terms (a denominator 1 + k4 r^2 + k5 r^4 + k6 r^6) have no OpenCV
# polynomial equivalent here.
RATIONAL_KEYS = ("k4", "k5", "k6")
# Percentiles of the point depths an image sees that give its near and far bound (LLFF's).
NEAR_PERCENTILE, FAR_PERCENTILE = 0.1, 99.9


def find_model_dir(data_dir: Path, model_dir: Path | None = None) -> Path:
    """The folder of the sparse model: model_dir, else data_dir/sparse/0, else data_dir/sparse.
    Raises DataError when none holds a model."""
    if model_dir is not None:
        candidates = [Path(model_dir)]
    else:
        candidates = [data_dir / "sparse" / "0", data_dir / "sparse"]
    for folder in candidates:
        if any((folder / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return folder
    where = " or ".join(str(c) for c in candidates)
    raise DataError(
        f"no COLMAP sparse model (cameras.bin or cameras.txt) in {where}; run COLMAP's mapper or "
        "set data.colmap_model to the model's folder."
    )


def read_reconstruction(model_dir: Path):
    """The pycolmap.Reconstruction in model_dir; DataError when COLMAP cannot read it."""
    import pycolmap

    try:
        return pycolmap.Reconstruction(str(model_dir))
    except (ValueError, RuntimeError) as e:
        raise DataError(f"cannot read the COLMAP model in {model_dir} ({e}); restore it.") from None


def camera_intrinsics(camera) -> tuple[np.ndarray, dict[str, float]]:
    """(K (3, 3) at the camera's width x height, {distortion key: value}) of a pycolmap camera;
    DataError for a model this reader does not handle."""
    model = camera.model.name
    if model not in CAMERA_PARAMS:
        raise DataError(
            f"COLMAP camera {camera.camera_id} has model {model}; posefree reads "
            f"{', '.join(CAMERA_PARAMS)} (undistort the images with COLMAP's image_undistorter)."
        )
    params = dict(zip(CAMERA_PARAMS[model], (float(p) for p in camera.params)))
    if any(params.get(key, 0.0) != 0.0 for key in RATIONAL_KEYS):
        raise DataError(
            f"COLMAP camera {camera.camera_id} is a FULL_OPENCV camera with rational terms "
            "k4 k5 k6; posefree reads its polynomial terms only (refine it as OPENCV)."
        )
    fx, fy = params.get("fx", params.get("f")), params.get("fy", params.get("f"))
    K = np.array([[fx, 0.0, params["cx"]], [0.0, fy, params["cy"]], [0.0, 0.0, 1.0]])
    return K, {key: params[key] for key in DISTORTION_KEYS if key in params}


def _image_file(folder: Path, name: str) -> Path | None:
    """A model image in folder: its name or, for a downscaled copy, its name with another image
    extension; None when neither is there."""
    path = folder / name
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        for candidate in (path.with_suffix(ext), path.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def depth_bounds(rec, images, c2w: np.ndarray) -> np.ndarray | None:
    """(N, 2) near / far depth of the model's points each image sees (LLFF's percentiles of
    those in front of it), or None when an image sees none."""
    index = {im.image_id: k for k, im in enumerate(images)}
    xyz, seen_by = [], []
    for point in rec.points3D.values():
        for element in point.track.elements:
            if element.image_id in index:
                xyz.append(point.xyz)
                seen_by.append(index[element.image_id])
    if not xyz:
        return None
    xyz, seen_by = np.asarray(xyz), np.asarray(seen_by)
    # Depth along each camera's optical axis (OpenCV z forward).
    depth = ((xyz - c2w[seen_by, :3, 3]) * c2w[seen_by, :3, 2]).sum(-1)
    bounds = np.zeros((len(images), 2))
    for k in range(len(images)):
        z = depth[(seen_by == k) & (depth > 0)]
        if not len(z):
            return None
        bounds[k] = np.percentile(z, NEAR_PERCENTILE), np.percentile(z, FAR_PERCENTILE)
    return bounds


def load_colmap(
    data_dir: str | Path,
    model_dir: str | Path | None = None,
    image_dir: str | None = None,
    downscale: float = 1,
    target_width: int | None = None,
    test_every: int = 8,
    name: str | None = None,
) -> SceneData:
    """Read a COLMAP scene (see the module docstring for the files and world frame)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"scene folder {data_dir} does not exist; check data.data_dir.")
    model_dir = find_model_dir(data_dir, None if model_dir is None else Path(model_dir))
    rec = read_reconstruction(model_dir)
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if len(images) < 2:
        raise DataError(
            f"the COLMAP model in {model_dir} has {len(images)} registered image(s); pose "
            "optimisation needs at least 2."
        )
    cameras = [rec.cameras[im.camera_id] for im in images]
    intrinsics = [camera_intrinsics(cam) for cam in cameras]
    full_size = (int(cameras[0].height), int(cameras[0].width))

    folder, size = choose_image_folder(data_dir, full_size, image_dir, downscale, target_width)
    names = [im.name for im in images]
    paths = [_image_file(folder, name) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of the COLMAP model are not in {folder} (e.g. "
            f"{missing[0]}); add them or set data.image_dir to the folder COLMAP ran on."
        )
    pixels = load_images(paths, size)
    n, H, W = pixels.shape[:3]

    K = np.zeros((n, 3, 3))
    for i, (cam, (K_cam, _)) in enumerate(zip(cameras, intrinsics)):
        if not same_aspect((cam.height, cam.width), (H, W)):
            raise DataError(
                f"COLMAP camera {cam.camera_id} is {cam.width}x{cam.height} but the images in "
                f"{folder} are {W}x{H}; use an image folder with the camera's aspect ratio."
            )
        # Pixel centres at +0.5 in COLMAP and here, so the principal point scales like the focal.
        K[i] = np.diag([W / cam.width, H / cam.height, 1.0]) @ K_cam

    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i, im in enumerate(images):
        # COLMAP stores world-to-camera (cam_from_world), in OpenCV camera axes.
        c2w[i, :3] = rigid_inverse(np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]]))[:3]
    bounds = depth_bounds(rec, images, c2w)
    bounded = has_alpha(paths[0])
    world_from_input, near, far, forward = input_world_frame(c2w, bounded, bounds)
    c2w_ours = move_cameras(world_from_input, c2w)

    test_ids = list(range(0, n, test_every)) if test_every and test_every > 0 else []
    train_ids = [i for i in range(n) if i not in set(test_ids)]
    keys = [k for k in DISTORTION_KEYS if any(k in dist for _, dist in intrinsics)]
    distortion = {k: torch.tensor([dist.get(k, 0.0) for _, dist in intrinsics]) for k in keys}
    full_res = [_image_file(data_dir / "images", name) for name in names]
    extras = {
        "image_dir": str(folder),
        # Maps points of the model's world (x_input) to ours: x = T @ [x_input, 1].
        "world_from_input": torch.from_numpy(world_from_input.astype(np.float32)),
        "scale": similarity_scale(world_from_input),
        # OpenCV distortion per image (the keys the cameras' models have; k1 k2 p1 p2: see above).
        "distortion": distortion,
        "camera_model": cameras[0].model.name,
        # The photos COLMAP ran on where <data_dir>/images holds them all (feature tracks
        # extract SIFT there), else those read.
        "feature_images": [str(p) for p in (paths if None in full_res else full_res)],
    }
    return SceneData(
        name=name or data_dir.name,
        images=torch.from_numpy(pixels),
        image_names=[p.relative_to(folder).as_posix() for p in paths],
        train_ids=train_ids,
        test_ids=test_ids,
        c2w_gt=torch.from_numpy(c2w_ours.astype(np.float32)),
        K_gt=torch.from_numpy(K.astype(np.float32)),
        near=near,
        far=far,
        forward_facing=forward,
        unbounded=not forward and not bounded,
        extras=extras,
    )
