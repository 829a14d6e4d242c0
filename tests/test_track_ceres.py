"""The Ceres bundle adjustment of the tracks (sfm/track_ceres.py) as tracks.ba_iters runs it."""

from types import SimpleNamespace

import pytest
import torch
from test_track_loss import rig_tracks_and_identity_cameras

from evaluation.pose_metrics import camera_report
from geometry.poses import se3_exp
from sfm.initialise import init_cameras
from sfm.track_ceres import adjust_cameras, collapsed
from utils.config import load_config

SCENE = SimpleNamespace(name="rig", forward_facing=True, unbounded=False, near=3.0, far=5.0)


def noisy_rig(sigma=0.05, focal=300.0):
    """The 6-camera rig of test_track_loss with se(3) noise on every pose (about 2-4 degrees)."""
    c2w_gt, tracks, cams = rig_tracks_and_identity_cameras(focal)
    xi = torch.randn(len(c2w_gt), 6, generator=torch.Generator().manual_seed(0)) * sigma
    cams.set_initial(c2w_init=c2w_gt @ se3_exp(xi))
    return c2w_gt, tracks, cams


def errors(cams, c2w_gt):
    with torch.no_grad():
        return camera_report(cams.c2w().double(), c2w_gt.double(), None, None)["rotation-aware"]


def test_from_a_noisy_start_it_recovers_the_rig_in_the_start_frame_with_the_focal_held():
    c2w_gt, tracks, cams = noisy_rig()
    before = errors(cams, c2w_gt)["rot_median_deg"]
    with torch.no_grad():
        start = cams.c2w().double()
    c2w, focal, radial, forward, summary = adjust_cameras(
        cams, tracks, SCENE, lens=False, refine_focal=False, log=lambda s: None
    )
    assert not collapsed(start.numpy()) and forward  # the start's frame and layout
    assert abs(focal - 300.0).max() < 1e-3 and (radial == 0).all()  # float32 parameter
    assert 2 <= summary["rounds"] <= 4 and summary["inlier_fraction_2px"] == 1.0
    cams.set_initial(c2w_init=torch.from_numpy(c2w).float())
    assert before > 1.0 and errors(cams, c2w_gt)["rot_median_deg"] < 0.01
    # the gauge: the adjusted rig sits where the start's does (same centroid, same spread)
    centres, start_centres = torch.from_numpy(c2w)[:, :3, 3], start[:, :3, 3]
    assert (centres.mean(0) - start_centres.mean(0)).norm() < 0.05
    spread = (centres - centres.mean(0)).norm(dim=-1).mean()
    assert spread / (start_centres - start_centres.mean(0)).norm(dim=-1).mean() == pytest.approx(
        1.0, abs=0.1
    )


def test_tracks_ba_iters_runs_it_from_identity_with_a_learnable_focal(tmp_path):
    c2w_gt, tracks, cams = rig_tracks_and_identity_cameras(focal_start=320.0)  # 7% off
    rounds = []
    cfg = load_config(None, {"cameras:init": "identity", "tracks:ba_iters": 100})
    scene = SimpleNamespace(**vars(SCENE), c2w_gt=c2w_gt, K_gt=None)
    summary = init_cameras(
        cfg, scene, cams, tracks, log=lambda s: None, on_round=lambda k, c: rounds.append(k)
    )
    assert summary["solver"] == "ceres" and rounds == list(range(1, summary["rounds"] + 1))
    assert errors(cams, c2w_gt)["rot_median_deg"] < 0.05
    assert float(cams.focal_px().detach()[0, 0]) == pytest.approx(300.0, rel=0.005)
    # For Ceres the count is a switch (base.yaml): any other positive count, the same cameras.
    _, tracks, again = rig_tracks_and_identity_cameras(focal_start=320.0)
    cfg = load_config(None, {"cameras:init": "identity", "tracks:ba_iters": 1})
    init_cameras(cfg, scene, again, tracks, log=lambda s: None)
    with torch.no_grad():
        assert torch.equal(again.c2w(), cams.c2w()) and torch.equal(again.K(), cams.K())
