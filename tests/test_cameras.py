"""Learnable cameras: focal parameterisations, square pixels, corrections composed in the
camera frame, frozen parts."""

import math

import pytest
import torch

from geometry.rotations import REPRESENTATIONS, axis_angle_to_matrix, matrix_to_params
from models.cameras import (
    FOCAL_PARAMETERISATIONS,
    Cameras,
    focal_ratio_from_param,
    param_from_focal_ratio,
)


def make(n=3, **kw):
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    focal = torch.tensor([[80.0, 60.0]]).repeat(n, 1)
    principal = torch.tensor([[32.0, 24.0]]).repeat(n, 1)
    return Cameras(c2w, focal, principal, 48, 64, **kw)


@pytest.mark.parametrize("kind", FOCAL_PARAMETERISATIONS)
def test_focal_parameterisations_round_trip(kind):
    f = torch.tensor([0.5, 1.0, 1.7])
    assert torch.allclose(focal_ratio_from_param(param_from_focal_ratio(f, kind), kind), f)


def test_square_pixels_share_one_focal_and_separate_axes_do_not():
    square = make(square_pixels=True)
    assert torch.allclose(square.focal_px(), torch.tensor([[80.0, 80.0]]).repeat(3, 1))
    separate = make(square_pixels=False)
    assert torch.allclose(separate.focal_px(), torch.tensor([[80.0, 60.0]]).repeat(3, 1))
    per_image = make(square_pixels=False, focal_mode="per_image")
    with torch.no_grad():
        per_image.focal_raw[1] *= 2
    f = per_image.focal_px()
    assert torch.allclose(f[1], 4 * f[0])  # "squared" parameterisation: f = W * s^2


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_correction_acts_in_the_camera_frame(representation):
    cams = make(so3_representation=representation)
    R = axis_angle_to_matrix(torch.tensor([0.0, math.radians(10.0), 0.0]))
    with torch.no_grad():
        cams.r[1] = matrix_to_params(representation, R)
        cams.t[1] = torch.tensor([0.0, 0.0, 2.0])  # two units along the camera's own z
    c2w = cams.c2w()
    assert torch.allclose(c2w[0], cams.c2w_init[0])
    assert torch.allclose(c2w[1, :3, :3], R, atol=1e-6)
    assert torch.allclose(c2w[1, :3, 3], cams.c2w_init[1, :3, 3] + torch.tensor([0, 0, 2.0]))


def test_frozen_parts_get_no_optimiser():
    cams = make(learn_R=False, learn_focal=False)
    assert not cams.r.requires_grad and cams.t.requires_grad
    assert cams.focal_parameters() == []
    c2w = cams.c2w()
    c2w.sum().backward()
    assert cams.r.grad is None and cams.t.grad is not None


def test_size_is_height_width():
    cams = make(square_pixels=False)
    assert cams.size.tolist() == [48.0, 64.0]
    assert torch.allclose(cams.focal_px(), torch.tensor([[80.0, 60.0]]).repeat(3, 1))


def test_a_version_1_checkpoint_loads_under_todays_names(tmp_path):
    """Checkpoints written before the layout rework: `cam_param.focal`, a (W, H) `size`, and
    the parameterisation named `focal_param: square` in the cameras' metadata."""
    from engine.checkpoint import load_checkpoint

    cams = make(square_pixels=False)
    with torch.no_grad():
        cams.focal_raw.mul_(1.1)
    state = {f"cam_param.{k}": v for k, v in cams.state_dict().items()}
    state["cam_param.focal"] = state.pop("cam_param.focal_raw")
    state["cam_param.size"] = torch.tensor([64.0, 48.0])
    meta = {"focal_param": "square", "H": 48, "W": 64}
    torch.save({"version": 1, "step": 7, "model": state, "cameras": meta}, tmp_path / "v1.pt")
    ckpt = load_checkpoint(tmp_path / "v1.pt")
    assert ckpt["cameras"]["focal_parameterisation"] == "squared"
    loaded = make(square_pixels=False)
    loaded.load_state_dict({k[len("cam_param.") :]: v for k, v in ckpt["model"].items()})
    assert torch.allclose(loaded.focal_px(), cams.focal_px())
    torch.save({"version": 99, "model": {}}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "v99.pt")
