"""Radial distortion: the maps invert each other, undistorted photos are what a pinhole camera
sees, and a kept COLMAP start's k1 is scored with and removed from the photos once."""

from types import SimpleNamespace

import torch
from test_candidates import choose, rig, start

from geometry.distortion import distort, undistort, undistort_image, undistort_pixels
from sfm import candidates
from sfm.start import apply_saved_start

K = (-0.08, 0.01)
FOCAL = torch.tensor([300.0, 300.0], dtype=torch.float64)
CENTRE = torch.tensor([160.0, 120.0], dtype=torch.float64)


def test_undistort_inverts_distort_across_the_image():
    xy = torch.rand(500, 2, dtype=torch.float64) * 1.2 - 0.6
    assert torch.allclose(undistort(distort(xy, K), K), xy, atol=1e-10)
    opencv = (*K, 0.002, -0.001)  # with decentring (p1, p2)
    assert torch.allclose(undistort(distort(xy, opencv), opencv), xy, atol=1e-10)
    assert not torch.allclose(distort(xy, opencv), distort(xy, K), atol=1e-4)
    uv = torch.rand(100, 2, dtype=torch.float64) * torch.tensor([320.0, 240.0])
    back = distort((undistort_pixels(uv, FOCAL, CENTRE, K) - CENTRE) / FOCAL, K)
    assert torch.allclose(back * FOCAL + CENTRE, uv, atol=1e-8)


def pattern(xy):
    """A smooth texture over normalised camera coordinates."""
    return torch.stack([torch.sin(7 * xy[..., 0]), torch.cos(5 * xy[..., 1]), xy.sum(-1)], -1)


def test_an_undistorted_photo_is_the_pinhole_view():
    H, W = 240, 320
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5,
        torch.arange(W, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([u, v], -1)
    pinhole = pattern((pix - CENTRE) / FOCAL)
    # the distorted camera sees, at pixel u_d, the point whose pinhole coordinates undistort u_d
    photo = pattern(undistort((pix - CENTRE) / FOCAL, K))
    out = undistort_image(photo, FOCAL, CENTRE, K)
    inner = (slice(20, H - 20), slice(20, W - 20))
    before, after = ((x - pinhole)[inner].abs().max() for x in (photo, out))
    assert before > 0.05 and after < 0.1 * before  # visible before, a tenth of it after


def distorted_rig():
    c2w, tracks = rig()
    uv = tracks.obs_uv.double()
    tracks.obs_uv = (distort((uv - CENTRE) / FOCAL, K) * FOCAL + CENTRE).float()
    return c2w, tracks


def test_candidates_are_scored_with_their_own_distortion(tmp_path, monkeypatch):
    c2w, tracks = distorted_rig()
    monkeypatch.setattr("test_candidates.rig", lambda: (c2w, tracks))

    def table(c2w):
        return {
            "tracks_ceres": start(c2w),  # right poses, but a pinhole model of this lens
            "colmap_global": start(c2w),  # the same
            "colmap_incremental": start(c2w, radial=K),
        }

    summary, calls, _, _ = choose(table, tmp_path)
    fits = {c["name"]: c for c in summary["candidates"]}
    assert fits["colmap_incremental"]["median_px"] < 1e-2
    assert fits["colmap_global"]["median_px"] > 0.5 and fits["tracks_ceres"]["median_px"] > 0.5
    assert summary["kept"] == "colmap_incremental" and summary["undistorted"]
    assert summary["radial_k1_k2"] == list(K) and summary["corner_shift_px"] > 1

    images = torch.rand(2, 240, 320, 3)
    scene = SimpleNamespace(images=images.clone(), extras={}, train_ids=[0, 1])
    kept = SimpleNamespace(obs_uv=tracks.obs_uv.clone())
    scene.forward_facing = True
    kept, changes = apply_saved_start(scene, tmp_path, kept)
    assert changes == {"dropped": [], "layout": False}
    assert not torch.equal(scene.images, images)
    assert torch.allclose(kept.obs_uv, rig()[1].obs_uv, atol=1e-3)  # the pinhole keypoints
    once = scene.images.clone()
    apply_saved_start(scene, tmp_path)  # a scene is undistorted once
    assert torch.equal(scene.images, once)


def test_a_pinhole_start_leaves_the_photos_alone(tmp_path):
    summary, _, _, _ = choose(
        lambda c2w: dict.fromkeys(candidates.CANDIDATES, start(c2w)), tmp_path
    )
    assert not summary["undistorted"] and not (tmp_path / "sfm" / "distortion.json").exists()
