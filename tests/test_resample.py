"""model.resample: each ray's samples drawn where a no-gradient pass of the field puts the
weight (models/rendering.py resample_positions, SceneModel._proposal), and the ray-weight losses on
samples that are not uniform (losses/interval.py, losses/occlusion.py)."""

import pytest
import torch
from test_contraction import _model
from test_grid import grid_model

from losses.interval import interval_loss
from losses.occlusion import occlusion_loss
from models.rendering import (
    contracted_t,
    contracted_t_at,
    contracted_u,
    resample_positions,
    sample_edges,
    stratified_t,
)
from utils.errors import ConfigError


def spike(R: int, S: int, k: int) -> torch.Tensor:
    w = torch.zeros(R, S)
    w[:, k] = 1.0
    return w


@pytest.mark.parametrize("perturb", [False, True])
def test_resampled_samples_are_sorted_in_the_span_and_crowd_around_the_weight(perturb):
    torch.manual_seed(0)
    R, S, n = 50, 16, 32
    t = stratified_t(R, S, 0.0, 1.0, perturb)
    t_new = resample_positions(t, spike(R, S, 7), n, perturb)  # t in [0, 1]: positions
    assert t_new.shape == (R, n)
    assert (t_new.diff(dim=-1) >= 0).all() and (t_new >= 0).all() and (t_new <= 1).all()
    # the bins around samples 6, 7, 8 (the dilation): edges at the midpoints between samples
    lo, hi = (t[:, 5] + t[:, 6]) / 2, (t[:, 8] + t[:, 9]) / 2
    inside = ((t_new >= lo[:, None]) & (t_new <= hi[:, None])).float().mean()
    assert inside > 0.97
    if perturb:  # the padding (0.01 against the dilated spike's 3): ~5 of 1600 elsewhere
        assert (1 - inside) * R * n >= 1


def test_the_resampled_surface_is_found_to_a_fraction_of_the_coarse_spacing():
    """An opaque half space from NDC t = 0.475 on, 16 stratified samples (spacing 1 / 16):
    the uniform samples' depth is the first midpoint behind it, 0.53125; 16 samples resampled
    from their weights put one within about a sixteenth of that spacing of the front (the
    dilation reaches into the bin in front of the first dense sample, where the front is)."""
    front = 0.475

    def depth(resample):
        model = grid_model(**{"model:resample": resample})
        density = model.field.density

        def half_space(points, progress=None):
            sigma, h = density(points, progress)
            t = (points[..., 2] + 1) / 2  # NDC z from -1 at the near plane, t = (z + 1) / 2
            return torch.where(t >= front, 1e4, 0.0), h

        model.field.density = half_space
        with torch.no_grad():
            c2w, K = model.cam_param.c2w(), model.cam_param.K()
            return model.render_image(c2w[0], K[0])["t"]

    assert depth(0).sub(0.53125).abs().max() < 1e-4
    assert (depth(16) - front).abs().max() < 0.006


def test_renders_with_and_without_the_shortcuts_agree_and_gradients_reach_field_and_cameras():
    model = grid_model(**{"model:resample": 8, "model:occupancy": True, "model:net_depth": 2})
    with torch.no_grad():
        model.field.sigma.bias.fill_(3.0)
        c2w, K = model.cam_param.c2w(), model.cam_param.K()
        fast = model.render_image(c2w[0], K[0])
        model.render_shortcuts = False
        reference = model.render_image(c2w[0], K[0])
        model.render_shortcuts = True
    torch.testing.assert_close(fast["rgb"], reference["rgb"], atol=2e-3, rtol=0)
    ids = torch.zeros(64, dtype=torch.long)
    uv = torch.rand(64, 2) * torch.tensor([32.0, 24.0])
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    out = model.render_rays(*model.rays(ids, uv, c2w, K), perturb=True)
    assert out["t_samples"].shape == (64, 8)
    (out["rgb"].sum() + out["t"].sum()).backward()
    assert model.cam_param.r.grad.abs().sum() > 0
    assert model.field.grid.levels[0].planes.grad.abs().sum() > 0


