"""360-degree captures: the camera layout decides the ray space, and unbounded scenes contract
space beyond the unit ball (mip-NeRF 360) with samples linear in disparity out there."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dataio.demo import demo_cameras
from engine.experiment import use_contraction, use_ndc
from geometry.poses import focus_point, is_forward_facing, look_at
from models.cameras import Cameras
from models.rendering import composite, contract, contracted_t, stratified_t, unit_ball_exit
from models.scene_model import SceneModel
from utils.config import load_config
from utils.errors import ConfigError


def ring(n=8, radius=3.0, height=-2.0):
    """n cameras on a horizontal ring (OpenCV world: y down, so negative height is above),
    all looking at the origin."""
    theta = torch.arange(n, dtype=torch.float64) * 2 * np.pi / n
    centres = torch.stack(
        [radius * theta.cos(), torch.full_like(theta, height), radius * theta.sin()], -1
    )
    return look_at(
        centres,
        torch.zeros(3, dtype=torch.float64),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
    )


def test_llff_like_rig_is_forward_facing_and_a_ring_is_not():
    assert is_forward_facing(demo_cameras(12))
    assert is_forward_facing(torch.from_numpy(demo_cameras(5)))
    assert not is_forward_facing(ring())
    # a half ring (a walk half way around an object) and a flat ring at eye level
    assert not is_forward_facing(ring(16)[:8])
    assert not is_forward_facing(ring(8, height=0.0))
    # a low ring (cameras high above, looking steeply down): axes within 35 degrees of the
    # mean, but the rig is as wide as its distance to what it looks at
    assert not is_forward_facing(ring(8, radius=1.0, height=-1.5))


def test_parallel_cameras_have_no_focus_and_are_forward_facing():
    c2w = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    c2w[:, 0, 3] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert focus_point(c2w) is None
    assert is_forward_facing(c2w)
    np.testing.assert_allclose(focus_point(ring().numpy()), 0.0, atol=1e-9)


def test_contraction_is_identity_inside_bounded_continuous_and_monotone():
    g = torch.Generator().manual_seed(0)
    inside = torch.randn(1000, 3, generator=g, dtype=torch.float64)
    inside = inside / inside.norm(dim=-1, keepdim=True) * torch.rand(1000, 1, generator=g)
    assert torch.equal(contract(inside), inside)
    far = torch.randn(1000, 3, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
        0, 8, (1000, 1), generator=g
    )
    assert (contract(far).norm(dim=-1) < 2).all()
    assert contract(torch.tensor([[1e12, 0.0, 0.0]])).norm() <= 2
    # continuous across the unit sphere (both sides tend to the same point)
    unit = far / far.norm(dim=-1, keepdim=True)
    for eps in (1e-4, 1e-7):
        assert (contract(unit * (1 + eps)) - contract(unit * (1 - eps))).norm(
            dim=-1
        ).max() < 4 * eps
    # along a ray from the centre the contracted radius grows monotonically; along any ray
    # that has passed its nearest point to the centre too
    s = torch.linspace(0, 1e3, 20001, dtype=torch.float64)
    radial = contract(s[:, None] * unit[:1]).norm(dim=-1)
    assert (radial.diff() > 0).all()
    o = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    d = torch.tensor([1.0, 0.5, -0.2], dtype=torch.float64)
    r = contract(o + s[:, None] * d).norm(dim=-1)
    assert (r.diff() >= 0).all()
    # the origin and its gradient are finite
    x = torch.zeros(1, 3, requires_grad=True)
    contract(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_a_ray_tangent_to_the_unit_ball_exits_at_the_tangent_point_with_a_finite_gradient():
    # b^2 - a c is exactly 0 here (4 - 1 * 4): sqrt's slope at 0 once gave a NaN pose gradient
    origins = torch.tensor([[0.0, 1.0, -2.0]], requires_grad=True)
    dirs = torch.tensor([[0.0, 0.0, 1.0]], requires_grad=True)
    exit_t = unit_ball_exit(origins, dirs)
    torch.testing.assert_close(exit_t, torch.tensor([2.0]), atol=1e-5, rtol=0)
    exit_t.sum().backward()
    assert torch.isfinite(origins.grad).all() and torch.isfinite(dirs.grad).all()


def test_contracted_samples_fill_the_ball_then_go_linear_in_disparity():
    origins = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 3.0, -1.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    exit_t = unit_ball_exit(origins, dirs)
    torch.testing.assert_close(exit_t[:2], torch.tensor([2.0, 0.0]))
    t = contracted_t(origins, dirs, 64, 0.1, 100.0, perturb=False)
    assert (t.diff(dim=-1) > 0).all() and (t >= 0.1).all() and (t <= 100.0).all()
    inside, outside = t[0][t[0] <= 2.0], t[0][t[0] > 2.0]
    assert abs(len(inside) - len(outside)) <= 2  # half the samples cover the ball
    torch.testing.assert_close(inside.diff(), torch.full_like(inside.diff(), inside.diff()[0]))
    disparity = 1 / outside
    torch.testing.assert_close(
        disparity.diff(),
        torch.full_like(disparity.diff(), disparity.diff()[1]),
        rtol=1e-3,
        atol=1e-6,
    )
    # a ray leaving the ball from its surface is all disparity-spaced from near on
    torch.testing.assert_close(
        (1 / t[1]).diff(), torch.full_like(t[1][1:], (1 / t[1]).diff()[0]), rtol=1e-3, atol=1e-6
    )
    # perturbed samples stay sorted and within the bounds
    tp = contracted_t(origins, dirs, 64, 0.1, 100.0, perturb=True)
    assert (tp.diff(dim=-1) >= 0).all() and (tp >= 0.1).all() and (tp <= 100.0).all()


def _model(framework="NeRF", contract_space=False, use_ndc_rays=False, n_importance=0):
    cfg = load_config(
        None,
        {
            "model:framework": framework,
            "model:net_depth": 2,
            "model:net_width": 32,
            "model:pos_enc_levels": 4,
            "model:dir_enc_levels": 2,
            "model:n_samples": 16,
            "model:n_importance": n_importance,
        },
    ).model
    cams = Cameras(
        ring(4).float(),
        torch.tensor([[40.0, 40.0]]).repeat(4, 1),
        torch.tensor([[16.0, 12.0]]).repeat(4, 1),
        24,
        32,
    )
    torch.manual_seed(0)
    return SceneModel(cfg, cams, use_ndc_rays, 0.1, 100.0, contract=contract_space)


@pytest.mark.parametrize("framework", ["NeRF", "SirenNeRF"])
def test_contracted_model_renders_and_trains(framework):
    model = _model(framework, contract_space=True, n_importance=8)
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    uv = torch.rand(64, 2) * torch.tensor([32.0, 24.0])
    ids = torch.randint(0, 4, (64,))
    out = model.render_rays(*model.rays(ids, uv, c2w, K), progress=0.5, perturb=True)
    assert torch.isfinite(out["rgb"]).all() and torch.isfinite(out["t"]).all()
    (out["rgb"].mean() + out["rgb_coarse"].mean()).backward()
    grads = [p.grad for p in model.field_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the field only ever sees points inside the unit ball (contract(x) / 2)
    seen = []
    handle = model.field.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    if hasattr(model.field, "density"):  # NeRF renders call density, then colour (shortcuts)
        density = model.field.density

        def seeing(points, progress=None):
            seen.append(points)
            return density(points, progress)

        model.field.density = seeing
    model.render_image(c2w[0], K[0], chunk=256)
    handle.remove()
    assert seen and max(float(p.norm(dim=-1).max()) for p in seen if p.numel()) < 1.0


def test_contraction_off_renders_exactly_as_before():
    """Without contraction the euclidean path is untouched: stratified samples between near and
    far, the field on the raw points."""
    model = _model(contract_space=False)
    assert not model.contract
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    o, d, v = model.rays(torch.zeros(8, dtype=torch.long), torch.rand(8, 2) * 20, c2w, K)
    torch.manual_seed(1)
    out = model.render_rays(o, d, v, perturb=True)
    torch.manual_seed(1)
    t = stratified_t(8, 16, 0.1, 100.0, True)
    rgb, sigma = model.field(o[:, None] + t[..., None] * d[:, None], v, None)
    assert torch.equal(out["rgb"], composite(rgb, sigma, t, d)["rgb"])


def test_contract_auto_follows_ray_space_and_unbounded_flag():
    def cfg(contract="auto", ray_space="auto"):
        return SimpleNamespace(model=SimpleNamespace(contract=contract, ray_space=ray_space))

    photos = SimpleNamespace(forward_facing=False, unbounded=True)
    blender = SimpleNamespace(forward_facing=False, unbounded=False)
    llff = SimpleNamespace(forward_facing=True, unbounded=False)
    assert use_contraction(cfg(None), photos) and use_contraction(cfg("auto"), photos)
    assert not use_ndc(cfg(), photos)
    assert not use_contraction(cfg(None), blender)
    assert not use_contraction(cfg(None), llff)
    assert not use_contraction(cfg(None, "euclidean"), llff)  # LLFF's world is not normalised
    assert use_contraction(cfg(True, "euclidean"), llff)
    assert not use_contraction(cfg(False), photos)
    with pytest.raises(ConfigError, match="euclidean"):
        use_contraction(cfg(True), llff)
    with pytest.raises(ConfigError, match="model.contract"):
        use_contraction(cfg("yes"), photos)
    with pytest.raises(ValueError):
        _model(contract_space=True, use_ndc_rays=True)
