"""A training run's set-up around the loop: the experiment's lock, its config (new or resumed),
the scene, the model and trainer, the camera start, the tracks and the depth prior; then the
loop (engine/trainer.py). train.py parses the command line and calls run_training."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dataio.loaders import load_scene
from engine import distributed
from engine.callbacks import default_callbacks
from engine.checkpoint import load_checkpoint
from engine.experiment import (
    build_model,
    check_experiment_dir,
    check_new_exp_dir,
    create_exp_dir,
    exp_dir_of,
    no_checkpoint_yet,
    prepare_depth_prior,
    prepare_tracks,
    resolve_device,
    seed_everything,
    take_lock,
    tracks_cache_dir,
    without_checkpoint,
)
from engine.lock import ExperimentLock
from engine.trainer import Trainer
from sfm.candidates import summary_line
from sfm.initialise import check_camera_init, init_cameras
from sfm.start import apply_saved_start
from utils.config import load_config, load_saved_config, to_yaml
from utils.errors import CheckpointError, ConfigError, DataError
from utils.io import write_text_atomic

# Keys a resume may change: extending a run is common; anything else starts a new experiment.
RESUME_OVERRIDABLE = {"training:num_iters", "device", "num_threads", "training:progress_bar"}


def run_training(
    config: str | None,
    load_dir: str | None,
    overrides: dict,
    callbacks: Callable[[Any], list] | None = None,
) -> int:
    """A new experiment from the config file `config`, or the resume of the experiment in
    `load_dir` (one of them is None), with the command line's `overrides`; `callbacks(cfg)`
    gives the callbacks added to the trainer's periodic work (train.py's pose plot, a
    benchmark's recorder). Returns the exit code (0).

    One writer per experiment: the run holds <exp>/lock.pid (engine/lock.py) from the moment
    it resumes or creates the experiment until it returns or raises (Ctrl-C and a non-finite
    loss included), so --training:overwrite, --load_dir and eval.py on it from another process
    are refused while it trains. Under torchrun rank 0, the one that writes, holds it."""
    if load_dir is not None:
        exp_dir = Path(load_dir)
        check_experiment_dir(exp_dir)
    else:
        cfg = load_config(config, overrides)
        exp_dir = exp_dir_of(cfg)
        check_new_exp_dir(exp_dir, cfg.training.overwrite)
    lock = ExperimentLock(exp_dir, "train.py")
    try:
        if load_dir is not None:
            if distributed.env_world().rank == 0:
                take_lock(lock, "two runs must not write one experiment, so resume once it ends.")
            if without_checkpoint(exp_dir):
                raise CheckpointError(no_checkpoint_yet(exp_dir))
            refused = sorted(set(overrides) - RESUME_OVERRIDABLE)
            if refused:
                raise ConfigError(
                    f"a resume keeps the saved config; {', '.join(refused)} cannot change "
                    f"(allowed: {', '.join(sorted(RESUME_OVERRIDABLE))}). Start a new experiment "
                    "with --training:ckpt_file to change settings."
                )
            cfg = load_saved_config(exp_dir / "config.yaml", overrides)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        # torchrun (WORLD_SIZE > 1): one process per device; nothing to do for a single process.
        with distributed.session(resolve_device(cfg.device)) as device:
            extra = callbacks(cfg) if callbacks is not None else []
            return train_session(cfg, exp_dir, load_dir is not None, device, extra, lock)
    finally:
        lock.release()


def train_session(
    cfg,
    exp_dir: Path,
    resume: bool,
    device: torch.device,
    callbacks: list | None = None,
    lock: ExperimentLock | None = None,
) -> int:
    """Build, prepare and train. Under torchrun every rank runs this; rank 0 alone writes
    (experiment directory, caches, logs, checkpoints) and does the one-off camera start
    (COLMAP, bundle adjustment), whose result every rank then copies. `callbacks` are added
    to the trainer's periodic work (a pose plot, a benchmark's recorder); `lock` is the
    experiment's, taken when a new experiment's directory is created (the caller releases it)."""
    world = distributed.world()
    main = world.rank == 0
    seed_everything(cfg.seed)
    scene = distributed.main_first(lambda: load_scene(cfg.data))  # rank 0 fills any cache
    check_camera_init(cfg, scene)
    tc = cfg.training
    extra = list(callbacks or [])

    def build():
        model = build_model(cfg, scene, device)
        trainer = Trainer(cfg, scene, model, exp_dir, device, default_callbacks(tc) + extra)
        if world.rank > 0:
            seed_everything(cfg.seed + world.rank)  # own ray-sampling stream (rank 0 keeps seed)
        return model, trainer

    if resume:
        latest = exp_dir / "ckpts" / "latest.pt"
        ckpt = load_checkpoint(latest, map_location=device)  # bad: stops before any work
        tracks = distributed.on_main(lambda: prepare_tracks(cfg, scene, exp_dir))
        tracks, _ = apply_saved_start(scene, exp_dir, tracks)  # the views the start kept
        model, trainer = build()
        trainer.resume(latest, ckpt)
        if main:
            print(f"resuming {exp_dir} at step {trainer.step}/{tc.num_iters}")
        if trainer.step >= tc.num_iters:
            if main:
                print("nothing to do: training already reached training.num_iters (raise it).")
            return 0
    else:
        model, trainer = build()
        tracks, loaded = start_experiment(cfg, scene, trainer, exp_dir, lock)
        distributed.barrier()  # rank 0 wrote the camera start for every rank
        names = [scene.image_names[i] for i in scene.train_ids]
        tracks, changes = apply_saved_start(scene, exp_dir, tracks)
        if changes["dropped"] or changes["layout"]:  # fewer cameras or another ray space
            old, gone = model, changes["dropped"]
            model, trainer = build()
            carry_start(old, model, [k for k, name in enumerate(names) if name not in gone])
        else:
            trainer.reload_images()  # the photos as the start left them (undistorted)
        if main and "cam_param" not in loaded:
            say_start_errors(cfg, trainer, changes["dropped"])
        box = None if "field" in loaded else model.fit_grid_box()  # a loaded field keeps its own
        if box is not None and main:
            print(
                f"grid box fitted to the training rays: x, y, z within +-{box[0]:.2f}, "
                f"{box[1]:.2f}, {box[2]:.2f} (NDC)"
            )
    trainer.use_tracks(tracks)
    distributed.broadcast_module(model)  # every rank starts from rank 0's field and cameras
    # rank 0 computes it under the start's cameras; the others read its file
    say = print if main else (lambda *_: None)
    prior = distributed.main_first(lambda: prepare_depth_prior(cfg, scene, model, exp_dir, say))
    trainer.sampler.use_depth_prior(prior)
    if not resume:
        trainer.save()  # step 0: the camera start is kept whatever happens next
    if main:
        n_train, n_test = len(scene.train_ids), len(scene.test_ids)
        procs = f" x {world.size} processes" if world.size > 1 else ""
        print(
            f"{scene.name}: {n_train} training / {n_test} test views at {scene.W}x{scene.H}, "
            f"{'NDC' if model.use_ndc else 'euclidean'} rays, {cfg.model.framework}, "
            f"device {device}{procs}; experiment {exp_dir}"
        )
    trainer.train()
    start = summary_line(exp_dir) if main else None
    if start is not None:
        print(start)
    return 0


def say_start_errors(cfg, trainer: Trainer, dropped: list[str]) -> None:
    """The start's camera errors, on the training views the run keeps (the same cameras the
    final report's "initial poses" line measures), naming the views the start dropped."""
    report = trainer.camera_metrics()
    if report is None or not (cfg.tracks.ba_iters > 0 or cfg.cameras.init == "auto"):
        return
    r, i = report["rotation-aware"], report["rotation-aware"]["identity_start"]
    focal = report.get("focal_error_percent")
    print(
        f"starting cameras: rotation median {r['rot_median_deg']:.3f} deg, max "
        f"{r['rot_max_deg']:.3f} (rotation-aware; identity start {i['rot_median_deg']:.3f}), "
        f"centre-only {report['centre-only']['rot_median_deg']:.3f} deg"
        + ("" if focal is None else f", focal error {focal:.2f} %")
        + f"; {r['n_cameras']} training views"
        + (f" (dropped by the start, not measured: {', '.join(dropped)})" if dropped else "")
    )


