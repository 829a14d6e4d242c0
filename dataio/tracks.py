"""Feature tracks for the track loss: SIFT keypoints matched across training views and chained.

Pipeline (CPU, no downloaded weights), run once per experiment and cached in its tracks/ folder:
1. SIFT (pycolmap, one orientation per keypoint) on the highest resolution the dataset offers
   (`scene.extras["feature_images"]`) or on the training images themselves;
2. exhaustive matching with two-view geometric verification (RANSAC on F, `ransac_max_error`
   pixels of the extraction images); the verified inlier matches and F are read back from the
   pycolmap database;
3. optionally dense optical flow (OpenCV DIS) between training images, one correspondence per
   `flow_stride` cell, kept when forward-backward consistent and consistent with the pair's
   epipolar geometry: a second, weaker source for sparse wide-baseline views;
4. union-find over observations (image, point), strongest pairs first, never merging two
   components that share an image, so a track holds at most one observation per image;
5. optionally an epipolar check of every pair inside a track against that pair's F.

Keypoints are scaled from the extraction image to the training image about the top-left image
corner (uv_train = uv_src * W_train / W_src), which keeps the +0.5 pixel-centre convention that
COLMAP's keypoints share with ours (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dataio.images import same_aspect
from dataio.scene import SceneData
from utils.errors import DataError

# Bump when the tracks built from the same inputs change, so cached tracks are rebuilt.
TRACKS_VERSION = 1

# Data-side keys of configs/base.yaml's tracks section and their defaults (for partial dicts).
DEFAULTS = {
    "resolution": "highest",
    "max_num_features": 8192,
    "peak_threshold": 0.02 / 3,
    "ransac_max_error": 1.5,
    "min_num_inliers": 15,
    "epipolar_check": True,
    "epipolar_max_error": 2.0,
    "flow": False,
    "flow_stride": 8,
    "flow_fb_max_error": 1.0,
}
# Keys that change the feature database (extraction and matching); the others only the tracks.
DATABASE_KEYS = (
    "resolution",
    "max_num_features",
    "peak_threshold",
    "ransac_max_error",
    "min_num_inliers",
)
RESOLUTIONS = ("highest", "training")

# Our camera model is a pinhole with the principal point at the centre; COLMAP's SIMPLE_RADIAL
# adds one distortion term, which LLFF's own poses were estimated with.
COLMAP_CAMERA_MODEL = "SIMPLE_RADIAL"
RANDOM_SEED = 0

# Flow pairs: every pair up to this many training views, else each view with its next
# FLOW_NEIGHBOURS views in training order (captures are usually ordered).
FLOW_ALL_PAIRS_MAX_VIEWS = 9
FLOW_NEIGHBOURS = 2
# A flow pair without a SIFT-verified F is kept only when RANSAC on F finds at least this
# fraction of its forward-backward-consistent correspondences consistent: wide-baseline flow
# that is mostly wrong still yields a (wrong) F with some inliers.
FLOW_MIN_INLIER_RATIO = 0.6
# Lucas-Kanade refinement of flow correspondences: window (pixels) and the forward-backward
# round trip it must close to. Small windows measured best (fewer pixels across depth edges):
# on the demo scene 95-98% of refined correspondences lie within 1 px of the truth against 76-80%
# for DIS alone; on DTU scan24 25-28, 93% within 1 px of the ground-truth epipolar line.
FLOW_REFINE_WINDOW = 5
FLOW_REFINE_FB_MAX_ERROR = 0.3


@dataclass
class Tracks:
    """Observations of feature tracks in the training views, sorted by track (each contiguous).

    obs_image: (M,) long, index into the training views (position in scene.train_ids).
    obs_uv:    (M, 2) float32, keypoint (u, v) in pixels of the training images (W x H), pixel
               centres at +0.5, sub-pixel.
    obs_track: (M,) long, track id in 0..n_tracks-1, non-decreasing.
    n_tracks:  number of tracks (each with >= 2 observations, at most one per image).
    stats:     json-able summary of how they were built.
    """

    obs_image: torch.Tensor
    obs_uv: torch.Tensor
    obs_track: torch.Tensor
    n_tracks: int
    stats: dict = field(default_factory=dict)

    def lengths(self) -> torch.Tensor:
        """(n_tracks,) long: observations per track."""
        return torch.bincount(self.obs_track, minlength=self.n_tracks)

    def to(self, device) -> Tracks:
        return Tracks(
            obs_image=self.obs_image.to(device),
            obs_uv=self.obs_uv.to(device),
            obs_track=self.obs_track.to(device),
            n_tracks=self.n_tracks,
            stats=self.stats,
        )


def _settings(cfg: Mapping) -> dict:
    """The data-side track settings from the config's tracks section, checked."""
    s = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
    if s["resolution"] not in RESOLUTIONS:
        raise DataError(
            f"tracks.resolution {s['resolution']!r} is unknown; "
            f"use one of {', '.join(RESOLUTIONS)}."
        )
    for key in ("max_num_features", "min_num_inliers", "flow_stride"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise DataError(f"tracks.{key} must be a positive integer, got {s[key]!r}.")
    for key in ("peak_threshold", "ransac_max_error", "epipolar_max_error", "flow_fb_max_error"):
        if not isinstance(s[key], (int, float)) or s[key] <= 0:
            raise DataError(f"tracks.{key} must be a positive number, got {s[key]!r}.")
    for key in ("epipolar_check", "flow"):
        if not isinstance(s[key], bool):
            raise DataError(f"tracks.{key} must be true or false, got {s[key]!r}.")
    return s


def cache_key(obj) -> str:
    """Short stable hash of a json-able object, for cache file names."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def quiet_colmap():
    """COLMAP logs every image and block at INFO level, and warns about using every core on
    each extraction: keep its errors only (ours say what went wrong)."""
    import pycolmap

    before = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(before, 2)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = before


def _atomic_path(final: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    os.unlink(tmp)
    return Path(tmp)


# ----------------------------------------------------------------------------------------------
# Feature images and the feature database


@dataclass
class FeatureSet:
    """The images SIFT ran on for the training views, and the database holding its output.

    root: folder given to COLMAP; names[k]: training view k's image relative to root (its name
    in the database); src_size: (n_train, 2) width, height of those images; db_path: database.
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
    """(width, height) of a photo as COLMAP reads it, and whether its EXIF orientation is not
    the identity (COLMAP ignores EXIF orientation, our reader applies it)."""
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            return im.size, orientation != 1
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace or remove it.") from None


