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

from dataio.scene import SceneData
from losses.photometric import mse_to_psnr, photometric_loss
from utils.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_atomic,
    select_keys,
    set_rng_state,
)
from utils.config import to_yaml
from utils.export import export_cameras
from utils.pose_metrics import camera_report
from utils.schedule import step_check


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); exit code 2, last good checkpoint kept."""


class Interrupted(Exception):
    """Ctrl-C: latest.pt was saved at the last completed step."""


def _exp_lr(optimizer, rate: float, steps: int):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=rate ** (1.0 / max(steps, 1)))


class Trainer:
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
        self.n_rays = tc.n_rays

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

    def save(self, name: str = "latest.pt") -> None:
        save_atomic(self.state(), self.exp_dir / "ckpts" / name)

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
        set_rng_state(ckpt["rng"])

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
        return freeze is None or self.progress() < freeze

    def train_step(self) -> dict[str, float]:
        tc = self.cfg.training
        self.model.train()
        cams_active = self.cameras_active()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        cam_ids, uv, target = self.sample_rays()
        c2w, K = self.model.cam_param.c2w(), self.model.cam_param.K()
        if not cams_active:
            c2w, K = c2w.detach(), K.detach()
        o, d, v = self.model.rays(cam_ids, uv, c2w, K)
        render = self.model.render_rays(o, d, v, self.progress(), perturb=self.cfg.model.perturb)
        terms = photometric_loss(render, target)
        unknown = [name for name in terms if f"w_{name}" not in tc]
        if unknown:
            raise KeyError(f"loss terms {unknown} have no training.w_<name> weight in base.yaml")
        total = sum(tc[f"w_{name}"] * value for name, value in terms.items())
        # One host sync per step for every logged number (terms, total, PSNR).
        with torch.no_grad():
            psnr = mse_to_psnr(torch.mean((render["rgb"] - target) ** 2))
            numbers = torch.stack([*terms.values(), total, psnr]).tolist()
        values = dict(zip([*terms, "total", "psnr"], numbers))
        bad = [name for name in terms if not math.isfinite(values[name])]
        if bad:
            raise TrainingError(
                f"the {', '.join(bad)} loss became non-finite at step {self.step + 1}; "
                "the last good checkpoint is kept: lower the learning rates or check the data."
            )
        total.backward()
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
                f"loss/{name}" if name not in ("psnr",) else "train/psnr", value, self.step
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
        cams = self.model.cam_param
        with torch.no_grad():
            c2w, K = cams.c2w()[0], cams.K()[0]
        out = self.model.render_image(c2w, K, self.progress(), self.cfg.model.chunk)
        depth = out["depth"]
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-8)
        gt = self.images[0].reshape(self.H, self.W, 3).cpu()
        self.writer.add_image(
            "render/rgb_vs_gt",
            torch.cat([out["rgb"], gt], 1).clamp(0, 1),
            self.step,
            dataformats="HWC",
        )
        self.writer.add_image("render/depth", depth, self.step, dataformats="HW")

    # -------------------------------------------------------------------------------- the loop
    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True

    def train(self) -> dict | None:
        """Run from self.step to num_iters. Raises Interrupted after saving on Ctrl-C."""
        tc = self.cfg.training
        last = tc.num_iters
        self.writer = SummaryWriter(str(self.exp_dir / "events"))
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(
            total=last,
            initial=self.step,
            disable=not tc.progress_bar,
            dynamic_ncols=True,
            file=sys.stdout,
            mininterval=1.0,
        )
        postfix = {}
        t_last, steps_since = time.perf_counter(), 0
        try:
            while self.step < last:
                values = self.train_step()
                self.step += 1
                steps_since += 1
                bar.update(1)
                if tc.pretrain_iters > 0 and self.step == tc.pretrain_iters:
                    self.model.reset_field()
                    self._make_field_optimizer()
                    tqdm.write(f"step {self.step}: pre-training done; field reset, cameras kept")
                if step_check(self.step, tc.print_every, last) or step_check(
                    self.step, tc.log_every, last
                ):
                    now = time.perf_counter()
                    rays_per_s = steps_since * self.n_rays / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    postfix.update(
                        loss=f"{values['total']:.4f}",
                        psnr=f"{values['psnr']:.2f}",
                        rays_s=f"{rays_per_s:.0f}",
                    )
                    if step_check(self.step, tc.log_every, last):
                        self.log_scalars(values, rays_per_s)
                if step_check(self.step, tc.eval_every, last) and self.has_gt:
                    self.last_report = self.camera_metrics()
                    self.log_camera_metrics(self.last_report)
                    postfix["rot"] = f"{self.last_report['rotation-aware']['rot_median_deg']:.2f}"
                if step_check(self.step, tc.print_every, last):
                    bar.set_postfix(postfix, refresh=False)
                    if not tc.progress_bar:
                        print(
                            f"{self.step}/{last} "
                            + " ".join(f"{k}={v}" for k, v in postfix.items()),
                            flush=True,
                        )
                if step_check(self.step, tc.image_every, last):
                    self.log_image()
                if step_check(self.step, tc.ckpt_every, last):
                    self.save()
                if self.stop_requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            self.save()
            self.writer.close()
            raise Interrupted() from None
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            bar.close()
        self.save()
        self.save("final.pt")
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


def write_config(cfg, exp_dir: Path) -> None:
    (exp_dir / "config.yaml").write_text(to_yaml(cfg))
