"""Periodic work around the training loop, one class per job, scheduled by one helper.

The loop (engine/trainer.py) calls, for every callback in order: on_train_start(trainer) once,
on_step_end(trainer, values) after every step, on_camera_report(trainer, event) whenever the
cameras were evaluated against ground truth (during the bundle adjustment and training), and
on_train_end(trainer) once the last step is done. The default list ends with Checkpoint, whose
on_train_end writes the last checkpoints, and the run's outputs after it (CameraExport,
FinalReport, HeldOutEvaluation): callbacks before Checkpoint change what those checkpoints hold,
callbacks after it see them written. Callbacks with main_only run on rank 0 alone under torchrun.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from dataio.export import align_to_input, export_cameras, input_frame
from engine import distributed
from engine.camera_guard import better, camera_fit, poor, worse
from engine.pose_history import PoseHistory
from evaluation.report import format_camera_report, write_metrics
from geometry.alignment import gt_to_learned
from sfm.candidates import views_block
from sfm.distortion import load as load_distortion
from sfm.initialise import track_adjustment


def step_check(step: int, every: int, last_step: int | None = None) -> bool:
    """True on every `every`-th step (1-based steps) and on the last step; never when every <= 0."""
    if every <= 0:
        return False
    return step % every == 0 or (last_step is not None and step == last_step)


class Callback:
    main_only = True  # False: every rank runs it (collective work such as checkpoints)

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, values: dict) -> None:
        pass

    def on_camera_report(self, trainer, event: dict) -> None:
        """event: phase ("bundle adjustment" | "training"), iteration, report (camera_report),
        psnr (training batch, or None), exp_dir."""

    def on_train_end(self, trainer) -> None:
        """Once the last step is done (not after Ctrl-C or an error); in list order."""


class Periodic(Callback):
    """run(trainer, values) every `every` steps and at the last step."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer, values: dict) -> None:
        if step_check(trainer.step, self.every, trainer.cfg.training.num_iters):
            self.run(trainer, values)

    def run(self, trainer, values: dict) -> None:
        raise NotImplementedError


class PretrainReset(Callback):
    """training.pretrain_iters: reset the field (keep the cameras) and its optimiser."""

    main_only = False

    def on_step_end(self, trainer, values: dict) -> None:
        if trainer.step == trainer.cfg.training.pretrain_iters:
            trainer.model.reset_field()
            distributed.broadcast_module(trainer.model)  # rank 0's fresh field everywhere
            trainer.make_field_optimizer()
            if trainer.is_main:
                tqdm.write(f"step {trainer.step}: pre-training done; field reset, cameras kept")


class GridUpsample(Callback):
    """model.encoding grid: halve the grid cells at each fraction of model.grid_upsample_at
    (coarse to fine; the encoded function is unchanged by the step, models/grid.py) and drop
    the Adam moments of the resized planes and lines (their shapes changed)."""

    main_only = False

    def on_step_end(self, trainer, values: dict) -> None:
        grids = trainer.model.grids()
        if not grids:
            return
        at = trainer.model.cfg.grid_upsample_at
        total = trainer.cfg.training.num_iters
        while (
            int(grids[0].n_upsampled) < len(at)
            and trainer.step >= at[int(grids[0].n_upsampled)] * total
        ):
            changed = [p for g in grids for p in g.upsample()]
            optimizer = trainer.optimizers["field"]
            for p in changed:
                optimizer.state.pop(p, None)
            if trainer.is_main:
                tqdm.write(
                    f"step {trainer.step}: grid upsampled to {grids[0].levels[0].resolution} "
                    "nodes per axis"
                )


class OccupancyUpdate(Callback):
    """model.occupancy: refresh the occupancy grid every model.occupancy_every steps from
    model.occupancy_start on (each rank its own; it only decides which samples are skipped)."""

    main_only = False

    def on_step_end(self, trainer, values: dict) -> None:
        mc = trainer.model.cfg
        if trainer.model.occupancy is None:
            return
        first = max(1, round(mc.occupancy_start * trainer.cfg.training.num_iters))
        if trainer.step >= first and (trainer.step - first) % mc.occupancy_every == 0:
            fraction = trainer.model.update_occupancy()
            values["occupied"] = fraction

    def on_train_end(self, trainer) -> None:
        if trainer.model.occupancy is not None:  # before the last checkpoints are written
            fraction = trainer.model.rebuild_occupancy()
            if trainer.is_main:
                tqdm.write(f"occupancy grid rebuilt from the trained field: {fraction:.0%} full")


