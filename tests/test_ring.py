"""Synthetic captures around an object (dataio/ring.py): the files load as any capture, and
cameras.init auto places every view of them from the photos alone (slow: real SIFT, COLMAP)."""

import json

import numpy as np
import pytest
import torch
from conftest import REPO, data_cfg

import train
from dataio.loaders import load_scene
from dataio.ring import RADIUS, ring_cameras, write_ring_scene
from evaluation.pose_metrics import camera_report

# The stated accuracy of auto on these captures, every view: about twice the worst view seen on
# the four (0.27-0.75 degrees: rendered photos with few features, SIFT at 240x180, COLMAP's
# global mapper and the final adjustment).
MAX_ROTATION_DEG = 1.5


@pytest.mark.parametrize("layout", ["ring", "half"])
def test_ring_cameras_circle_the_object_and_look_at_it(layout):
    c2w = ring_cameras(12, layout, seed=3)
    centres = c2w[:, :3, 3]
    assert np.allclose(np.linalg.norm(centres[:, [0, 2]], axis=1), RADIUS)
    forward = c2w[:, :3, 2]
    to_object = -centres / np.linalg.norm(centres, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip((forward * to_object).sum(1), -1, 1)))
    assert angles.max() < 5  # the wobble
    azimuth = np.unwrap(np.arctan2(centres[:, 0], centres[:, 2]))
    span = np.degrees(azimuth.max() - azimuth.min())
    assert (300 < span < 360) if layout == "ring" else (170 < span < 190)


def test_a_ring_scene_loads_with_its_cameras(tmp_path):
    folder = write_ring_scene(
        tmp_path / "ring", n_views=6, layout="half", seed=0, width=64, height=48
    )
    scene = load_scene(data_cfg(type="transforms", data_dir=str(folder), test_every=0, downscale=1))
    assert len(scene.train_ids) == 6 and not scene.forward_facing
    assert scene.images.shape[1:3] == (48, 64)
    truth = torch.from_numpy(ring_cameras(6, "half", seed=0))
    # the reader may move and scale the world: compared after the similarity alignment
    report = camera_report(scene.c2w_gt.double(), truth, None, None)
    assert report["rotation-aware"]["rot_max_deg"] < 1e-3
    assert report["rotation-aware"]["trans_median"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("layout,seed", [("ring", 0), ("ring", 1), ("half", 0), ("half", 1)])
def test_auto_places_every_view_of_a_capture_around_an_object(tmp_path, layout, seed):
    folder = write_ring_scene(
        tmp_path / "scene", n_views=16, layout=layout, seed=seed, width=240, height=180
    )
    argv = [
        "--config",
        str(REPO / "configs" / "fox.yaml"),
        "--log_root",
        str(tmp_path / "logs"),
        "--expname",
        "ring",
        "--data:data_dir",
        str(folder),
        "--data:downscale",
        "1",
        "--data:test_every",
        "0",
        "--tracks:cache_dir",
        str(tmp_path / "tracks"),
        "--training:num_iters",
        "0",
        "--training:eval_at_end",
        "false",
        "--training:progress_bar",
        "false",
    ]
    assert train.main(argv) == 0
    metrics = json.loads((tmp_path / "logs" / "ring" / "metrics.json").read_text())
    assert metrics["camera_start"]["n_dropped"] == 0, metrics["camera_start"]
    assert metrics["rotation-aware"]["n_cameras"] == 16
    assert metrics["rotation-aware"]["rot_max_deg"] < MAX_ROTATION_DEG
