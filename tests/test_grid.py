"""The grid encoding (models/grid.py): coarse-to-fine upsampling that keeps the function,
checkpoints across upsampling, gradients to the cameras through the grid, the occupancy grid's
guarantee, and end-to-end training on the demo scene."""

import json

import pytest
import torch
from test_train import assert_states_equal, final_state, run_train

import engine.trainer
from engine.checkpoint import load_checkpoint
from models.cameras import Cameras
from models.grid import (
    LINE_AXES,
    PLANE_AXES,
    GridEncoding,
    OccupancyGrid,
    VMGrid,
    read_gradient,
    sample_coords,
)
from models.scene_model import SceneModel
from utils.config import load_config
from utils.errors import ConfigError

GRID = {
    "model:encoding": "grid",
    "model:grid_channels": 4,
    "model:grid_levels": 2,
    "model:grid_resolution": [9, 33],
    "model:grid_upsample_at": [0.1, 0.2],
    "model:net_depth": 1,
    "model:net_width": 32,
    "model:n_samples": 16,
}


def grid_model(**overrides) -> SceneModel:
    torch.manual_seed(0)
    cfg = load_config(None, {**GRID, **overrides})
    H, W = 24, 32
    cams = Cameras(
        torch.eye(4).repeat(2, 1, 1),
        torch.tensor([[30.0, 30.0]]).repeat(2, 1),
        torch.tensor([[W / 2, H / 2]]).repeat(2, 1),
        H,
        W,
    )
    return SceneModel(cfg.model, cams, use_ndc=True, near=0.0, far=1.0)


def psnr(a, b):
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def render(model):
    with torch.no_grad():
        c2w, K = model.cam_param.c2w(), model.cam_param.K()
    return model.render_image(c2w[0], K[0])["rgb"]


def backward_nodes(node) -> set[str]:
    """The names of the autograd graph's nodes from `node` back."""
    names, seen, todo = set(), set(), [node]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        todo += [child for child, _ in node.next_functions]
    return names


