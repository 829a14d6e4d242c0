"""Starting cameras (sfm.initialise): the one writer of starts, usable without a Trainer."""

import math

import pytest
import torch

from dataio.loaders import load_scene
from engine.experiment import build_cameras
from geometry.rotations import geodesic_angle
from sfm.initialise import check_camera_init, init_cameras, noisy_poses
from utils.config import load_config
from utils.errors import ConfigError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_scene")
    cfg = load_config(None, {"data:data_dir": str(folder), "data:demo_size": [48, 36]})
    return cfg, load_scene(cfg.data)


def with_cameras(cfg, **overrides):
    flat = {f"cameras:{k}": v for k, v in overrides.items()}
    return load_config(None, {"data:data_dir": cfg.data.data_dir, **flat})


def test_cameras_are_built_at_identity_with_the_default_focal(demo):
    cfg, scene = demo
    cams = build_cameras(cfg, scene)
    assert torch.equal(cams.c2w_init, torch.eye(4).repeat(len(scene.train_ids), 1, 1))
    assert torch.allclose(cams.focal_px()[:, 0], torch.full((cams.n,), float(scene.W)))


def test_gt_start_and_gt_focal_are_written_by_init_cameras(demo):
    cfg, scene = demo
    cfg = with_cameras(cfg, init="gt", focal_init="gt")
    cams = build_cameras(cfg, scene)
    assert init_cameras(cfg, scene, cams) is None  # no bundle adjustment asked for
    ids = scene.train_ids
    assert torch.allclose(cams.c2w(), scene.c2w_gt[ids].float(), atol=1e-6)
    K = cams.K()
    assert torch.allclose(K[:, 0, 0], scene.K_gt[ids, 0, 0].float(), rtol=1e-5)
    assert torch.allclose(K[:, :2, 2], scene.K_gt[ids, :2, 2].float())


def test_noisy_start_is_seeded_and_about_sigma_away(demo):
    cfg, scene = demo
    c2w_gt = scene.c2w_gt[scene.train_ids].float()
    a, b = noisy_poses(c2w_gt, 0.15, seed=3), noisy_poses(c2w_gt, 0.15, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, noisy_poses(c2w_gt, 0.15, seed=4))
    angles = geodesic_angle(a[:, :3, :3].double(), c2w_gt[:, :3, :3].double())
    # |xi_rot| for xi ~ N(0, 0.15^2 I3) is about 0.15 * sqrt(3) = 15 degrees on average
    assert 5 < math.degrees(float(angles.mean())) < 25
    cams = build_cameras(with_cameras(cfg, init="noisy_gt", noise_seed=3), scene)
    init_cameras(with_cameras(cfg, init="noisy_gt", noise_seed=3), scene, cams)
    assert torch.allclose(cams.c2w_init, a, atol=1e-6)


def test_starts_that_need_ground_truth_are_refused_up_front(demo):
    cfg, scene = demo
    blind = type(scene)(**{**scene.__dict__, "c2w_gt": None, "K_gt": None})
    for key, value, says in (
        ("init", "noisy_gt", "ground-truth poses"),
        ("focal_init", "gt", "known intrinsics"),
        ("init", "sfm", "cameras.init must be"),
    ):
        with pytest.raises(ConfigError, match=says):
            check_camera_init(with_cameras(cfg, **{key: value}), blind)


def test_adjusting_a_ground_truth_start_on_the_tracks_is_said(demo, monkeypatch):
    """tracks.ba_iters > 0 on top of cameras.init gt moves the given cameras (flower: 0.06
    degrees and a 5.8% focal): the log says so and how to keep them."""
    import sfm.track_ceres

    cfg, scene = demo
    calls, lines = [], []

    def adjusted(cameras, *args, **kwargs):
        calls.append(1)
        with torch.no_grad():
            return cameras.c2w().double().numpy(), cameras.focal_px().double().numpy(), 0, 0, {}

    monkeypatch.setattr(sfm.track_ceres, "adjust_cameras", adjusted)
    for iters in (0, 100):
        cfg_i = load_config(
            None,
            {
                "data:data_dir": cfg.data.data_dir,
                "cameras:init": "gt",
                "tracks:ba_iters": iters,
            },
        )
        init_cameras(cfg_i, scene, build_cameras(cfg_i, scene), tracks=object(), log=lines.append)
    assert calls == [1]
    assert [line for line in lines if "ba_iters 0 keeps them" in line] == [
        "WARN tracks.ba_iters 100: the track bundle adjustment (pinhole) starts from the "
        "ground-truth cameras and will move them; --tracks:ba_iters 0 keeps them as given"
    ]
