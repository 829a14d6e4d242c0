"""The per-view check of a camera start (sfm/view_check.py) and what cameras.init auto does with
a view that fails it (sfm/candidates.py): known answers on synthetic captures around an object."""

from types import SimpleNamespace

import numpy as np
import pytest
import roma
import torch

from evaluation.pose_metrics import camera_report
from geometry.poses import look_at
from sfm import candidates
from sfm.view_check import check_views
from utils.errors import DataError

H, W, F = 240, 320, 300.0
CENTRE = np.array([W / 2, H / 2])


def sphere_capture(n=16, n_points=800, layout="ring", noise_px=0.3, seed=0):
    """Cameras on a ring (or half ring) of radius 4 at two heights looking at a unit sphere
    covered with points; a point is seen by the cameras on its side of the sphere (tracks as
    partial as a real capture's). Returns c2w (n, 4, 4) OpenCV and tracks."""
    g = torch.Generator().manual_seed(seed)
    span = 2 * np.pi if layout == "ring" else np.pi
    a = torch.arange(n, dtype=torch.float64) * span / (n if layout == "ring" else n - 1)
    height = torch.where(torch.arange(n) % 2 == 0, 0.8, -0.8).double()
    centres = torch.stack([4 * a.cos(), 4 * a.sin(), height], -1)
    c2w = look_at(centres, torch.zeros(3, dtype=torch.float64), torch.tensor([0, 0, -1.0]).double())
    pts = torch.randn(n_points, 3, generator=g, dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True)
    w2c = torch.linalg.inv(c2w)
    cam = torch.einsum("nij,pj->npi", w2c[:, :3, :3], pts) + w2c[:, None, :3, 3]
    uv = cam[..., :2] / cam[..., 2:] * F + torch.from_numpy(CENTRE)
    uv = uv + noise_px * torch.randn(uv.shape, generator=g, dtype=torch.float64)
    facing = torch.einsum("npi,pi->np", centres[:, None] - pts[None], pts) > 0.3
    inside = (uv >= 0).all(-1) & (uv[..., 0] < W) & (uv[..., 1] < H)
    view, point = torch.nonzero(facing & inside, as_tuple=True)
    order = torch.argsort(point * n + view)
    view, point = view[order], point[order]
    counts = torch.bincount(point, minlength=n_points)
    keep = counts[point] >= 2
    view, point = view[keep], point[keep]
    ids, point = torch.unique(point, return_inverse=True)
    tracks = SimpleNamespace(
        obs_image=view, obs_uv=uv[view, ids[point]].float(), obs_track=point, n_tracks=len(ids)
    )
    return c2w.numpy(), tracks


def rotated(c2w, k, degrees, axis=(0.0, 1.0, 0.0)):
    """c2w with view k turned by `degrees` about its own camera `axis`."""
    out = c2w.copy()
    R = roma.rotvec_to_rotmat(torch.tensor(axis, dtype=torch.float64) * np.radians(degrees))
    out[k, :3, :3] = out[k, :3, :3] @ R.numpy()
    return out


def check(c2w, tracks):
    n = len(c2w)
    return check_views(
        c2w, np.full((n, 2), F), np.tile(CENTRE, (n, 1)), np.ones(n, bool), tracks, H, W
    )


@pytest.mark.parametrize("layout", ["ring", "half"])
def test_a_clean_capture_keeps_every_view(layout):
    c2w, tracks = sphere_capture(layout=layout)
    verdicts = check(c2w, tracks)
    assert sorted(verdicts) == list(range(len(c2w)))
    assert all(v.passed for v in verdicts.values()), [v.why for v in verdicts.values()]
    assert all(v.loo_observations > 50 and v.loo_agreeing > 0.95 for v in verdicts.values())
    assert all(v.n_neighbours >= 2 and v.rotation_median_deg < 1 for v in verdicts.values())
    assert all(v.weak == "" for v in verdicts.values())


def test_a_view_with_little_evidence_passes_but_is_named_weakly_placed():
    c2w, tracks = sphere_capture()
    mine = torch.nonzero(tracks.obs_image == 5)[:, 0]
    drop = torch.zeros(len(tracks.obs_image), dtype=torch.bool)
    drop[mine[20:]] = True  # view 5 keeps 20 of its observations
    thin = SimpleNamespace(
        obs_image=tracks.obs_image[~drop],
        obs_uv=tracks.obs_uv[~drop],
        obs_track=tracks.obs_track[~drop],
        n_tracks=tracks.n_tracks,
    )
    verdicts = check(c2w, thin)
    assert all(v.passed for v in verdicts.values())
    assert "only 20 observations" in verdicts[5].weak
    assert [k for k, v in verdicts.items() if v.weak] == [5]


@pytest.mark.parametrize("layout", ["ring", "half"])
def test_a_view_turned_120_degrees_and_one_turned_5_are_caught_and_only_they(layout):
    c2w, tracks = sphere_capture(layout=layout)
    bad = rotated(rotated(c2w, 3, 120.0), 8, 5.0, axis=(1.0, 0.0, 0.0))
    verdicts = check(bad, tracks)
    assert sorted(k for k, v in verdicts.items() if not v.passed) == [3, 8]
    assert 115 < verdicts[3].rotation_median_deg < 125  # the two-view rotations know it
    assert "two-view estimates" in verdicts[3].why and "within 4 px" in verdicts[3].why
    assert verdicts[8].loo_agreeing < 0.1  # 5 degrees is 26 px: leave-one-out sees it


