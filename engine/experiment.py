"""Building a run from a config: device, cameras, model, optimisers; the experiment directory.

Shared by train.py and the later entry points (render.py, eval.py), so that loading an
experiment is one function, not a copy in every script.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from dataio.scene import SceneData
from geometry.rotations import se3_exp
from models.cameras import Cameras
from models.scene_model import SceneModel
from utils.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{name}' was asked for but torch sees no CUDA GPU; use device: cpu."
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device '{name}' is not a torch device; use auto, cpu or cuda:N."
        ) from None


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matrix multiplies run natively: a CUDA GPU that supports bfloat16, or a
    CPU with AVX512-BF16 or AMX (elsewhere CPU bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_autocast(name: str, device: torch.device) -> str:
    """training.autocast: none | bf16 | auto (bf16 where it runs natively, else none)."""
    if name not in ("auto", "none", "bf16"):
        raise ConfigError(f"training.autocast must be auto, none or bf16, not '{name}'.")
    if name == "auto":
        return "bf16" if bf16_is_fast(device) else "none"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_ndc(cfg, scene: SceneData) -> bool:
    space = cfg.model.ray_space
    if space == "auto":
        return scene.forward_facing
    if space not in ("ndc", "euclidean"):
        raise ConfigError(f"model.ray_space must be auto, ndc or euclidean, not '{space}'.")
    return space == "ndc"


def initial_poses(cfg, scene: SceneData) -> torch.Tensor:
    """(n_train, 4, 4) initial c2w of the training cameras per cameras.init."""
    n = len(scene.train_ids)
    mode = cfg.cameras.init
    if mode in ("identity", "colmap"):
        # colmap: a placeholder until train.py runs COLMAP into the experiment directory
        # (init_from_colmap); a saved experiment restores c2w_init from its checkpoint.
        return torch.eye(4).repeat(n, 1, 1)
    if mode not in ("gt", "noisy_gt"):
        raise ConfigError(f"cameras.init must be identity, gt, noisy_gt or colmap, not '{mode}'.")
    if scene.c2w_gt is None:
        raise ConfigError(
            f"cameras.init: {mode} needs ground-truth poses, which {scene.name} does not have; "
            "use cameras.init: identity."
        )
    c2w_gt = scene.c2w_gt[scene.train_ids].float()
    if mode == "gt":
        return c2w_gt.clone()
    # BARF/SPARF protocol: w2c_init = w2c_gt @ exp(xi), xi ~ N(0, sigma^2 I6), seeded.
    seed = cfg.cameras.noise_seed if cfg.cameras.noise_seed is not None else cfg.seed
    gen = torch.Generator().manual_seed(int(seed))
    xi = torch.randn(n, 6, generator=gen, dtype=torch.float64) * cfg.cameras.noise_sigma
    w2c_init = torch.linalg.inv(c2w_gt.double()) @ se3_exp(xi)
    return torch.linalg.inv(w2c_init).float()


def build_cameras(cfg, scene: SceneData) -> Cameras:
    n = len(scene.train_ids)
    H, W = scene.H, scene.W
    if cfg.cameras.focal_init == "gt":
        if scene.K_gt is None:
            raise ConfigError(
                f"cameras.focal_init: gt needs known intrinsics, which {scene.name} does not "
                "have; use cameras.focal_init: default."
            )
        K = scene.K_gt[scene.train_ids].float()
        focal, principal = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1), K[:, :2, 2]
    elif cfg.cameras.focal_init == "default":
        # NeRF--: fx = W, fy = H (about 53 degrees field of view), centred principal point;
        # with square pixels the one focal starts at W.
        focal = torch.tensor([[float(W), float(H)]]).repeat(n, 1)
        principal = torch.tensor([[W / 2, H / 2]]).repeat(n, 1)
    else:
        raise ConfigError(
            f"cameras.focal_init must be default or gt, not '{cfg.cameras.focal_init}'."
        )
    c = cfg.cameras
    try:
        return Cameras(
            initial_poses(cfg, scene),
            focal,
            principal,
            H,
            W,
            c.so3_representation,
            c.focal_param,
            c.focal_mode,
            c.learn_R,
            c.learn_t,
            c.learn_focal,
            c.square_pixels,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def init_from_colmap(cfg, scene: SceneData, model: SceneModel, exp_dir: Path, log=print) -> None:
    """cameras.init: colmap: start from pycolmap's incremental reconstruction on the same
    feature database as the tracks (cached in <exp>/tracks/); its focal too, unless
    cameras.focal_init is gt."""
    from engine.trainer import tracks_cache_dir
    from sfm.colmap import colmap_init

    c2w, focal, registered = colmap_init(scene, cfg.tracks, tracks_cache_dir(cfg, exp_dir), log=log)
    keep_focal = cfg.cameras.focal_init == "gt"
    model.cam_param.set_initial(c2w, None if keep_focal else focal)
    log(
        f"cameras.init colmap: {sum(registered)}/{len(registered)} training images registered"
        + ("" if keep_focal else f", focal {float(focal[:, 0].mean()):.1f} px")
    )


def build_model(cfg, scene: SceneData, device: torch.device) -> SceneModel:
    if cfg.model.framework not in ("NeRF", "SirenNeRF"):
        raise ConfigError(
            f"model.framework must be NeRF or SirenNeRF, not '{cfg.model.framework}'."
        )
    autocast = resolve_autocast(cfg.training.autocast, device)
    near = cfg.model.near if cfg.model.near is not None else scene.near
    far = cfg.model.far if cfg.model.far is not None else scene.far
    model = SceneModel(
        cfg.model,
        build_cameras(cfg, scene),
        use_ndc(cfg, scene),
        near,
        far,
        autocast,
        cfg.training.compile,
    )
    return model.to(device)


def exp_dir_of(cfg) -> Path:
    return Path(cfg.log_root) / cfg.expname


def check_new_exp_dir(exp_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse an experiment directory unless asked to; nothing is removed here."""
    if exp_dir.exists() and any(exp_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"experiment directory {exp_dir} already exists; resume it with --load_dir {exp_dir}, "
            "choose another --expname, or pass --training:overwrite true to replace it."
        )


def create_exp_dir(exp_dir: Path, overwrite: bool) -> None:
    if exp_dir.exists() and overwrite:
        shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)


def load_experiment(exp_dir: Path, ckpt_name: str = "latest.pt", device: str | None = None):
    """Rebuild a trained run from its directory for render.py / eval.py / plots.

    Reads `<exp_dir>/config.yaml` (never base.yaml defaults alone), loads the scene, builds the
    model and fills it from `ckpts/<ckpt_name>` (latest.pt works while training still runs: it
    is written atomically). Returns (cfg, scene, model, step); the model is in eval mode.
    """
    from dataio.loaders import load_scene
    from engine.checkpoint import load_checkpoint
    from utils.config import load_saved_config
    from utils.errors import CheckpointError

    exp_dir = Path(exp_dir)
    if not (exp_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{exp_dir} is not an experiment directory (no config.yaml); check --load_dir."
        )
    cfg = load_saved_config(exp_dir / "config.yaml", {"device": device} if device else None)
    dev = resolve_device(cfg.device)
    scene = load_scene(cfg.data)
    model = build_model(cfg, scene, dev)
    ckpt = load_checkpoint(exp_dir / "ckpts" / ckpt_name, map_location=dev)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {exp_dir / 'ckpts' / ckpt_name} does not match its config ({err})."
        ) from None
    model.eval()
    return cfg, scene, model, int(ckpt["step"])
