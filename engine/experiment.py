"""Building a run from a config: device, cameras, model, optimisers; the experiment directory.

Shared by train.py and the later entry points (render.py, eval.py), so that loading an
experiment is one function, not a copy in every script.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from dataio.loaders import load_scene
from dataio.scene import SceneData
from engine.checkpoint import load_checkpoint
from engine.lock import LOCK_FILE, ExperimentLock, Holder, LockHeld, lock_holder
from models.cameras import Cameras
from models.scene_model import SceneModel
from sfm.start import apply_saved_start
from utils.config import check_expname, load_saved_config
from utils.errors import CheckpointError, ConfigError


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


def resolve_autocast(name: str, device: torch.device, encoding: str = "frequency") -> str:
    """training.autocast: none | bf16 | auto. auto = bf16 where it runs natively (bf16_is_fast)
    and pays: on a CUDA GPU for any field; on a CPU only for the frequency MLP, whose step is
    mostly matrix multiplies. The grid field (model.encoding grid) runs float32 on a CPU: its
    lookups run in float32 anyway and its 2x64 decoder's multiplies are too small to gain from
    bf16, while every cast costs; in bf16 its renders were slower and took more memory, and its
    training step was no faster. The grid runs float32 on a CPU with AMX too (not tried
    there)."""
    if name == "auto":
        pays = device.type == "cuda" or encoding != "grid"
        return "bf16" if pays and bf16_is_fast(device) else "none"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_ndc(cfg, scene: SceneData) -> bool:
    space = cfg.model.ray_space
    if space == "auto":
        return scene.forward_facing
    return space == "ndc"


def use_contraction(cfg, scene: SceneData) -> bool:
    """model.contract: null (auto: contract when the rays are euclidean and the scene is
    unbounded, see SceneData.unbounded) | true | false; never with NDC rays."""
    mode = cfg.model.contract
    if mode not in (None, "auto", True, False):
        raise ConfigError(f"model.contract must be null (auto), true or false, not {mode!r}.")
    if use_ndc(cfg, scene):
        if mode is True:
            raise ConfigError(
                "model.contract true needs euclidean rays; set model.ray_space euclidean."
            )
        return False
    return scene.unbounded if mode in (None, "auto") else mode


def needs_tracks(cfg) -> bool:
    """The track loss, the track bundle adjustment and cameras.init auto's scoring use them."""
    c = cfg.cameras.init
    return cfg.training.w_track > 0 or cfg.tracks.ba_iters > 0 or c == "auto"


def tracks_cache_dir(cfg, exp_dir: Path) -> Path:
    return Path(cfg.tracks.cache_dir) if cfg.tracks.cache_dir else Path(exp_dir) / "tracks"


def prepare_tracks(cfg, scene: SceneData, exp_dir: Path, log=print):
    """The scene's feature tracks when the config uses them (training.w_track or
    tracks.ba_iters), built once and cached in <exp>/tracks/ or tracks.cache_dir (a resume
    reads the cache); None otherwise."""
    if not needs_tracks(cfg):
        return None
    from dataio.tracks.build import build_tracks

    return build_tracks(scene, cfg.tracks, tracks_cache_dir(cfg, exp_dir), log=log)


DEPTH_PRIOR_FILE = "depth_prior.npz"