def _write_png(pixels: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 -> PNG, atomically."""
    tmp = _atomic_path(path).with_suffix(".png")
    Image.fromarray(pixels).save(tmp)
    os.replace(tmp, path)


def _feature_images(scene: SceneData, resolution: str, cache_dir: Path):
    """Choose the image SIFT runs on for every training view.

    Returns (root, names, src_size (n_train, 2), description). `highest` takes
    scene.extras["feature_images"] where the file exists, matches the training aspect ratio and
    needs no EXIF rotation; any other view (and every view for `training`) uses its training
    image, written as a PNG into cache_dir."""
    W, H = scene.W, scene.H
    listed = scene.extras.get("feature_images") or []
    paths: list[Path | None] = []
    sizes = []
    for k, i in enumerate(scene.train_ids):
        path = Path(listed[i]).resolve() if resolution == "highest" and i < len(listed) else None
        size = None
        # One file per view: COLMAP's database aborts the process on a repeated image name.
        if path is not None and path.is_file() and path not in paths:
            size, rotated = _upright_size(path)
            if rotated or not same_aspect(size, (W, H)):
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


def _extract_and_match(db_path: Path, root: Path, names: list[str], s: dict, single: bool):
    """SIFT on `names` under `root`, exhaustive matching and two-view verification into a new
    database at db_path (written under a temporary name, renamed when complete)."""
    import pycolmap

    pycolmap.set_random_seed(RANDOM_SEED)
    tmp = _atomic_path(db_path)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = int(s["max_num_features"])
    extraction.sift.peak_threshold = float(s["peak_threshold"])
    extraction.sift.max_num_orientations = 1  # one keypoint per location: no duplicate tracks
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = COLMAP_CAMERA_MODEL
    matching = pycolmap.FeatureMatchingOptions()
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.max_error = float(s["ransac_max_error"])
    verification.ransac.random_seed = RANDOM_SEED
    verification.min_num_inliers = int(s["min_num_inliers"])
    # Sparse wide-baseline pairs have few correct matches among many wrong ones.
    verification.ransac.min_inlier_ratio = 0.1
    mode = pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE
    try:
        with quiet_colmap():
            pycolmap.extract_features(
                tmp,
                root,
                image_names=names,
                camera_mode=mode,
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
        os.replace(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)


def feature_database(
    scene: SceneData, cfg: Mapping, cache_dir: Path, log: Callable = print
) -> FeatureSet:
    """The pycolmap database with SIFT features and verified matches of the training views,
    built once per (training images, extraction/matching settings) in cache_dir and reused."""
    s = _settings(cfg)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    root, names, src_size, description = _feature_images(scene, s["resolution"], cache_dir)
    key = cache_key(
        {
            "version": TRACKS_VERSION,
            "train": [scene.image_names[i] for i in scene.train_ids],
            "size": [scene.W, scene.H],
            "sources": [str(root / n) for n in names],
            "src_size": src_size.tolist(),
            **{k: s[k] for k in DATABASE_KEYS},
        }
    )
    db_path = cache_dir / f"features-{key}.db"
    seconds = 0.0
    if db_path.is_file():
        log(f"tracks: reusing features and matches in {db_path}")
    else:
        t0 = time.perf_counter()
        single = len({tuple(v) for v in src_size.tolist()}) == 1
        _extract_and_match(db_path, root, names, s, single)
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


# ----------------------------------------------------------------------------------------------
# Geometry helpers (pure)


def scale_fundamental(F_src: np.ndarray, train_from_src_a, train_from_src_b) -> np.ndarray:
    """F (3, 3) between source images of views a and b (x_b^T F x_a = 0) -> F between their
    training images, given each view's per-axis (sx, sy) factor uv_train = uv_src * (sx, sy)."""
    D_a = np.diag([1.0 / train_from_src_a[0], 1.0 / train_from_src_a[1], 1.0])
    D_b = np.diag([1.0 / train_from_src_b[0], 1.0 / train_from_src_b[1], 1.0])
    return D_b.T @ F_src @ D_a


def epipolar_distance(F: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance in pixels: max of the distance of uv_b to the line F x_a and
    of uv_a to the line F^T x_b. F (3, 3) or (P, 3, 3), uv_a / uv_b (P, 2) -> (P,)."""
    x_a = np.concatenate([uv_a, np.ones((len(uv_a), 1))], axis=1)
    x_b = np.concatenate([uv_b, np.ones((len(uv_b), 1))], axis=1)
    line_b = np.einsum("...ij,...j->...i", F, x_a)
    line_a = np.einsum("...ji,...j->...i", F, x_b)
    alg = np.abs((x_b * line_b).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d_b = alg / np.hypot(line_b[:, 0], line_b[:, 1])
        d_a = alg / np.hypot(line_a[:, 0], line_a[:, 1])
    return np.nan_to_num(np.maximum(d_a, d_b), nan=np.inf)


def fundamental_from_cameras(
    K_a: np.ndarray, c2w_a: np.ndarray, K_b: np.ndarray, c2w_b: np.ndarray
) -> np.ndarray:
    """F (3, 3) with x_b^T F x_a = 0 for two pinhole cameras (K (3, 3), OpenCV c2w (4, 4))."""
    b_from_a = np.linalg.inv(c2w_b) @ c2w_a
    R, t = b_from_a[:3, :3], b_from_a[:3, 3]
    t_cross = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    return np.linalg.inv(K_b).T @ t_cross @ R @ np.linalg.inv(K_a)


# ----------------------------------------------------------------------------------------------
# Optical flow correspondences


def _to_gray_u8(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def flow_matches(
    img_a: np.ndarray, img_b: np.ndarray, stride: int, fb_max_error: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense-flow correspondences from image a to image b, one per stride x stride cell.

    img_a, img_b: (H, W, 3) float in [0, 1] (same size). The dense flow a->b (OpenCV DIS,
    coarse to fine, so large motions are found) is read at each cell's centre pixel and the
    flow b->a bilinearly at the landing point; a correspondence is kept when it lands inside b
    and the two flows cancel to within fb_max_error pixels. DIS smooths across depth edges, so
    each survivor is then refined by pyramidal Lucas-Kanade on a small window, forward and
    backward, and kept only when that round trip closes to within FLOW_REFINE_FB_MAX_ERROR (this
    also drops cells without texture, where LK has nothing to lock on).
    Returns uv_a (K, 2), uv_b (K, 2) float64 (pixel centres at +0.5) and the DIS
    forward-backward error (K,)."""
    gray_a, gray_b = _to_gray_u8(img_a), _to_gray_u8(img_b)
    H, W = gray_a.shape
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    forward = dis.calc(gray_a, gray_b, None)
    backward = dis.calc(gray_b, gray_a, None)
    rows, cols = np.mgrid[stride // 2 : H : stride, stride // 2 : W : stride]
    rows, cols = rows.ravel(), cols.ravel()
    uv_a = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)
    flow_ab = forward[rows, cols].astype(np.float64)
    uv_b = uv_a + flow_ab
    # OpenCV's sub-pixel coordinates put pixel centres on integers: theirs = ours - 0.5.
    map_x = (uv_b[:, 0] - 0.5).astype(np.float32)[:, None]
    map_y = (uv_b[:, 1] - 0.5).astype(np.float32)[:, None]
    flow_ba = cv2.remap(
        backward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan
    )[:, 0].astype(np.float64)
    fb_error = np.linalg.norm(flow_ab + flow_ba, axis=1)
    inside = (uv_b[:, 0] > 0) & (uv_b[:, 0] < W) & (uv_b[:, 1] > 0) & (uv_b[:, 1] < H)
    keep = inside & np.isfinite(fb_error) & (fb_error <= fb_max_error)
    uv_a, uv_b, fb_error = uv_a[keep], uv_b[keep], fb_error[keep]
    if not len(uv_a):
        return uv_a, uv_b, fb_error

    lk = {
        "winSize": (FLOW_REFINE_WINDOW, FLOW_REFINE_WINDOW),
        "maxLevel": 1,
        "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        "flags": cv2.OPTFLOW_USE_INITIAL_FLOW,
    }
    # (K, 1, 2) float32 arrays owning their memory: the initial guesses are written in place.
    pts_a = (uv_a - 0.5).astype(np.float32).reshape(-1, 1, 2).copy()
    guess_b = (uv_b - 0.5).astype(np.float32).reshape(-1, 1, 2).copy()
    pts_b, ok_ab, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, pts_a, guess_b, **lk)
    back_a, ok_ba, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, pts_b, pts_a.copy(), **lk)
    refined_b = pts_b[:, 0].astype(np.float64) + 0.5
    round_trip = np.linalg.norm(back_a[:, 0] - pts_a[:, 0], axis=1)
    keep = (ok_ab[:, 0] == 1) & (ok_ba[:, 0] == 1) & (round_trip <= FLOW_REFINE_FB_MAX_ERROR)
    keep &= (refined_b[:, 0] > 0) & (refined_b[:, 0] < W) & (refined_b[:, 1] > 0)
    keep &= refined_b[:, 1] < H
    return uv_a[keep], refined_b[keep], fb_error[keep]


