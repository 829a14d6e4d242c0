"""train.py --viewer: the browser viewer (vis/viewer.py) served while the run trains.

The page is view.py's; training changes it from the training thread, between steps:
- every UPDATE_S the frustums move to the learned cameras and the Run panel shows the step, the
  batch's loss and PSNR and the last camera errors (recoloured, the ground truth realigned);
- while a browser is connected, the render gets a copy of the model once it has shown the last
  one, at most every SNAPSHOT_S (a deep copy: the render swaps the image size and a grid
  upsampling changes parameter shapes, so it never reads the parameters the optimiser writes);
- the render's chunks of rays run only while the training thread waits for them between two
  steps (BetweenSteps), and only while that waiting (with the copies and the updates) stays
  within SHARE of the training's wall time: rendering and training never compete for the
  cores (torch's thread count is one setting for the whole process, so a render thread beside
  a step would oversubscribe them), and a step is at most about SHARE slower on average.
While training, the resting frame is LIVE_HEIGHT rows (the panel's slider raises it) and the
preview LIVE_PREVIEW_HEIGHT.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time

import numpy as np
import torch
from tqdm import tqdm

from engine.callbacks import Callback
from geometry.alignment import HEADLINE_ALIGNMENT
from vis.viewer import Viewer
from vis.viewer_scene import build_viewer_scene, gt_in_learned_world, render_path

SHARE = 0.03  # of the training's wall time given to the viewer
SLICE_S = 0.1  # longest wait between two steps (and the chunk in flight then)
UPDATE_S = 1.0
SNAPSHOT_S = 2.0
LIVE_HEIGHT = 96
LIVE_PREVIEW_HEIGHT = 32  # two chunks: a moving camera gets a picture within a few seconds
LIVE_CHUNK = 512  # rays per chunk: a slice overdraws its budget by one chunk at most


class BetweenSteps:
    """A gate the render's chunks pass one at a time, open only while the training thread waits
    in between_steps, and only while the time it waited (`waited`, plus what `account` adds)
    stays within `share` of the time since the gate was made. After close() it stays open."""

    def __init__(self, share: float = SHARE, slice_s: float = SLICE_S):
        self.share, self.slice_s = share, slice_s
        self.cond = threading.Condition()
        self.open = self.closed = False
        self.waiting = self.running = 0
        self.waited = 0.0
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def chunk(self):
        """Render one chunk of rays inside (the render thread)."""
        with self.cond:
            self.waiting += 1
            self.cond.notify_all()
            while not (self.open or self.closed):
                self.cond.wait()
            self.waiting -= 1
            self.running += 1
        try:
            yield
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def budget(self) -> float:
        """Seconds the training may still wait for the viewer (negative: overdrawn)."""
        return self.share * (time.perf_counter() - self.t0) - self.waited

    def account(self, seconds: float) -> None:
        """Viewer work done in the training thread (copies, updates) counts as waiting."""
        self.waited += seconds

    def between_steps(self) -> None:
        """The training thread, after a step: let waiting chunks run while the budget lasts
        (slice_s at most), then wait for the chunk in flight (the only overdraw, repaid before
        the next slice opens)."""
        budget = self.budget()
        if not self.waiting or budget <= 0:
            return
        t0 = time.perf_counter()
        deadline = t0 + min(self.slice_s, budget)
        with self.cond:
            self.open = True
            self.cond.notify_all()
            while time.perf_counter() < deadline:
                if not (self.waiting or self.running):
                    # the render thread is between two chunks (or done): a moment's grace
                    self.cond.wait(timeout=0.002)
                    if not (self.waiting or self.running):
                        break
                else:
                    self.cond.wait(timeout=max(deadline - time.perf_counter(), 0.0))
            self.open = False
            while self.running:
                self.cond.wait()
        self.waited += time.perf_counter() - t0

    def pause(self) -> None:
        """Stop counting time towards the budget (no chunk runs until between_steps)."""
        self.paused_at = time.perf_counter()

    def resume(self) -> None:
        self.t0 += time.perf_counter() - self.paused_at

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def render_copy(model):
    """A copy of the model for the render thread (no compiled graphs, no gradients)."""
    memo = {id(model._compiled): {}}  # compiled graphs are not copied: the copy runs eagerly
    for p in model.parameters():
        if p.grad is not None:
            memo[id(p.grad)] = None
    shadow = copy.deepcopy(model, memo)
    shadow.compile_field = False
    for p in shadow.parameters():
        p.grad = None
        p.requires_grad_(False)
    return shadow.eval()


def live_lines(trainer, values: dict) -> str:
    """The Run panel while training: step, the batch's loss and PSNR, the camera errors."""
    lines = [f"**step** {trainer.step} / {trainer.cfg.training.num_iters} (training)"]
    if "total" in values:
        lines.append(f"**loss** {values['total']:.5f}, **PSNR** {values['psnr']:.2f} (batch)")
    if "rays_s" in trainer.postfix:
        lines.append(f"**rays/s** {trainer.postfix['rays_s']}")
    report = trainer.last_report
    if report is not None:
        r = report[HEADLINE_ALIGNMENT]
        lines.append(
            f"**rotation** median {r['rot_median_deg']:.3f} deg, max {r['rot_max_deg']:.3f} "
            f"({HEADLINE_ALIGNMENT})"
        )
        if "focal_error_percent" in report:
            lines.append(f"**focal error** {report['focal_error_percent']:.2f} %")
    if trainer.cameras_frozen_at is not None:
        lines.append(f"**cameras** fixed since step {trainer.cameras_frozen_at} (cameras.guard)")
    return "  \n".join(lines)