def prepare_depth_prior(cfg, scene: SceneData, model: SceneModel, exp_dir: Path, log=print):
    """(n_train, H, W) float32 tensor of the training views' prior depth (NaN where none) when
    training.w_depth_prior > 0, else None: plane-sweep stereo (sfm/stereo.py) under the
    model's cameras as they stand (the camera start), in the depth the model's rays measure
    (SceneModel.depth_from_t: camera z, or the world z with NDC), computed once and kept in
    <exp>/depth_prior.npz, which a resume reads back."""
    if cfg.training.w_depth_prior <= 0:
        return None
    from sfm.stereo import plane_sweep_depths, world_z
    from utils.io import write_atomic

    s = cfg.depth_prior
    if s.window % 2 == 0:
        raise ConfigError(f"depth_prior.window must be odd, not {s.window}.")
    path = Path(exp_dir) / DEPTH_PRIOR_FILE
    names = [scene.image_names[i] for i in scene.train_ids]
    shape = (len(names), scene.H, scene.W)
    if path.is_file():
        with np.load(path) as saved:
            if saved["depth"].shape == shape and list(saved["names"]) == names:
                log(f"depth prior: {path} (kept from before)")
                return torch.from_numpy(saved["depth"])
    near, far = (scene.near, scene.far) if model.use_ndc else (model.near, model.far)
    near = max(float(near), 1e-3 * float(far))
    with torch.no_grad():
        c2w = model.cam_param.c2w().double().cpu().numpy()
        K = model.cam_param.K().double().cpu().numpy()
    log(
        f"depth prior: plane-sweep stereo over {s.n_depths} depths in [{near:.3g}, {far:.3g}], "
        f"each view against its {s.neighbours} nearest"
    )
    depth = plane_sweep_depths(
        scene.images[scene.train_ids].numpy(),
        K,
        c2w,
        near,
        float(far),
        s.n_depths,
        s.window,
        s.neighbours,
        s.min_score,
        s.max_rel_error,
        log=log,
    )
    if model.use_ndc:  # NDC's depth is the world z (rendered t -> depth_from_t)
        depth = world_z(depth, K, c2w).astype(np.float32)
    write_atomic(path, lambda f: np.savez(f, depth=depth, names=np.array(names)))
    return torch.from_numpy(depth)


def build_cameras(cfg, scene: SceneData) -> Cameras:
    """The training views' cameras at identity with NeRF--'s focal (fx = W, fy = H, about 53
    degrees of field of view; with square pixels the one focal starts at W) and a centred
    principal point. Starts other than this are sfm.initialise.init_cameras' job; a saved
    experiment restores its cameras from the checkpoint."""
    n, H, W = len(scene.train_ids), scene.H, scene.W
    c = cfg.cameras
    try:
        return Cameras(
            torch.eye(4).repeat(n, 1, 1),
            torch.tensor([[float(W), float(H)]]).repeat(n, 1),
            torch.tensor([[W / 2, H / 2]]).repeat(n, 1),
            H,
            W,
            c.so3_representation,
            c.focal_parameterisation,
            c.focal_mode,
            c.learn_R,
            c.learn_t,
            c.learn_focal,
            c.square_pixels,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_model(cfg, scene: SceneData, device: torch.device) -> SceneModel:
    autocast = resolve_autocast(cfg.training.autocast, device, cfg.model.encoding)
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
        use_contraction(cfg, scene),
    )
    return model.to(device)


def exp_dir_of(cfg) -> Path:
    """<log_root>/<expname>; expname is one folder name (checked again for hand-built configs)."""
    check_expname(cfg.expname, "the config")
    return Path(cfg.log_root) / cfg.expname


def _name_max(path: Path) -> int:
    """The longest folder name, in bytes, that the filesystem under `path` allows."""
    for folder in path.parents:  # the nearest that exists
        try:
            if folder.is_dir():
                return os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            continue
    return 255


def check_name_lengths(path: Path, last: str = "--expname", rest: str = "--log_root") -> None:
    """Refuse a path with a folder name longer than the filesystem allows (255 bytes on Linux's
    filesystems) before anything touches it: the OS would stop with a traceback instead.
    `last` / `rest` name the options that gave the last folder name / the ones before it."""
    limit = _name_max(path)
    for i, part in enumerate(path.parts):
        size = len(os.fsencode(part))
        if size > limit:
            key = last if i == len(path.parts) - 1 else rest
            raise ConfigError(
                f"{key} has a folder name of {size} bytes ('{part[:20]}...'), but this "
                f"filesystem allows at most {limit} bytes per name; choose a shorter {key}."
            )


def check_experiment_dir(exp_dir: Path) -> None:
    """Refuse a --load_dir that is not an experiment directory (no config.yaml), in one sentence."""
    check_name_lengths(exp_dir, "--load_dir", "--load_dir")
    if not (exp_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{exp_dir} is not an experiment directory (no config.yaml); check --load_dir."
        )