def flow_pairs(n_views: int) -> list[tuple[int, int]]:
    """Training-view pairs (a < b) that get flow: all when few views, else near neighbours."""
    if n_views <= FLOW_ALL_PAIRS_MAX_VIEWS:
        return [(a, b) for a in range(n_views) for b in range(a + 1, n_views)]
    return [
        (a, b) for a in range(n_views) for b in range(a + 1, min(a + 1 + FLOW_NEIGHBOURS, n_views))
    ]


def _verified_flow(uv_a, uv_b, fb, F_train, s: dict):
    """Keep the flow correspondences of one pair that agree with its epipolar geometry: the
    SIFT-verified F when there is one, else an F fitted to them by RANSAC (the pair is dropped
    when too few or too small a fraction agree). Returns (uv_a, uv_b, fb, F or None)."""
    if len(uv_a) < max(8, s["min_num_inliers"]):
        return uv_a[:0], uv_b[:0], fb[:0], None
    if F_train is not None:
        ok = epipolar_distance(F_train, uv_a, uv_b) <= s["epipolar_max_error"]
        F = F_train
    else:
        F, mask = cv2.findFundamentalMat(
            uv_a, uv_b, cv2.FM_RANSAC, float(s["ransac_max_error"]), 0.999, 5000
        )
        if F is None or mask is None or F.shape != (3, 3):
            return uv_a[:0], uv_b[:0], fb[:0], None
        ok = mask.ravel().astype(bool)
        if ok.mean() < FLOW_MIN_INLIER_RATIO:
            ok[:] = False
    if ok.sum() < s["min_num_inliers"]:
        return uv_a[:0], uv_b[:0], fb[:0], None
    return uv_a[ok], uv_b[ok], fb[ok], F


