"""Stage 1 of the feature tracks: the images SIFT runs on, and the pycolmap database holding
their keypoints and verified matches.

SIFT (pycolmap, one orientation per keypoint) runs on the highest resolution the dataset offers
(`scene.extras["feature_images"]`) or on the training images themselves, then exhaustive
matching with two-view geometric verification (RANSAC on F, `ransac_max_error` pixels of the
extraction images); the verified inlier matches and F are read back from the database. The
database is built once per (training images, extraction and matching settings) and cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataio.images import same_aspect
from dataio.scene import SceneData
from utils.config import require_keys
from utils.errors import DataError
from utils.io import atomic_path, write_atomic

# Bump when the tracks built from the same inputs change, so cached tracks are rebuilt.
TRACKS_VERSION = 1


# Keys that change the feature database (extraction and matching); the others only the tracks.
DATABASE_KEYS = (
    "resolution",
    "max_num_features",
    "peak_threshold",
    "ransac_max_error",
    "min_num_inliers",
    "sift_affine_shape",
    "sift_domain_size_pooling",
    "guided_matching",
)
# The data-side keys of configs/base.yaml's tracks section: the database keys, then the keys that
# change only the tracks built from it (every one of them is in the tracks cache key).
SETTING_KEYS = (
    *DATABASE_KEYS,
    "epipolar_check",
    "epipolar_max_error",
    "flow",
    "flow_stride",
    "flow_fb_max_error",
)

# Our camera model is a pinhole with the principal point at the centre; COLMAP's SIMPLE_RADIAL
# adds one distortion term, which LLFF's own poses were estimated with.
COLMAP_CAMERA_MODEL = "SIMPLE_RADIAL"
RANDOM_SEED = 0


def track_settings(cfg: Mapping) -> dict:
    """The data-side track settings (SETTING_KEYS) from the config's tracks section, checked.

    cfg: the whole section as utils.config.load_config gives it (base.yaml holds the defaults;
    nothing here re-declares them)."""
    s = require_keys(cfg, SETTING_KEYS, "tracks")
    for key in ("max_num_features", "min_num_inliers", "flow_stride"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise DataError(f"tracks.{key} must be a positive integer, got {s[key]!r}.")
    for key in ("peak_threshold", "ransac_max_error", "epipolar_max_error", "flow_fb_max_error"):
        if not isinstance(s[key], (int, float)) or s[key] <= 0:
            raise DataError(f"tracks.{key} must be a positive number, got {s[key]!r}.")
    for key in (
        "epipolar_check",
        "flow",
        "sift_affine_shape",
        "sift_domain_size_pooling",
        "guided_matching",
    ):
        if not isinstance(s[key], bool):
            raise DataError(f"tracks.{key} must be true or false, got {s[key]!r}.")
    return s


def cache_key(obj) -> str:
    """Short stable hash of a json-able object, for cache file names."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def quiet_colmap():
    """COLMAP logs every image and block at INFO level, and warns about using every core on
    each extraction: keep its errors only (ours say what went wrong). glog's minloglevel does
    not reach every message (the bundle adjuster's headings print regardless), so the C++ side's
    stderr is also captured: its error lines (E..., F...) are printed afterwards, everything it
    wrote when the block raises."""
    import pycolmap

    before = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(before, 2)
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            pycolmap.logging.minloglevel = before
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            keep = lines if failed else [line for line in lines if line[:1] in ("E", "F")]
            if keep:
                print("\n".join(keep), file=sys.stderr)


@dataclass
class FeatureSet:
    """The images SIFT ran on for the training views, and the database holding its output.

    root: folder given to COLMAP; names[k]: training view k's image relative to root (its name
    in the database); src_size: (n_train, 2) width, height of those images (per axis x, y, as
    the keypoints' (u, v); the one (x, y)-ordered size here); db_path: database.
    """

    root: Path
    names: list[str]
    src_size: np.ndarray
    db_path: Path
    description: str
    seconds: float = 0.0  # spent extracting and matching (0 when the database was reused)

    def train_from_src(self, scene: SceneData) -> np.ndarray:
        """(n_train, 2) per-axis factors taking source pixels to training pixels."""
        return np.array([scene.W, scene.H], dtype=np.float64) / self.src_size


def _upright_size(path: Path) -> tuple[tuple[int, int], bool]:
    """(height, width) of a photo as COLMAP reads it, and whether its EXIF orientation is not
    the identity (COLMAP ignores EXIF orientation, our reader applies it)."""
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            return im.size[::-1], orientation != 1  # PIL's size is (width, height)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace or remove it.") from None