@pytest.mark.parametrize("split", [1, 4])
@pytest.mark.parametrize("shape", [(17, 17), (17, 1)])
def test_read_gradient_is_grid_sample_s_gradient_of_its_input(shape, split):
    """read_gradient, the planes' and lines' gradient without the coordinates', equals what
    grid_sample's backward gives its input, at points inside, on nodes and edges, and beyond
    the border (clamped), for reads of a plane's channels in one batch entry or in several."""
    torch.manual_seed(0)
    h, w = shape
    grid = torch.randn(3 * split, 8 // split, h, w, dtype=torch.double, requires_grad=True)
    x = torch.rand(500, 3, dtype=torch.double) * 2.6 - 1.3
    x[:20] = torch.randint(0, 17, (20, 3)).double() / 8 - 1  # on nodes, edges and corners
    uv, wl = sample_coords(x, split)
    coords = uv if w > 1 else wl
    read = torch.nn.functional.grid_sample(grid, coords, align_corners=True, padding_mode="border")
    weights = torch.randn_like(read)
    (read * weights).sum().backward()
    torch.testing.assert_close(read_gradient(weights, coords, grid.shape), grid.grad)


def test_a_grid_read_whose_points_need_no_gradient_computes_none_for_them():
    """While the cameras are fixed the points need no gradient: the grid's reads then backward
    through read_gradient, not grid_sample's backward, and the parameters' gradients are the
    same (the points' gradient is covered by the test below)."""
    torch.manual_seed(0)
    grid = VMGrid(16, 17)
    x = torch.rand(3000, 3) * 2.4 - 1.2
    weights = torch.randn(48, 3000)
    out = grid(x)
    assert backward_nodes(out.grad_fn) >= {"_GridReadBackward"}
    assert not any(name.startswith("GridSampler") for name in backward_nodes(out.grad_fn))
    (out * weights).sum().backward()
    ours = [grid.planes.grad, grid.lines.grad]
    grid.zero_grad()
    with torch.no_grad():
        coords = sample_coords(x, grid.split)
    r = grid.resolution
    read = dict(align_corners=True, padding_mode="border")
    p = torch.nn.functional.grid_sample(grid.planes.view(24, 2, r, r), coords[0], **read)
    q = torch.nn.functional.grid_sample(grid.lines.view(24, 2, r, 1), coords[1], **read)
    ((p * q).view(48, 3000) * weights).sum().backward()
    torch.testing.assert_close(ours, [grid.planes.grad, grid.lines.grad])


@pytest.mark.parametrize(("channels", "split"), [(16, 8), (5, 5)])
def test_reads_of_a_few_channels_each_give_one_whole_read_s_features_and_gradients(channels, split):
    """The planes and lines are read as (3 C / k, k, R, R) views with the coordinates repeated
    (models/grid.py, CHANNELS_PER_READ): the same features and gradients as one grid_sample
    call over all C channels of each plane."""
    torch.manual_seed(0)
    grid = VMGrid(channels, 17)
    assert grid.split == split
    assert VMGrid(channels, 5).to("meta").split == 1  # off the CPU: one read per plane
    x = (torch.rand(3000, 3) * 2.4 - 1.2).requires_grad_(True)  # some outside: the border
    weights = torch.randn(3 * channels, 3000)
    (grid(x) * weights).sum().backward()
    ours = [grid.planes.grad, grid.lines.grad, x.grad]
    grid.zero_grad()
    x.grad = None
    n = x.shape[0]
    uv = x[:, PLANE_AXES].transpose(0, 1).reshape(3, n, 1, 2)
    wl = torch.stack([torch.zeros(3, n), x[:, LINE_AXES].t()], -1).view(3, n, 1, 2)
    read = dict(align_corners=True, padding_mode="border")
    p = torch.nn.functional.grid_sample(grid.planes, uv, **read)
    q = torch.nn.functional.grid_sample(grid.lines, wl, **read)
    whole = (p * q).view(3 * channels, n)
    (whole * weights).sum().backward()
    for a, b in zip(ours, [grid.planes.grad, grid.lines.grad, x.grad], strict=True):
        torch.testing.assert_close(a, b)
    encoding = GridEncoding(channels, 2, (17, 17))
    encoding.levels[0] = grid
    with torch.no_grad():  # the no-gradient path writes each level's rows in place
        rows = encoding.features(x)[: 3 * channels]
    torch.testing.assert_close(rows, whole.detach())


def test_upsampling_keeps_the_encoded_function_and_the_rendered_image():
    model = grid_model()
    grid = model.field.grid
    x = torch.rand(5000, 3) * 2 - 1
    with torch.no_grad():
        before, image = grid(x), render(model)
    changed = grid.upsample()
    assert [level.resolution for level in grid.levels] == [17, 9]
    assert len(changed) == 4 and all(p.shape[-2] in (17, 9) for p in changed)
    with torch.no_grad():
        torch.testing.assert_close(grid(x), before, atol=1e-5, rtol=0)
        after = render(model)
    assert psnr(after, image) > 60  # far within the 0.1 dB the issue allows
    grid.upsample()
    assert grid.upsample() == []  # at the final resolution: nothing more
    assert [level.resolution for level in grid.levels] == [33, 17]


def test_a_checkpoint_saved_after_upsampling_loads_into_a_fresh_model():
    model = grid_model()
    model.field.grid.upsample()
    state = model.state_dict()
    fresh = grid_model()
    fresh.load_state_dict(state)
    assert fresh.field.grid.levels[0].resolution == 17
    assert int(fresh.field.grid.n_upsampled) == 1
    torch.testing.assert_close(render(fresh), render(model))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model:grid_resolution": [9, 30]}, "the end must be the start"),
        ({"model:grid_upsample_at": [0.1]}, "needs 2 increasing fractions"),
        ({"model:grid_resolution": [10, 19]}, "must be divisible by 2"),
    ],
)
def test_grid_settings_it_cannot_follow_are_one_sentence(overrides, message):
    with pytest.raises(ConfigError, match=message):
        grid_model(**overrides)


def test_gradients_reach_the_cameras_through_the_grid():
    model = grid_model()
    with torch.no_grad():
        model.field.trunk[0].weight[:, :3] = 0  # the raw position: only the grid carries it
    ids = torch.zeros(64, dtype=torch.long)
    uv = torch.rand(64, 2) * torch.tensor([32.0, 24.0])
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    out = model.render_rays(*model.rays(ids, uv, c2w, K))
    (out["rgb"].sum() + out["t"].sum()).backward()
    assert model.cam_param.r.grad.abs().sum() > 0 and model.cam_param.t.grad.abs().sum() > 0
    grid = model.field.grid.levels[0]
    assert grid.planes.grad.abs().sum() > 0 and grid.lines.grad.abs().sum() > 0