class CameraMetrics(Periodic):
    """Camera errors against ground truth to tensorboard and the progress line; observers hear
    of them through on_camera_report."""

    def run(self, trainer, values: dict) -> None:
        if not trainer.has_gt:
            return
        trainer.last_report = report = trainer.camera_metrics()
        for alignment in ("rotation-aware", "centre-only"):
            r = report[alignment]
            for key in ("rot_median_deg", "rot_mean_deg", "trans_median"):
                trainer.writer.add_scalar(f"pose_{alignment}/{key}", r[key], trainer.step)
        if "focal_error_percent" in report:
            trainer.writer.add_scalar(
                "camera/focal_error_percent", report["focal_error_percent"], trainer.step
            )
        trainer.postfix["rot"] = f"{report['rotation-aware']['rot_median_deg']:.2f}"
        trainer.notify("training", trainer.step, report, values["psnr"])


class ProgressLog(Callback):
    """Loss, PSNR and rays/s on the progress bar (or one printed line) every print_every
    steps; the same and the learning rates and focal to tensorboard every log_every steps."""

    def __init__(self, print_every: int, log_every: int):
        self.print_every, self.log_every = print_every, log_every

    def on_train_start(self, trainer) -> None:
        self.t_last, self.steps_since = time.perf_counter(), 0

    def on_step_end(self, trainer, values: dict) -> None:
        self.steps_since += 1
        last = trainer.cfg.training.num_iters
        show = step_check(trainer.step, self.print_every, last)
        log = step_check(trainer.step, self.log_every, last)
        if not (show or log):
            return
        now = time.perf_counter()
        rays_per_s = self.steps_since * trainer.cfg.training.n_rays / max(now - self.t_last, 1e-9)
        self.t_last, self.steps_since = now, 0
        trainer.postfix.update(
            loss=f"{values['total']:.4f}", psnr=f"{values['psnr']:.2f}", rays_s=f"{rays_per_s:.0f}"
        )
        if log:
            self.log_scalars(trainer, values, rays_per_s)
        if show:
            trainer.bar.set_postfix(trainer.postfix, refresh=False)
            if not trainer.cfg.training.progress_bar:
                items = " ".join(f"{k}={v}" for k, v in trainer.postfix.items())
                print(f"{trainer.step}/{last} {items}", flush=True)

    @staticmethod
    def log_scalars(trainer, values: dict, rays_per_s: float) -> None:
        w, step = trainer.writer, trainer.step
        for name, value in values.items():
            tag = f"train/{name}" if name in ("psnr", "track_px") else f"loss/{name}"
            w.add_scalar(tag, value, step)
        for name, opt in trainer.optimizers.items():
            w.add_scalar(f"lr/{name}", opt.param_groups[0]["lr"], step)
        f = trainer.model.cam_param.focal_px().detach()[0].cpu()
        w.add_scalar("camera/fx", float(f[0]), step)
        w.add_scalar("camera/fy", float(f[1]), step)
        w.add_scalar("speed/rays_per_s", rays_per_s, step)