def without_checkpoint(exp_dir: Path) -> bool:
    """An experiment directory (config.yaml) that holds no checkpoint yet."""
    return (
        not exp_dir.is_symlink()
        and (exp_dir / "config.yaml").is_file()
        and not any((exp_dir / "ckpts").glob("*.pt"))
    )


def in_use(exp_dir: Path, holder: Holder) -> str:
    """'process <pid> (<program>) is training <exp_dir>': who holds the experiment's lock."""
    who = "another process" if holder.pid is None else f"process {holder.pid}"
    doing = {"train.py": "training", "eval.py": "evaluating"}.get(holder.program, "writing")
    if holder.program == "train.py" and without_checkpoint(exp_dir):
        doing = "setting up"
    return f"{who} ({holder.program}) is {doing} {exp_dir}"


def take_lock(lock: ExperimentLock, advice: str) -> None:
    """Take the experiment's lock for this process, or refuse in one sentence naming the live
    process that holds it followed by `advice` (what to do instead)."""
    try:
        lock.acquire()
    except LockHeld as held:
        raise ConfigError(f"{in_use(lock.exp_dir, held.holder)}; {advice}") from None
    except OSError as err:
        raise ConfigError(
            f"cannot write the lock file {lock.exp_dir / LOCK_FILE} ({err.strerror}); check the "
            "folder's permissions."
        ) from None


def lock_experiment(exp_dir: Path, program: str, advice: str) -> ExperimentLock:
    """The lock of an existing experiment (--load_dir), taken; see take_lock."""
    check_experiment_dir(exp_dir)
    lock = ExperimentLock(exp_dir, program)
    take_lock(lock, advice)
    return lock


def unfinished_set_up(exp_dir: Path) -> bool:
    """An experiment directory whose set-up never reached its first checkpoint (interrupted or
    killed while the features, the camera start or the depth prior were computed): it holds
    config.yaml and no checkpoint, so nothing trained is in it, and no live process holds its
    lock (the same command started twice must not remove the first one's work)."""
    return without_checkpoint(exp_dir) and lock_holder(exp_dir) is None


def no_checkpoint_yet(exp_dir: Path) -> str:
    """The sentence for resuming, evaluating or rendering an experiment without a checkpoint."""
    holder = lock_holder(exp_dir)
    if holder is not None:
        return (
            f"{exp_dir} has no checkpoint yet: {in_use(exp_dir, holder)}; try again once it has "
            "started training."
        )
    return (
        f"{exp_dir} has no checkpoint: its set-up was interrupted before training began. Run "
        "the command that created it again (it starts the set-up afresh; features and matches "
        "already computed are reused)."
    )


def _contents(exp_dir: Path) -> list[Path]:
    """What the directory holds besides its lock file."""
    return [p for p in exp_dir.iterdir() if p.name != LOCK_FILE]


def _new_exp_advice(exp_dir: Path, overwrite: bool) -> str:
    if overwrite:
        return (
            "--training:overwrite will not remove an experiment under a live process, so stop "
            "it first or choose another --expname."
        )
    return f"choose another --expname, or resume with --load_dir {exp_dir} once it has ended."


