"""The baked lattice (models/baked.py): exact reads at its nodes, the field's image from it, the
view dependence kept, what is kept, and the commands that render from it."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import torch
from conftest import demo_args
from torch.nn import functional as F

import render
import train
import view
from engine.experiment import load_experiment
from models.baked import (
    EMPTY_LOGIT,
    bake,
    baked_weights,
    colour_part,
    occupied_cells,
    trilinear_rows,
    visible_cells,
)
from utils.errors import ConfigError

RES = 49  # nodes per axis in these tests: a few seconds to bake the demo's field


def psnr(a, b) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean() + 1e-12))


def test_trilinear_rows_reads_as_grid_sample_does_also_through_a_sparse_index():
    torch.manual_seed(0)
    Z, Y, X, C = 5, 6, 7, 4
    volume = torch.randn(C, Z, Y, X)
    x = torch.rand(500, 3) * 2.6 - 1.3  # some outside [-1, 1]: border values
    ref = F.grid_sample(
        volume[None], x.view(1, 1, 1, -1, 3), align_corners=True, padding_mode="border"
    )[0, :, 0, 0].t()
    dense = torch.arange(Z * Y * X, dtype=torch.int32).view(Z, Y, X)
    table = volume.permute(1, 2, 3, 0).reshape(-1, C)
    torch.testing.assert_close(trilinear_rows(dense, table, x), ref, atol=1e-5, rtol=1e-5)
    # sparse: dropped nodes read row 0 (zeros), kept nodes their own row
    keep = torch.rand(Z, Y, X) > 0.5
    index = torch.zeros(Z, Y, X, dtype=torch.int32)
    index[keep] = torch.arange(1, int(keep.sum()) + 1, dtype=torch.int32)
    rows = torch.cat([torch.zeros(1, C), volume.permute(1, 2, 3, 0)[keep]])
    ref = F.grid_sample(
        (volume * keep)[None], x.view(1, 1, 1, -1, 3), align_corners=True, padding_mode="border"
    )[0, :, 0, 0].t()
    torch.testing.assert_close(trilinear_rows(index, rows, x), ref, atol=1e-5, rtol=1e-5)


def test_a_nan_point_reads_nan_not_out_of_bounds():
    index = torch.arange(1, 28, dtype=torch.int32).view(3, 3, 3)
    table = torch.randn(28, 2)
    x = torch.tensor([[0.2, -0.3, 0.9], [float("nan"), 0.0, 0.0], [float("nan")] * 3])
    out = trilinear_rows(index, table, x)
    assert out[0].isfinite().all() and out[1:].isnan().all()


def test_occupied_cells_are_the_occupancy_grids_answer_at_each_cells_centre():
    from models.grid import OccupancyGrid

    torch.manual_seed(0)
    G, R = 4, 13  # R - 1 a multiple of G: each lattice cell inside one occupancy cell
    grid = OccupancyGrid(G, 1.0, 0.01)
    grid.mask.copy_(torch.rand(G, G, G) > 0.5)
    cells = occupied_cells(grid.mask, R)  # (z, y, x)
    i = torch.arange(R - 1)  # the last node of an axis starts no cell
    centre = ((i + 0.5) / (R - 1)) * 2 - 1
    z, y, x = torch.meshgrid(centre, centre, centre, indexing="ij")
    want = grid.occupied(torch.stack([x, y, z], -1).view(-1, 3)).view(R - 1, R - 1, R - 1)
    assert torch.equal(cells[:-1, :-1, :-1], want)
    # the weights: a ray through empty cells only gets none, whatever the lattice's density
    logits = torch.full((R, R, R), 5.0)
    t = torch.linspace(0.1, 1.9, 32)[None]
    empty = (~cells[:-1, :-1, :-1]).nonzero()[0]  # one empty cell (z, y, x); a ray across it
    p = centre[empty.flip(0)]  # its centre (x, y, z)
    o, d = p - torch.tensor([0.0, 0.0, 1e-3]), torch.tensor([[0.0, 0.0, 1e-3]])
    points = o + t[..., None] * d  # all inside that cell
    w = baked_weights(logits, torch.ones(3), points, t, d, cells)
    assert w.abs().max() == 0
    assert baked_weights(logits, torch.ones(3), points, t, d, None).sum() > 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo experiment of the grid field with an occupancy grid, 150 steps (enough for a
    surface to form), with its model and its lattice."""
    root = tmp_path_factory.mktemp("baked")
    grid = ["--model:encoding", "grid", "--model:occupancy", "true"]
    grid += ["--model:grid_resolution", f"[7, {RES}]", "--training:w_distortion", "0.01"]
    # RES - 1 a multiple of the render's occupancy grid: it skips the field's empty cells exactly
    grid += ["--model:occupancy_render_resolution", "24"]
    assert train.main(demo_args(root, *grid, "--training:num_iters", 150, "--expname", "tiny")) == 0
    exp = root / "logs" / "tiny"
    cfg, scene, model, step = load_experiment(exp)
    return SimpleNamespace(exp=exp, cfg=cfg, model=model, baked=bake(model, RES, compiled=False))


