"""Feature tracks (dataio.tracks) and the COLMAP initialisation (sfm.colmap).

Correctness is checked against the demo scene's exact geometry: every observation's ray is
intersected with the scene's planes and the surface point re-projected into the other views of
its track, with the generator's own cameras (known answer, no estimation in the check).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from dataio.demo import demo_cameras, demo_focal, demo_planes, write_demo_scene
from dataio.llff import load_llff
from dataio.scene import SceneData
from dataio.tracks import build as tracks_build
from dataio.tracks.build import Tracks, build_tracks
from dataio.tracks.chaining import epipolar_filter, union_find_tracks
from dataio.tracks.features import (
    SETTING_KEYS,
    camera_mode,
    feature_database,
    read_verified_matches,
    track_settings,
)
from dataio.tracks.flow import flow_matches
from geometry.epipolar import epipolar_distance, fundamental_from_cameras
from geometry.poses import average_pose, rigid_inverse
from sfm.colmap import _nearest_registered, normalise_bounded, normalise_forward_facing
from utils.config import load_config
from utils.errors import DataError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
N_VIEWS = 5
SOURCE_SIZE = (400, 300)  # (width, height), as PIL: the demo is rendered here (the "highest")
TRAIN_SIZE = (200, 150)  # (width, height): images_2, the training images


def _quiet(*_args):
    pass


def tracks_cfg(**overrides):
    """The tracks section of base.yaml with `overrides` (the one source of defaults)."""
    return load_config(None, {f"tracks:{k}": v for k, v in overrides.items()}).tracks


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A demo LLFF folder with images/ at 400x300 and images_2/ at 200x150 (area-downsampled)."""
    folder = tmp_path_factory.mktemp("demo")
    write_demo_scene(folder, N_VIEWS, SOURCE_SIZE[1], SOURCE_SIZE[0])  # (height, width)
    (folder / "images_2").mkdir()
    for path in sorted((folder / "images").glob("*.png")):
        with Image.open(path) as im:
            im.resize(TRAIN_SIZE, Image.Resampling.BOX).save(folder / "images_2" / path.name)
    return folder


@pytest.fixture(scope="module")
def demo_scene(demo_folder):
    scene = load_llff(demo_folder, downscale=2, test_every=0, name="demo")
    assert (scene.W, scene.H) == TRAIN_SIZE
    return scene


