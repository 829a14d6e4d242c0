"""The dense depth prior: plane-sweep stereo against the demo scene's exact depth, its filters,
its loss, and its place in a training run (computed once, kept for a resume)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import engine.objective
import sfm.stereo
import train
from dataio.demo import demo_cameras, demo_focal, demo_planes, render_demo
from engine.experiment import DEPTH_PRIOR_FILE
from losses.depth_prior import depth_prior_loss
from sfm.stereo import consistent, plane_sweep_depths, world_z

W, H = 128, 96


@pytest.fixture(scope="module")
def demo_views():
    """Four demo views with their exact z-depth, cameras and intrinsics."""
    c2w = demo_cameras(4)
    f = demo_focal(W)
    images, depth = render_demo(c2w, f, H, W, demo_planes())
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    return images.astype(np.float32), depth, np.repeat(K[None], 4, 0), c2w


def test_plane_sweep_recovers_the_demo_scenes_exact_depth(demo_views):
    images, truth, K, c2w = demo_views
    depth = plane_sweep_depths(images, K, c2w, near=1.5, far=12.0)
    kept = np.isfinite(depth)
    rel = np.abs(depth[kept] - truth[kept]) / truth[kept]
    assert kept.mean() > 0.4  # the demo is textured everywhere; occlusions and borders go
    # planes 1.8% apart in depth at 4 units: the parabola between them (0.62% without it)
    assert np.median(rel) < 0.005
    # the wrong ones: the far side of occlusion edges (sfm/stereo.py), 12.7% of the kept
    assert (rel > 0.05).mean() < 0.15


def test_a_photo_that_is_not_of_the_scene_gets_almost_no_depth(demo_views):
    images, truth, K, c2w = demo_views
    images = images.copy()
    images[0] = np.random.default_rng(0).random(images[0].shape, dtype=np.float32)
    depth = plane_sweep_depths(images, K, c2w, near=1.5, far=12.0)
    assert np.isfinite(depth[0]).mean() < 0.02  # no neighbour agrees with its random matches
    assert np.isfinite(depth[2]).mean() > 0.3  # the others still see the scene
    # a flat photo has no texture for the correlation: no depth at all
    images[0] = 0.5
    assert not np.isfinite(plane_sweep_depths(images, K, c2w, 1.5, 12.0)[0]).any()


def test_the_consistency_check_keeps_depths_a_neighbour_agrees_with(demo_views):
    _, truth, K, c2w = demo_views
    depth = [d.astype(np.float32) for d in truth[:2]]
    agree = consistent(0, [1], depth, K, c2w, 0.01)
    assert agree.mean() > 0.6  # all but what view 1 does not see (68%)
    depth[1] = depth[1] * 1.05  # the neighbour measures everything 5% farther
    assert consistent(0, [1], depth, K, c2w, 0.01).mean() < 0.02
    assert consistent(0, [1], depth, K, c2w, 0.1).mean() > 0.6


def test_world_z_is_the_depth_ndc_rays_measure():
    # a camera 2 units along world z, pitched 30 degrees about x: a point at camera depth d on
    # its optical axis lies at world z = 2 + d cos 30 (NDC's depth, geometry.rays.ndc_rays)
    a = np.radians(30)
    c2w = np.eye(4)
    c2w[:3, :3] = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    c2w[2, 3] = 2.0
    K = np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]])
    depth = np.full((1, 4, 4), 3.0)
    depth[0, 0, 0] = np.nan
    z = world_z(depth, K[None], c2w[None])
    assert z[0, 1, 1] == pytest.approx(2 + 3 * np.cos(a) - 3 * np.sin(a) * 0.05)  # pixel centre
    assert z[0, 2, 2] == pytest.approx(2 + 3 * np.cos(a) + 3 * np.sin(a) * 0.05)
    assert np.isnan(z[0, 0, 0])


def test_the_loss_charges_weight_away_from_the_prior_and_ignores_rays_without_one():
    z = torch.linspace(1.0, 4.0, 7).expand(3, 7)  # sample depths; 2.0 is sample 2
    prior = torch.tensor([2.0, 2.0, float("nan")])
    at_prior = torch.zeros(3, 7)
    at_prior[:, 2] = 1.0
    assert depth_prior_loss(at_prior, z, prior)["depth_prior"].item() == pytest.approx(0.0)
    # all weight at depth 4: |log(4 / 2)| per ray; letting light through costs the same
    at_far = torch.zeros(3, 7)
    at_far[:, 6] = 1.0
    expected = np.log(2.0)
    assert depth_prior_loss(at_far, z, prior)["depth_prior"].item() == pytest.approx(expected)
    none = torch.zeros(3, 7)
    assert depth_prior_loss(none, z, prior)["depth_prior"].item() == pytest.approx(expected)
    # a fog spread evenly either side of the prior has the right mean depth and still pays
    fog = torch.zeros(3, 7, requires_grad=True)
    w = fog + torch.tensor([0, 0.5, 0, 0.5, 0, 0, 0.0])  # depths 1.5 and 2.5, mean 2.0
    loss = depth_prior_loss(w, z, prior)["depth_prior"]
    assert loss.item() > 0.1
    loss.backward()
    assert fog.grad[2].abs().sum() == 0 and fog.grad[:2].abs().sum() > 0
    # no ray with a prior: zero, and still a graph
    empty = depth_prior_loss(w, z, torch.full((3,), float("nan")))["depth_prior"]
    assert empty.item() == 0 and empty.requires_grad


def test_a_run_computes_the_prior_once_trains_with_it_and_a_resume_keeps_it(
    tiny_args, tmp_path, monkeypatch, capsys
):
    seen = []
    original = engine.objective.depth_prior_loss

    def spy(weights, depths, prior):
        seen.append(int(torch.isfinite(prior).sum()))
        return original(weights, depths, prior)

    monkeypatch.setattr(engine.objective, "depth_prior_loss", spy)
    swept = []  # the stereo's camera z, before the run converts it to the model's depth
    sweep = sfm.stereo.plane_sweep_depths

    def sweep_spy(images, K, c2w, *a, **k):
        swept.append((sweep(images, K, c2w, *a, **k), K, c2w))
        return swept[-1][0]

    monkeypatch.setattr(sfm.stereo, "plane_sweep_depths", sweep_spy)
    # the demo's true cameras: the tiny run has no tracks to find them
    args = [*tiny_args, "--cameras:init", "gt", "--cameras:focal_init", "gt"]
    args += ["--training:w_depth_prior", "0.1", "--expname", "prior"]
    assert train.main([*args, "--training:num_iters", "4"]) == 0
    exp = Path(tmp_path) / "logs" / "prior"
    with np.load(exp / DEPTH_PRIOR_FILE) as saved:
        depth, names = saved["depth"], list(saved["names"])
    assert depth.shape[0] == len(names) and np.isfinite(depth).mean() > 0.05
    camera_z, K, c2w = swept[0]  # the demo has NDC rays, which measure the world z
    np.testing.assert_allclose(depth, world_z(camera_z, K, c2w), rtol=1e-5)
    assert not np.allclose(depth, camera_z, equal_nan=True)
    assert len(seen) == 4 and min(seen) > 0  # every step's photometric rays met the prior
    first = (exp / DEPTH_PRIOR_FILE).stat().st_mtime_ns
    capsys.readouterr()
    assert train.main(["--load_dir", str(exp), "--training:num_iters", "6"]) == 0
    assert "kept from before" in capsys.readouterr().out
    assert (exp / DEPTH_PRIOR_FILE).stat().st_mtime_ns == first and len(seen) == 6