def test_rays_that_need_only_their_depth_skip_the_colour_head_and_keep_their_gradients():
    model = grid_model(**{"model:occupancy": True, "model:net_depth": 2})
    with torch.no_grad():  # a field dense enough that every ray has samples of weight
        model.field.sigma.bias.fill_(5.0)
    ids = torch.zeros(64, dtype=torch.long)
    uv = torch.rand(64, 2) * torch.tensor([32.0, 24.0])
    c2w, K = model.cam_param.c2w(), model.cam_param.K()
    rays = model.rays(ids, uv, c2w, K)
    coloured = []
    colour_head = model.field.colour_on_rays

    def counting(h, condition):
        coloured.append(h.shape[0])
        return colour_head(h, condition)

    model.field.colour_on_rays = counting
    full = model.render_rays(*rays)
    wanted = torch.arange(64) < 16
    part = model.render_rays(*rays, colour=wanted)
    assert coloured[1] < coloured[0] / 2  # the other 48 rays' samples never reach the head
    torch.testing.assert_close(part["t"], full["t"])
    torch.testing.assert_close(part["rgb"][wanted], full["rgb"][wanted])
    part["t"].sum().backward()  # the depth alone still trains the grid
    assert model.field.grid.levels[0].planes.grad.abs().sum() > 0


def test_a_nan_point_reads_the_grid_centre_and_its_gradient_is_finite():
    # torch's CPU grid_sample with border padding reads out of bounds at NaN coordinates (a
    # segfault, seen in a test-time pose refinement that went NaN): NaN never reaches it
    from models.grid import GridEncoding

    torch.manual_seed(0)
    enc = GridEncoding(channels=4, levels=2, resolution=(9, 9))
    points = torch.tensor([[0.3, -0.2, 0.5], [float("nan"), 0.1, 0.2], [0.0, 0.1, 0.2]])
    points.requires_grad_(True)
    features = enc(points)
    assert torch.isfinite(features).all()
    torch.testing.assert_close(features[1], features[2])  # x = NaN read at x = 0
    features.sum().backward()
    assert torch.isfinite(enc.levels[0].planes.grad).all() and points.grad[0].abs().sum() > 0


def test_the_occupancy_grid_never_skips_a_point_denser_than_its_threshold():
    centre = torch.tensor([0.2, -0.1, 0.3])

    def density(p):  # a sharp ball of density 5 in empty space
        return 5.0 * ((p - centre).norm(dim=-1) < 0.3).float()

    occ = OccupancyGrid(32, 1.0, threshold=0.01)
    assert bool(occ.occupied(torch.rand(100, 3)).all())  # before any update: everything
    torch.manual_seed(0)
    fraction = occ.update(density)
    assert fraction < 0.1
    points = torch.rand(200000, 3) * 2 - 1
    dense = density(points) > 0.01
    assert bool(occ.occupied(points)[dense].all())
    assert float(occ.occupied(points).float().mean()) < 0.1
    assert bool(occ.occupied(torch.tensor([[1.5, 0.0, 0.0]])).all())  # outside: not skipped


def test_a_field_fainter_than_the_threshold_everywhere_keeps_its_densest_cells():
    centre = torch.tensor([0.2, -0.1, 0.3])

    def density(p):  # a young field: a faint haze and a ball still under the threshold
        return 0.05 + 0.5 * ((p - centre).norm(dim=-1) < 0.3).float()

    occ = OccupancyGrid(32, 1.0, threshold=1.0)
    torch.manual_seed(0)
    assert 0.0 < occ.update(density) < 0.1
    points = torch.rand(200000, 3) * 2 - 1
    assert bool(occ.occupied(points)[(points - centre).norm(dim=-1) < 0.3].all())


