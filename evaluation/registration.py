"""Registering new photos against a trained run: estimate the pose, in the experiment's frame,
of photos that were not trained on.

Each photo is read and resized to the training size. Its start is either given (a JSON file) or
found from SIFT (pycolmap, CPU, extracted and matched with the feature tracks' options,
dataio/tracks/features.py sift_options): the training view with the most verified matches
(ratio test, cross check, then a fundamental-matrix RANSAC) is the nearest view; the matched
keypoints of that view, lifted to 3D with the depth the model renders there, give a PnP pose
(sfm/pnp.py, the PnP cameras.init auto places views with). Of the nearest view's pose and the
PnP pose, the one whose render fits the photo better is refined by the same photometric pose
optimisation as the held-out views (model frozen).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from dataio.export import export_cameras
from dataio.images import list_images, read_image, resize_image, same_aspect
from dataio.scene import SceneData
from dataio.tracks.features import sift_options, track_settings
from evaluation.heldout import (
    learned_intrinsics,
    photometric_mse,
    pose_change,
    render_rgb,
    save_png,
    side_by_side,
    training_cameras,
)
from evaluation.tto import frozen, refine_pose
from geometry.alignment import HEADLINE_ALIGNMENT, align, apply_similarity, trajectory_unit
from geometry.frames import CV_GL_FLIP
from geometry.rotations import geodesic_angle
from sfm.pnp import absolute_pose
from utils.errors import DataError

# NDC ray parameter beyond which a rendered depth is "at infinity" (no point to lift).
NDC_FAR_LIMIT = 0.98


# -------------------------------------------------------------------------------- photos
def read_photos(folder: str | Path, height: int, width: int) -> tuple[np.ndarray, list[str]]:
    """Every image in `folder` as (N, height, width, 3) float32 in [0, 1], sorted by name, with
    the file names. Raises DataError when the folder is missing, holds no images or a photo's
    aspect ratio differs from the training images'."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--register folder {folder} does not exist; give a folder of photos.")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"--register folder {folder} holds no images (.jpg, .png, ...).")
    images = np.empty((len(paths), height, width, 3), dtype=np.float32)
    for i, path in enumerate(paths):
        img = read_image(path)
        if not same_aspect((height, width), img.shape[:2]):
            raise DataError(
                f"photo {path} is {img.shape[1]}x{img.shape[0]} but the training images are "
                f"{width}x{height}; crop it to their aspect ratio."
            )
        images[i] = resize_image(img, height, width)
    return images, [p.name for p in paths]


def read_init_poses(path: str | Path, names: list[str]) -> dict[str, np.ndarray]:
    """Starting poses (4, 4) OpenCV c2w in the experiment's frame for every photo in `names`.

    Accepts the transforms.json this project exports ({"frames": [{"file_path",
    "transform_matrix" (OpenGL c2w)}]}) or a mapping {file name: 4x4 or 3x4 OpenCV c2w}. Names
    match with or without their extension. Raises DataError naming what is missing or bad."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"--init_pose_json {path} does not exist; check the path.") from None
    except (OSError, ValueError) as e:
        raise DataError(f"--init_pose_json {path} is not readable JSON ({e}).") from None
    poses = {}
    try:
        if isinstance(data, dict) and "frames" in data:
            for frame in data["frames"]:
                # OpenGL camera axes -> OpenCV (the flip is its own inverse).
                poses[str(frame["file_path"])] = np.asarray(frame["transform_matrix"]) @ CV_GL_FLIP
        elif isinstance(data, dict):
            poses = {str(k): np.asarray(v, dtype=np.float64) for k, v in data.items()}
        else:
            raise ValueError("not a mapping")
        poses = {k: _c2w_from_json_matrix(v) for k, v in poses.items()}
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"--init_pose_json {path} must be a transforms.json or a mapping from file name to a "
            "4x4 OpenCV camera-to-world matrix."
        ) from None
    by_stem = {Path(k).stem: v for k, v in poses.items()}
    out, missing = {}, []
    for name in names:
        pose = poses.get(name, by_stem.get(Path(name).stem))
        if pose is None:
            missing.append(name)
        else:
            out[name] = pose
    if missing:
        raise DataError(
            f"--init_pose_json {path} gives no pose for {', '.join(missing[:3])}; add them or "
            "leave the option out to start from SIFT matches."
        )
    return out


def _c2w_from_json_matrix(m) -> np.ndarray:
    """A 3x4 or 4x4 camera-to-world read from JSON -> (4, 4) float64; ValueError when it has
    another shape or a non-finite entry."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
        raise ValueError("bad matrix")
    c2w = np.eye(4)
    c2w[:3] = m[:3]
    return c2w


