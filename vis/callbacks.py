"""Training callbacks that draw (engine/callbacks.py holds the rest): train.py adds them."""

from __future__ import annotations

import torch

from engine.callbacks import Periodic
from vis.plot_camera_pose import figure_to_array, plot_cameras


class PosePlot(Periodic):
    """The cameras (aligned to ground truth when known) as an image in tensorboard."""

    def run(self, trainer, values: dict) -> None:
        with torch.no_grad():
            c2w = trainer.model.cam_param.c2w().double().cpu()
        gt = trainer.c2w_gt if trainer.has_gt else None
        fig = plot_cameras(c2w, gt, title=f"step {trainer.step}")
        trainer.writer.add_image("cameras", figure_to_array(fig), trainer.step, dataformats="HWC")