@pytest.fixture(scope="module")
def demo_tracks(demo_scene, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tracks")
    return build_tracks(demo_scene, tracks_cfg(flow=True), cache, log=_quiet), cache


def _surface_points(view: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Exact first hit (P, 3) of the rays through pixels uv (P, 2) of demo view `view` (P,) at
    the training size, in the generator's world (the same ray-plane test as render_demo)."""
    c2w = demo_cameras(N_VIEWS)[view]
    focal = demo_focal(TRAIN_SIZE[0])
    dirs_cam = np.stack(
        [(uv[:, 0] - TRAIN_SIZE[0] / 2) / focal, (uv[:, 1] - TRAIN_SIZE[1] / 2) / focal],
        axis=1,
    )
    dirs = np.einsum("pij,pj->pi", c2w[:, :3, :3], np.c_[dirs_cam, np.ones(len(uv))])
    origins = c2w[:, :3, 3]
    best = np.full(len(uv), np.inf)
    for plane in demo_planes():
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((plane.centre - origins) @ plane.normal) / (dirs @ plane.normal)
        hit = origins + t[:, None] * dirs - plane.centre
        s, r = hit @ plane.axis_u, hit @ plane.axis_v
        if np.isinf(plane.half_u):
            inside = np.ones(len(uv), dtype=bool)
        elif plane.ellipse:
            inside = (s / plane.half_u) ** 2 + (r / plane.half_v) ** 2 <= 1.0
        else:
            inside = (np.abs(s) <= plane.half_u) & (np.abs(r) <= plane.half_v)
        best = np.where(inside & (t > 1e-6) & (t < best), t, best)
    return origins + best[:, None] * dirs


def _project(view: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(P, 3) world points -> (P, 2) pixels of demo views `view` (P,) at the training size."""
    w2c = rigid_inverse(demo_cameras(N_VIEWS)[view])
    cam = np.einsum("pij,pj->pi", w2c[:, :3, :3], points) + w2c[:, :3, 3]
    focal = demo_focal(TRAIN_SIZE[0])
    return np.stack(
        [
            focal * cam[:, 0] / cam[:, 2] + TRAIN_SIZE[0] / 2,
            focal * cam[:, 1] / cam[:, 2] + TRAIN_SIZE[1] / 2,
        ],
        axis=1,
    )


def _transfer_error(view_a, uv_a, view_b, uv_b) -> np.ndarray:
    """Pixel distance between uv_b and the exact surface point behind uv_a seen from view b."""
    return np.linalg.norm(_project(view_b, _surface_points(view_a, uv_a)) - uv_b, axis=1)


def _observation_errors(tracks: Tracks) -> np.ndarray:
    """(M,) for every observation, the median over the other observations of its track of the
    distance between it and their exact transfer into its view (a wrong observation in a long
    track flags itself, not its partners; in a two-view track both carry the pair's error)."""
    img = tracks.obs_image.numpy()
    uv = tracks.obs_uv.double().numpy()
    trk = tracks.obs_track.numpy()
    # Every ordered pair (i, j) of observations sharing a track (tracks are contiguous).
    starts = np.r_[0, np.flatnonzero(np.diff(trk)) + 1]
    lengths = np.diff(np.r_[starts, len(trk)])
    i, j = [], []
    for length in np.unique(lengths):
        a, b = np.nonzero(~np.eye(length, dtype=bool))
        first = starts[lengths == length][:, None]
        i.append((first + a).ravel())
        j.append((first + b).ravel())
    i, j = np.concatenate(i), np.concatenate(j)
    err = _transfer_error(img[j], uv[j], img[i], uv[i])
    order = np.lexsort((err, i))
    i, err = i[order], err[order]
    first = np.searchsorted(i, np.arange(len(trk)))
    count = np.bincount(i, minlength=len(trk))
    return 0.5 * (err[first + (count - 1) // 2] + err[first + count // 2])


# ----------------------------------------------------------------------------------------------
# Union-find and the epipolar check on crafted inputs


def test_union_find_never_puts_two_observations_of_one_image_in_a_track():
    # Observations: A0, B0, C0, A1 (images 0, 1, 2, 0). A0-B0-C0 chain, then C0-A1 would put
    # A0 and A1 into one track: rejected.
    obs_image = np.array([0, 1, 2, 0])
    labels = union_find_tracks(obs_image, np.array([[0, 1], [1, 2], [2, 3]]))
    assert labels[0] == labels[1] == labels[2] and labels[3] != labels[0]
    # Strongest first: C0-A1 listed first wins; then A0-B0; B0-C0 would join two tracks that
    # both hold an image-0 observation: rejected.
    labels = union_find_tracks(obs_image, np.array([[2, 3], [0, 1], [1, 2]]))
    assert labels[2] == labels[3] and labels[0] == labels[1] and labels[0] != labels[2]


def test_union_find_random_matches_keep_one_observation_per_image():
    rng = np.random.default_rng(0)
    obs_image = rng.integers(0, 6, size=400)
    edges = rng.integers(0, 400, size=(1500, 2))
    edges = edges[obs_image[edges[:, 0]] != obs_image[edges[:, 1]]]
    labels = union_find_tracks(obs_image, edges)
    for label in np.unique(labels):
        members = obs_image[labels == label]
        assert len(members) == len(set(members.tolist()))
    # Chaining happened: tracks longer than two exist, and every edge's ends either share a
    # track or that track already had an observation of the other's image.
    assert np.bincount(np.unique(labels, return_inverse=True)[1]).max() >= 3
    for a, b in edges:
        if labels[a] != labels[b]:
            assert set(obs_image[labels == labels[a]]) & set(obs_image[labels == labels[b]])


def test_epipolar_filter_drops_the_observation_off_its_epipolar_lines():
    cams = demo_cameras(N_VIEWS)[:3]
    focal = demo_focal(TRAIN_SIZE[0])
    K = np.array([[focal, 0, TRAIN_SIZE[0] / 2], [0, focal, TRAIN_SIZE[1] / 2], [0, 0, 1]])
    point = np.array([[0.3, -0.2, 5.0]])
    uv = np.concatenate([_project(np.array([k]), point) for k in range(3)])
    uv_bad = uv.copy()
    uv_bad[1] += [0.0, 12.0]  # view 1 off by 12 px (off its epipolar lines from 0 and 2)
    F_pairs = {
        (a, b): fundamental_from_cameras(K, cams[a], K, cams[b])
        for a, b in [(0, 1), (0, 2), (1, 2)]
    }
    obs_image, labels = np.array([0, 1, 2]), np.zeros(3, dtype=np.int64)
    assert epipolar_filter(obs_image, uv, labels, F_pairs, 1.0).all()
    keep = epipolar_filter(obs_image, uv_bad, labels, F_pairs, 1.0)
    assert keep.tolist() == [True, False, True]
    # The distance itself: the exact correspondence is on the line, the shifted one is not.
    assert epipolar_distance(F_pairs[(0, 1)], uv[:1], uv[1:2])[0] < 1e-6
    assert epipolar_distance(F_pairs[(0, 1)], uv[:1], uv_bad[1:2])[0] > 3.0


def test_keypoints_follow_the_pixel_centre_convention_at_both_resolutions(tmp_path):
    """Dark Gaussian blobs at known sub-pixel centres (pixel centres at +0.5), the same scene
    drawn at twice the size as the "highest resolution" source: SIFT keypoints scaled to the
    training size land on the centres (a half-pixel slip would show as 0.25-0.5 px)."""
    W, H = 160, 120
    # A 4 x 3 grid 35 px apart (blobs do not interact) with random sub-pixel offsets.
    grid = np.stack(np.meshgrid(np.arange(4) * 35 + 27.0, np.arange(3) * 35 + 25.0), -1)
    centres = grid.reshape(-1, 2) + np.random.default_rng(1).uniform(-2, 2, size=(12, 2))

    def blobs(scale: int) -> np.ndarray:
        u = (np.arange(W * scale) + 0.5)[None, :]
        v = (np.arange(H * scale) + 0.5)[:, None]
        img = np.ones((H * scale, W * scale))
        for cu, cv in centres * scale:
            img -= 0.8 * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * (2.5 * scale) ** 2))
        return np.repeat(img[..., None], 3, axis=2)

    for name in ("a.png", "b.png"):
        Image.fromarray(np.round(blobs(2) * 255).astype(np.uint8)).save(tmp_path / name)
    scene = SceneData(
        name="blobs",
        images=torch.from_numpy(np.stack([blobs(1)] * 2).astype(np.float32)),
        image_names=["a.png", "b.png"],
        train_ids=[0, 1],
        test_ids=[],
        c2w_gt=None,
        K_gt=None,
        near=1.0,
        far=10.0,
        forward_facing=True,
        extras={"feature_images": [str(tmp_path / "a.png"), str(tmp_path / "b.png")]},
    )
    for resolution, src_width in (("highest", 2 * W), ("training", W)):
        features = feature_database(scene, tracks_cfg(resolution=resolution), tmp_path / resolution)
        assert features.src_size[0, 0] == src_width
        keypoints, _ = read_verified_matches(features, 15)
        uv = keypoints[0] * features.train_from_src(scene)[0]
        dist = np.linalg.norm(uv[:, None] - centres[None], axis=2)
        nearest = uv[dist.argmin(0)]
        assert np.abs(nearest - centres).max() < 0.2, resolution
        assert np.abs((nearest - centres).mean(0)).max() < 0.05, resolution


# ----------------------------------------------------------------------------------------------
# Optical flow


def test_flow_matches_recover_a_known_shift_and_pass_the_forward_backward_check(demo_scene):
    big = demo_scene.images[0].numpy()
    shift = (7, 4)  # image b = image a moved right 7 and down 4 pixels
    img_a = big[10:-10, 10:-10]
    img_b = big[10 - shift[1] : -10 - shift[1], 10 - shift[0] : -10 - shift[0]]
    uv_a, uv_b, fb = flow_matches(img_a, img_b, stride=8, fb_max_error=0.5)
    assert len(uv_a) > 0.5 * (img_a.shape[0] // 8) * (img_a.shape[1] // 8)
    assert (fb <= 0.5).all()
    err = np.linalg.norm(uv_b - uv_a - shift, axis=1)
    assert np.mean(err < 0.5) >= 0.95
    h, w = img_b.shape[:2]
    assert (uv_b > 0).all() and (uv_b[:, 0] < w).all() and (uv_b[:, 1] < h).all()


def test_flow_forward_backward_check_removes_wrong_correspondences(demo_scene):
    images = demo_scene.images.numpy()
    right_kept, right_rejected = [], []
    for b in range(1, N_VIEWS):
        loose = flow_matches(images[0], images[b], stride=6, fb_max_error=1e9)
        uv_a, uv_b, fb = flow_matches(images[0], images[b], stride=6, fb_max_error=1.0)
        assert (fb <= 1.0).all() and len(uv_a) < len(loose[0])
        rejected = loose[2] > 1.0
        right_kept.append(
            _transfer_error(np.zeros(len(uv_a), int), uv_a, np.full(len(uv_a), b), uv_b) < 1.0
        )
        right_rejected.append(
            _transfer_error(
                np.zeros(rejected.sum(), int),
                loose[0][rejected],
                np.full(rejected.sum(), b),
                loose[1][rejected],
            )
            < 1.0
        )
    right_kept, right_rejected = np.concatenate(right_kept), np.concatenate(right_rejected)
    assert right_kept.mean() >= 0.93
    assert right_rejected.mean() < right_kept.mean() - 0.1


# ----------------------------------------------------------------------------------------------
# build_tracks on the demo scene (SIFT at 400x300, training at 200x150, flow on)


def test_tracks_are_geometrically_correct(demo_tracks):
    tracks, _ = demo_tracks
    assert tracks.n_tracks >= 200
    assert tracks.stats["sources"]["sift"] > 0 and tracks.stats["sources"]["flow"] > 0
    assert "400x300" in tracks.stats["feature_images"]
    err = _observation_errors(tracks)
    assert np.mean(err < 1.0) >= 0.95, np.percentile(err, [50, 90, 95, 99])


def test_tracks_layout(demo_tracks):
    tracks, _ = demo_tracks
    img, trk, uv = tracks.obs_image, tracks.obs_track, tracks.obs_uv
    assert img.dtype == trk.dtype == torch.long and uv.dtype == torch.float32
    assert uv.shape == (len(img), 2) and len(trk) == len(img)
    assert (trk[1:] >= trk[:-1]).all() and int(trk.max()) + 1 == tracks.n_tracks
    lengths = tracks.lengths()
    assert lengths.shape == (tracks.n_tracks,) and (lengths >= 2).all()
    assert int(lengths.sum()) == len(img)
    pairs = torch.unique(trk * N_VIEWS + img)
    assert len(pairs) == len(img), "a track holds two observations of one image"
    assert (img >= 0).all() and (img < N_VIEWS).all()
    assert (uv > 0).all() and (uv[:, 0] < TRAIN_SIZE[0]).all() and (uv[:, 1] < TRAIN_SIZE[1]).all()
    assert tracks.stats["images_without_track"] == []
    assert sum(int(k) * v for k, v in tracks.stats["length_histogram"].items()) == len(img)
    moved = tracks.to("cpu")
    assert torch.equal(moved.obs_uv, uv) and moved.n_tracks == tracks.n_tracks


def test_training_resolution_tracks_are_correct(demo_scene, demo_tracks, tmp_path):
    cfg = tracks_cfg(resolution="training", flow=False)
    tracks = build_tracks(demo_scene, cfg, tmp_path, log=_quiet)
    assert "200x150" in tracks.stats["feature_images"]
    assert tracks.stats["sources"]["flow"] == 0
    # SIFT on the 200x150 training images is coarser than on the 400x300 sources (91% against
    # 97% of observations within 1 px here): the reason `highest` is the default.
    assert np.mean(_observation_errors(tracks) < 1.0) >= 0.85
    assert list(tmp_path.glob("train_images_200x150/*.png"))


def test_tracks_cache_is_reused_and_rebuilt_when_a_setting_changes(
    demo_scene, demo_tracks, monkeypatch, tmp_path
):
    tracks, cache = demo_tracks
    shutil.copytree(cache, tmp_path / "cache")
    cache = tmp_path / "cache"

    def forbidden(*_args, **_kwargs):
        raise AssertionError("extraction or matching ran again")

    monkeypatch.setattr(pycolmap, "extract_features", forbidden)
    monkeypatch.setattr(pycolmap, "match_exhaustive", forbidden)
    monkeypatch.setattr(tracks_build, "union_find_tracks", forbidden)
    lines = []
    again = build_tracks(demo_scene, tracks_cfg(flow=True), cache, log=lines.append)
    assert torch.equal(again.obs_uv, tracks.obs_uv) and torch.equal(
        again.obs_track, tracks.obs_track
    )
    assert any("reusing" in line for line in lines)
    assert any(line.startswith("tracks:") and "tracks" in line for line in lines)

    # A track setting: tracks rebuilt from the cached database (no extraction).
    monkeypatch.undo()
    monkeypatch.setattr(pycolmap, "extract_features", forbidden)
    monkeypatch.setattr(pycolmap, "match_exhaustive", forbidden)
    sift_only = build_tracks(demo_scene, tracks_cfg(flow=False), cache, log=_quiet)
    assert sift_only.stats["sources"]["flow"] == 0 and sift_only.n_tracks < tracks.n_tracks
    unchecked = build_tracks(demo_scene, tracks_cfg(flow=True, epipolar_check=False), cache, _quiet)
    assert tracks.stats["epipolar_dropped"] > 0 and unchecked.stats["epipolar_dropped"] == 0
    assert len(unchecked.obs_uv) > len(tracks.obs_uv)
    # An extraction setting: extraction runs again.
    with pytest.raises(AssertionError, match="ran again"):
        build_tracks(demo_scene, tracks_cfg(flow=True, peak_threshold=0.01), cache, log=_quiet)


def test_images_without_a_track_are_named_in_a_warning(demo_folder, tmp_path):
    # View 1 replaced by noise: nothing matches it.
    scene = load_llff(demo_folder, downscale=2, test_every=0, name="demo")
    noise = np.random.default_rng(0).random((TRAIN_SIZE[1], TRAIN_SIZE[0], 3))
    scene.images[1] = torch.from_numpy(noise.astype(np.float32))
    lines = []
    tracks = build_tracks(scene, tracks_cfg(resolution="training"), tmp_path, log=lines.append)
    assert tracks.stats["images_without_track"] == [scene.image_names[1]]
    assert (tracks.obs_image != 1).all()
    assert any(line.startswith("WARN") and scene.image_names[1] in line for line in lines)


def test_no_verified_pair_is_a_data_error(demo_scene, tmp_path):
    with pytest.raises(DataError, match="min_num_inliers.*tracks.flow"):
        build_tracks(
            demo_scene,
            tracks_cfg(resolution="training", min_num_inliers=100000),
            tmp_path,
            log=_quiet,
        )


def test_track_settings_come_whole_from_base_yaml():
    # No module re-declares a default: a partial dict is refused, so every caller hashes the
    # same values into the cache keys.
    with pytest.raises(ValueError, match="peak_threshold"):
        track_settings({"resolution": "training"})
    assert track_settings(tracks_cfg()) == {k: load_config(None).tracks[k] for k in SETTING_KEYS}


# ----------------------------------------------------------------------------------------------
# COLMAP's world -> ours


def _similarity(c2w: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """The same cameras in another SfM gauge: world rotated, scaled and shifted."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    q *= np.sign(np.linalg.det(q))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = scale * q, rng.normal(size=3)
    out = T @ c2w
    out[:, :3, :3] /= scale
    return out


def test_forward_facing_frame_does_not_depend_on_the_sfm_gauge():
    c2w = demo_cameras(8)
    points = np.random.default_rng(0).uniform([-2, -2, 3], [2, 2, 8], size=(500, 3))
    depths = [(points - c[:3, 3]) @ c[:3, 2] for c in c2w]
    ours, _ = normalise_forward_facing(c2w, depths)
    other, _ = normalise_forward_facing(_similarity(c2w, 3.7, 1), [3.7 * d for d in depths])
    assert np.allclose(ours, other, atol=1e-9)
    assert np.allclose(average_pose(ours), np.eye(4), atol=1e-9)
    # Nearest image's near depth (0.1th percentile) at 1 / 0.75, as the LLFF reader's bounds.
    scale = np.linalg.norm(ours[1, :3, 3] - ours[0, :3, 3]) / np.linalg.norm(
        c2w[1, :3, 3] - c2w[0, :3, 3]
    )
    near = min(np.percentile(d, 0.1) for d in depths) * scale
    assert near == pytest.approx(1 / 0.75)


def test_bounded_frame_puts_the_object_at_the_origin_at_the_scene_distance():
    c2w = _similarity(demo_cameras(8), 0.4, 2)
    points = np.random.default_rng(0).normal([0.2, -0.1, 4.5], 0.3, size=(500, 3))
    ours, world_from_sfm = normalise_bounded(c2w, points, 2.0, 5.0)
    mapped = points @ world_from_sfm[:3, :3].T + world_from_sfm[:3, 3]
    assert np.allclose(np.median(mapped, axis=0), 0, atol=1e-9)
    assert np.linalg.norm(ours[:, :3, 3], axis=1).mean() == pytest.approx(3.5)
    assert np.allclose(ours[:, :3, :3], c2w[:, :3, :3])


def test_unregistered_views_start_from_the_nearest_registered_view():
    registered = [False, True, False, False, True, False, True]
    assert _nearest_registered(registered) == [1, 1, 1, 4, 4, 4, 6]
    assert _nearest_registered([True, False, True]) == [0, 0, 2]  # a tie: the earlier view


# ----------------------------------------------------------------------------------------------
# Real data (skipped without ../shared/data)

FERN = DATA / "llff" / "fern"


@pytest.mark.skipif(not FERN.is_dir(), reason="needs ../shared/data/llff/fern")
def test_llff_reader_records_the_highest_resolution_images():
    scene = load_llff(FERN, downscale=8)
    paths = scene.extras["feature_images"]
    assert len(paths) == scene.n_images
    assert all("images_4" in p for p in paths) and paths[0].endswith(scene.image_names[0])


@pytest.mark.slow
@pytest.mark.skipif(not FERN.is_dir(), reason="needs ../shared/data/llff/fern")
def test_colmap_init_on_fern_matches_ground_truth(tmp_path):
    from evaluation.pose_metrics import camera_report
    from sfm.colmap import colmap_init

    scene = load_llff(FERN, downscale=8)
    start = colmap_init(scene, tracks_cfg(resolution="training"), tmp_path, _quiet)
    c2w, focal, registered = start.c2w, start.focal, start.registered
    assert start.forward_facing
    n = len(scene.train_ids)
    assert c2w.shape == (n, 4, 4) and focal.shape == (n, 2) and all(registered)
    c2w_gt = scene.c2w_gt[scene.train_ids]
    report = camera_report(c2w, c2w_gt, focal[:, 0], scene.K_gt[scene.train_ids, 0, 0])
    assert report["rotation-aware"]["rot_max_deg"] < 0.5
    assert report["rotation-aware"]["trans_median"] < 0.05
    assert report["focal_error_percent"] < 5.0
    # LLFF's frame: the average pose is the identity, the scale set by the near depth as the
    # reader's (a percentile of sparse points, so only roughly the same: within 2x).
    avg = average_pose(c2w.double().numpy())
    assert np.abs(avg - np.eye(4)).max() < 1e-4
    spread = c2w[:, :3, 3].norm(dim=-1).mean() / c2w_gt[:, :3, 3].norm(dim=-1).mean()
    assert 0.5 < float(spread) < 2.0


def test_wide_baseline_sift_options_reach_colmap(demo_scene, tmp_path):
    """tracks.sift_affine_shape / sift_domain_size_pooling: the keypoints in the database carry
    general affine shapes (plain SIFT's are rotated, scaled squares); tracks.guided_matching: a
    second pass within each pair's verified geometry finds more verified matches."""
    import pycolmap

    shapes, matches = {}, {}
    settings = {
        "plain": {},
        "covariant": {"sift_affine_shape": True, "sift_domain_size_pooling": True},
        "guided": {"guided_matching": True},
    }
    for name, options in settings.items():
        features = feature_database(demo_scene, tracks_cfg(**options), tmp_path / name, log=_quiet)
        db = pycolmap.Database.open(features.db_path)
        try:
            image = db.read_all_images()[0]
            kp = np.asarray(db.read_keypoints(image.image_id))  # x, y, a11, a12, a21, a22
        finally:
            db.close()
        shapes[name] = np.abs(kp[:, 2] - kp[:, 5]) + np.abs(kp[:, 3] + kp[:, 4])
        _, pairs = read_verified_matches(features, 15)
        matches[name] = sum(len(m) for _, _, m, _ in pairs)
    assert shapes["plain"].max() < 1e-4  # similarity: a11 = a22, a12 = -a21
    assert np.median(shapes["covariant"]) > 1e-3 and matches["covariant"] > 0
    assert matches["guided"] > matches["plain"]


def test_the_scene_scale_comes_from_points_three_views_agree_on():
    """A mismatched keypoint pair that two views triangulate just in front of a camera must not
    set LLFF's near bound (on room one such point put the scene 5.9x too far for NDC); a near
    point three views agree on does, and one observation off by 3 px disqualifies a track."""
    from types import SimpleNamespace

    from test_track_loss import look_at_rig, synthetic_tracks

    from geometry.rays import project
    from sfm.scoring import agreed_tracks, triangulated_tracks
    from sfm.track_ceres import view_depths

    c2w = look_at_rig(6)
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    img, uv, trk, _ = synthetic_tracks(c2w, K, n_points=200)
    w2c = rigid_inverse(c2w)

    def seen_by(point, views):
        p = torch.tensor(point).repeat(len(views), 1)
        return project(p, K, w2c[views])[:, :2]

    mismatch = c2w[0, :3, 3] + 0.3 * c2w[0, :3, 2]  # 0.3 in front of view 0, by views 0 and 1
    near = c2w[1, :3, 3] + 2.0 * c2w[1, :3, 2]  # 2.0 in front of view 1, by views 0, 1 and 2
    img = torch.cat([img, torch.tensor([0, 1, 0, 1, 2])])
    uv = torch.cat([uv, seen_by(mismatch.tolist(), [0, 1]), seen_by(near.tolist(), [0, 1, 2])])
    trk = torch.cat([trk, torch.tensor([200, 200, 201, 201, 201])])
    tracks = SimpleNamespace(obs_image=img, obs_uv=uv, obs_track=trk, n_tracks=202)
    n = len(c2w)
    c2w, focal = c2w.double().numpy(), np.full((n, 2), 300.0)
    principal, radial = np.tile([160.0, 120.0], (n, 1)), np.zeros((n, 2))
    xyz, ok = triangulated_tracks(c2w, focal, principal, np.ones(n, bool), tracks)
    assert bool(ok.all())
    agreed = agreed_tracks(c2w, focal, principal, xyz, ok, tracks)
    assert bool(agreed[:200].all()) and not bool(agreed[200]) and bool(agreed[201])
    depths = view_depths(c2w, focal, radial, principal, xyz, ok, tracks)
    nearest = min(float((near.double().numpy() - c[:3, 3]) @ c[:3, 2]) for c in c2w[:3])
    assert min(d.min() for d in depths) == pytest.approx(nearest, abs=1e-6)  # about 2, not 0.3
    off = SimpleNamespace(**{**vars(tracks), "obs_uv": tracks.obs_uv.clone()})
    off.obs_uv[-1, 0] += 3.0  # the near point's third view 3 px off: two views are left
    assert not bool(agreed_tracks(c2w, focal, principal, xyz, ok, off)[201])


def test_the_track_adjustment_scales_the_scene_by_points_three_views_agree_on():
    """adjust_cameras (tracks_ceres' frame) with a two-view point 0.3 in front of view 0 among
    200 points seen by six views 3-5 deep: the nearest view's near depth of the real points
    lands at LLFF's 1 / 0.75, as if the stray point were not there."""
    from types import SimpleNamespace

    from test_track_loss import rig_tracks_and_identity_cameras, synthetic_tracks

    from geometry.rays import project
    from sfm.track_ceres import adjust_cameras

    c2w_gt, tracks, cams = rig_tracks_and_identity_cameras()
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    img, _, _, depth = synthetic_tracks(c2w_gt, K, n_points=200)  # the rig's own points
    stray = (c2w_gt[0, :3, 3] + 0.3 * c2w_gt[0, :3, 2]).repeat(2, 1)
    uv = project(stray, K, rigid_inverse(c2w_gt[:2]))[:, :2]
    tracks = SimpleNamespace(
        obs_image=torch.cat([tracks.obs_image, torch.tensor([0, 1])]),
        obs_uv=torch.cat([tracks.obs_uv, uv]),
        obs_track=torch.cat([tracks.obs_track, torch.tensor([200, 200])]),
        n_tracks=201,
    )
    scene = SimpleNamespace(forward_facing=True, unbounded=False, near=3.0, far=5.0)
    c2w, *_ = adjust_cameras(cams, tracks, scene, lens=False, refine_focal=True, log=_quiet)
    gt = c2w_gt.double().numpy()
    scale = (
        np.linalg.norm(c2w[1:, :3, 3] - c2w[0, :3, 3], axis=1).mean()
        / np.linalg.norm(gt[1:, :3, 3] - gt[0, :3, 3], axis=1).mean()
    )
    near = min(np.percentile(depth[img == k].numpy(), 0.1) for k in range(len(gt)))
    assert near * scale == pytest.approx(1 / 0.75, rel=0.02)


def test_cameras_are_shared_per_image_size_and_folder():
    same = np.array([[400, 300]] * 3)
    assert camera_mode(["a.png", "b.png", "c.png"], same) == "SINGLE"
    # DTU: the sparse-protocol views at full size in image_full/, the others in image/
    mixed = np.array([[1600, 1200], [400, 300], [400, 300]])
    assert camera_mode(["image_full/0.png", "image/1.png", "image/2.png"], mixed) == "PER_FOLDER"
    assert camera_mode(["x/0.png", "x/1.png", "y/2.png"], mixed) == "PER_IMAGE"  # sizes in x
