"""cameras.guard (engine/camera_guard.py): a camera refinement the tracks disagree with is undone
and stopped; one they agree with goes on."""

import json

import pytest
import torch
from conftest import REPO

import train
from engine.camera_guard import MISFIT_TOLERANCE, POOR_WITHIN_2PX, WITHIN_TOLERANCE, worse


def test_worse_means_clearly_worse_on_either_count():
    best = {"within_2px": 0.98, "median_px": 0.20}
    assert not worse({"within_2px": 0.98 - WITHIN_TOLERANCE / 2, "median_px": 0.205}, best)
    assert worse({"within_2px": 0.97, "median_px": 0.20}, best)
    assert worse({"within_2px": 0.99, "median_px": 0.25}, best)
    # far from the tracks a small dip is noise: the tolerance grows with the misfit
    loose = {"within_2px": 0.20, "median_px": 5.0}
    dip = MISFIT_TOLERANCE * 0.8 / 2
    assert not worse({"within_2px": 0.20 - dip, "median_px": 5.0}, loose)
    assert worse({"within_2px": 0.20 - 3 * dip, "median_px": 5.0}, loose)


def demo_run(tmp_path, name, *extra):
    """The demo's tracks and bundle adjustment, then a few steps in which a far too high
    camera learning rate lets the photometric loss throw the cameras about."""
    argv = [
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--log_root",
        str(tmp_path / "logs"),
        "--expname",
        name,
        "--data:data_dir",
        str(tmp_path / "demo_scene"),
        "--tracks:cache_dir",
        str(tmp_path / "tracks"),
        "--training:num_iters",
        "30",
        "--training:eval_every",
        "30",
        "--training:progress_bar",
        "false",
        "--training:eval_at_end",
        "false",
        "--training:image_every",
        "0",
        "--cameras:freeze_after",
        "null",
        "--cameras:lr_pose",
        "0.05",
        "--cameras:guard_every",
        "10",
        *extra,
    ]
    assert train.main(argv) == 0
    exp = tmp_path / "logs" / name
    metrics = json.loads((exp / "metrics.json").read_text())
    return metrics["rotation-aware"], torch.load(exp / "ckpts" / "final.pt", weights_only=False)


@pytest.mark.slow
def test_a_refinement_that_spoils_the_track_fit_is_undone_and_stopped(tmp_path, capsys):
    guarded, ckpt = demo_run(tmp_path, "guarded")
    assert ckpt["cameras_frozen_at"] == 10  # the first score already saw the damage
    assert "stop learning (cameras.guard)" in capsys.readouterr().out
    # restored to the start, the bundle adjustment's cameras
    assert guarded["rot_median_deg"] == pytest.approx(guarded["start"]["rot_median_deg"], abs=1e-4)
    free, ckpt = demo_run(tmp_path, "free", "--cameras:guard", "false")
    assert ckpt["cameras_frozen_at"] is None
    assert free["rot_median_deg"] > 2 * guarded["rot_median_deg"]  # what the guard prevented


def guarded_trainer():
    """A trainer as CameraGuard sees it: cameras at the truth of a synthetic capture with its
    tracks, refinement on."""
    from types import SimpleNamespace

    from test_view_check import CENTRE, F, H, W, sphere_capture

    from engine.callbacks import CameraGuard
    from models.cameras import Cameras

    c2w, tracks = sphere_capture(n=8, noise_px=0.2)
    n = len(c2w)
    cams = Cameras(
        torch.from_numpy(c2w).float(),
        torch.full((n, 2), F),
        torch.from_numpy(CENTRE).float().repeat(n, 1),
        H,
        W,
    )
    cameras = dict(guard=True, guard_every=10, freeze_after=None, start_after=0.0)
    cfg = SimpleNamespace(cameras=SimpleNamespace(**cameras))
    trainer = SimpleNamespace(
        cfg=cfg,
        model=SimpleNamespace(cam_param=cams),
        scene=SimpleNamespace(near=2.0, far=6.0, forward_facing=False, unbounded=False),
        tracks=tracks,
        W=W,
        step=0,
        cameras_frozen_at=None,
        c2w_start=None,
        camera_metrics=lambda: None,  # no ground truth
        is_main=False,
    )
    guard = CameraGuard()
    guard.on_train_start(trainer)
    return trainer, guard, cams


