"""The training loop: one step (sample, render, losses, optimiser steps), the field and camera
optimisers with their schedules, checkpoints (resume, refine), Ctrl-C and non-finite losses.
Periodic work (logging, evaluation, images, pose history, checkpoints) and the work at the end
(the last checkpoints, camera export, final report, held-out evaluation) are in callbacks."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm

from dataio.scene import SceneData
from engine import distributed
from engine.callbacks import Callback, default_callbacks
from engine.checkpoint import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    rng_state,
    save_atomic,
    select_keys,
    set_rng_state,
)
from engine.experiment import seed_everything
from engine.objective import loss_terms, weighted_total
from engine.sampling import BatchSampler
from evaluation.pose_metrics import camera_report
from losses.photometric import mse_to_psnr
from utils.errors import CheckpointError, ConfigError, Interrupted, TrainingError

# A step whose gradient is not finite (with a finite loss) is skipped: one odd batch (a ray on
# a degenerate sample spacing) should not poison the parameters; this many in a row stop the run.
MAX_SKIPPED_IN_A_ROW = 10


def adam(groups) -> torch.optim.Adam:
    """Adam with the fused kernel where the device has one (CPU and CUDA): the same update in one
    pass over each parameter, several times faster than the per-tensor loop on a CPU, which
    matters for the grid's millions of parameters; elsewhere the default implementation."""
    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(groups, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict, keeping the kernel this run chose (adam): a checkpoint from
    an unfused optimiser would otherwise bring its groups' `fused` flag back with it. The saved
    groups take this run's flag before loading, so torch places their step counts as the
    fused kernel wants them (on the parameter's device)."""
    fused = optimizer.defaults.get("fused")
    if fused:
        state = {**state, "param_groups": [{**g, "fused": fused} for g in state["param_groups"]]}
    optimizer.load_state_dict(state)


def _exp_lr(optimizer, rate: float, steps: int):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=rate ** (1.0 / max(steps, 1)))


class Trainer:
    """callbacks: periodic work (engine.callbacks.default_callbacks when None) plus anything a
    caller adds (a pose plot, a benchmark's recorder)."""

    def __init__(
        self,
        cfg,
        scene: SceneData,
        model,
        exp_dir: Path,
        device: torch.device,
        callbacks: list[Callback] | None = None,
    ):
        self.cfg, self.scene, self.model = cfg, scene, model
        self.exp_dir, self.device = Path(exp_dir), device
        self.callbacks = default_callbacks(cfg.training) if callbacks is None else callbacks
        self.step = 0
        self.skipped_in_a_row = 0  # steps skipped for a non-finite gradient (train_step)
        self.H, self.W = scene.H, scene.W
        self.images = self._training_images()
        self.has_gt = scene.c2w_gt is not None
        if self.has_gt:
            self.c2w_gt = scene.c2w_gt[scene.train_ids].double()
            self.focal_gt = None
            if scene.K_gt is not None:
                K = scene.K_gt[scene.train_ids]
                self.focal_gt = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)
        self.optimizers, self.schedulers = {}, {}
        self.make_field_optimizer()
        self._make_camera_optimizers()
        # torchrun: each process renders its share of the global batch training.n_rays.
        self.world = distributed.world()
        self.is_main = self.world.rank == 0
        if cfg.training.n_rays % self.world.size:
            raise ConfigError(
                f"training.n_rays {cfg.training.n_rays} does not split evenly across "
                f"{self.world.size} processes; use a multiple of {self.world.size}."
            )
        self.sampler = BatchSampler(
            cfg, self.images, self.H, self.W, cfg.training.n_rays // self.world.size
        )
        self.writer, self.bar, self.postfix = None, None, {}
        self.stop_requested = self.stop_agreed = False
        self.last_report = None
        self.tracks = None  # the run's feature tracks (cameras.guard scores cameras on them)
        self.cameras_frozen_at = None  # the step cameras.guard stopped the cameras at
        # the start as set-up left it, when cameras.guard adjusted it before training (the
        # reports' "initial poses" stay the run's real start)
        self.c2w_start: torch.Tensor | None = None

    def _training_images(self) -> torch.Tensor:
        train = self.scene.images[self.scene.train_ids]
        return train.reshape(len(self.scene.train_ids), -1, 3).to(self.device)

    def reload_images(self) -> None:
        """Take the scene's photos again (after sfm.distortion undistorted them)."""
        self.images = self.sampler.images = self._training_images()

    def make_field_optimizer(self) -> None:
        tc = self.cfg.training
        self.optimizers["field"] = adam(
            self.model.field_param_groups(tc.lr_field, tc.lr_grid, tc.lr_appearance)
        )
        self.schedulers["field"] = _exp_lr(
            self.optimizers["field"], tc.lr_field_decay_rate, tc.lr_field_decay_steps
        )

    def _make_camera_optimizers(self) -> None:
        c = self.cfg.cameras
        lr_t = c.lr_pose if c.lr_translation is None else c.lr_translation
        groups = self.model.cam_param.param_groups(c.lr_pose, lr_t, c.lr_focal)
        for name, group in groups.items():
            self.optimizers[name] = adam(group)
            self.schedulers[name] = _exp_lr(
                self.optimizers[name], c.lr_decay_rate, c.lr_decay_steps
            )

    def use_tracks(self, tracks) -> None:
        self.tracks = None if tracks is None else tracks.to("cpu")
        self.sampler.use_tracks(None if tracks is None else tracks.to(self.device))

    # ----------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        cams = self.model.cam_param
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": rng_state(),
            "sampler": self.sampler.state_dict(),
            "cameras_frozen_at": self.cameras_frozen_at,
            "c2w_start": self.c2w_start,
            "cameras": {
                "so3_representation": cams.so3_representation,
                "focal_parameterisation": cams.focal_parameterisation,
                "focal_mode": cams.focal_mode,
                "square_pixels": cams.square_pixels,
                "H": cams.H,
                "W": cams.W,
                "n": cams.n,
                "image_names": [self.scene.image_names[i] for i in self.scene.train_ids],
            },
            "config": self.cfg.to_dict(),
        }

    def save(self, name: str = "latest.pt", collective: bool = True) -> None:
        """Write ckpts/<name> (rank 0). torchrun: every rank calls it (`collective`), so the
        checkpoint keeps each rank's random state; collective=False: rank 0's alone."""
        ranks = distributed.all_gather_object(rng_state()) if collective else []
        if not self.is_main:
            return
        state = self.state()
        if len(ranks) > 1:
            state["rng_ranks"] = ranks
        save_atomic(state, self.exp_dir / "ckpts" / name)

    def resume(self, path: Path, ckpt: dict | None = None) -> None:
        """Restore everything (model, cameras, optimisers, schedulers, step, RNG) from the
        checkpoint at `path` (or from `ckpt`, that file already read)."""
        if ckpt is None:
            ckpt = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
            for k, opt in self.optimizers.items():
                load_optimizer_state(opt, ckpt["optimizers"][k])
            for k, sch in self.schedulers.items():
                sch.load_state_dict(ckpt["schedulers"][k])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {path} does not match this experiment ({err})."
            ) from None
        self.step = int(ckpt["step"])
        self.cameras_frozen_at = ckpt.get("cameras_frozen_at")
        self.c2w_start = ckpt.get("c2w_start")
        self.sampler.load_state_dict(ckpt.get("sampler", {}))
        ranks = ckpt.get("rng_ranks", [])
        if self.world.size > 1 and len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank])
        else:
            set_rng_state(ckpt["rng"])
            if self.world.rank > 0:  # another world size: offset the stream by rank
                seed_everything(self.cfg.seed + self.world.rank + 1_000_003 * self.step)

    def load_pretrained(self, path: Path, only_use: list[str], ignore: list[str]) -> list[str]:
        """Refine: copy the selected parameters (e.g. cam_param) into a fresh model."""
        ckpt = load_checkpoint(path, map_location=self.device)
        picked = select_keys(ckpt["model"], list(only_use), list(ignore))
        own = self.model.state_dict()
        bad = [k for k, v in picked.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: {', '.join(bad[:4])} differ in name "
                "or shape (same scene, image count and model size needed)."
            )
        self.model.load_state_dict(picked, strict=False)
        return sorted({k.split(".")[0] for k in picked})

    # -------------------------------------------------------------------------------- the step
    def progress(self) -> float:
        return self.step / max(self.cfg.training.num_iters, 1)

    def cameras_active(self) -> bool:
        freeze = self.cfg.cameras.freeze_after
        return (
            self.cameras_frozen_at is None
            and self.cfg.cameras.start_after <= self.progress()
            and (freeze is None or self.progress() < freeze)
        )

    def train_step(self) -> dict[str, float]:
        self.model.train()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        progress, cams_active = self.progress(), self.cameras_active()
        groups = self.sampler.sample(progress)
        c2w, K = self.model.cam_param.c2w(), self.model.cam_param.K()
        if not cams_active:
            c2w, K = c2w.detach(), K.detach()
        rays, render = self.render_groups(groups, c2w, K, progress)
        terms, extras = loss_terms(self.cfg, self.model, groups, rays, render, c2w, K, progress)
        self.sampler.observe(render["rgb"]["rgb"], groups["rgb"]["target"])
        total = weighted_total(terms, self.cfg.training)
        with torch.no_grad():  # over the uniformly drawn rays: the mined ones are the harder
            k = self.sampler.mined_rays
            rgb, target = render["rgb"]["rgb"], groups["rgb"]["target"]
            rgb, target = (rgb[k:], target[k:]) if k < len(target) else (rgb, target)
            psnr = mse_to_psnr(torch.mean((rgb - target) ** 2))
        values = self.reduce_and_check(terms, total, psnr, extras)
        total.backward()
        distributed.all_reduce_grads(self.model.parameters())
        finite = self._gradients_finite()  # the same on every rank: the gradients are averaged
        self._count_skipped(finite)
        for name, opt in self.optimizers.items():
            if name == "field" or cams_active:
                if finite:
                    opt.step()
                self.schedulers[name].step()  # the learning rate stays a function of the step
        return values

    def _gradients_finite(self) -> bool:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum()))

    def _count_skipped(self, finite: bool) -> None:
        if finite:
            self.skipped_in_a_row = 0
            return
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise TrainingError(
                self._non_finite_message(
                    f"the gradient became non-finite for {MAX_SKIPPED_IN_A_ROW} steps in a row "
                    f"(to step {self.step + 1}, the loss finite)"
                )
            )
        if self.is_main:
            tqdm.write(
                f"step {self.step + 1}: a gradient is not finite (the loss is); the step is "
                "skipped and the parameters keep their values"
            )

    def render_groups(self, groups: dict, c2w, K, progress: float):
        """One render call for every group's rays; ({group: (origins, dirs)}, {group: render})."""
        cam_ids = torch.cat([g["cam_ids"] for g in groups.values()])
        uv = torch.cat([g["uv"] for g in groups.values()])
        o, d, v = self.model.rays(cam_ids, uv, c2w, K)
        # a training image's camera index is its appearance code's index too
        codes = self.model.appearance_of(cam_ids)
        sizes = [len(g["cam_ids"]) for g in groups.values()]
        # only the photometric group's colour is used: the others need their depth alone
        colour = torch.cat(
            [torch.full((n,), name == "rgb", device=uv.device) for name, n in zip(groups, sizes)]
        )
        out = self.model.render_rays(
            o, d, v, progress, perturb=self.cfg.model.perturb, appearance=codes, colour=colour
        )
        rays = dict(zip(groups, zip(torch.split(o, sizes), torch.split(d, sizes))))
        split = {k: torch.split(x, sizes) for k, x in out.items()}
        render = {name: {k: split[k][i] for k in split} for i, name in enumerate(groups)}
        return rays, render

    def reduce_and_check(self, terms: dict, total, psnr, extras: dict) -> dict[str, float]:
        """Every logged number as a float, with one host sync per step; under torchrun the
        means over the ranks (the global batch's numbers), and whether any rank was asked to
        stop. A non-finite loss term raises TrainingError (the same on every rank)."""
        with torch.no_grad():
            numbers = torch.stack([*terms.values(), total.detach(), psnr, *extras.values()])
            if self.world.size > 1:
                stop = numbers.new_tensor([float(self.stop_requested)])
                numbers = distributed.all_reduce_mean(torch.cat([numbers, stop]))
                self.stop_agreed = bool(numbers[-1] > 0)
                numbers = numbers[:-1]
            values = dict(zip([*terms, "total", "psnr", *extras], numbers.tolist()))
        bad = [name for name in terms if not math.isfinite(values[name])]
        if bad:
            raise TrainingError(
                self._non_finite_message(
                    f"the {', '.join(bad)} loss became non-finite at step {self.step + 1}"
                )
            )
        return values

    def _non_finite_message(self, what: str) -> str:
        latest = self.exp_dir / "ckpts" / "latest.pt"
        saved = load_checkpoint(latest)["step"] if latest.is_file() else None
        where = (
            f"{latest} (step {saved}) is kept: resume it with --load_dir {self.exp_dir}, or start "
            f"a new experiment from its cameras with --training:ckpt_file {latest} "
            "--training:ckpt_only_use_keys cam_param"
            if saved is not None
            else "no checkpoint was written"
        )
        return f"{what}; {where}. Lower the learning rates or check the data."

    # ------------------------------------------------------------------------------- reporting
    def camera_metrics(self, cameras=None) -> dict | None:
        """Errors of `cameras` (default: the model's) against ground truth; None without it."""
        if not self.has_gt:
            return None
        cams = self.model.cam_param if cameras is None else cameras
        with torch.no_grad():
            c2w = cams.c2w().double().cpu()
            focal = cams.focal_px().double().cpu()
            start = (
                cams.c2w_init if self.c2w_start is None or cameras is not None else self.c2w_start
            )
            start = start.double().cpu()
        return camera_report(c2w, self.c2w_gt, focal, self.focal_gt, start)

    def notify(self, phase: str, iteration: int, report: dict, psnr: float | None) -> None:
        """Tell every callback about a camera evaluation (on_camera_report)."""
        event = {"phase": phase, "iteration": iteration, "report": report, "psnr": psnr}
        event["exp_dir"] = str(self.exp_dir)
        for callback in self.callbacks:
            callback.on_camera_report(self, event)

    def bundle_adjustment_round(self, iterations: int, cameras=None) -> None:
        """sfm.initialise's on_round: camera errors during the bundle adjustment (of `cameras`
        when it adjusts a copy, as cameras.init auto's candidate does)."""
        if self.has_gt:
            self.notify("bundle adjustment", iterations, self.camera_metrics(cameras), None)

    # -------------------------------------------------------------------------------- the loop
    def _emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            if self.is_main or not callback.main_only:
                getattr(callback, hook)(self, *args)

    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested and self.world.size == 1:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True

    def _should_stop(self) -> bool:
        # torchrun: stop only once every rank knows (agreed in train_step), so all stop
        # at the same step and save together.
        return self.stop_agreed if self.world.size > 1 else self.stop_requested

    def train(self) -> None:
        """Run from self.step to num_iters. Raises Interrupted after saving on Ctrl-C."""
        tc = self.cfg.training
        self.writer = SummaryWriter(str(self.exp_dir / "events")) if self.is_main else None
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        self.bar = tqdm(
            total=tc.num_iters,
            initial=self.step,
            disable=not (tc.progress_bar and self.is_main),
            dynamic_ncols=True,
            file=sys.stdout,
            mininterval=1.0,
        )
        agreed = False
        try:
            self._emit("on_train_start")
            while self.step < tc.num_iters:
                values = self.train_step()
                self.step += 1
                self.bar.update(1)
                self._emit("on_step_end", values)
                if self._should_stop():
                    agreed = True
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.bar.close()
            # A KeyboardInterrupt from elsewhere may leave the ranks apart: no collective then.
            self.save(collective=agreed or self.world.size == 1)
            if self.writer is not None:
                self.writer.close()
            raise Interrupted() from None
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            self.bar.close()
        # the last checkpoints, then the camera export, the final report and the held-out
        # evaluation: callbacks too (engine/callbacks.py default_callbacks), in list order
        self._emit("on_train_end")
        if self.writer is not None:
            self.writer.close()