def test_a_rebuilt_grid_forgets_density_the_field_no_longer_has():
    """Training's running maximum still holds where a young field had density (decay 0.95 an
    update); rebuild keeps only what the field has now, and still skips nothing dense."""
    ball = {"centre": torch.tensor([-0.5, 0.0, 0.0])}

    def density(p):
        return 50.0 * ((p - ball["centre"]).norm(dim=-1) < 0.25).float()

    occ = OccupancyGrid(32, 1.0, threshold=1.0)
    torch.manual_seed(0)
    occ.update(density)
    ball["centre"] = torch.tensor([0.5, 0.0, 0.0])  # the field moved its density
    occ.update(density)
    old = torch.tensor([[-0.5, 0.0, 0.0]])
    assert bool(occ.occupied(old).all())  # remembered
    occ.rebuild(density)
    assert not bool(occ.occupied(old).any())  # forgotten
    points = torch.rand(200000, 3) * 2 - 1
    assert bool(occ.occupied(points)[density(points) > 1.0].all())
    assert occ.decay == 0.95  # training's updates keep their decay


def test_a_render_with_every_cell_empty_gives_the_background():
    model = grid_model(**{"model:occupancy": True, "model:net_depth": 3})
    model.occupancy.mask[:] = False
    assert float(render(model).abs().max()) == 0.0


@pytest.fixture
def grid_args(tiny_args):
    args = tiny_args + ["--cameras:init", "gt", "--cameras:focal_init", "gt"]
    args += ["--cameras:learn_R", "false", "--cameras:learn_t", "false"]
    args += ["--cameras:learn_focal", "false", "--training:eval_at_end", "true"]
    for key, value in GRID.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    return args


def heldout_psnr(exp):
    metrics = json.loads((exp / "metrics.json").read_text())
    return metrics["eval"]["novel_views"]["mean"]["after_tto"]["psnr"]


def test_the_grid_field_fits_the_demo_scene_with_occupancy_and_skips_nothing_dense(
    grid_args, tmp_path, capsys
):
    from engine.experiment import load_experiment

    args = grid_args + ["--training:num_iters", "300", "--model:occupancy", "true"]
    args += ["--model:occupancy_resolution", "32", "--model:occupancy_every", "50"]
    args += ["--model:occupancy_start", "0.3", "--training:lr_grid", "0.05"]
    assert run_train(args + ["--expname", "grid"]) == 0
    assert "occupancy grid rebuilt from the trained field" in capsys.readouterr().out
    exp = tmp_path / "logs" / "grid"
    assert heldout_psnr(exp) > 24
    cfg, _, model, _ = load_experiment(exp)
    occ = model.occupancy  # rebuilt from the trained field at the render resolution
    assert occ.resolution == cfg.model.occupancy_render_resolution == 128
    # train.py fitted the box to the demo's cameras; the checkpoint and the rebuilt grid keep it
    box = model.field.grid.extent
    assert float(box[:2].max()) > 1.05 and float(box[2]) == 1.0
    torch.testing.assert_close(occ.extent, box)
    assert 0 < float(occ.mask.float().mean()) < 1  # some space was found empty
    # every sample the dense field gives density above the threshold is evaluated
    H, W = model.cam_param.H, model.cam_param.W
    ids = torch.arange(len(model.cam_param.c2w_init)).repeat_interleave(H * W)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    uv = torch.stack([u, v], -1).reshape(-1, 2).repeat(len(model.cam_param.c2w_init), 1)
    with torch.no_grad():
        o, d, _ = model.rays(ids, uv, model.cam_param.c2w(), model.cam_param.K())
        t = torch.linspace(0, 1, 64)[None].expand(len(o), 64)
        points = o[:, None] + t[..., None] * d[:, None]
        sigma = model.field.density(points)[0]
    dense = sigma > occ.threshold
    assert bool(occ.occupied(points)[dense].all())
    # and the skipping render matches the dense one
    image = render(model)
    model.occupancy = None
    assert psnr(image, render(model)) > 35


