"""tracks_global (sfm/track_global.py): rotation averaging, global positioning and Ceres on the
tracks place a capture around an object from a wrong focal guess; auto keeps it when COLMAP's
mappers misplace a view."""

from types import SimpleNamespace

import numpy as np
import torch

from dataio.ring import ring_cameras
from evaluation.pose_metrics import camera_report
from models.cameras import Cameras
from sfm import track_global
from sfm.track_global import PAIR_MIN_TRACKS, global_start, view_pairs
from sfm.view_check import shared_tracks, view_keypoints

H, W, F = 240, 320, 300.0


def ring_tracks(c2w, n_points=1500, noise_px=0.3, seed=0):
    """Points on a sphere of radius 1 around the origin; a camera sees a point when it is on
    the camera's side of the sphere and inside the image (so the tracks link neighbours, as
    around a real object), with Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n_points, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    image, uv, track = [], [], []
    for t, X in enumerate(points):
        for k, pose in enumerate(c2w):
            centre = pose[:3, 3]
            if X @ (centre - X) <= 0.3 * np.linalg.norm(centre - X):  # facing away from it
                continue
            x = pose[:3, :3].T @ (X - centre)
            u, v = F * x[0] / x[2] + W / 2, F * x[1] / x[2] + H / 2
            if x[2] > 0 and 0 <= u < W and 0 <= v < H:
                image.append(k)
                uv.append((u, v))
                track.append(t)
    image, track = np.array(image), np.array(track)
    uv = np.array(uv) + rng.normal(scale=noise_px, size=(len(uv), 2))
    long_enough = np.bincount(track, minlength=n_points)[track] >= 2
    _, track = np.unique(track[long_enough], return_inverse=True)
    return SimpleNamespace(
        obs_image=torch.from_numpy(image[long_enough]),
        obs_uv=torch.from_numpy(uv[long_enough]).float(),
        obs_track=torch.from_numpy(track),
        n_tracks=int(track.max()) + 1,
    )


def guessed_cameras(n, f):
    return Cameras(
        torch.eye(4).repeat(n, 1, 1),
        torch.tensor([[f, f]]).repeat(n, 1),
        torch.tensor([[W / 2, H / 2]]).repeat(n, 1),
        H,
        W,
    )


SCENE = SimpleNamespace(near=2.0, far=6.0, forward_facing=False, unbounded=False)


def test_view_pairs_link_every_view_to_partners_it_shares_tracks_with():
    c2w = ring_cameras(12, "ring", seed=0)
    tracks = ring_tracks(c2w)
    pairs = view_pairs(tracks, 12)
    shared = shared_tracks(tracks, 12)
    assert all(a < b and shared[a, b] >= PAIR_MIN_TRACKS for a, b in pairs)
    assert {k for pair in pairs for k in pair} == set(range(12))
    assert (0, 6) not in pairs  # opposite sides of the object see none of the same points


def test_a_ring_is_placed_from_a_wrong_focal_guess():
    for layout in ("ring", "half"):
        truth = ring_cameras(12, layout, seed=1)
        tracks = ring_tracks(truth, seed=1)
        lines = []
        c2w, focal, registered, _, forward = global_start(
            guessed_cameras(12, 0.6 * F), tracks, SCENE, log=lines.append
        )
        assert registered.all() and not forward
        # k1 (refined, truly 0) trades against the focal on 12 narrow views: a few percent
        assert abs(np.median(focal[:, 0]) / F - 1) < 0.03
        assert any("pass 2" in line for line in lines)  # the guess was 40% off: a second pass
        report = camera_report(torch.from_numpy(c2w), torch.from_numpy(truth), None, None)
        assert report["rotation-aware"]["rot_max_deg"] < 0.3, (layout, report["rotation-aware"])


def test_without_rotation_averaging_the_views_stay_where_they_started(monkeypatch):
    """The pipeline's steps carry the result: with no usable pair nothing is placed."""
    truth = ring_cameras(8, "ring", seed=2)
    tracks = ring_tracks(truth, seed=2)
    monkeypatch.setattr(track_global, "two_view_pose", lambda *args, **kwargs: None)
    c2w, registered, used = track_global.global_poses(
        tracks,
        view_keypoints(tracks, 8),
        8,
        F,
        np.tile([[W / 2, H / 2]], (8, 1)),
        H,
        W,
        view_pairs(tracks, 8),
    )
    assert used == 0 and not registered.any() and np.allclose(c2w, np.eye(4))
