"""Learnable cameras: focal parameterisations, square pixels, corrections composed in the
camera frame, frozen parts."""

import math

import pytest
import torch

from geometry.rotations import REPRESENTATIONS, axis_angle_to_matrix, matrix_to_params
from models.cameras import FOCAL_PARAMS, Cameras, focal_to_param, param_to_focal


def make(n=3, **kw):
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    focal = torch.tensor([[80.0, 60.0]]).repeat(n, 1)
    principal = torch.tensor([[32.0, 24.0]]).repeat(n, 1)
    return Cameras(c2w, focal, principal, 48, 64, **kw)


@pytest.mark.parametrize("kind", FOCAL_PARAMS)
def test_focal_parameterisations_round_trip(kind):
    f = torch.tensor([0.5, 1.0, 1.7])
    assert torch.allclose(param_to_focal(focal_to_param(f, kind), kind), f)


def test_square_pixels_share_one_focal_and_separate_axes_do_not():
    square = make(square_pixels=True)
    assert torch.allclose(square.focals(), torch.tensor([[80.0, 80.0]]).repeat(3, 1))
    separate = make(square_pixels=False)
    assert torch.allclose(separate.focals(), torch.tensor([[80.0, 60.0]]).repeat(3, 1))
    per_image = make(square_pixels=False, focal_mode="per_image")
    with torch.no_grad():
        per_image.focal[1] *= 2
    f = per_image.focals()
    assert torch.allclose(f[1], 4 * f[0])  # "square" parameterisation: f = W * s^2


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


def test_size_is_height_width_and_a_legacy_width_height_buffer_is_not_taken():
    cams = make(square_pixels=False)
    assert cams.size.tolist() == [48.0, 64.0]
    state = cams.state_dict()
    state["size"] = torch.tensor([64.0, 48.0])  # checkpoints from before stored (W, H)
    loaded = make(square_pixels=False)
    loaded.load_state_dict(state)
    assert loaded.size.tolist() == [48.0, 64.0]
    assert torch.allclose(loaded.focals(), torch.tensor([[80.0, 60.0]]).repeat(3, 1))