def carry_start(old, new, keep: list[int]) -> None:
    """`new` (a model of the views `keep` of `old`) starts where `old` stood: those cameras'
    start, and the field (a refine recipe may have loaded it)."""
    cams = old.cam_param
    with torch.no_grad():
        new.cam_param.set_initial(
            c2w_init=cams.c2w()[keep], focal=cams.focal_px()[keep], principal=cams.principal[keep]
        )
    field = {k: v for k, v in old.state_dict().items() if not k.startswith("cam_param.")}
    new.load_state_dict(field, strict=False)


def start_experiment(
    cfg, scene, trainer: Trainer, exp_dir: Path, lock: ExperimentLock | None = None
):
    """A new experiment: the refine checkpoint (checked before anything is written), the
    directory (its lock taken into `lock`) and its config, the tracks, and the starting
    cameras (sfm.initialise).
    Returns the tracks (None when the config uses none) and the parts of the model the refine
    checkpoint gave (e.g. ["cam_param", "field"]; [] without one)."""
    main = distributed.world().rank == 0
    loaded = []
    if cfg.training.ckpt_file:
        loaded = trainer.load_pretrained(
            Path(cfg.training.ckpt_file),
            cfg.training.ckpt_only_use_keys,
            cfg.training.ckpt_ignore_keys,
        )
        if main:
            print(f"refine: loaded {', '.join(loaded)} from {cfg.training.ckpt_file}")
    distributed.barrier()  # every rank checked the directory before rank 0 creates it

    def create():
        create_exp_dir(exp_dir, cfg.training.overwrite, lock)
        write_text_atomic(exp_dir / "config.yaml", to_yaml(cfg))

    distributed.on_main(create, share=False)

    def start_cameras():
        if "cam_param" in loaded:
            print(f"cameras from {cfg.training.ckpt_file}; cameras.init is not applied")
            return
        init_cameras(
            cfg,
            scene,
            trainer.model.cam_param,
            tracks,
            tracks_cache_dir(cfg, exp_dir),
            log=tqdm.write,
            on_round=trainer.bundle_adjustment_round,
            out_dir=exp_dir / "sfm",
        )

    try:  # features, tracks and COLMAP need the directory (their cache lives there)
        tracks = distributed.on_main(lambda: prepare_tracks(cfg, scene, exp_dir, log=tqdm.write))
        distributed.on_main(start_cameras, share=False)
    except DataError:
        if main:
            shutil.rmtree(exp_dir, ignore_errors=True)  # a new run that never started
        raise
    return tracks, loaded