# ---------------------------------------------------------------------------------- SIFT
def sift_extractor_and_matcher(tracks_cfg, max_num_features: int):
    """pycolmap's CPU SIFT extractor and matcher with the experiment's track options (the
    tracks section of its config) and a budget of max_num_features keypoints per image."""
    import pycolmap

    extraction, matching = sift_options(track_settings(tracks_cfg), max_num_features)
    return (
        pycolmap.FeatureExtractor.create(extraction, device=pycolmap.Device.cpu),
        pycolmap.FeatureMatcher.create(matching, device=pycolmap.Device.cpu),
    )


def extract_sift(extractor, image: np.ndarray):
    """(H, W, 3) float image in [0, 1] -> (uv (K, 2) float64 keypoint positions with pixel
    centres at +0.5 (COLMAP's convention, as ours), pycolmap keypoints, descriptors)."""
    gray = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = extractor.extract_from_float32_array(np.ascontiguousarray(gray))
    uv = np.array([[k.x, k.y] for k in keypoints], dtype=np.float64).reshape(-1, 2)
    return uv, keypoints, descriptors


def verified_matches(matcher, feat_a, feat_b, ransac_px: float) -> np.ndarray:
    """(M, 2) keypoint index pairs between two images that pass the ratio test, the cross check
    and a fundamental-matrix RANSAC (ransac_px pixels); empty when fewer than 8 match."""
    if len(feat_a[0]) == 0 or len(feat_b[0]) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    matches = np.asarray(
        matcher.match(feat_a[1], feat_a[2], feat_b[1], feat_b[2]), dtype=np.int64
    ).reshape(-1, 2)
    if len(matches) < 8:
        return np.zeros((0, 2), dtype=np.int64)
    pa, pb = feat_a[0][matches[:, 0]], feat_b[0][matches[:, 1]]
    _, inliers = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, float(ransac_px), 0.999)
    if inliers is None:
        return np.zeros((0, 2), dtype=np.int64)
    return matches[inliers.ravel().astype(bool)]


def lift_pixels(model, c2w, K, uv: np.ndarray, progress) -> tuple[np.ndarray, np.ndarray]:
    """World points (M, 3) at the depth the model renders for pixels uv (M, 2) of a camera
    (c2w (4, 4), K (3, 3) on the model's device), and a (M,) mask of usable ones (opaque,
    finite, not at infinity)."""
    device = c2w.device
    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
    ids = torch.zeros(len(uv_t), dtype=torch.long, device=device)
    with torch.no_grad(), frozen(model):
        o, d, v = model.rays(ids, uv_t, c2w.float()[None], K.float()[None])
        out = model.render_rays(o, d, v, progress, perturb=False)
        points = model.points_at(o, d, out["t"], K.float()[None].expand(len(uv_t), 3, 3))
    ok = (out["acc"] > 0.5) & torch.isfinite(points).all(-1)
    if model.use_ndc:
        ok &= out["t"] < NDC_FAR_LIMIT
    return points.cpu().double().numpy(), ok.cpu().numpy()