def test_at_its_nodes_the_lattice_holds_the_fields_density_and_view_dependent_colour(trained):
    model, baked = trained.model, trained.baked
    field = model.field
    kept = (baked.index > 0).nonzero()  # (n, 3) as (z, y, x)
    assert 0 < len(kept) < RES**3
    axis = torch.linspace(-1, 1, RES)
    nodes = torch.stack([axis[kept[:, 2]], axis[kept[:, 1]], axis[kept[:, 0]]], -1)
    points = nodes * field.grid.extent
    torch.manual_seed(1)
    dirs = F.normalize(torch.randn(len(points), 3), dim=-1)
    with torch.no_grad():
        sigma, h = field.density(points)
        want = field.colour(h, dirs, 2)
        got_sigma, at = baked.density(points)
        got = baked.colour(at, dirs, 2)
    torch.testing.assert_close(got_sigma, sigma, atol=1e-4, rtol=1e-3)
    assert (got - want).abs().max() < 5e-3  # the colour part is stored in float16
    # view dependence kept: another direction changes the colour as it changes the field's
    with torch.no_grad():
        other = field.colour(h, -dirs, 2)
        assert (other - want).abs().max() > 0.01
        assert (baked.colour(at, -dirs, 2) - other).abs().max() < 5e-3
    part = colour_part(field, h).half().float()
    torch.testing.assert_close(baked.part[baked.index[tuple(kept.t())].long()].float(), part)


def test_renders_from_the_lattice_are_the_fields_images(trained):
    model, baked = trained.model, trained.baked
    with torch.no_grad():
        c2w, K = model.cam_param.c2w(), model.cam_param.K()
    field_rgb = model.render_image(c2w[0], K[0])["rgb"]
    model.baked = baked
    try:
        baked_rgb = model.render_image(c2w[0], K[0])["rgb"]
    finally:
        model.baked = None
    assert psnr(baked_rgb, field_rgb) > 40


def test_cells_behind_an_opaque_wall_are_not_seen(trained):
    # the training cameras look along +z (NDC): a wall across the box hides what lies behind it
    model = trained.model
    logits = torch.full((RES, RES, RES), EMPTY_LOGIT)  # (z, y, x)
    z = torch.linspace(-1, 1, RES)
    wall, behind = (z > -0.1) & (z < 0.1), z > 0.5
    logits[wall] = logits[behind] = 100.0  # opaque: softplus(100) over a tenth of the box
    occupancy, model.occupancy = model.occupancy, None
    try:
        seen = visible_cells(model, model.field, logits, model.field.grid.extent, False)
    finally:
        model.occupancy = occupancy
    assert seen[wall].sum() > RES * RES // 2  # its front, seen from every view
    assert not seen[behind].any()
    assert not seen[z < -0.2].any()  # empty space in front carries no weight either


def test_the_compiled_reads_render_what_the_eager_ones_do(trained):
    model = trained.model
    compiled = bake(model, RES, compiled=True)
    with torch.no_grad():
        c2w, K = model.cam_param.c2w(), model.cam_param.K()
    images = []
    for baked in (trained.baked, compiled):
        model.baked = baked
        try:
            images.append(model.render_image(c2w[1], K[1])["rgb"])
        finally:
            model.baked = None
    torch.testing.assert_close(images[0], images[1], atol=1e-4, rtol=1e-4)


def test_a_field_that_is_its_mlp_is_not_baked():
    model = SimpleNamespace(field=SimpleNamespace(grid=None), field_fine=None)
    with pytest.raises(ConfigError, match="grid field"):
        bake(model, RES)


def test_render_py_baked_writes_the_video_of_the_field(trained):
    argv = ["--load_dir", trained.exp, "--n_frames", "2", "--videos", "rgb", "--no-progress_bar"]
    assert render.main([str(a) for a in argv] + ["--baked", "--bake_resolution", str(RES)]) == 0
    assert (trained.exp / "render" / "spiral_step150_rgb.mp4").stat().st_size > 0


def test_the_viewer_renders_from_the_lattice_once_baked(trained):
    handed = []
    viewer = SimpleNamespace(stopping=threading.Event(), set_model=handed.append)
    cfg = trained.cfg
    cfg.render.bake_resolution = RES
    cfg.model.occupancy_render_resolution = cfg.model.occupancy_resolution  # no rebuild cost
    view.finer_grid(viewer, trained.model, cfg, baked=True)
    assert handed and handed[-1].baked is not None and trained.model.baked is None
    assert handed[-1].baked.index.shape == (RES, RES, RES)
    handed.clear()
    view.finer_grid(viewer, trained.model, cfg, baked=False)
    assert all(m.baked is None for m in handed)


def test_render_speed_bench_times_and_scores_the_lattice(trained, tmp_path):
    from bench import render_speed

    md, js = tmp_path / "results.md", tmp_path / "speed.json"
    argv = ["--load_dir", str(trained.exp), "--frames", "1", "--fast_only", "--baked"]
    argv += ["--baked_also", str(trained.exp), "--markdown", str(md), "--json", str(js)]
    assert render_speed.main(argv) == 0
    record = json.loads(js.read_text())
    modes = [row["mode"] for row in record["rows"]]
    assert modes == ["full", "preview", "baked", "baked preview"]
    assert record["baked"]["resolution"] == RES and record["baked"]["psnr_between_db"] > 40
    (other,) = record["baked_also"]
    assert other["check"]["psnr_between_db"] > 40
    text = md.read_text()
    assert "| baked | 48x36 |" in text and "Baked lattice (49^3 nodes" in text
    assert "Baked on other experiments" in text


def test_the_viewer_keeps_the_field_when_baking_runs_out_of_memory(trained, monkeypatch, capsys):
    import models.baked

    def no_memory(*args, **kwargs):
        raise MemoryError("lattice too large")

    monkeypatch.setattr(models.baked, "bake", no_memory)
    handed = []
    viewer = SimpleNamespace(stopping=threading.Event(), set_model=handed.append)
    cfg = trained.cfg
    cfg.model.occupancy_render_resolution = cfg.model.occupancy_resolution
    view.finer_grid(viewer, trained.model, cfg, baked=True)  # does not raise
    assert all(m.baked is None for m in handed)
    assert "not baked (lattice too large)" in capsys.readouterr().out