def _write_png(pixels: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 -> PNG, atomically."""
    write_atomic(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def _feature_images(scene: SceneData, resolution: str, cache_dir: Path):
    """Choose the image SIFT runs on for every training view.

    Returns (root, names, src_size (n_train, 2), description). `highest` takes
    scene.extras["feature_images"] where the file exists, matches the training aspect ratio and
    needs no EXIF rotation; any other view (and every view for `training`) uses its training
    image, written as a PNG into cache_dir."""
    H, W = scene.H, scene.W
    listed = scene.extras.get("feature_images") or []
    paths: list[Path | None] = []
    sizes = []
    for k, i in enumerate(scene.train_ids):
        path = Path(listed[i]).resolve() if resolution == "highest" and i < len(listed) else None
        size = None  # per axis (x, y), as the keypoints (u, v)
        # One file per view: COLMAP's database aborts the process on a repeated image name.
        if path is not None and path.is_file() and path not in paths:
            (h, w), rotated = _upright_size(path)
            size = (w, h)
            if rotated or not same_aspect((h, w), (H, W)):
                path = None
        else:
            path = None
        if path is None:
            pixels = np.round(np.clip(scene.images[i].numpy(), 0.0, 1.0) * 255.0).astype(np.uint8)
            # Named by content: a cache folder shared by experiments never serves stale pixels.
            digest = hashlib.sha1(pixels.tobytes()).hexdigest()[:12]
            train_dir = cache_dir / f"train_images_{W}x{H}"
            train_dir.mkdir(parents=True, exist_ok=True)
            path = train_dir / f"{k:04d}-{Path(scene.image_names[i]).stem}-{digest}.png"
            if not path.is_file():
                _write_png(pixels, path)
            size = (W, H)
        paths.append(path)
        sizes.append(size)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    names = [p.relative_to(root).as_posix() for p in paths]
    src_size = np.array(sizes, dtype=np.float64)
    widths = sorted({int(w) for w in src_size[:, 0]})
    description = (
        f"SIFT on {'x'.join(str(int(v)) for v in src_size[0])} images in {root.name}/"
        if len(widths) == 1
        else f"SIFT on images {widths[0]}-{widths[-1]} px wide under {root.name}/"
    )
    return root, names, src_size, description


def camera_mode(names: list[str], src_size: np.ndarray) -> str:
    """How COLMAP shares cameras between the feature images: one camera (SINGLE) when they
    share a size; one per folder (PER_FOLDER) when each folder holds one size (the same lens at
    two resolutions, as DTU's image_full/ beside image/); else one per image (PER_IMAGE).
    One camera per image would give the mappers one free focal length per view of a single lens
    (49 for DTU's full protocol), a weaker problem that misplaces views more easily."""
    sizes = {tuple(v) for v in np.asarray(src_size).tolist()}
    if len(sizes) == 1:
        return "SINGLE"
    by_folder: dict[str, set] = {}
    for name, size in zip(names, np.asarray(src_size).tolist()):
        by_folder.setdefault(str(Path(name).parent), set()).add(tuple(size))
    return "PER_FOLDER" if all(len(v) == 1 for v in by_folder.values()) else "PER_IMAGE"


def sift_options(s: Mapping, max_num_features: int | None = None):
    """pycolmap's (FeatureExtractionOptions, FeatureMatchingOptions) of the tracks' SIFT from
    the track settings `s` (track_settings); max_num_features: another keypoint budget (eval.py
    --register's). The features of new photos are extracted and matched as the tracks' were."""
    import pycolmap

    extraction = pycolmap.FeatureExtractionOptions()
    budget = s["max_num_features"] if max_num_features is None else max_num_features
    extraction.sift.max_num_features = int(budget)
    extraction.sift.peak_threshold = float(s["peak_threshold"])
    extraction.sift.max_num_orientations = 1  # one keypoint per location: no duplicate tracks
    # Wide baselines: affine-covariant regions and domain-size pooling (COLMAP's options,
    # VLFeat's covariant detector on the CPU) describe a patch seen from another angle better.
    extraction.sift.estimate_affine_shape = bool(s["sift_affine_shape"])
    extraction.sift.domain_size_pooling = bool(s["sift_domain_size_pooling"])
    matching = pycolmap.FeatureMatchingOptions()  # ratio test, distance cap, cross check
    # Guided matching: a second matching pass within the verified two-view geometry.
    matching.guided_matching = bool(s["guided_matching"])
    return extraction, matching


def _extract_and_match(db_path: Path, root: Path, names: list[str], s: dict, mode: str):
    """SIFT on `names` under `root`, exhaustive matching and two-view verification into a new
    database at db_path (written under a temporary name, renamed when complete); mode: the
    cameras' sharing (camera_mode)."""
    import pycolmap

    pycolmap.set_random_seed(RANDOM_SEED)
    extraction, matching = sift_options(s)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = COLMAP_CAMERA_MODEL
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.max_error = float(s["ransac_max_error"])
    verification.ransac.random_seed = RANDOM_SEED
    verification.min_num_inliers = int(s["min_num_inliers"])
    # Sparse wide-baseline pairs have few correct matches among many wrong ones.
    verification.ransac.min_inlier_ratio = 0.1
    with atomic_path(db_path) as tmp, quiet_colmap():
        pycolmap.extract_features(
            tmp,
            root,
            image_names=names,
            camera_mode=getattr(pycolmap.CameraMode, mode),
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        pycolmap.match_exhaustive(
            tmp,
            matching_options=matching,
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )


def feature_database(
    scene: SceneData, cfg: Mapping, cache_dir: Path, log: Callable = print
) -> FeatureSet:
    """The pycolmap database with SIFT features and verified matches of the training views,
    built once per (training images, extraction/matching settings) in cache_dir and reused."""
    s = track_settings(cfg)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    root, names, src_size, description = _feature_images(scene, s["resolution"], cache_dir)
    mode = camera_mode(names, src_size)
    key = cache_key(
        {
            "version": TRACKS_VERSION,
            "train": [scene.image_names[i] for i in scene.train_ids],
            "size": [scene.W, scene.H],  # (x, y) as src_size; the order is part of the key
            "sources": [str(root / n) for n in names],
            "src_size": src_size.tolist(),
            **{k: s[k] for k in DATABASE_KEYS},
            **({"camera_mode": mode} if mode == "PER_FOLDER" else {}),  # the others: implied
        }
    )
    db_path = cache_dir / f"features-{key}.db"
    seconds = 0.0
    if db_path.is_file():
        log(f"tracks: reusing features and matches in {db_path}")
    else:
        t0 = time.perf_counter()
        _extract_and_match(db_path, root, names, s, mode)
        seconds = time.perf_counter() - t0
        log(f"tracks: {description}, extracted and matched in {seconds:.1f} s")
    return FeatureSet(root, names, src_size, db_path, description, seconds)


def read_verified_matches(features: FeatureSet, min_num_inliers: int):
    """Keypoints and verified matches of the training views from the feature database.

    Returns (keypoints, pairs): keypoints[k] (K_k, 2) float64 (u, v) in source pixels of
    training view k; pairs: list of (a, b, matches (m, 2) int64 keypoint indices of a and b,
    F (3, 3) float64 in source pixels with x_b^T F x_a = 0, or None when COLMAP stored none),
    only pairs with at least min_num_inliers matches, strongest (most matches) first."""
    import pycolmap

    index = {name: k for k, name in enumerate(features.names)}
    db = pycolmap.Database.open(features.db_path)
    try:
        to_view = {im.image_id: index[im.name] for im in db.read_all_images() if im.name in index}
        keypoints = [np.zeros((0, 2)) for _ in features.names]
        for image_id, k in to_view.items():
            keypoints[k] = np.asarray(db.read_keypoints(image_id), dtype=np.float64)[:, :2]
        pair_ids, geometries = db.read_two_view_geometries()
        pairs = []
        for pair_id, geometry in zip(pair_ids, geometries):
            id_a, id_b = pycolmap.pair_id_to_image_pair(pair_id)
            matches = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if id_a not in to_view or id_b not in to_view or len(matches) < min_num_inliers:
                continue
            F = np.asarray(geometry.F, dtype=np.float64)
            F = F if np.abs(F).max() > 0 and np.isfinite(F).all() else None
            a, b = to_view[id_a], to_view[id_b]
            if a > b:
                a, b, matches = b, a, matches[:, ::-1]
                F = None if F is None else F.T
            pairs.append((a, b, matches, F))
    finally:
        db.close()
    pairs.sort(key=lambda p: (-len(p[2]), p[0], p[1]))
    return keypoints, pairs