# ----------------------------------------------------------------------------------------------
# Union-find and the epipolar check (pure)


def union_find_tracks(obs_image: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Chain pairwise matches into tracks without ever putting two observations of one image in
    one track.

    obs_image: (N,) int, the image of each observation. edges: (E, 2) int observation indices,
    strongest first: each edge merges its two components unless they already share an image
    (then the weaker edge is dropped). Returns (N,) int64 component labels (an observation's
    smallest member index); singleton components are observations no edge kept."""
    n = len(obs_image)
    parent = np.arange(n)
    images = {i: {int(obs_image[i])} for i in np.unique(edges)} if len(edges) else {}

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in np.asarray(edges, dtype=np.int64).tolist():
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        set_a, set_b = images[ra], images[rb]
        if not set_a.isdisjoint(set_b):
            continue
        if len(set_a) < len(set_b):
            ra, rb, set_a, set_b = rb, ra, set_b, set_a
        parent[rb] = ra
        set_a |= set_b
        del images[rb]
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    # Label = smallest member, so labels do not depend on the union order's root choice.
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, roots, np.arange(n))
    return smallest[roots]


def epipolar_filter(
    obs_image: np.ndarray,
    obs_uv: np.ndarray,
    labels: np.ndarray,
    F_pairs: Mapping[tuple[int, int], np.ndarray],
    max_error: float,
) -> np.ndarray:
    """Check every pair of observations inside each track against its image pair's F and drop,
    track by track, the observation in most violations until none is left.

    obs_image (N,), obs_uv (N, 2) training pixels, labels (N,) track labels; F_pairs maps
    (a, b) with a < b to F (3, 3) in training pixels (x_b^T F x_a = 0); pairs without an F are
    not checked. Returns (N,) bool: observations kept."""
    keep = np.ones(len(labels), dtype=bool)
    if not F_pairs:
        return keep
    n_images = int(obs_image.max()) + 1
    F_table = np.zeros((n_images * n_images, 3, 3))
    has_F = np.zeros(n_images * n_images, dtype=bool)
    for (a, b), F in F_pairs.items():
        F_table[a * n_images + b] = F
        has_F[a * n_images + b] = True
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    lengths = np.diff(np.r_[starts, len(labels)])
    # Every pair (i, j) of observations inside a track, image of i < image of j.
    oi, oj = [], []
    for length in np.unique(lengths[lengths >= 2]):
        first = starts[lengths == length]
        iu, ju = np.triu_indices(length, k=1)
        oi.append(order[first[:, None] + iu[None, :]].ravel())
        oj.append(order[first[:, None] + ju[None, :]].ravel())
    if not oi:
        return keep
    oi, oj = np.concatenate(oi), np.concatenate(oj)
    swap = obs_image[oi] > obs_image[oj]
    oi, oj = np.where(swap, oj, oi), np.where(swap, oi, oj)
    pair = obs_image[oi] * n_images + obs_image[oj]
    checked = has_F[pair]
    oi, oj, pair = oi[checked], oj[checked], pair[checked]
    bad = epipolar_distance(F_table[pair], obs_uv[oi], obs_uv[oj]) > max_error
    bad_i, bad_j = oi[bad], oj[bad]
    by_track: dict[int, list[tuple[int, int]]] = {}
    for i, j in zip(bad_i.tolist(), bad_j.tolist()):
        by_track.setdefault(int(labels[i]), []).append((i, j))
    for violations in by_track.values():
        while violations:
            counts: dict[int, int] = {}
            for i, j in violations:
                counts[i] = counts.get(i, 0) + 1
                counts[j] = counts.get(j, 0) + 1
            # Ties go to the later observation: flow points come after SIFT keypoints.
            worst = max(counts, key=lambda o: (counts[o], o))
            keep[worst] = False
            violations = [(i, j) for i, j in violations if worst not in (i, j)]
    return keep


# ----------------------------------------------------------------------------------------------
# Building, caching, reporting


def _tracks_from_labels(labels: np.ndarray, keep: np.ndarray):
    """Observations to keep (indices, sorted by track) and their track ids 0..T-1 for labels
    (N,) and a keep mask: tracks with fewer than two kept observations disappear."""
    idx = np.flatnonzero(keep)
    lab = labels[idx]
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    valid = counts[inverse] >= 2
    idx, inverse = idx[valid], inverse[valid]
    _, track = np.unique(inverse, return_inverse=True)
    order = np.lexsort((idx, track))
    return idx[order], track[order]


def _summary(stats: dict) -> list[str]:
    hist = " ".join(f"{k}:{v}" for k, v in stats["length_histogram"].items())
    lines = [
        f"tracks: {stats['images']} images, {stats['verified_pairs']}/{stats['pairs']} verified "
        f"pairs ({stats['sift_matches']} SIFT matches"
        + (
            f", flow {stats['flow_matches']} on {stats['flow_pairs']} pairs"
            if stats["flow"]
            else ""
        )
        + f"), {stats['tracks']} tracks, {stats['observations']} observations "
        f"(sift {stats['sources']['sift']}, flow {stats['sources']['flow']}), "
        f"lengths {hist or '-'}, epipolar check dropped {stats['epipolar_dropped']}, "
        f"{stats['seconds']:.1f} s"
    ]
    if stats["images_without_track"]:
        lines.append(
            f"WARN tracks: no track in {len(stats['images_without_track'])} training image(s): "
            f"{', '.join(stats['images_without_track'])}"
        )
    return lines


def _build(scene: SceneData, s: dict, features: FeatureSet) -> Tracks:
    t0 = time.perf_counter()
    n = len(scene.train_ids)
    names = [scene.image_names[i] for i in scene.train_ids]
    train_from_src = features.train_from_src(scene)
    keypoints, pairs = read_verified_matches(features, s["min_num_inliers"])

    # Observations: every keypoint of every view (SIFT), then flow points appended.
    offsets = np.cumsum([0] + [len(k) for k in keypoints])
    obs_image = [np.full(len(k), v, dtype=np.int64) for v, k in enumerate(keypoints)]
    obs_uv = [k * train_from_src[v] for v, k in enumerate(keypoints)]
    obs_source = [np.zeros(offsets[-1], dtype=np.int8)]  # 0 sift, 1 flow
    edges = [np.stack([m[:, 0] + offsets[a], m[:, 1] + offsets[b]], 1) for a, b, m, _ in pairs]
    F_pairs = {
        (a, b): scale_fundamental(F, train_from_src[a], train_from_src[b])
        for a, b, _, F in pairs
        if F is not None
    }
    n_obs = int(offsets[-1])

    flow_stats = {"pairs": 0, "matches": 0}
    if s["flow"]:
        stride = int(s["flow_stride"])
        images = scene.images[scene.train_ids].numpy()
        H, W = scene.H, scene.W
        cells_x = len(range(stride // 2, W, stride))
        grid_ids: dict[int, int] = {}  # view -> first observation id of its flow grid
        flow_edges = []
        for a, b in flow_pairs(n):
            uv_a, uv_b, fb = flow_matches(images[a], images[b], stride, s["flow_fb_max_error"])
            uv_a, uv_b, fb, F = _verified_flow(uv_a, uv_b, fb, F_pairs.get((a, b)), s)
            if not len(uv_a):
                continue
            if a not in grid_ids:
                rows, cols = np.mgrid[stride // 2 : H : stride, stride // 2 : W : stride]
                grid_ids[a] = n_obs
                obs_image.append(np.full(rows.size, a, dtype=np.int64))
                obs_uv.append(np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1))
                obs_source.append(np.ones(rows.size, dtype=np.int8))
                n_obs += rows.size
            cell = ((uv_a[:, 1] - 0.5) // stride) * cells_x + (uv_a[:, 0] - 0.5) // stride
            ids_a = grid_ids[a] + cell.astype(np.int64)
            ids_b = n_obs + np.arange(len(uv_b))
            obs_image.append(np.full(len(uv_b), b, dtype=np.int64))
            obs_uv.append(uv_b)
            obs_source.append(np.ones(len(uv_b), dtype=np.int8))
            n_obs += len(uv_b)
            order = np.argsort(fb, kind="stable")
            flow_edges.append((len(uv_a), np.stack([ids_a[order], ids_b[order]], 1)))
            if (a, b) not in F_pairs and F is not None:
                F_pairs[(a, b)] = F
            flow_stats["pairs"] += 1
            flow_stats["matches"] += len(uv_a)
        # Flow is weaker evidence than SIFT: merged after every SIFT match, strongest pair first.
        flow_edges.sort(key=lambda e: -e[0])
        edges += [e for _, e in flow_edges]

    obs_image = np.concatenate(obs_image)
    obs_uv = np.concatenate(obs_uv).astype(np.float64)
    obs_source = np.concatenate(obs_source)
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    labels = union_find_tracks(obs_image, edges)
    in_edge = np.zeros(len(labels), dtype=bool)
    in_edge[edges.ravel()] = True
    keep = in_edge.copy()
    if s["epipolar_check"]:
        keep &= epipolar_filter(obs_image, obs_uv, labels, F_pairs, s["epipolar_max_error"])
    idx, track = _tracks_from_labels(labels, keep)
    dropped = int(len(_tracks_from_labels(labels, in_edge)[0]) - len(idx))

    n_tracks = int(track.max()) + 1 if len(track) else 0
    lengths = np.bincount(track, minlength=n_tracks)
    seen = np.zeros(n, dtype=bool)
    seen[obs_image[idx]] = True
    sources = obs_source[idx]
    stats = {
        "images": n,
        "feature_images": features.description,
        "pairs": n * (n - 1) // 2,
        "verified_pairs": len(pairs),
        "sift_matches": int(sum(len(p[2]) for p in pairs)),
        "flow": bool(s["flow"]),
        "flow_pairs": flow_stats["pairs"],
        "flow_matches": flow_stats["matches"],
        "tracks": n_tracks,
        "observations": len(idx),
        "length_histogram": {
            str(k): int(v) for k, v in enumerate(np.bincount(lengths)) if v and k >= 2
        },
        "images_without_track": [names[k] for k in np.flatnonzero(~seen)],
        "sources": {"sift": int((sources == 0).sum()), "flow": int((sources == 1).sum())},
        "epipolar_dropped": dropped,
        "extract_match_seconds": round(features.seconds, 2),
        "seconds": 0.0,
    }
    if n_tracks == 0:
        raise DataError(
            f"no feature tracks in the {n} training views of scene {scene.name!r} "
            f"({len(pairs)} verified image pairs); lower tracks.min_num_inliers or "
            "tracks.peak_threshold, turn on tracks.flow, or set training.w_track 0."
        )
    stats["seconds"] = round(features.seconds + time.perf_counter() - t0, 2)
    return Tracks(
        obs_image=torch.from_numpy(obs_image[idx].astype(np.int64)),
        obs_uv=torch.from_numpy(obs_uv[idx].astype(np.float32)),
        obs_track=torch.from_numpy(track.astype(np.int64)),
        n_tracks=n_tracks,
        stats=stats,
    )


def _save(tracks: Tracks, path: Path) -> None:
    tmp = _atomic_path(path)
    with open(tmp, "wb") as f:
        np.savez(
            f,
            obs_image=tracks.obs_image.numpy(),
            obs_uv=tracks.obs_uv.numpy(),
            obs_track=tracks.obs_track.numpy(),
            n_tracks=np.int64(tracks.n_tracks),
            stats=np.array(json.dumps(tracks.stats)),
        )
    os.replace(tmp, path)


def _load(path: Path) -> Tracks:
    with np.load(path) as z:
        return Tracks(
            obs_image=torch.from_numpy(z["obs_image"]),
            obs_uv=torch.from_numpy(z["obs_uv"]),
            obs_track=torch.from_numpy(z["obs_track"]),
            n_tracks=int(z["n_tracks"]),
            stats=json.loads(str(z["stats"])),
        )


def build_tracks(scene: SceneData, cfg: Mapping, cache_dir: Path, log: Callable = print) -> Tracks:
    """Feature tracks of the training views (see the module docstring), built once and cached.

    cfg: the config's tracks section (data-side keys resolution .. flow_fb_max_error; missing
    keys take base.yaml's defaults). The tracks are cached in cache_dir as tracks-<key>.npz,
    the key hashing the training images (names, size, feature sources) and every data-side
    setting; the SIFT database is keyed by the extraction and matching settings only, so a
    changed track setting rebuilds the tracks without extracting again. Logs a summary and a
    WARN naming training images left without a track. Raises DataError when no track exists."""
    s = _settings(cfg)
    cache_dir = Path(cache_dir)
    features = feature_database(scene, s, cache_dir, log)
    key = cache_key({"database": features.db_path.name, "version": TRACKS_VERSION, **s})
    path = cache_dir / f"tracks-{key}.npz"
    if path.is_file():
        tracks = _load(path)
        log(f"tracks: reusing {path}")
    else:
        tracks = _build(scene, s, features)
        _save(tracks, path)
    for line in _summary(tracks.stats):
        log(line)
    return tracks