class ImageLog(Periodic):
    """Render the first held-out view (its ground-truth pose mapped into the learned frame
    through the alignment of the training cameras; no test-time refinement; the mean
    appearance code) or, without ground truth or test views, the first training view (its own
    code), beside the photo, and its depth."""

    def run(self, trainer, values: dict) -> None:
        model, scene = trainer.model, trainer.scene
        with torch.no_grad():
            c2w_all, K = model.cam_param.c2w(), model.cam_param.K()[0]
        if trainer.has_gt and scene.test_ids:
            view = scene.test_ids[0]
            learned = c2w_all.detach().cpu()
            c2w, _ = gt_to_learned(scene.c2w_gt[view][None], learned, trainer.c2w_gt)
            c2w, tag = c2w[0].float().to(trainer.device), "render/test_view"
            gt, appearance = scene.images[view], None
        else:
            c2w, tag, gt = c2w_all[0], "render/train_view", trainer.images[0]
            appearance = model.appearance_code(0)
        out = model.render_image(
            c2w, K, trainer.progress(), trainer.cfg.model.chunk, appearance=appearance
        )
        depth = model.depth_from_t(out["t"])
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-8)
        gt = gt.reshape(trainer.H, trainer.W, 3).cpu()
        pair = torch.cat([out["rgb"], gt], 1).clamp(0, 1)
        trainer.writer.add_image(f"{tag}_rgb_vs_gt", pair, trainer.step, dataformats="HWC")
        trainer.writer.add_image(f"{tag}_depth", depth, trainer.step, dataformats="HW")


class PoseHistoryLog(Periodic):
    """Append the cameras to <exp>/pose_history.npz (for the pose-history animation)."""

    def __init__(self, every: int, max_snapshots: int):
        super().__init__(every)
        self.max_snapshots = max_snapshots

    def run(self, trainer, values: dict) -> None:
        with torch.no_grad():
            c2w = trainer.model.cam_param.c2w().cpu()
        PoseHistory(trainer.exp_dir, self.max_snapshots).append(trainer.step, c2w)


class Checkpoint(Periodic):
    """ckpts/latest.pt every ckpt_every steps (every rank takes part: it holds their RNG), and
    at the end latest.pt and final.pt, after the callbacks before it changed the model (the
    occupancy grid rebuilt, cameras.guard's last check)."""

    main_only = False

    def run(self, trainer, values: dict) -> None:
        trainer.save()

    def on_train_end(self, trainer) -> None:
        trainer.save()
        trainer.save("final.pt")


class CameraExport(Callback):
    """At the end: the learned cameras to <exp>/poses/ in the input data's world and formats
    (dataio/export.py), with the lens the camera start removed from the photos, if any; moved
    onto the ground truth when the cameras did not start from it."""

    def on_train_end(self, trainer) -> None:
        scene, cams = trainer.scene, trainer.model.cam_param
        with torch.no_grad():
            c2w, K = cams.c2w().cpu().double().numpy(), cams.K().cpu().double().numpy()
        names = [scene.image_names[i] for i in scene.train_ids]
        undistorted = load_distortion(trainer.exp_dir / "sfm")  # the photos' lens, if removed
        frame = input_frame(scene, scene.train_ids, undistorted)
        if trainer.has_gt and trainer.cfg.cameras.init not in ("gt", "noisy_gt"):
            c2w, frame.aligned_scale = align_to_input(c2w, trainer.c2w_gt.numpy())
        export_cameras(
            trainer.exp_dir / "poses",
            c2w,
            K,
            trainer.H,
            trainer.W,
            names,
            scene.near,
            scene.far,
            frame,
        )


class FinalReport(Callback):
    """At the end: <exp>/metrics.json written afresh (the step, the camera start's views and,
    with ground truth, the final camera errors) and the errors printed; without ground truth
    one line saying where the cameras went."""

    def on_train_end(self, trainer) -> None:
        exp_dir, step = trainer.exp_dir, trainer.step
        report = trainer.camera_metrics()
        views = views_block(exp_dir)
        start = {} if views is None else {"camera_start": views}
        if report is None:
            if views is not None:
                write_metrics(exp_dir, {"step": step, **start}, fresh=True)
            print(f"done: {step} steps; cameras written to {exp_dir / 'poses'}")
            return
        write_metrics(exp_dir, {"step": step, "split": "train", **report, **start}, fresh=True)
        print(format_camera_report(report, step, [] if views is None else views["dropped"]))


class HeldOutEvaluation(Callback):
    """training.eval_at_end, with ground truth: evaluation/heldout.py's evaluation of the
    trained model (pose errors, held-out views before and after test-time pose refinement),
    merged into metrics.json after the final report."""

    def on_train_end(self, trainer) -> None:
        if not (trainer.cfg.training.eval_at_end and trainer.has_gt):
            return
        from evaluation.heldout import evaluate_experiment

        evaluate_experiment(
            trainer.exp_dir,
            trainer.cfg,
            trainer.scene,
            trainer.model,
            trainer.device,
            step=trainer.step,
        )


