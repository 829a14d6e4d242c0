"""The training loop: field, focal and pose optimisers with their schedules, periodic logging,
evaluation and checkpoints, resume, refine, Ctrl-C and non-finite loss handling."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm

from dataio.export import export_cameras
from dataio.scene import SceneData
from engine import distributed
from engine.callbacks import step_check
from engine.checkpoint import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    rng_state,
    save_atomic,
    select_keys,
    set_rng_state,
)
from engine.experiment import seed_everything
from engine.pose_history import PoseHistory
from evaluation.pose_metrics import camera_report, gt_to_learned
from geometry.rays import pixel_centers
from losses.photometric import mse_to_psnr, photometric_loss
from losses.smoothness import depth_smoothness
from losses.tracks import TrackSampler, reprojection_loss
from utils.config import to_yaml
from utils.errors import CheckpointError, ConfigError, Interrupted, TrainingError
from vis.plot_camera_pose import figure_to_array, plot_cameras


def _exp_lr(optimizer, rate: float, steps: int):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=rate ** (1.0 / max(steps, 1)))


class Trainer:
    # Callables given an event dict after every camera evaluation against ground truth:
    # phase ("bundle adjustment" | "training"), iteration, report (camera_report), psnr
    # (training batch, or None), exp_dir. bench/quality_at_time.py records errors over time.
    observers: list = []

    def __init__(self, cfg, scene: SceneData, model, exp_dir: Path, device: torch.device):
        self.cfg, self.scene, self.model = cfg, scene, model
        self.exp_dir, self.device = Path(exp_dir), device
        tc = cfg.training
        self.step = 0
        train = scene.images[scene.train_ids]
        self.H, self.W = scene.H, scene.W
        self.images = train.reshape(len(scene.train_ids), -1, 3).to(device)
        self.has_gt = scene.c2w_gt is not None
        if self.has_gt:
            self.c2w_gt = scene.c2w_gt[scene.train_ids].double()
            self.focal_gt = None
            if scene.K_gt is not None:
                K = scene.K_gt[scene.train_ids]
                self.focal_gt = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)
        self.optimizers, self.schedulers = {}, {}
        self._make_field_optimizer()
        cams = model.cam_param
        lr_t = cfg.cameras.lr_translation
        lr_t = cfg.cameras.lr_pose if lr_t is None else lr_t
        groups = [{"params": [cams.r], "lr": cfg.cameras.lr_pose}] if cams.r.requires_grad else []
        groups += [{"params": [cams.t], "lr": lr_t}] if cams.t.requires_grad else []
        if groups:
            self.optimizers["pose"] = torch.optim.Adam(groups)
        if cams.focal_parameters():
            self.optimizers["focal"] = torch.optim.Adam(
                cams.focal_parameters(), lr=cfg.cameras.lr_focal
            )
        for name in ("pose", "focal"):
            if name in self.optimizers:
                self.schedulers[name] = _exp_lr(
                    self.optimizers[name], cfg.cameras.lr_decay_rate, cfg.cameras.lr_decay_steps
                )
        self.writer = None
        self.stop_requested = False
        self.last_report = None
        # torchrun: each process renders its share of the global batch training.n_rays.
        self.world = distributed.world()
        self.is_main = self.world.rank == 0
        if tc.n_rays % self.world.size:
            raise ConfigError(
                f"training.n_rays {tc.n_rays} does not split evenly across {self.world.size} "
                f"processes; use a multiple of {self.world.size}."
            )
        self.n_rays = tc.n_rays // self.world.size
        self.stop_agreed = False
        self.tracks = None
        self.track_sampler = None

    def prepare(self) -> None:
        """Work that writes into the experiment directory (after it exists): feature tracks,
        built once and cached in <exp>/tracks/ (a resume reads the cache)."""
        need = self.cfg.training.w_track > 0 or self.cfg.tracks.ba_iters > 0
        if need and self.tracks is None:
            from dataio.tracks import build_tracks

            # torchrun: rank 0 builds (or reads the cache), every rank gets its tracks.
            self.tracks = distributed.on_main(
                lambda: build_tracks(
                    self.scene,
                    self.cfg.tracks,
                    tracks_cache_dir(self.cfg, self.exp_dir),
                    log=tqdm.write,
                )
            ).to(self.device)
        if self.cfg.training.w_track > 0 and self.track_sampler is None:
            self.track_sampler = TrackSampler(self.tracks, self.cfg.tracks.n_obs)

    def bundle_adjust_tracks(self) -> dict:
        """A new experiment's warm-up: cameras from the tracks alone (utils/track_ba.py)."""
        from sfm.track_ba import bundle_adjust

        summary = bundle_adjust(
            self.model.cam_param,
            self.tracks,
            depth_init=math.sqrt(self.scene.near * self.scene.far),
            max_iters=self.cfg.tracks.ba_iters,
            huber_delta=self.cfg.tracks.huber_delta,
            log=tqdm.write,
            callback=self._ba_round if self.observers and self.has_gt else None,
            retry_focal_fixed=self.cfg.tracks.ba_retry_focal_fixed,
            focal_sweep_if_poor=self.cfg.tracks.ba_focal_sweep,
        )
        report = self.camera_metrics()
        if report is not None:
            r, i = report["rotation-aware"], report["rotation-aware"]["identity_start"]
            focal = report.get("focal_error_percent")
            tqdm.write(
                f"after track bundle adjustment: rotation median {r['rot_median_deg']:.3f} deg "
                f"(rotation-aware; identity start {i['rot_median_deg']:.3f}), centre-only "
                f"{report['centre-only']['rot_median_deg']:.3f} deg"
                + ("" if focal is None else f", focal error {focal:.2f} %")
            )
        return summary

    def _ba_round(self, iterations: int) -> None:
        self.notify("bundle adjustment", iterations, self.camera_metrics(), None)

    def notify(self, phase: str, iteration: int, report: dict, psnr: float | None) -> None:
        event = {
            "phase": phase,
            "iteration": iteration,
            "report": report,
            "psnr": psnr,
            "exp_dir": str(self.exp_dir),
        }
        for observer in self.observers:
            observer(event)

    def _make_field_optimizer(self) -> None:
        tc = self.cfg.training
        self.optimizers["field"] = torch.optim.Adam(self.model.field_parameters(), lr=tc.lr_field)
        self.schedulers["field"] = _exp_lr(
            self.optimizers["field"], tc.lr_field_decay_rate, tc.lr_field_decay_steps
        )

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
            "cameras": {
                "so3_representation": cams.so3_representation,
                "focal_param": cams.focal_param,
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

    def resume(self, path: Path) -> None:
        """Restore everything (model, cameras, optimisers, schedulers, step, RNG)."""
        ckpt = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
            for k, opt in self.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][k])
            for k, sch in self.schedulers.items():
                sch.load_state_dict(ckpt["schedulers"][k])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {path} does not match this experiment ({err})."
            ) from None
        self.step = int(ckpt["step"])
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
    def sample_rays(self):
        n_img, n_pix = self.images.shape[0], self.images.shape[1]
        if self.cfg.training.rays_from == "one":
            cam_ids = torch.randint(n_img, (1,), device=self.device).expand(self.n_rays)
        else:
            cam_ids = torch.randint(n_img, (self.n_rays,), device=self.device)
        pix = torch.randint(n_pix, (self.n_rays,), device=self.device)
        uv = torch.stack([pix % self.W, torch.div(pix, self.W, rounding_mode="floor")], -1) + 0.5
        return cam_ids, uv.float(), self.images[cam_ids, pix]

    def progress(self) -> float:
        return self.step / max(self.cfg.training.num_iters, 1)

    def cameras_active(self) -> bool:
        freeze = self.cfg.cameras.freeze_after
        return self.cfg.cameras.start_after <= self.progress() and (
            freeze is None or self.progress() < freeze
        )

    def _in_window(self, start: float, stop: float = 1.0) -> bool:
        return start <= self.progress() < stop

    def sample_patches(self):
        """Square patches for the smoothness loss: (B*P*P,) camera ids, uv and target colours."""
        P, n = self.cfg.smoothness.patch_size, self.cfg.smoothness.n_patches
        if P < 2 or P > min(self.H, self.W):
            raise TrainingError(
                f"smoothness.patch_size {P} must be between 2 and the image size {self.W}x{self.H}."
            )
        cam = torch.randint(self.images.shape[0], (n,), device=self.device)
        u0 = torch.randint(self.W - P + 1, (n,), device=self.device)
        v0 = torch.randint(self.H - P + 1, (n,), device=self.device)
        grid = pixel_centers(P, P, self.device).reshape(1, -1, 2)
        uv = grid + torch.stack([u0, v0], -1)[:, None, :].float()
        pix = (uv[..., 1] - 0.5).long() * self.W + (uv[..., 0] - 0.5).long()
        cam_ids = cam[:, None].expand(n, P * P)
        return cam_ids.reshape(-1), uv.reshape(-1, 2), self.images[cam_ids, pix]

    def track_kernel(self) -> str:
        t = self.cfg.tracks
        if t.late_kernel not in ("none", "cauchy", "gate"):
            raise TrainingError(
                f"tracks.late_kernel must be none, cauchy or gate, not {t.late_kernel!r}."
            )
        if t.late_kernel != "none" and self.progress() >= t.late_after:
            return t.late_kernel
        return "huber"

    def train_step(self) -> dict[str, float]:
        tc = self.cfg.training
        self.model.train()
        cams_active = self.cameras_active()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        cam_ids, uv, target = self.sample_rays()
        # Every group of rays (photometric, track observations, smoothness patches) goes
        # through one render call: one MLP pass per step.
        groups = {"rgb": (cam_ids, uv)}
        track = None
        if self.track_sampler is not None and self._in_window(
            self.cfg.tracks.start, self.cfg.tracks.stop
        ):
            track = self.track_sampler.sample()
            groups["track"] = (track["image"], track["uv"])
        patch_target = None
        if tc.w_smooth > 0 and self._in_window(self.cfg.smoothness.start):
            patch_ids, patch_uv, patch_target = self.sample_patches()
            groups["smooth"] = (patch_ids, patch_uv)
        c2w, K = self.model.cam_param.c2w(), self.model.cam_param.K()
        if not cams_active:
            c2w, K = c2w.detach(), K.detach()
        all_ids = torch.cat([g[0] for g in groups.values()])
        all_uv = torch.cat([g[1] for g in groups.values()])
        o, d, v = self.model.rays(all_ids, all_uv, c2w, K)
        render = self.model.render_rays(o, d, v, self.progress(), perturb=self.cfg.model.perturb)
        sizes = [len(g[0]) for g in groups.values()]
        split = {k: dict(zip(groups, torch.split(x, sizes))) for k, x in render.items()}
        parts = {name: {k: split[k][name] for k in split} for name in groups}
        ray_o, ray_d = (
            dict(zip(groups, torch.split(o, sizes))),
            dict(zip(groups, torch.split(d, sizes))),
        )
        terms = photometric_loss(parts["rgb"], target)
        extra = {}
        if track is not None:
            img = track["image"]
            points = self.model.points_at_depth(
                ray_o["track"], ray_d["track"], parts["track"]["depth"], K[img]
            )
            w2c = torch.linalg.inv(c2w)
            dst_img = img[track["dst"]]
            track_terms, err = reprojection_loss(
                points[track["src"]],
                track["uv"][track["dst"]],
                w2c[dst_img],
                K[dst_img],
                track["pair_track"],
                self.track_kernel(),
                self.cfg.tracks.huber_delta,
                self.cfg.tracks.gate_px,
            )
            terms.update(track_terms)
            extra["track_px"] = err.median() if err.numel() else err.sum()
        if patch_target is not None:
            P = self.cfg.smoothness.patch_size
            depth = parts["smooth"]["depth"].reshape(-1, P, P)
            disparity = depth if self.model.use_ndc else 1.0 / depth.clamp_min(1e-6)
            terms.update(depth_smoothness(disparity, patch_target.reshape(-1, P, P, 3)))
        unknown = [name for name in terms if f"w_{name}" not in tc]
        if unknown:
            raise KeyError(f"loss terms {unknown} have no training.w_<name> weight in base.yaml")
        total = sum(tc[f"w_{name}"] * value for name, value in terms.items())
        # One host sync per step for every logged number (terms, total, PSNR, extras).
        with torch.no_grad():
            psnr = mse_to_psnr(torch.mean((parts["rgb"]["rgb"] - target) ** 2))
            numbers = torch.stack([*terms.values(), total, psnr, *extra.values()])
            if self.world.size > 1:
                # Means over the ranks (the global batch's numbers; the non-finite check agrees
                # on every rank), plus whether any rank was asked to stop (Ctrl-C).
                stop = numbers.new_tensor([float(self.stop_requested)])
                numbers = distributed.all_reduce_mean(torch.cat([numbers, stop]))
                self.stop_agreed = bool(numbers[-1] > 0)
                numbers = numbers[:-1]
            numbers = numbers.tolist()
        values = dict(zip([*terms, "total", "psnr", *extra], numbers))
        bad = [name for name in terms if not math.isfinite(values[name])]
        if bad:
            raise TrainingError(
                f"the {', '.join(bad)} loss became non-finite at step {self.step + 1}; "
                "the last good checkpoint is kept: lower the learning rates or check the data."
            )
        total.backward()
        distributed.all_reduce_grads(self.model.parameters())
        self.optimizers["field"].step()
        self.schedulers["field"].step()
        for name in ("pose", "focal"):
            if name in self.optimizers and cams_active:
                self.optimizers[name].step()
                self.schedulers[name].step()
        return values

    # ------------------------------------------------------------------------------- reporting
    def camera_metrics(self) -> dict | None:
        if not self.has_gt:
            return None
        cams = self.model.cam_param
        with torch.no_grad():
            c2w = cams.c2w().double().cpu()
            focal = cams.focals().double().cpu()
            start = cams.c2w_init.double().cpu()
        return camera_report(c2w, self.c2w_gt, focal, self.focal_gt, start)

    def log_scalars(self, values: dict, rays_per_s: float) -> None:
        w = self.writer
        for name, value in values.items():
            w.add_scalar(
                f"train/{name}" if name in ("psnr", "track_px") else f"loss/{name}",
                value,
                self.step,
            )
        for name, opt in self.optimizers.items():
            w.add_scalar(f"lr/{name}", opt.param_groups[0]["lr"], self.step)
        f = self.model.cam_param.focals().detach()[0].cpu()
        w.add_scalar("camera/fx", float(f[0]), self.step)
        w.add_scalar("camera/fy", float(f[1]), self.step)
        w.add_scalar("speed/rays_per_s", rays_per_s, self.step)

    def log_camera_metrics(self, report: dict) -> None:
        for alignment in ("rotation-aware", "centre-only"):
            r = report[alignment]
            self.writer.add_scalar(
                f"pose_{alignment}/rot_median_deg", r["rot_median_deg"], self.step
            )
            self.writer.add_scalar(f"pose_{alignment}/rot_mean_deg", r["rot_mean_deg"], self.step)
            self.writer.add_scalar(f"pose_{alignment}/trans_median", r["trans_median"], self.step)
        if "focal_error_percent" in report:
            self.writer.add_scalar(
                "camera/focal_error_percent", report["focal_error_percent"], self.step
            )

    def log_image(self) -> None:
        """Render the first held-out view (its ground-truth pose mapped into the learned frame
        through the alignment of the training cameras; no test-time refinement) or, without
        ground truth or test views, the first training view."""
        cams, scene = self.model.cam_param, self.scene
        with torch.no_grad():
            c2w_all, K = cams.c2w(), cams.K()[0]
        if self.has_gt and scene.test_ids:
            view = scene.test_ids[0]
            c2w, _ = gt_to_learned(scene.c2w_gt[view][None], c2w_all.detach().cpu(), self.c2w_gt)
            c2w, tag = c2w[0].float().to(self.device), "render/test_view"
            gt = scene.images[view]
        else:
            c2w, tag, gt = c2w_all[0], "render/train_view", self.images[0]
        out = self.model.render_image(c2w, K, self.progress(), self.cfg.model.chunk)
        depth = out["depth"]
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-8)
        gt = gt.reshape(self.H, self.W, 3).cpu()
        self.writer.add_image(
            f"{tag}_rgb_vs_gt",
            torch.cat([out["rgb"], gt], 1).clamp(0, 1),
            self.step,
            dataformats="HWC",
        )
        self.writer.add_image(f"{tag}_depth", depth, self.step, dataformats="HW")

    def record_poses(self) -> None:
        with torch.no_grad():
            c2w = self.model.cam_param.c2w().cpu()
        PoseHistory(self.exp_dir, self.cfg.training.pose_history_max).append(self.step, c2w)

    def log_pose_plot(self) -> None:
        with torch.no_grad():
            c2w = self.model.cam_param.c2w().double().cpu()
        gt = self.c2w_gt if self.has_gt else None
        fig = plot_cameras(c2w, gt, title=f"step {self.step}")
        self.writer.add_image("cameras", figure_to_array(fig), self.step, dataformats="HWC")

    # -------------------------------------------------------------------------------- the loop
    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested and self.world.size == 1:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True

    def _should_stop(self) -> bool:
        # torchrun: stop only once every rank knows (agreed in train_step), so all stop
        # at the same step and save together.
        return self.stop_agreed if self.world.size > 1 else self.stop_requested

    def train(self) -> dict | None:
        """Run from self.step to num_iters. Raises Interrupted after saving on Ctrl-C."""
        tc = self.cfg.training
        last = tc.num_iters
        main = self.is_main
        self.prepare()
        self.writer = SummaryWriter(str(self.exp_dir / "events")) if main else None
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(
            total=last,
            initial=self.step,
            disable=not (tc.progress_bar and main),
            dynamic_ncols=True,
            file=sys.stdout,
            mininterval=1.0,
        )
        postfix = {}
        t_last, steps_since = time.perf_counter(), 0
        agreed = False
        try:
            while self.step < last:
                values = self.train_step()
                self.step += 1
                steps_since += 1
                bar.update(1)
                if tc.pretrain_iters > 0 and self.step == tc.pretrain_iters:
                    self.model.reset_field()
                    distributed.broadcast_module(self.model)  # rank 0's fresh field everywhere
                    self._make_field_optimizer()
                    if main:
                        tqdm.write(
                            f"step {self.step}: pre-training done; field reset, cameras kept"
                        )
                if main and (
                    step_check(self.step, tc.print_every, last)
                    or step_check(self.step, tc.log_every, last)
                ):
                    now = time.perf_counter()
                    rays_per_s = steps_since * tc.n_rays / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    postfix.update(
                        loss=f"{values['total']:.4f}",
                        psnr=f"{values['psnr']:.2f}",
                        rays_s=f"{rays_per_s:.0f}",
                    )
                    if step_check(self.step, tc.log_every, last):
                        self.log_scalars(values, rays_per_s)
                if main and step_check(self.step, tc.eval_every, last) and self.has_gt:
                    self.last_report = self.camera_metrics()
                    self.log_camera_metrics(self.last_report)
                    self.notify("training", self.step, self.last_report, values["psnr"])
                    postfix["rot"] = f"{self.last_report['rotation-aware']['rot_median_deg']:.2f}"
                if main and step_check(self.step, tc.print_every, last):
                    bar.set_postfix(postfix, refresh=False)
                    if not tc.progress_bar:
                        print(
                            f"{self.step}/{last} "
                            + " ".join(f"{k}={v}" for k, v in postfix.items()),
                            flush=True,
                        )
                if main and step_check(self.step, tc.image_every, last):
                    self.log_image()
                if main and step_check(self.step, tc.pose_history_every, last):
                    self.record_poses()
                if main and step_check(self.step, tc.pose_plot_every, last):
                    self.log_pose_plot()
                if step_check(self.step, tc.ckpt_every, last):
                    self.save()
                if self._should_stop():
                    agreed = True
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            # A KeyboardInterrupt from elsewhere may leave the ranks apart: no collective then.
            self.save(collective=agreed or self.world.size == 1)
            if main:
                self.writer.close()
            raise Interrupted() from None
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            bar.close()
        self.save()
        self.save("final.pt")
        if not main:  # rank 0 alone exports, evaluates and writes metrics
            return None
        report = self.finish()
        self.writer.close()
        return report

    def finish(self) -> dict | None:
        """Export cameras; with ground truth, write metrics.json and print the final errors."""
        cams = self.model.cam_param
        with torch.no_grad():
            c2w, K = cams.c2w().cpu().double().numpy(), cams.K().cpu().double().numpy()
        names = [self.scene.image_names[i] for i in self.scene.train_ids]
        export_cameras(
            self.exp_dir / "poses", c2w, K, self.H, self.W, names, self.scene.near, self.scene.far
        )
        report = self.camera_metrics()
        if report is None:
            print(f"done: {self.step} steps; cameras written to {self.exp_dir / 'poses'}")
            return None
        with open(self.exp_dir / "metrics.json", "w") as f:
            json.dump({"step": self.step, "split": "train", **report}, f, indent=1)
        print(format_report(report, self.step))
        if self.cfg.training.eval_at_end:
            from evaluation.heldout import evaluate_experiment

            evaluate_experiment(
                self.exp_dir, self.cfg, self.scene, self.model, self.device, step=self.step
            )
        return report