# --------------------------------------------------------------------------- registration
def register_photos(
    exp_dir,
    cfg,
    scene: SceneData,
    model,
    device,
    folder,
    init_pose_json=None,
    log=print,
    step: int | None = None,
) -> dict:
    """Estimate the poses of the photos in `folder` in the experiment's frame.

    Writes <exp_dir>/registered/: the cameras in the export formats of the training cameras
    (transforms.json, poses_bounds.npy, colmap/), render/<name>.png (each photo rendered at
    its estimated pose) and render/<name>_vs_photo.png, and registration.json (start, matches,
    fit before / after refinement; with ground truth also each pose mapped into the
    ground-truth frame by the alignment of the training cameras). Returns that record."""
    ec = cfg.eval
    exp_dir = Path(exp_dir)
    out_dir = exp_dir / "registered"
    progress = None if step is None else min(step / max(cfg.training.num_iters, 1), 1.0)
    images, names = read_photos(folder, scene.H, scene.W)
    starts = read_init_poses(init_pose_json, names) if init_pose_json else None
    K = learned_intrinsics(model)
    c2w_train, _, _ = training_cameras(model)
    sift_start = None if starts else SiftStart(model, scene, c2w_train, K, cfg, progress)
    records, c2w_out = [], []
    for photo, name in zip(images, names):
        target = torch.from_numpy(photo).to(device)
        record = {"name": name}
        if starts is not None:
            c2w0 = torch.as_tensor(starts[name], dtype=torch.float32, device=device)
            record["start"] = "init_pose_json"
        else:
            c2w0 = sift_start(photo, record)
        mse0 = photometric_mse(model, target, c2w0, K, progress, seed=cfg.seed)
        c2w1, _ = refine_pose(
            model,
            target,
            c2w0,
            K,
            ec.register_iters,
            ec.tto_lr,
            ec.tto_n_rays,
            progress,
            seed=cfg.seed,
        )
        mse1 = photometric_mse(model, target, c2w1, K, progress, seed=cfg.seed)
        rot, trans = pose_change(c2w0.cpu(), c2w1.cpu())
        record.update(
            {
                "start_mse": mse0,
                "refined_mse": mse1,
                "refine_rotation_change_deg": rot,
                "refine_centre_change": trans,
                "c2w": c2w1.cpu().double().tolist(),
            }
        )
        render = render_rgb(model, c2w1, K, progress, cfg.model.chunk)
        stem = Path(name).stem
        save_png(out_dir / "render" / f"{stem}.png", render)
        save_png(out_dir / "render" / f"{stem}_vs_photo.png", side_by_side(render, photo))
        log(
            f"  {name}: start {record['start']}, photometric MSE {mse0:.5f} -> {mse1:.5f} "
            f"after {ec.register_iters} iterations (moved {rot:.2f} deg)"
        )
        records.append(record)
        c2w_out.append(c2w1.cpu().double())
    c2w_all = torch.stack(c2w_out)
    K_all = K.cpu().double().expand(len(names), 3, 3)
    export_cameras(
        out_dir, c2w_all.numpy(), K_all.numpy(), scene.H, scene.W, names, scene.near, scene.far
    )
    result = {
        "frame": "the experiment's learned frame (OpenCV c2w), as poses/ of the training cameras",
        "intrinsics": "learned focal and principal point",
        "iterations": int(ec.register_iters),
        "lr": float(ec.tto_lr),
        "photos": records,
    }
    if scene.c2w_gt is not None:
        s, R, t = align(c2w_train, scene.c2w_gt[scene.train_ids].double(), HEADLINE_ALIGNMENT)
        in_gt = apply_similarity(c2w_all, s, R, t)
        result["ground_truth_frame"] = (
            f"{HEADLINE_ALIGNMENT} alignment of the training cameras (learned -> ground truth)"
        )
        unit = trajectory_unit(scene.c2w_gt[scene.train_ids].double()[:, :3, 3])
        index = {Path(n).name: i for i, n in enumerate(scene.image_names)}
        errors = []
        for record, pose in zip(records, in_gt):
            record["c2w_in_ground_truth_frame"] = pose.tolist()
            i = index.get(Path(record["name"]).name)
            if i is None:
                continue
            # A photo of the scene's own set (e.g. a held-out view): error against its pose.
            gt = scene.c2w_gt[i].double()
            rot = float(torch.rad2deg(geodesic_angle(pose[:3, :3], gt[:3, :3])))
            centre = float((pose[:3, 3] - gt[:3, 3]).norm()) / unit
            record.update({"rotation_error_deg": rot, "centre_error": centre})
            errors.append((rot, centre))
            log(f"  {record['name']}: {rot:.3f} deg, centre {centre:.4f} from its known pose")
        if errors:
            rots, cens = np.array(errors).T
            result["ground_truth_errors"] = {
                "photos": len(errors),
                "rot_median_deg": float(np.median(rots)),
                "rot_max_deg": float(rots.max()),
                "centre_median": float(np.median(cens)),
                "centre_unit": "ground-truth training centres divided by their RMS distance "
                "to their centroid",
            }
    (out_dir / "registration.json").write_text(json.dumps(result, indent=1))
    return result