def test_a_view_turned_upside_down_fails_on_a_half_ring():
    c2w, tracks = sphere_capture(layout="half")
    bad = rotated(c2w, 5, 180.0, axis=(1.0, 0.0, 0.0))
    assert not check(bad, tracks)[5].passed


def with_wrong_matches(c2w_true, c2w_wrong, tracks, k, partners, n=40, seed=1):
    """`tracks` plus n tracks seen by view k as it is placed in c2w_wrong and by `partners` as
    they truly are: the wrong matches (repeated structure, a symmetric object) that let a
    mapper place view k there and let it fit its own observations."""
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 1.4
    views = [k, *partners]
    poses = torch.from_numpy(np.stack([c2w_wrong[k], *(c2w_true[j] for j in partners)]))
    w2c = torch.linalg.inv(poses)
    cam = torch.einsum("vij,pj->vpi", w2c[:, :3, :3], pts) + w2c[:, None, :3, 3]
    uv = (cam[..., :2] / cam[..., 2:] * F + torch.from_numpy(CENTRE)).float()  # (views, n, 2)
    extra_image = torch.tensor(views).repeat(n)
    extra_track = tracks.n_tracks + torch.arange(n).repeat_interleave(len(views))
    return SimpleNamespace(
        obs_image=torch.cat([tracks.obs_image, extra_image]),
        obs_uv=torch.cat([tracks.obs_uv, uv.transpose(0, 1).reshape(-1, 2)]),
        obs_track=torch.cat([tracks.obs_track, extra_track]),
        n_tracks=tracks.n_tracks + n,
    )


def ring_runner(c2w):
    """A candidate runner that returns `c2w` (around an object) for every view."""
    n = len(c2w)

    def run(cfg, scene, cameras, tracks, cache_dir, log, on_round):
        return c2w.copy(), np.full((n, 2), F), np.ones(n, bool), np.zeros((n, 2)), False

    return run


def choose(c2w_candidate, tracks, tmp_path, logs):
    n = len(c2w_candidate)
    scene = SimpleNamespace(
        name="sphere",
        forward_facing=False,
        image_names=[f"{i:02d}.png" for i in range(n)],
        train_ids=list(range(n)),
    )
    from models.cameras import Cameras

    cams = Cameras(
        torch.eye(4).repeat(n, 1, 1),
        torch.full((n, 2), F),
        torch.from_numpy(CENTRE).float().repeat(n, 1),
        H,
        W,
    )

    def no_model(*args):
        raise DataError("not part of this test")

    runners = {
        "tracks_global": no_model,  # the mapper's start under test comes next
        "colmap_global": ring_runner(c2w_candidate),
        "colmap_incremental": ring_runner(c2w_candidate),
    }
    cfg = SimpleNamespace(cameras=SimpleNamespace(focal_init="gt"))  # no final adjustment
    summary = candidates.choose_start(
        cfg, scene, cams, tracks, tmp_path, tmp_path / "sfm", log=logs.append, runners=runners
    )
    return summary, cams


def test_auto_re_registers_a_misplaced_view_that_fits_its_own_tracks_by_pnp_and_says_so(tmp_path):
    c2w, tracks = sphere_capture()
    wrong = rotated(c2w, 6, 118.0, axis=(0.0, 0.0, 1.0))
    tracks = with_wrong_matches(c2w, wrong, tracks, 6, partners=[7, 8])
    fit = candidates.track_fit(
        wrong, np.full((16, 2), F), np.tile(CENTRE, (16, 1)), np.ones(16, bool), tracks, W
    )
    assert all(fit["supported"])  # the score alone would keep view 6 where it is
    logs = []
    summary, cams = choose(wrong, tracks, tmp_path, logs)
    assert list(summary["view_check"]["failed"]) == ["06.png"]
    assert summary["registered_by_pnp"] == ["06.png"] and summary["dropped"] == []
    assert any("WARN colmap_global misplaced 06.png" in line for line in logs)
    report = camera_report(cams.c2w().detach().double(), torch.from_numpy(c2w), None, None)
    assert report["rotation-aware"]["rot_max_deg"] < 0.2  # the view is back where it belongs
    kept = next(c for c in summary["candidates"] if c["name"] == "colmap_global")
    assert kept["n_registered"] == len(c2w) - 1  # the score counted only the views that passed


def test_auto_keeps_every_view_of_a_clean_start(tmp_path):
    c2w, tracks = sphere_capture(layout="half")
    summary, _ = choose(c2w, tracks, tmp_path, [])
    assert summary["view_check"]["failed"] == {}
    assert summary["registered_by_pnp"] == [] and summary["dropped"] == []


def test_one_neighbour_fails_a_view_only_when_it_is_off_by_a_mis_registration():
    from sfm.view_check import SINGLE_PAIR_MAX_DEG, _verdict

    c2w, tracks = sphere_capture()
    n = len(c2w)
    args = (c2w, np.full((n, 2), F), np.tile(CENTRE, (n, 1)), np.ones(n, bool), tracks)
    near = {3: [4]}  # view 3's only neighbour

    def verdict(angle):
        return _verdict(3, *args, near, lambda a, b: angle)

    noisy = verdict(SINGLE_PAIR_MAX_DEG / 2)  # one weak pair's estimate: named, kept
    assert noisy.passed and "two-view rotations" in noisy.weak
    assert not verdict(3 * SINGLE_PAIR_MAX_DEG).passed  # a view tens of degrees off: fails
    near[3] = [4, 5]  # two neighbours that both disagree: the majority decides as before
    assert not verdict(SINGLE_PAIR_MAX_DEG / 2).passed