class LiveViewer(Callback):
    """train.py --viewer: serves the page from the first step to the end of training."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, share: float | None = None):
        self.host, self.port = host, port
        self.share = SHARE if share is None else share
        self.viewer: Viewer | None = None
        self.gate: BetweenSteps | None = None
        self.report = None

    def on_train_start(self, trainer) -> None:
        t0 = time.perf_counter()
        view = build_viewer_scene(
            trainer.exp_dir, trainer.cfg, trainer.scene, trainer.model, tracks=trainer.tracks
        )
        self.gate = BetweenSteps(self.share, SLICE_S)
        self.viewer = Viewer(
            view,
            render_copy(trainer.model),
            self.host,
            self.port,
            chunk=LIVE_CHUNK,
            log=tqdm.write,
            gate=self.gate.chunk,
            full_height=min(view.H, LIVE_HEIGHT),
            preview_height=LIVE_PREVIEW_HEIGHT,
        )
        self.viewer.progress = trainer.progress()
        self.viewer.set_metrics(live_lines(trainer, {}))
        self.t_update = self.t_copy = time.perf_counter()
        tqdm.write(
            f"viewer: {view.n} cameras, {len(view.points)} track points at {self.viewer.url} "
            f"in {self.t_update - t0:.1f} s (it closes when training ends)"
        )

    def update(self, trainer, values: dict) -> None:
        """Cameras, the render path and the Run panel to the model's state now."""
        with torch.no_grad():
            c2w = trainer.model.cam_param.c2w().detach().double().cpu().numpy()
        errors = gt = path = None
        view = self.viewer.view
        if view.path is not None and not np.array_equal(c2w, view.c2w):
            path = render_path(trainer.cfg, trainer.scene, trainer.model, c2w)[1]
        if trainer.last_report is not None and trainer.last_report is not self.report:
            self.report = trainer.last_report
            block = self.report[HEADLINE_ALIGNMENT]
            per_camera = block.get("rot_deg_per_camera", [])
            # cameras all at one point (the identity start) fit no similarity: scale 0
            if len(per_camera) == len(c2w) and block["similarity"]["scale"] > 1e-12:
                errors = np.asarray(per_camera)
                gt = gt_in_learned_world(trainer.c2w_gt.numpy(), block["similarity"])
        self.viewer.update_cameras(c2w, errors, gt, path)
        self.viewer.set_metrics(live_lines(trainer, values))

    def on_step_end(self, trainer, values: dict) -> None:
        if self.viewer is None:
            return
        now = time.perf_counter()
        if now - self.t_update >= UPDATE_S:
            self.update(trainer, values)
            self.t_update = time.perf_counter()
            self.gate.account(self.t_update - now)
        versions = self.viewer.stats["versions"]
        if (
            self.viewer.clients
            and now - self.t_copy >= SNAPSHOT_S
            # the render has shown the last copy (a copy costs about a frame's chunks: none
            # is taken only to be replaced unseen)
            and versions
            and versions[-1] == self.viewer.version
            and self.gate.budget() > 0
        ):
            t = time.perf_counter()
            self.viewer.set_model(render_copy(trainer.model), trainer.progress())
            self.t_copy = time.perf_counter()
            self.gate.account(self.t_copy - t)
        self.gate.between_steps()

    def on_train_end(self, trainer) -> None:
        if self.viewer is not None:
            self.update(trainer, {})
            tqdm.write(
                f"viewer: training done, closing; python view.py --load_dir {trainer.exp_dir} "
                "serves the result"
            )
        self.close()

    def close(self) -> None:
        """Stop the server (training ended, was interrupted or failed)."""
        if self.viewer is not None:
            self.viewer.stopping.set()  # a render waiting at the gate gives up once it opens
        if self.gate is not None:
            self.gate.close()
        if self.viewer is not None:
            self.viewer.stop()
            self.viewer = None
