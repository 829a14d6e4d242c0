"""How the learned cameras moved during training: snapshots of every camera's c2w, kept bounded.

The training loop calls `PoseHistory(exp_dir, max_snapshots).append(step, c2w)` every N steps;
vis/plot_camera_pose.py --gif animates the result. The file is <exp_dir>/pose_history.npz,
rewritten atomically at each stored snapshot, so it can be read while training runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.errors import DataError
from utils.io import write_atomic

FILE_NAME = "pose_history.npz"


class PoseHistory:
    """At most max_snapshots snapshots (step, c2w (n, 4, 4)), evenly spaced in steps.

    When full, every other snapshot is dropped (the first is always kept) and the spacing
    between stored snapshots doubles: later appends closer than that to the last stored one
    are skipped, so the history stays evenly spaced while covering all of training. An append
    at a step not after the last stored one (a resume from an earlier checkpoint) first drops
    the snapshots from that step on. An existing file in exp_dir is continued.
    """

    def __init__(self, exp_dir: str | Path, max_snapshots: int = 100):
        if max_snapshots < 2:
            raise ValueError(f"max_snapshots must be at least 2, got {max_snapshots}")
        self.path = Path(exp_dir) / FILE_NAME
        self.max_snapshots = int(max_snapshots)
        self.steps = np.zeros(0, dtype=np.int64)
        self.c2w = np.zeros((0, 0, 4, 4), dtype=np.float32)
        self.spacing = 0
        if self.path.is_file():
            with np.load(self.path) as data:
                self.steps, self.c2w = data["steps"], data["c2w"]
                self.spacing = int(data["spacing"])
            while len(self.steps) > self.max_snapshots:
                self._thin()

    @classmethod
    def load(cls, exp_dir: str | Path) -> PoseHistory:
        """The history written during training; DataError when there is none."""
        path = Path(exp_dir) / FILE_NAME
        if not path.is_file():
            raise DataError(
                f"{path} does not exist; the training loop writes it (pose history) while "
                "training, so train (or resume) this experiment with the pose history enabled."
            )
        with np.load(path) as data:
            n = len(data["steps"])
        return cls(exp_dir, max(n, 2))

    def __len__(self) -> int:
        return len(self.steps)

    def _thin(self) -> None:
        self.steps, self.c2w = self.steps[::2], self.c2w[::2]
        gaps = np.diff(self.steps)
        self.spacing = int(gaps.min()) if len(gaps) else self.spacing

    def append(self, step: int, c2w: torch.Tensor | np.ndarray) -> bool:
        """Record the cameras c2w (n, 4, 4) (any device, grad or not) at `step`; returns whether
        the snapshot was stored (False when it falls between the current spacing)."""
        step = int(step)
        c2w = torch.as_tensor(c2w).detach().cpu().float().numpy()
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be (n, 4, 4), got {tuple(c2w.shape)}")
        if len(self.steps) and c2w.shape[0] != self.c2w.shape[1]:
            raise ValueError(
                f"{self.path} holds {self.c2w.shape[1]} cameras, not {c2w.shape[0]}; "
                "it belongs to another run"
            )
        keep = self.steps < step
        changed = not keep.all()
        self.steps, self.c2w = self.steps[keep], self.c2w[keep]
        if len(self.steps) >= self.max_snapshots and step - self.steps[-1] >= self.spacing:
            self._thin()
            changed = True
        if len(self.steps) and step - self.steps[-1] < self.spacing:
            if changed:
                self._save()
            return False
        self.steps = np.append(self.steps, step)
        self.c2w = np.concatenate([self.c2w.reshape(-1, *c2w.shape), c2w[None]])
        self._save()
        return True

    def _save(self) -> None:
        write_atomic(
            self.path,
            lambda f: np.savez(f, steps=self.steps, c2w=self.c2w, spacing=np.int64(self.spacing)),
        )
