"""`load_scene(data_cfg)`: the one entry point from the config's `data` section to a SceneData."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dataio.colmap_model import load_colmap
from dataio.demo import ensure_demo_scene
from dataio.dtu import load_dtu
from dataio.folder import load_folder
from dataio.llff import load_llff
from dataio.scene import SceneData, choose_views
from dataio.transforms import load_transforms
from utils.config import require_keys
from utils.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEMO_DIR = REPO_ROOT / ".cache" / "demo_scene"
DATA_TYPES = ("demo", "llff", "dtu", "folder", "transforms", "colmap")
SPLIT_BY_TEST_EVERY = ("demo", "llff", "transforms", "colmap")

# The keys of configs/base.yaml's data section that load_scene reads (base.yaml holds the
# defaults; a caller passes the whole section, e.g. utils.config.load_config(...).data).
DATA_KEYS = (
    "type",
    "data_dir",
    "image_dir",
    "colmap_model",
    "downscale",
    "target_width",
    "test_every",
    "train_views",
    "test_views",
    "use_masks",
    "max_images",
    "video_stride",
    "video_blur_margin",
    "demo_views",
    "demo_size",
)


def resolve_data_path(path: str | Path) -> Path:
    """A data path as written in a config: relative to the working directory, or else to the
    repository root (so configs with ../shared/data/... work from any directory)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    from_root = REPO_ROOT / path
    return from_root if from_root.exists() else path


def _require_dir(cfg: Mapping, kind: str) -> Path:
    if not cfg["data_dir"]:
        raise DataError(f"data.data_dir is not set; point it at the {kind} scene to load.")
    path = resolve_data_path(cfg["data_dir"])
    if not path.exists():
        raise DataError(f"data.data_dir {path} does not exist; check the path.")
    return path


def load_scene(data_cfg: Mapping) -> SceneData:
    """Load the scene the config's `data` section describes: the whole section as
    utils.config.load_config gives it (base.yaml holds the defaults). Raises DataError with one
    sentence on bad input."""
    cfg = require_keys(data_cfg, DATA_KEYS, "data")
    kind = cfg["type"]
    if kind == "demo":
        size = cfg["demo_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise DataError(f"data.demo_size must be [width, height], got {size}.")
        folder = resolve_data_path(cfg["data_dir"]) if cfg["data_dir"] else DEFAULT_DEMO_DIR
        # data.demo_size is [width, height]
        ensure_demo_scene(folder, int(cfg["demo_views"]), int(size[1]), int(size[0]))
        scene = load_llff(
            folder, image_dir="images", downscale=1, test_every=cfg["test_every"], name="demo"
        )
    elif kind == "llff":
        scene = load_llff(
            _require_dir(cfg, kind),
            image_dir=cfg["image_dir"],
            downscale=cfg["downscale"],
            target_width=cfg["target_width"],
            test_every=cfg["test_every"],
        )
    elif kind == "dtu":
        scene = load_dtu(
            _require_dir(cfg, kind),
            train_views=cfg["train_views"],
            test_views=cfg["test_views"],
            use_masks=cfg["use_masks"],
        )
    elif kind == "folder":
        scene = load_folder(
            _require_dir(cfg, kind),
            image_dir=cfg["image_dir"],
            downscale=cfg["downscale"],
            target_width=cfg["target_width"],
            max_images=cfg["max_images"],
            video_stride=cfg["video_stride"],
            video_blur_margin=cfg["video_blur_margin"],
        )
    elif kind == "transforms":
        scene = load_transforms(
            _require_dir(cfg, kind),
            downscale=cfg["downscale"],
            target_width=cfg["target_width"],
            test_every=cfg["test_every"],
        )
    elif kind == "colmap":
        data_dir = _require_dir(cfg, kind)
        model = cfg["colmap_model"]
        if model and (data_dir / model).is_dir():
            model = data_dir / model
        scene = load_colmap(
            data_dir,
            model_dir=resolve_data_path(model) if model else None,
            image_dir=cfg["image_dir"],
            downscale=cfg["downscale"],
            target_width=cfg["target_width"],
            test_every=cfg["test_every"],
        )
    else:
        raise DataError(f"unknown data.type {kind!r}; use one of {', '.join(DATA_TYPES)}.")
    if kind != "dtu" and (cfg["train_views"] is not None or cfg["test_views"] is not None):
        scene = choose_views(scene, cfg["train_views"], cfg["test_views"])  # dtu: its protocol
    if not scene.train_ids:
        raise DataError(no_training_view(cfg, scene))
    check_scene(scene)
    return scene


def no_training_view(cfg: Mapping, scene: SceneData) -> str:
    """Why the split left no view to train on, naming the data key that did it."""
    where, n = f"scene {scene.name!r}", scene.n_images
    if cfg["train_views"] is not None:
        return (
            f"data.train_views {list(cfg['train_views'])} names no view of {where}, so there is "
            "nothing to train on; list the views to train on, or null for every view not held out."
        )
    if cfg["test_views"] is not None:
        return (
            f"data.test_views holds out all {n} views of {where}, so no view is left to train "
            "on; hold out fewer or set data.train_views."
        )
    if cfg["type"] in SPLIT_BY_TEST_EVERY and cfg["test_every"] == 1:
        return (
            f"data.test_every 1 holds out every view of {where}, so no view is left to train on; "
            "use 0 (no held-out views) or >= 2."
        )
    return (
        f"{where} marks every view as a held-out view in its own files, so no view is left to "
        "train on; set data.train_views."
    )


def check_scene(scene: SceneData) -> None:
    """Checks every reader's output must pass. Bad input data raises DataError naming the scene;
    a broken shape invariant is a reader bug and raises ValueError."""
    where = f"scene {scene.name!r}"
    images = scene.images
    n = images.shape[0]
    shapes = {
        "images": (tuple(images.shape), (n, scene.H, scene.W, 3) if images.ndim == 4 else None),
        "image_names": ((len(scene.image_names),), (n,)),
        "c2w_gt": (None if scene.c2w_gt is None else tuple(scene.c2w_gt.shape), (n, 4, 4)),
        "K_gt": (None if scene.K_gt is None else tuple(scene.K_gt.shape), (n, 3, 3)),
        "masks": (
            None if scene.masks is None else tuple(scene.masks.shape),
            tuple(images.shape[:3]),
        ),
    }
    for key, (got, want) in shapes.items():
        if got is not None and got != want:
            raise ValueError(f"{where}: {key} has shape {got}, expected {want} (reader bug).")
    if n < 2:
        raise DataError(f"{where} has {n} image; pose optimisation needs at least 2.")
    ids = list(scene.train_ids) + list(scene.test_ids)
    if not scene.train_ids or any(not 0 <= i < n for i in ids):
        raise DataError(f"{where}: train/test ids {ids} must be non-empty and within 0..{n - 1}.")
    if set(scene.train_ids) & set(scene.test_ids):
        raise DataError(f"{where}: a view is both a train and a test view; keep it in one.")
    if not 0 < scene.near < scene.far:
        raise DataError(
            f"{where}: bounds near {scene.near} / far {scene.far} must satisfy 0 < near < far; "
            "check the pose file's bounds."
        )
    if scene.c2w_gt is not None:
        c2w = scene.c2w_gt.double().numpy()
        rot = c2w[:, :3, :3]
        finite = np.isfinite(c2w).all()
        if not finite or np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max() > 1e-3:
            raise DataError(
                f"{where}: camera poses are not finite rigid transforms; check the pose file."
            )
        if (np.linalg.det(rot) < 0).any():
            raise DataError(
                f"{where}: a camera rotation is a reflection; check the pose file's axes."
            )