class SiftStart:
    """Starting poses from SIFT matches to the training views (see the module docstring).

    Training-view features are extracted once; calling it with a photo returns a (4, 4) c2w
    on the model's device and fills `record` with what was found."""

    def __init__(self, model, scene: SceneData, c2w_train, K, cfg, progress):
        ec = cfg.eval
        self.model, self.K, self.ec, self.progress = model, K, ec, progress
        self.c2w_train, self.H, self.W = c2w_train, scene.H, scene.W
        self.names = [scene.image_names[i] for i in scene.train_ids]
        self.images = scene.images[scene.train_ids]
        self.extractor, self.matcher = sift_extractor_and_matcher(cfg.tracks, ec.sift_max_features)
        self.feats = [extract_sift(self.extractor, img.numpy()) for img in self.images]

    def __call__(self, photo: np.ndarray, record: dict) -> torch.Tensor:
        model, K, ec, progress = self.model, self.K, self.ec, self.progress
        device = K.device
        target = torch.from_numpy(photo).to(device)
        feat = extract_sift(self.extractor, photo)
        matches = [verified_matches(self.matcher, feat, tf, ec.ransac_px) for tf in self.feats]
        counts = [len(m) for m in matches]
        record["verified_matches"] = dict(zip(self.names, counts))
        best = int(np.argmax(counts))
        if counts[best] < ec.register_min_matches:
            # Too few matches anywhere: the training image that looks most like the photo.
            diffs = ((self.images - torch.from_numpy(photo)[None]) ** 2).mean(dim=(1, 2, 3))
            best = int(torch.argmin(diffs))
            record["start"] = "nearest view by pixel difference (too few SIFT matches)"
            record["nearest_view"] = self.names[best]
            return self.c2w_train[best].float().to(device)
        record["nearest_view"] = self.names[best]
        c2w_near = self.c2w_train[best].float().to(device)
        m = matches[best]
        points, ok = lift_pixels(model, c2w_near, K, self.feats[best][0][m[:, 1]], progress)
        k = K.cpu().double().numpy()
        c2w_pnp, n_in = absolute_pose(
            feat[0][m[ok, 0]],
            points[ok],
            (k[0, 0], k[1, 1]),
            k[:2, 2],
            self.W,
            self.H,
            ec.ransac_px,
        )
        record["pnp_inliers"] = n_in
        if c2w_pnp is None or n_in < ec.register_min_matches:
            record["start"] = "nearest view (PnP failed)"
            return c2w_near
        c2w_pnp = torch.as_tensor(c2w_pnp, dtype=torch.float32, device=device)
        # PnP on rendered depth is only as good as the field there: keep the better fit.
        if photometric_mse(model, target, c2w_pnp, K, progress) <= photometric_mse(
            model, target, c2w_near, K, progress
        ):
            record["start"] = "PnP on the nearest view's rendered depth"
            return c2w_pnp
        record["start"] = "nearest view (its pose fits better than PnP's)"
        return c2w_near
