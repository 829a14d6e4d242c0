"""The NeRF field's fast forward (split weights, per-ray directions, one cast) computes the same
function as the textbook one built from concatenations."""

import torch
from torch.nn import functional as F

from models.encoding import positional_encoding
from models.fields import DENSITY_SHIFT, NeRFField, SirenField, linear_relu


def reference_forward(field: NeRFField, points, dirs):
    x_enc = positional_encoding(points, field.pos_levels)
    h = x_enc
    for i, layer in enumerate(field.trunk):
        h = torch.relu(layer(h))
        if i in field.skips:
            h = torch.cat([h, x_enc], dim=-1)
    sigma = F.softplus(field.sigma(h)[..., 0] - DENSITY_SHIFT)
    d_enc = positional_encoding(dirs, field.dir_levels)
    h = torch.relu(field.rgb_hidden(torch.cat([field.feature(h), d_enc], dim=-1)))
    return torch.sigmoid(field.rgb(h)), sigma


def test_nerf_field_matches_concatenation_form_per_sample_and_per_ray():
    torch.manual_seed(0)
    field = NeRFField(depth=6, width=32, skips=(2, 5), pos_levels=6, dir_levels=3)
    points = torch.randn(5, 7, 3)
    dirs = F.normalize(torch.randn(5, 3), dim=-1)
    points.requires_grad_(True)  # the camera poses learn through the sample positions
    rgb_ref, sigma_ref = reference_forward(field, points, dirs[:, None, :].expand(5, 7, 3))
    rgb, sigma = field(points, dirs)  # one direction per ray
    assert rgb.shape == (5, 7, 3) and sigma.shape == (5, 7)
    torch.testing.assert_close(rgb, rgb_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sigma, sigma_ref, atol=1e-6, rtol=1e-5)
    rgb_flat, sigma_flat = field(points.reshape(-1, 3), dirs.repeat_interleave(7, 0))
    torch.testing.assert_close(rgb_flat.reshape(5, 7, 3), rgb_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sigma_flat.reshape(5, 7), sigma_ref, atol=1e-6, rtol=1e-5)
    # gradients reach every parameter the same way
    (rgb.sum() + sigma.sum()).backward()
    grads = [p.grad.clone() for p in field.parameters()] + [points.grad.clone()]
    field.zero_grad()
    points.grad = None
    rgb_ref, sigma_ref = reference_forward(field, points, dirs[:, None, :].expand(5, 7, 3))
    (rgb_ref.sum() + sigma_ref.sum()).backward()
    for g, p in zip(grads, [*field.parameters(), points]):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


def test_linear_relu_gradients():
    """The fused linear + ReLU: exact float64 gradients (numerical check), and under bfloat16
    autocast the same values and float32 parameter gradients as linear then relu."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 5).double()
    x = torch.randn(4, 3, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: linear_relu(type("L", (), {"weight": w, "bias": b}), x),
        (x, layer.weight, layer.bias),
    )
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(256, 64).bfloat16().requires_grad_(True)
    results = []
    for fn in (linear_relu, lambda layer, x: torch.relu(layer(x))):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(layer, x)
        (y.float() * torch.linspace(-1, 1, 32)).sum().backward()
        assert y.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32
        results.append((y, x.grad, layer.weight.grad, layer.bias.grad))
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused.float(), plain.float(), atol=0.05, rtol=0.02)
    # an input that needs no gradient (cameras fixed) gets none computed
    x_fixed = torch.randn(8, 64)
    linear_relu(layer, x_fixed).sum().backward()
    assert x_fixed.grad is None


def test_bf16_autocast_outputs_float32_close_to_float32():
    torch.manual_seed(0)
    field = NeRFField(depth=4, width=64, skips=(1,), pos_levels=4, dir_levels=2)
    points, dirs = torch.rand(64, 16, 3), F.normalize(torch.randn(64, 3), dim=-1)
    rgb32, sigma32 = field(points, dirs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rgb16, sigma16 = field(points, dirs)
    assert rgb16.dtype == torch.float32 and sigma16.dtype == torch.float32
    assert (rgb16 - rgb32).abs().max() < 0.02
    assert (sigma16 - sigma32).abs().max() < 0.02 * sigma32.abs().max() + 1e-3


def test_siren_field_takes_per_ray_directions():
    torch.manual_seed(0)
    field = SirenField(depth=3, width=16)
    points, dirs = torch.randn(4, 5, 3), F.normalize(torch.randn(4, 3), dim=-1)
    rgb, sigma = field(points, dirs)
    rgb_ref, sigma_ref = field(points, dirs[:, None, :].expand(4, 5, 3))
    torch.testing.assert_close(rgb, rgb_ref)
    torch.testing.assert_close(sigma, sigma_ref)


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    import pytest

    from models import compile as compile_module

    field = NeRFField(depth=2, width=8, skips=(), pos_levels=2, dir_levels=1)
    points, dirs = torch.rand(3, 4, 3), F.normalize(torch.randn(3, 3), dim=-1)

    def broken(module, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="unavailable.*eagerly"):
        fn = compile_module.compile_or_eager(field)
    assert fn is field

    def fails_at_first_call(module, **kwargs):
        def call(*args):
            raise RuntimeError("inductor failed")

        return call

    monkeypatch.setattr(torch, "compile", fails_at_first_call)
    fn = compile_module.compile_or_eager(field)
    with pytest.warns(UserWarning, match="eagerly"):
        rgb, sigma = fn(points, dirs)
    torch.testing.assert_close(rgb, field(points, dirs)[0])