def check_new_exp_dir(exp_dir: Path, overwrite: bool) -> None:
    """Refuse a path that cannot become a new experiment directory; nothing is removed here.

    Free: missing, an empty directory, or an experiment whose set-up never finished
    (unfinished_set_up: it is started again). With overwrite also an experiment directory (one
    that holds config.yaml); never a file, a link, a directory of something else, or an
    experiment that a live process holds (engine/lock.py)."""
    check_name_lengths(exp_dir)
    for path in (exp_dir, *exp_dir.parents):
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise ConfigError(
                f"{path} exists and is not a directory, so experiment {exp_dir} cannot be "
                "created there; choose another --expname or --log_root."
            )
    holder = lock_holder(exp_dir) if exp_dir.is_dir() and not exp_dir.is_symlink() else None
    if holder is not None:
        raise ConfigError(f"{in_use(exp_dir, holder)}; {_new_exp_advice(exp_dir, overwrite)}")
    if not exp_dir.exists() or not _contents(exp_dir) or unfinished_set_up(exp_dir):
        return
    if not overwrite:
        raise ConfigError(
            f"experiment directory {exp_dir} already exists; resume it with --load_dir {exp_dir}, "
            "choose another --expname, or pass --training:overwrite true to replace it."
        )
    if exp_dir.is_symlink() or not (exp_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{exp_dir} is not an experiment directory (no config.yaml, or a link), so "
            "--training:overwrite will not remove it; choose another --expname or --log_root."
        )


def _remove_all_but(exp_dir: Path, keep: set[str]) -> None:
    for entry in exp_dir.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def create_exp_dir(exp_dir: Path, overwrite: bool, lock: ExperimentLock | None = None) -> None:
    """Create the experiment directory and take its lock; with overwrite, first empty the
    experiment there. `lock` (this run's, see train.py) stays held when this returns; without
    one a lock is held only while the directory is prepared."""
    check_new_exp_dir(exp_dir, overwrite)  # nothing is created or removed unless this passes
    exp_dir.mkdir(parents=True, exist_ok=True)
    own = lock is None
    lock = ExperimentLock(exp_dir, "train.py") if own else lock
    take_lock(lock, _new_exp_advice(exp_dir, overwrite))
    try:
        check_new_exp_dir(exp_dir, overwrite)  # again under the lock: nobody changed it since
        if unfinished_set_up(exp_dir):
            # its tracks/ cache stays: keyed by photos and settings and written atomically
            print(f"{exp_dir}: its set-up never reached a checkpoint; starting it again")
            _remove_all_but(exp_dir, {"tracks", LOCK_FILE})
        elif overwrite and _contents(exp_dir):
            # emptied rather than removed: the lock file in it keeps other writers out meanwhile
            _remove_all_but(exp_dir, {LOCK_FILE})
    finally:
        if own:
            lock.release()


def load_experiment(
    exp_dir: Path,
    ckpt_name: str = "latest.pt",
    device: str | None = None,
    render_grid: bool = True,
):
    """Rebuild a trained run from its directory for render.py / eval.py / plots.

    Reads `<exp_dir>/config.yaml` (never base.yaml defaults alone), loads the scene, builds the
    model and fills it from `ckpts/<ckpt_name>` (latest.pt works while training still runs: it
    is written atomically). Returns (cfg, scene, model, step); the model is in eval mode.
    render_grid: the occupancy grid rebuilt for rendering (render_occupancy); False keeps the
    checkpoint's, which renders the same image more slowly (view.py rebuilds it meanwhile).
    """
    exp_dir = Path(exp_dir)
    check_experiment_dir(exp_dir)
    if without_checkpoint(exp_dir):
        raise CheckpointError(no_checkpoint_yet(exp_dir))
    cfg = load_saved_config(exp_dir / "config.yaml", {"device": device} if device else None)
    dev = resolve_device(cfg.device)
    scene = load_scene(cfg.data)
    apply_saved_start(scene, exp_dir)  # the views and photos as the camera start left them
    model = build_model(cfg, scene, dev)
    ckpt = load_checkpoint(exp_dir / "ckpts" / ckpt_name, map_location=dev)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {exp_dir / 'ckpts' / ckpt_name} does not match its config ({err})."
        ) from None
    model.eval()
    if render_grid:
        render_occupancy(model, cfg)
    return cfg, scene, model, int(ckpt["step"])


def render_occupancy(model, cfg) -> bool:
    """The occupancy grid of a loaded model rebuilt for rendering; False when it has none."""
    if model.occupancy is None or not bool(torch.isfinite(model.occupancy.density).all()):
        return False
    # the field's own, not training's running maximum (latest.pt), at the render resolution
    model.rebuild_occupancy(cfg.model.occupancy_render_resolution)
    return True
