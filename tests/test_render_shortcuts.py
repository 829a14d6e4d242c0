"""Render-time shortcuts (SceneModel.render_shortcuts): early ray termination, the occupancy grid
and colour only where a sample shows give the image of the full path while evaluating fewer
samples; the preview mode (vis/videos.py) renders a quarter of the pixels with half the
samples."""

import pytest
import torch
from test_grid import grid_model
from torch import nn

from vis.videos import PREVIEW_SCALE, preview_of, render_frames

RED = torch.tensor([1.0, 0.0, 0.0])


class Slab(nn.Module):
    """A field with density SIGMA and colour red where NDC z > 0 (the far half of every ray of
    the identity camera: NDC z = 2 t - 1) and nothing, coloured green, before it. Counts the
    samples whose density and whose colour it was asked for."""

    SIGMA = 50.0

    def __init__(self):
        super().__init__()
        self.densities = self.colours = 0

    def density(self, points, progress=None):
        self.densities += points[..., 0].numel()
        sigma = torch.where(points[..., 2] > 0, self.SIGMA, 0.0)
        return sigma, points  # the trunk's features: the points themselves

    def colour(self, h, dirs, points_dim):
        self.colours += h[..., 0].numel()
        far = (h[..., 2] > 0).float()
        return torch.stack([far, 1 - far, torch.zeros_like(far)], -1)

    def forward(self, points, dirs, progress=None):
        sigma, h = self.density(points, progress)
        return self.colour(h, dirs, points.dim()), sigma


def slab_model(occupancy: bool, n_samples: int = 64):
    model = grid_model(
        **{
            "model:occupancy": occupancy,
            "model:occupancy_resolution": 16,
            "model:n_samples": n_samples,
        }
    )
    model.field = Slab()
    if occupancy:
        model.rebuild_occupancy()
    model.field.densities = model.field.colours = 0
    return model


def render(model, shortcuts: bool):
    model.render_shortcuts = shortcuts
    with torch.no_grad():
        c2w, K = model.cam_param.c2w(), model.cam_param.K()
    return model.render_image(c2w[0], K[0])


@pytest.mark.parametrize("occupancy", [False, True])
def test_the_shortcuts_render_the_known_image_from_fewer_samples(occupancy):
    model = slab_model(occupancy)
    rays = model.cam_param.H * model.cam_param.W
    samples = rays * 64
    ref = render(model, shortcuts=False)
    assert model.field.densities == model.field.colours == samples  # every sample, once
    # the known answer: every ray ends in the opaque red slab (acc 1: the last interval is
    # unbounded), which starts halfway along it
    torch.testing.assert_close(ref["rgb"], RED.expand_as(ref["rgb"]), atol=1e-5, rtol=0)
    model.field.densities = model.field.colours = 0
    fast = render(model, shortcuts=True)
    torch.testing.assert_close(fast["rgb"], ref["rgb"], atol=1e-4, rtol=0)
    torch.testing.assert_close(fast["t"], ref["t"], atol=1e-4, rtol=0)
    # the last quarter of each ray lies behind the slab's opaque front: never evaluated; with
    # the occupancy grid nor is the empty near half (but for the dilated cell before the slab)
    assert model.field.densities <= samples * (0.35 if occupancy else 0.75)
    # colour only at the few samples of the front that carry weight above WEIGHT_MIN
    assert model.field.colours <= rays * 8


def test_the_shortcuts_keep_a_grid_fields_image():
    model = grid_model(
        **{
            "model:occupancy": True,
            "model:occupancy_resolution": 16,
            "model:net_depth": 2,
            "model:n_samples": 64,
        }
    )
    with torch.no_grad():  # dense enough that rays turn opaque part of the way along
        model.field.sigma.bias.fill_(30.0)
    model.rebuild_occupancy()
    calls = []
    density = model.field.density

    def counting(points, progress=None):
        calls.append(points[..., 0].numel())
        return density(points, progress)

    model.field.density = counting
    ref = render(model, shortcuts=False)["rgb"]
    dense = sum(calls)
    calls.clear()
    fast = render(model, shortcuts=True)["rgb"]
    assert sum(calls) < dense / 2
    torch.testing.assert_close(fast, ref, atol=2e-3, rtol=0)
    assert float(((fast - ref) ** 2).mean()) < 1e-7  # PSNR between the two above 70 dB


def test_training_renders_take_no_shortcut():
    model = slab_model(occupancy=False)
    model.train()
    ids = torch.zeros(32, dtype=torch.long)
    uv = torch.rand(32, 2) * torch.tensor([32.0, 24.0])
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    model.render_rays(*model.rays(ids, uv, c2w, K))  # gradients on: every sample
    assert model.field.densities == 32 * 64


def test_a_preview_renders_a_quarter_of_the_pixels_with_half_the_samples():
    model = slab_model(occupancy=False)
    H, W = model.cam_param.H, model.cam_param.W
    with torch.no_grad():
        c2w, K = model.cam_param.c2w()[0], model.cam_param.K()[0]
    p = preview_of(model, K, H, W)
    assert (p.H, p.W) == (round(H * PREVIEW_SCALE), round(W * PREVIEW_SCALE)) == (12, 16)
    assert p.n_samples == 32 and p.n_importance == 0
    model.render_shortcuts = False  # every sample evaluated: count them
    samples = {"n_samples": p.n_samples, "n_importance": p.n_importance}
    out = next(render_frames(model, c2w[None], p.K, p.H, p.W, None, 4096, False, **samples))
    assert out["rgb"].shape == (12, 16, 3) and out["depth"].shape == (12, 16)
    assert model.field.densities == 12 * 16 * 32
    torch.testing.assert_close(out["rgb"], RED.expand_as(out["rgb"]), atol=1e-5, rtol=0)
    # the same field of view: the preview's centre pixel sees what the full frame's centre does
    assert (p.K[0, 2], p.K[1, 2]) == (K[0, 2] / 2, K[1, 2] / 2)
    assert model.cam_param.H == H and model.cam_param.W == W  # the model's size is restored


@pytest.mark.parametrize(
    "use_viewdirs,appearance_dim", [(True, 0), (True, 4), (False, 4), (False, 0)]
)
def test_colour_from_the_rays_condition_is_the_colour_of_each_sample(use_viewdirs, appearance_dim):
    """Renders compute the colour head's direction (and appearance) block once per ray
    (ray_condition) and gather it per sample (colour_on_rays): the colour of every sample is
    the one colour() gives it from its own direction."""
    from models.fields import NeRFField

    torch.manual_seed(0)
    field = NeRFField(2, 32, (), use_viewdirs, 4, 3, appearance_dim=appearance_dim)
    rays = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    if appearance_dim:
        rays = torch.cat([rays, torch.randn(5, appearance_dim)], -1)
    points = torch.randn(40, 3)
    on = torch.randint(0, 5, (40,))
    _, h = field.density(points)
    expected = field.colour(h, rays[on], 2)
    condition = field.ray_condition(rays)
    got = field.colour_on_rays(h, None if condition is None else condition[on])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
