"""Learnable cameras: intrinsics (focal) and per-image extrinsics as corrections on an initial pose.

c2w_i = c2w_init_i @ [R(r_i) | t_i]: the correction acts in the camera's own frame, so its
scale does not depend on where the camera sits in the world. Every part can be frozen.
"""

from __future__ import annotations

import torch
from torch import nn

from geometry.rotations import identity_params, params_to_matrix
from utils.config import RENAMED_VALUES

# How the learned focal parameter s maps to the focal ratio (focal / image side: fx / W and
# fy / H; with square pixels one ratio of W): f = s^2, s or exp(s).
FOCAL_PARAMETERISATIONS = ("squared", "linear", "exp")
# Names used before the layout rework, still read from saved configs and checkpoints (one
# mapping, the config loader's).
LEGACY_FOCAL_PARAMETERISATIONS = RENAMED_VALUES["cameras:focal_parameterisation"]


def _kind(kind: str) -> str:
    kind = LEGACY_FOCAL_PARAMETERISATIONS.get(kind, kind)
    if kind not in FOCAL_PARAMETERISATIONS:
        raise ValueError(
            f"cameras.focal_parameterisation must be one of {', '.join(FOCAL_PARAMETERISATIONS)}, "
            f"not {kind!r}."
        )
    return kind


def param_from_focal_ratio(focal_ratio: torch.Tensor, kind: str) -> torch.Tensor:
    """The learned focal parameter that gives `focal_ratio` (focal / image side)."""
    kind = _kind(kind)
    if kind == "squared":
        return focal_ratio.sqrt()
    return focal_ratio.clone() if kind == "linear" else focal_ratio.log()


def focal_ratio_from_param(param: torch.Tensor, kind: str) -> torch.Tensor:
    """focal / image side from the learned focal parameter."""
    kind = _kind(kind)
    if kind == "squared":
        return param**2
    return param if kind == "linear" else param.exp()


class Cameras(nn.Module):
    """N cameras of one image size (H, W).

    c2w_init: (N, 4, 4) initial camera-to-world (OpenCV axes); focal_init: (N, 2) fx, fy in
    pixels; principal: (N, 2) principal points (fixed).
    """

    def __init__(
        self,
        c2w_init,
        focal_init,
        principal,
        H,
        W,
        so3_representation="axis-angle",
        focal_parameterisation="squared",
        focal_mode="shared",
        learn_R=True,
        learn_t=True,
        learn_focal=True,
        square_pixels=True,
    ):
        super().__init__()
        n = c2w_init.shape[0]
        self.H, self.W = int(H), int(W)
        self.so3_representation = so3_representation
        self.focal_parameterisation = _kind(focal_parameterisation)
        self.focal_mode = focal_mode
        self.square_pixels = square_pixels
        self.register_buffer("c2w_init", c2w_init.float().clone())
        self.register_buffer("principal", principal.float().clone())
        # (height, width) in pixels; a buffer so it follows the module's device.
        self.register_buffer("size", torch.tensor([float(H), float(W)]))
        self.r = nn.Parameter(identity_params(so3_representation, n), requires_grad=learn_R)
        self.t = nn.Parameter(torch.zeros(n, 3), requires_grad=learn_t)
        f0 = focal_init.float() / self.focal_unit
        if square_pixels:
            # One focal for both axes (fx = fy, in units of W): forward-facing captures barely
            # pitch, so a separate fy is nearly unconstrained and drifts far off.
            f0 = f0[:, :1]
        if focal_mode == "shared":
            f0 = f0.mean(dim=0, keepdim=True)
        elif focal_mode != "per_image":
            raise ValueError(f"cameras.focal_mode must be shared or per_image, not {focal_mode!r}.")
        # The raw learned parameter; focal_px() gives the focal in pixels.
        self.focal_raw = nn.Parameter(
            param_from_focal_ratio(f0, self.focal_parameterisation), requires_grad=learn_focal
        )

    @property
    def focal_unit(self) -> torch.Tensor:
        """(2,) pixels per unit of the learned focal along x and y, (W, H): fx is learned
        relative to the image width and fy to its height."""
        return self.size.flip(-1)

    @property
    def n(self) -> int:
        return self.c2w_init.shape[0]

    @torch.no_grad()
    def set_initial(
        self,
        c2w_init: torch.Tensor | None = None,
        focal: torch.Tensor | None = None,
        principal: torch.Tensor | None = None,
    ) -> None:
        """Replace what is given of the starting cameras: poses c2w (N, 4, 4), focal (N, 2) fx,
        fy in pixels, principal points (N, 2) in pixels. New poses restart the learned pose
        corrections at zero. Only sfm.initialise calls this (the one writer of starts)."""
        if c2w_init is not None:
            self.c2w_init.copy_(c2w_init.to(self.c2w_init))
            self.r.copy_(identity_params(self.so3_representation, self.n).to(self.r))
            self.t.zero_()
        if focal is not None:
            f0 = focal.to(self.size) / self.focal_unit
            f0 = f0[:, :1] if self.square_pixels else f0
            if self.focal_mode == "shared":
                f0 = f0.mean(dim=0, keepdim=True)
            self.focal_raw.copy_(param_from_focal_ratio(f0, self.focal_parameterisation))
        if principal is not None:
            self.principal.copy_(principal.to(self.principal))

    def focal_parameters(self):
        return [self.focal_raw] if self.focal_raw.requires_grad else []

    def param_groups(self, lr_rotation: float, lr_translation: float, lr_focal: float) -> dict:
        """Optimiser parameter groups by name ("pose": rotations and translations, "focal"),
        only for what is learnable; each value is a list of torch.optim group dicts."""
        pose = [{"params": [self.r], "lr": lr_rotation}] if self.r.requires_grad else []
        pose += [{"params": [self.t], "lr": lr_translation}] if self.t.requires_grad else []
        groups = {"pose": pose} if pose else {}
        if self.focal_raw.requires_grad:
            groups["focal"] = [{"params": [self.focal_raw], "lr": lr_focal}]
        return groups

    def delta(self) -> torch.Tensor:
        """(N, 4, 4) learned corrections."""
        T = torch.eye(4, device=self.t.device).repeat(self.n, 1, 1)
        T[:, :3, :3] = params_to_matrix(self.so3_representation, self.r)
        T[:, :3, 3] = self.t
        return T

    def c2w(self) -> torch.Tensor:
        """(N, 4, 4) current camera-to-world of every camera."""
        return self.c2w_init @ self.delta()

    def focal_px(self) -> torch.Tensor:
        """(N, 2) current fx, fy in pixels."""
        f = focal_ratio_from_param(self.focal_raw, self.focal_parameterisation)
        f = f * self.focal_unit[0] if self.square_pixels else f * self.focal_unit
        return f.expand(self.n, 2)

    def K(self) -> torch.Tensor:
        """(N, 3, 3) current intrinsics (pixel centres at +0.5)."""
        f = self.focal_px()
        K = torch.zeros(self.n, 3, 3, device=f.device, dtype=f.dtype)
        K[:, 0, 0], K[:, 1, 1] = f[:, 0], f[:, 1]
        K[:, :2, 2] = self.principal
        K[:, 2, 2] = 1
        return K