def format_report(report: dict, step: int) -> str:
    lines = [f"final camera errors after {step} steps (training views):"]
    for alignment in ("rotation-aware", "centre-only"):
        r, i = report[alignment], report[alignment]["identity_start"]
        lines.append(
            f"  {alignment:>14} alignment: rotation median {r['rot_median_deg']:.3f} deg "
            f"(mean {r['rot_mean_deg']:.3f}; identity start {i['rot_median_deg']:.3f} / "
            f"{i['rot_mean_deg']:.3f}), translation median {r['trans_median']:.4f} "
            f"(identity start {i['trans_median']:.4f})"
        )
        if "start" in r and r["start"]["rot_median_deg"] != i["rot_median_deg"]:
            s = r["start"]
            lines.append(
                f"  {'':>14}   initial poses: rotation median {s['rot_median_deg']:.3f} deg, "
                f"translation median {s['trans_median']:.4f}"
            )
    if "focal_error_percent" in report:
        lines.append(f"  focal error {report['focal_error_percent']:.2f} %")
    return "\n".join(lines)


def tracks_cache_dir(cfg, exp_dir: Path) -> Path:
    return Path(cfg.tracks.cache_dir) if cfg.tracks.cache_dir else Path(exp_dir) / "tracks"


def write_config(cfg, exp_dir: Path) -> None:
    (exp_dir / "config.yaml").write_text(to_yaml(cfg))