def test_the_guard_restores_the_best_cameras_and_stops_them_when_the_fit_drops():
    trainer, guard, cams = guarded_trainer()
    start = cams.c2w().detach().clone()
    with torch.no_grad():
        cams.t += 0.02 * torch.randn(cams.t.shape, generator=torch.Generator().manual_seed(0))
    trainer.step = 10
    guard.on_step_end(trainer, {})
    assert trainer.cameras_frozen_at == 10
    assert torch.allclose(cams.c2w().detach(), start)


def test_the_guard_lets_a_refinement_the_tracks_agree_with_go_on():
    trainer, guard, cams = guarded_trainer()
    with torch.no_grad():  # a start that fits less well (still above the poor mark) ...
        cams.t += 0.02 * torch.randn(cams.t.shape, generator=torch.Generator().manual_seed(0))
    guard.on_train_start(trainer)
    poor = guard.best
    assert poor["within_2px"] >= POOR_WITHIN_2PX
    with torch.no_grad():  # ... that the refinement brings back towards the truth
        cams.t *= 0.1
    trainer.step = 10
    guard.on_step_end(trainer, {})
    assert trainer.cameras_frozen_at is None
    assert guard.best_step == 10 and guard.best["median_px"] < poor["median_px"]
    trainer.step = 15  # between scores: nothing happens
    with torch.no_grad():
        cams.t += 1.0
    guard.on_step_end(trainer, {})
    assert trainer.cameras_frozen_at is None


def test_the_guard_stays_off_when_the_config_never_lets_the_cameras_learn():
    trainer, _, _ = guarded_trainer()
    from engine.callbacks import CameraGuard

    trainer.cfg.cameras.freeze_after = 0.0  # the shipped configs: cameras fixed after the start
    guard = CameraGuard()
    guard.on_train_start(trainer)
    assert guard.snapshot is None  # no scores taken, nothing to restore


def test_a_poor_start_is_adjusted_on_the_tracks_before_the_cameras_learn(capsys):
    from engine.callbacks import CameraGuard
    from evaluation.pose_metrics import camera_report
    from geometry.poses import se3_exp

    trainer, _, cams = guarded_trainer()
    truth = cams.c2w().detach().double().clone()
    xi = torch.randn(cams.n, 6, generator=torch.Generator().manual_seed(3)) * 0.08
    with torch.no_grad():
        cams.set_initial(c2w_init=(truth @ se3_exp(xi.double())).float())
    before = camera_report(cams.c2w().detach().double(), truth, None, None)["rotation-aware"]
    guard = CameraGuard()
    guard.on_train_start(trainer)
    after = camera_report(cams.c2w().detach().double(), truth, None, None)["rotation-aware"]
    assert before["rot_median_deg"] > 3.0
    assert after["rot_median_deg"] < 0.1 * before["rot_median_deg"]
    assert guard.best["within_2px"] > POOR_WITHIN_2PX  # the adjusted cameras are the best kept
    # the reports keep measuring the run's real start
    assert torch.allclose(trainer.c2w_start.double(), truth @ se3_exp(xi.double()), atol=1e-5)
    trainer.step = 5  # a resumed run keeps its cameras, however they fit
    moved = cams.c2w().detach().clone()
    with torch.no_grad():
        cams.set_initial(c2w_init=(truth @ se3_exp(xi.double())).float())
    CameraGuard().on_train_start(trainer)
    assert not torch.allclose(cams.c2w().detach(), moved)