def test_resume_across_an_upsampling_step_and_occupancy_updates_matches_never_stopping(
    grid_args, tmp_path, monkeypatch
):
    # upsampling at steps 2 and 5, occupancy updates at 4, 8, 12, 16; stopped at 6 and resumed
    common = grid_args + ["--training:num_iters", "16", "--training:ckpt_every", "3"]
    common += ["--cameras:learn_R", "true", "--cameras:learn_t", "true"]
    common += ["--model:grid_upsample_at", "[0.1, 0.3]", "--training:eval_at_end", "false"]
    common += ["--model:occupancy", "true", "--model:occupancy_start", "0.25"]
    common += ["--model:occupancy_every", "4", "--model:occupancy_resolution", "16"]
    assert run_train(common + ["--expname", "straight"]) == 0
    original = engine.trainer.Trainer.train_step

    def stop_after(self):
        values = original(self)
        if self.step + 1 == 6:
            self.stop_requested = True
        return values

    monkeypatch.setattr(engine.trainer.Trainer, "train_step", stop_after)
    exp = tmp_path / "logs" / "stopped"
    assert run_train(common + ["--expname", "stopped"]) == 130
    saved = load_checkpoint(exp / "ckpts" / "latest.pt")
    assert saved["step"] == 6
    assert saved["model"]["field.grid.levels.0.planes"].shape[-1] == 33  # both steps taken
    monkeypatch.setattr(engine.trainer.Trainer, "train_step", original)
    assert run_train(["--load_dir", exp]) == 0
    assert_states_equal(final_state(tmp_path / "logs" / "straight"), final_state(exp))


def test_the_grid_covers_the_space_the_field_sees():
    from models.fields import grid_bound

    cfg = load_config(None, GRID).model
    assert grid_bound(cfg, True, 0.0, 1.0) == 1.0  # NDC, or contracted points halved
    assert grid_bound(cfg, False, 1.6, 4.0) == pytest.approx(1.2)  # DTU: the unit sphere fits
    cfg.grid_bound = 3.0
    assert grid_bound(cfg, False, 1.6, 4.0) == 3.0


def test_occupancy_skips_empty_cells_for_the_siren_field_too():
    model = grid_model(**{"model:framework": "SirenNeRF", "model:occupancy": True})
    dense = render(model)
    model.occupancy.mask[:] = False  # everything empty: nothing is evaluated, nothing rendered
    empty = render(model)
    assert float(empty.abs().max()) == 0.0 and float(dense.abs().max()) > 0.0


def offset_grid_model(**overrides) -> SceneModel:
    """grid_model with its second camera moved sideways: its frustum leaves NDC's [-1, 1]."""
    model = grid_model(**overrides)
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.6
    model.cam_param.set_initial(c2w_init=c2w)
    return model


def test_the_ndc_grid_box_holds_every_training_ray_beyond_the_nearest_content():
    from models.scene_model import NDC_CONTENT_T

    model = offset_grid_model(**{"model:occupancy": True})
    cams = model.cam_param
    with torch.no_grad():
        c2w, K = cams.c2w(), cams.K()
        uv = torch.rand(2000, 2) * torch.tensor([cams.W, cams.H])
        ids = torch.arange(2).repeat(1000)
        o, d, _ = model.rays(ids, uv, c2w, K)
        t = NDC_CONTENT_T + (1 - NDC_CONTENT_T) * torch.rand(2000, 1)
        points = o + t * d
    assert float(points[:, 0].abs().max()) > 1.2  # outside the cube it covered before
    grid = model.field.grid
    x = torch.tensor([[1.3, 0.0, 0.5], [1.6, 0.0, 0.5]])
    with torch.no_grad():
        clamped = grid(x)
    torch.testing.assert_close(clamped[0], clamped[1])  # the cube's border value, twice
    half = model.fit_grid_box()
    assert half[2] == 1.0 and half[0] > 1.2 and half[1] >= 1.0
    assert bool((points.abs() <= torch.tensor(half)).all())
    torch.testing.assert_close(model.occupancy.extent, grid.extent)
    with torch.no_grad():
        assert not torch.allclose(grid(x)[0], grid(x)[1])  # two places now
    # saved with the model; a checkpoint from before the box loads as the cube
    fresh = offset_grid_model(**{"model:occupancy": True})
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.field.grid.extent, grid.extent)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(".extent")}
    fresh = offset_grid_model(**{"model:occupancy": True})
    fresh.load_state_dict(old)
    assert fresh.field.grid.extent.tolist() == [1.0, 1.0, 1.0]
    model.reset_field()  # the refine recipe's fresh field keeps the box
    torch.testing.assert_close(model.field.grid.extent, fresh.field.grid.extent.new_tensor(half))
    assert offset_grid_model(**{"model:grid_bound": 1.0}).fit_grid_box() is None  # set by hand