class CameraGuard(Callback):
    """cameras.guard (engine/camera_guard.py): restore the best-fitting cameras and stop
    refining them once the tracks fit the refined ones clearly worse. Every rank runs it on the
    same cameras (the same decision)."""

    main_only = False

    def __init__(self):
        self.best = self.best_step = self.snapshot = None

    def _enabled(self, trainer) -> bool:
        c = trainer.cfg.cameras
        learns = c.freeze_after is None or c.freeze_after > c.start_after
        return bool(c.guard) and learns and trainer.tracks is not None

    def _keep(self, trainer, fit: dict) -> None:
        cams = trainer.model.cam_param
        self.best, self.best_step = fit, trainer.step
        self.snapshot = {k: v.detach().clone() for k, v in cams.named_parameters()}

    def on_train_start(self, trainer) -> None:
        if not self._enabled(trainer) or trainer.cameras_frozen_at is not None:
            return
        fit = camera_fit(trainer)
        if trainer.step == 0 and poor(fit):
            say = tqdm.write if trainer.is_main else (lambda line: None)
            say(
                f"the starting cameras fit the tracks poorly ({100 * fit['within_2px']:.1f}% "
                f"within 2 px, median {fit['median_px']:.2f} px): Ceres adjusts them on the "
                "tracks before they learn (cameras.guard)"
            )
            before = trainer.camera_metrics()
            trainer.c2w_start = trainer.model.cam_param.c2w().detach().cpu().clone()
            track_adjustment(trainer.model.cam_param, trainer.tracks, trainer.scene, log=say)
            fit = camera_fit(trainer)
            after = trainer.camera_metrics()
            if before is not None:
                say(
                    "cameras.guard: rotation median against ground truth "
                    f"{before['rotation-aware']['rot_median_deg']:.3f} -> "
                    f"{after['rotation-aware']['rot_median_deg']:.3f} deg (rotation-aware)"
                )
        self._keep(trainer, fit)

    def on_step_end(self, trainer, values: dict) -> None:
        every = trainer.cfg.cameras.guard_every
        if (
            self.snapshot is not None
            and trainer.cameras_frozen_at is None
            and step_check(trainer.step, every)
        ):
            self.check(trainer)

    def on_train_end(self, trainer) -> None:
        if self.snapshot is not None and trainer.cameras_frozen_at is None:
            self.check(trainer)

    def check(self, trainer) -> None:
        fit = camera_fit(trainer)
        if better(fit, self.best):
            self._keep(trainer, fit)
        elif worse(fit, self.best):
            cams = trainer.model.cam_param
            with torch.no_grad():
                for name, p in cams.named_parameters():
                    p.copy_(self.snapshot[name])
            trainer.cameras_frozen_at = trainer.step
            if trainer.is_main:
                tqdm.write(
                    f"step {trainer.step}: the refined cameras fit the tracks worse "
                    f"({100 * fit['within_2px']:.2f}% within 2 px, median "
                    f"{fit['median_px']:.3f} px) than at step {self.best_step} "
                    f"({100 * self.best['within_2px']:.2f}%, {self.best['median_px']:.3f} px): "
                    "those cameras are restored and stop learning (cameras.guard)"
                )


def default_callbacks(training_cfg) -> list[Callback]:
    """The periodic work every training run does, in the order it runs within a step, and at
    the end the last checkpoints and the run's outputs (the module docstring)."""
    tc = training_cfg
    return [
        PretrainReset(),
        CameraGuard(),
        GridUpsample(),
        OccupancyUpdate(),
        CameraMetrics(tc.eval_every),
        ProgressLog(tc.print_every, tc.log_every),
        ImageLog(tc.image_every),
        PoseHistoryLog(tc.pose_history_every, tc.pose_history_max),
        Checkpoint(tc.ckpt_every),
        CameraExport(),
        FinalReport(),
        HeldOutEvaluation(),
    ]