def test_fewer_samples_asked_for_take_proportionally_fewer_resampled_ones():
    model = grid_model(**{"model:resample": 8})
    rays = model.rays(
        torch.zeros(4, dtype=torch.long),
        torch.rand(4, 2) * 20,
        model.cam_param.c2w(),
        model.cam_param.K(),
    )
    with torch.no_grad():
        assert model.render_rays(*rays)["t_samples"].shape == (4, 8)
        assert model.render_rays(*rays, n_samples=8)["t_samples"].shape == (4, 4)


def test_renders_take_the_render_count_and_training_the_resample_count():
    model = grid_model(**{"model:resample": 8, "model:render_resample": 4})
    rays = model.rays(
        torch.zeros(4, dtype=torch.long),
        torch.rand(4, 2) * 20,
        model.cam_param.c2w(),
        model.cam_param.K(),
    )
    assert model.render_rays(*rays, perturb=True)["t_samples"].shape == (4, 8)
    with torch.no_grad():
        assert model.render_rays(*rays)["t_samples"].shape == (4, 4)
        assert model.render_rays(*rays, n_samples=8)["t_samples"].shape == (4, 2)


def test_resample_and_a_fine_network_together_are_one_sentence():
    with pytest.raises(ConfigError, match="set one of them to 0"):
        grid_model(**{"model:resample": 8, "model:n_importance": 8})


def test_the_interval_loss_on_given_edges_is_its_double_sum():
    torch.manual_seed(0)
    w = torch.rand(5, 12) / 6
    uniform = torch.linspace(0, 1, 13).expand(5, 13)
    assert interval_loss(w, uniform)["distortion"].item() == pytest.approx(
        interval_loss(w)["distortion"].item(), rel=1e-5
    )
    edges = torch.sort(torch.rand(5, 11), -1)[0]
    edges = torch.cat([torch.zeros(5, 1), edges, torch.ones(5, 1)], -1)
    u, d = (edges[:, 1:] + edges[:, :-1]) / 2, edges.diff(dim=-1)
    brute = (w[:, :, None] * w[:, None, :] * (u[:, :, None] - u[:, None, :]).abs()).sum((1, 2))
    brute = brute + (w**2 * d).sum(-1) / 3
    assert interval_loss(w, edges)["distortion"].item() == pytest.approx(
        brute.mean().item(), rel=1e-5
    )


def test_sample_edges_are_the_midpoints_between_samples_and_the_span_ends():
    t = torch.tensor([[0.2, 0.4, 0.5, 0.9]])
    expected = torch.tensor([[0.0, 0.3, 0.45, 0.7, 1.0]])
    torch.testing.assert_close(sample_edges(t), expected)


@pytest.mark.parametrize("framework", ["NeRF", "SirenNeRF"])
def test_contracted_positions_round_trip_and_a_contracted_model_resamples_in_them(framework):
    model = _model(framework, contract_space=True)
    model.cfg.resample = 8
    torch.manual_seed(0)
    origins = torch.randn(32, 3) * 2
    dirs = torch.nn.functional.normalize(torch.randn(32, 3), dim=-1)
    t = contracted_t(origins, dirs, 16, 0.1, 100.0, perturb=True)
    u = contracted_u(origins, dirs, t, 0.1, 100.0)
    assert (u.diff(dim=-1) > 0).all() and (u >= 0).all() and (u <= 1).all()
    torch.testing.assert_close(contracted_t_at(origins, dirs, u, 0.1, 100.0), t, rtol=1e-4, atol=0)
    with torch.no_grad():
        out = model.render_rays(origins, dirs, dirs)
    assert out["u_samples"].shape == (32, 8)
    torch.testing.assert_close(
        contracted_u(origins, dirs, out["t_samples"], 0.1, 100.0), out["u_samples"]
    )


def test_the_occlusion_term_on_positions_charges_the_near_part_of_the_ray():
    w = torch.tensor([[0.3, 0.2, 0.5]])
    s = torch.tensor([[0.05, 0.08, 0.5]])  # two samples in the nearest tenth of the ray
    assert occlusion_loss(w, 0.1, s)["occlusion"].item() == pytest.approx(0.5)
    assert occlusion_loss(w, 0.1)["occlusion"].item() == pytest.approx(0.3)  # first sample
