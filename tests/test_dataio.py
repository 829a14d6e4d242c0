"""Data readers: conventions (axes, focal, pixel centres) checked against real data and against
a generated scene with known cameras; image decoding corner cases; every user error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import data_cfg, need
from PIL import Image, ImageOps

from dataio.demo import demo_cameras, demo_focal, demo_planes, ensure_demo_scene, render_demo
from dataio.dtu import EXCLUDED_VIEWS, PROTOCOL_TRAIN_VIEWS, decompose_projection
from dataio.images import apply_exif_orientation, list_images, read_image, resize_image
from dataio.llff import choose_image_folder, load_llff
from dataio.loaders import load_scene
from geometry.poses import average_pose, rigid_inverse
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
FERN = DATA / "llff" / "fern"
LEAVES = DATA / "llff" / "leaves"
SCAN24 = DATA / "dtu" / "scan24"


def project(K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (P, 3) into one camera: pixels (P, 2) in our +0.5 convention, depths (P,)."""
    w2c = rigid_inverse(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:], cam[:, 2]


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Geodesic angle of rotations (..., 3, 3) in degrees."""
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def epipolar_distances(scene, a: int, b: int) -> np.ndarray:
    """Distances (px) of SIFT matches between images a and b to the epipolar lines that the
    scene's c2w_gt and K_gt predict. Small only if axes, focal and principal point are right."""
    sift = cv2.SIFT_create()

    def features(i):
        rgb = (scene.images[i].numpy() * 255).round().astype(np.uint8)
        keypoints, desc = sift.detectAndCompute(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
        return np.array([k.pt for k in keypoints]) + 0.5, desc  # OpenCV centres -> ours

    pts_a, desc_a = features(a)
    pts_b, desc_b = features(b)
    pairs = cv2.BFMatcher().knnMatch(desc_a, desc_b, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.7 * p[1].distance]
    xa = np.c_[pts_a[[g.queryIdx for g in good]], np.ones(len(good))]
    xb = np.c_[pts_b[[g.trainIdx for g in good]], np.ones(len(good))]
    c2w = scene.c2w_gt.double().numpy()
    K = scene.K_gt.double().numpy()
    b_from_a = rigid_inverse(c2w[b]) @ c2w[a]
    t = b_from_a[:3, 3]
    t_cross = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K[b]).T @ t_cross @ b_from_a[:3, :3] @ np.linalg.inv(K[a])
    lines = xa @ F.T
    return np.abs((xb * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)


# ---------------------------------------------------------------- LLFF


@pytest.fixture(scope="module")
def fern():
    need(FERN)
    return load_scene(data_cfg(type="llff", data_dir=str(FERN)))


def test_fern_images_split_and_focal(fern):
    assert fern.images.shape == (20, 378, 504, 3)
    assert (
        fern.images.dtype.is_floating_point and 0.0 <= fern.images.min() <= fern.images.max() <= 1.0
    )
    assert fern.test_ids == [0, 8, 16]
    assert fern.train_ids == [i for i in range(20) if i not in (0, 8, 16)]
    assert fern.image_names == sorted(fern.image_names)
    K = fern.K_gt.double().numpy()
    np.testing.assert_allclose(K[:, 0, 0], 3260.52633288 / 8, atol=1e-3)
    np.testing.assert_allclose(K[:, 1, 1], 3260.52633288 / 8, atol=1e-3)
    np.testing.assert_allclose(K[:, :2, 2], np.tile([252.0, 189.0], (20, 1)))
    assert fern.forward_facing and fern.masks is None


def test_fern_world_frame(fern):
    c2w = fern.c2w_gt.double().numpy()
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.tile(np.eye(3), (20, 1, 1)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    np.testing.assert_allclose(average_pose(c2w), np.eye(4), atol=1e-5)
    raw_bounds = np.load(FERN / "poses_bounds.npy")[:, 15:]
    assert fern.near == pytest.approx(1 / 0.75)
    assert fern.far == pytest.approx(raw_bounds.max() / raw_bounds.min() / 0.75)
    # Identity start, training views: the known answer on fern is a 5.58 degree mean.
    angles = rotation_angle_deg(R[fern.train_ids])
    assert 4.5 < angles.mean() < 6.5 and angles.max() < 11.0


def test_fern_points_in_front_are_seen_by_every_camera(fern):
    c2w = fern.c2w_gt.double().numpy()
    K = fern.K_gt.double().numpy()
    depth = (fern.near + fern.far) / 2
    ahead = c2w[:, :3, :3] @ np.array([0.0, 0.0, depth]) + c2w[:, :3, 3]  # on each optical axis
    for j in range(20):
        uv, z = project(K[j], c2w[j], ahead)
        assert (z > 0).all()
        assert ((uv >= 0) & (uv <= [504, 378])).all(), f"camera {j} misses a point: {uv}"
    uv, _ = project(K[3], c2w[3], ahead[3:4])
    np.testing.assert_allclose(uv[0], [252.0, 189.0], atol=1e-3)


def test_fern_epipolar_geometry_matches_photos(fern):
    for a, b in ((1, 2), (3, 12)):
        dist = epipolar_distances(fern, a, b)
        assert len(dist) > 50 and np.median(dist) < 1.0, (a, b, np.median(dist))


def test_leaves_jpg_folder_and_relative_data_dir(monkeypatch, tmp_path):
    need(LEAVES)
    monkeypatch.chdir(tmp_path)  # the config's relative path resolves from the repository root
    scene = load_scene(
        data_cfg(type="llff", data_dir="../shared/data/llff/leaves", image_dir="images_800x600")
    )
    assert scene.images.shape == (26, 600, 800, 3)
    assert scene.image_names[0].endswith(".JPG")
    f_full = np.load(LEAVES / "poses_bounds.npy")[0, 14]
    np.testing.assert_allclose(scene.K_gt[:, 0, 0].double(), f_full * 800 / 4032, rtol=1e-6)
    np.testing.assert_allclose(scene.K_gt[0, :2, 2].double(), [400.0, 300.0])
    assert scene.test_ids == [0, 8, 16, 24]


def _tiny_llff_tree(root: Path) -> Path:
    for name, (w, h) in {
        "images_4": (24, 18),
        "images_48x36": (48, 36),
        "images": (96, 72),
    }.items():
        (root / name).mkdir(parents=True)
        Image.new("RGB", (w, h)).save(root / name / "a.png")
    return root


def test_partial_data_settings_are_refused():
    # base.yaml is the one source of defaults: load_scene takes a whole data section.
    with pytest.raises(ValueError, match="data_dir"):
        load_scene({"type": "demo"})


def test_llff_image_folder_choice(tmp_path):
    root = _tiny_llff_tree(tmp_path)
    full = (72, 96)  # (height, width)
    assert choose_image_folder(root, full, None, 4, None) == (root / "images_4", None)
    assert choose_image_folder(root, full, None, 2, None) == (root / "images_48x36", None)
    assert choose_image_folder(root, full, None, 1, None) == (root / "images", None)
    assert choose_image_folder(root, full, None, 8, None) == (root / "images_4", (9, 12))
    assert choose_image_folder(root, full, None, 8, 32) == (root / "images_48x36", (24, 32))
    assert choose_image_folder(root, full, None, 8, 48) == (root / "images_48x36", None)
    assert choose_image_folder(root, full, "images", 8, None) == (root / "images", None)
    with pytest.raises(DataError, match="images_2"):
        choose_image_folder(root, full, "images_2", 8, None)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "scene"
    start = time.perf_counter()
    ensure_demo_scene(folder, 12, 72, 96)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"demo generation took {elapsed:.2f} s"
    return folder


def _copy_demo(demo_dir: Path, dst: Path) -> Path:
    shutil.copytree(demo_dir, dst)
    return dst


def test_llff_resized_from_another_folder_scales_focal(demo_dir, tmp_path):
    scene = load_llff(_copy_demo(demo_dir, tmp_path / "s"), target_width=48)
    assert scene.images.shape[1:3] == (36, 48)
    np.testing.assert_allclose(scene.K_gt[0, 0, 0].item(), demo_focal(96) / 2, rtol=1e-6)
    full = load_llff(demo_dir, image_dir="images")
    small = resize_image(full.images[5].numpy(), 36, 48)
    np.testing.assert_allclose(scene.images[5].numpy(), small, atol=1e-6)


def test_llff_errors_name_the_file(demo_dir, tmp_path):
    scene_dir = _copy_demo(demo_dir, tmp_path / "s")
    os.remove(scene_dir / "images" / "011.png")
    with pytest.raises(DataError, match=r"poses_bounds\.npy has 12 pose rows .* 11 images"):
        load_llff(scene_dir, image_dir="images")
    os.remove(scene_dir / "poses_bounds.npy")
    with pytest.raises(DataError, match=r"poses_bounds\.npy is missing"):
        load_llff(scene_dir, image_dir="images")
    with pytest.raises(DataError, match="nowhere"):
        load_scene(data_cfg(type="llff", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="data_dir is not set"):
        load_scene(data_cfg(type="llff"))


# ---------------------------------------------------------------- demo scene


def test_train_views_pick_a_sparse_set_on_an_llff_scene(demo_dir):
    # every reader honours data.train_views, not only the DTU reader
    cfg = dict(type="llff", data_dir=str(demo_dir), downscale=1, image_dir="images")
    full = load_scene(data_cfg(**cfg))  # 12 views, test_every 8: 0 and 8 held out
    assert full.test_ids == [0, 8] and len(full.train_ids) == 10
    sparse = load_scene(data_cfg(**cfg, train_views=[1, 5, 10]))
    assert sparse.train_ids == [1, 5, 10] and sparse.test_ids == [0, 8]
    assert sparse.images.shape == full.images.shape  # every photo stays loaded, in one frame
    torch.testing.assert_close(sparse.c2w_gt, full.c2w_gt)
    named = load_scene(data_cfg(**cfg, train_views=[0, 4], test_views=[2, 6]))
    assert named.train_ids == [0, 4] and named.test_ids == [2, 6]
    assert load_scene(data_cfg(**cfg, train_views=[0, 3])).test_ids == [8]  # 0 trains now
    with pytest.raises(DataError, match=r"data.train_views \[12\] are not view ids"):
        load_scene(data_cfg(**cfg, train_views=[1, 12]))
    with pytest.raises(DataError, match="in both data.train_views and data.test_views"):
        load_scene(data_cfg(**cfg, train_views=[1, 2], test_views=[2]))


def test_a_split_that_leaves_no_view_to_train_on_names_its_key(demo_dir):
    cfg = dict(type="llff", data_dir=str(demo_dir), downscale=1, image_dir="images")
    with pytest.raises(DataError, match="data.test_every 1 holds out every view of scene"):
        load_scene(data_cfg(**cfg, test_every=1))
    with pytest.raises(DataError, match="data.test_views holds out all 12 views"):
        load_scene(data_cfg(**cfg, test_views=list(range(12))))
    with pytest.raises(DataError, match=r"data.train_views \[\] names no view"):
        load_scene(data_cfg(**cfg, train_views=[]))
    # every view held out by test_every, but the training views are named: nothing is missing
    assert load_scene(data_cfg(**cfg, test_every=1, train_views=[1, 2])).train_ids == [1, 2]


def test_demo_is_deterministic_and_cached(demo_dir, tmp_path):
    other = ensure_demo_scene(tmp_path / "again", 12, 72, 96)
    files = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*") if p.is_file())
    assert len(files) == 14 and Path("demo_meta.json") in files
    for rel in files:
        assert (demo_dir / rel).read_bytes() == (other / rel).read_bytes(), rel

    stamps = {rel: os.stat(other / rel).st_mtime_ns for rel in files}
    start = time.perf_counter()
    ensure_demo_scene(other, 12, 72, 96)
    assert time.perf_counter() - start < 0.1
    assert stamps == {rel: os.stat(other / rel).st_mtime_ns for rel in files}

    ensure_demo_scene(other, 5, 72, 96)  # new parameters: replaced, nothing stale left behind
    assert len(list_images(other / "images")) == 5
    assert json.loads((other / "demo_meta.json").read_text())["n_views"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_demo_never_overwrites_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DataError, match="not a demo scene"):
        ensure_demo_scene(tmp_path / "mine", 12, 72, 96)
    assert (tmp_path / "mine" / "holiday.jpg").read_bytes() == b"precious"


def test_demo_poses_round_trip_through_llff_reader(demo_dir):
    scene = load_scene(data_cfg(type="demo", data_dir=str(demo_dir)))
    assert scene.name == "demo" and scene.images.shape == (12, 72, 96, 3)
    assert scene.test_ids == [0, 8]
    gen = demo_cameras(12)
    got = scene.c2w_gt.double().numpy()
    # The reader's world is a similarity transform of the generator's, and says which one.
    T = scene.extras["world_from_input"].double().numpy()
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    np.testing.assert_allclose(T[:3, :3] / s @ gen[:, :3, :3], got[:, :3, :3], atol=1e-5)
    np.testing.assert_allclose(gen[:, :3, 3] @ T[:3, :3].T + T[:3, 3], got[:, :3, 3], atol=1e-5)
    # Camera i relative to camera j (R_i^T R_j) does not depend on the world frame.
    rel_gen = gen[:, None, :3, :3].transpose(0, 1, 3, 2) @ gen[None, :, :3, :3]
    rel_got = got[:, None, :3, :3].transpose(0, 1, 3, 2) @ got[None, :, :3, :3]
    np.testing.assert_allclose(rel_got, rel_gen, atol=1e-5)
    np.testing.assert_allclose(scene.K_gt[:, 0, 0].double(), demo_focal(96), rtol=1e-6)
    hfov = np.degrees(2 * np.arctan(48 / demo_focal(96)))
    assert hfov == pytest.approx(55.0)
    angles = rotation_angle_deg(got[:, :3, :3])  # identity start's error, a few degrees
    assert 2.0 < angles.mean() < 6.0 and angles.max() < 8.0


def test_demo_images_agree_with_poses_and_depth(demo_dir):
    """Warp view 0 into view 1 through the reader's cameras and the renderer's depth: the
    colours must match where the surface is smooth, and not under a perturbed pose."""
    scene = load_scene(data_cfg(type="demo", data_dir=str(demo_dir)))
    _, depth = render_demo(demo_cameras(12), demo_focal(96), 72, 96, demo_planes())
    assert np.isfinite(depth).all() and depth.min() > 1.5 and depth.max() < 10.0
    scale = scene.extras["scale"]
    K = scene.K_gt.double().numpy()
    c2w = scene.c2w_gt.double().numpy()
    images = scene.images.numpy()

    def warp_error(c2w_b):
        v, u = np.mgrid[0:72, 0:96] + 0.5
        d = depth[0] * scale
        cam = np.stack(
            [(u - K[0, 0, 2]) / K[0, 0, 0] * d, (v - K[0, 1, 2]) / K[0, 1, 1] * d, d], -1
        )
        world = cam.reshape(-1, 3) @ c2w[0, :3, :3].T + c2w[0, :3, 3]
        uv, _ = project(K[1], c2w_b, world)
        sampled = cv2.remap(
            images[1],
            *(uv - 0.5).reshape(72, 96, 2).transpose(2, 0, 1).astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        inside = ((uv > 2) & (uv < [94, 70])).all(1).reshape(72, 96)
        flat = np.abs(cv2.Laplacian(depth[0], cv2.CV_64F)) < 1e-3  # away from occlusion edges
        return np.median(np.abs(sampled - images[0])[inside & flat])

    shifted = c2w[1].copy()
    shifted[0, 3] += 0.05
    assert warp_error(c2w[1]) < 0.02
    assert warp_error(shifted) > 2 * warp_error(c2w[1])


# ---------------------------------------------------------------- DTU


@pytest.fixture(scope="module")
def scan24():
    need(SCAN24)
    return load_scene(data_cfg(type="dtu", data_dir=str(SCAN24), train_views=[25, 22, 28]))


def test_dtu_intrinsics_and_split(scan24):
    assert scan24.images.shape == (49, 300, 400, 3) and scan24.masks.shape == (49, 300, 400)
    assert scan24.train_ids == [25, 22, 28]
    expected_test = [i for i in range(49) if i not in PROTOCOL_TRAIN_VIEWS + EXCLUDED_VIEWS]
    assert scan24.test_ids == expected_test and len(expected_test) == 25
    K = scan24.K_gt.double().numpy()
    assert K[0, 0, 0] == pytest.approx(2892.33 / 4, abs=0.01)
    assert K[0, 1, 1] == pytest.approx(2883.18 / 4, abs=0.01)
    assert K[0, 0, 2] == pytest.approx((823.205 + 0.5) / 4, abs=0.01)
    assert K[0, 1, 2] == pytest.approx((619.071 + 0.5) / 4, abs=0.01)
    assert not scan24.forward_facing
    dists = np.linalg.norm(scan24.c2w_gt[:, :3, 3].double().numpy(), axis=1)
    assert scan24.near == pytest.approx(dists.min() - 1.1)
    assert scan24.far == pytest.approx(dists.max() + 1.1)


def test_dtu_object_centre_projects_onto_the_mask(scan24):
    c2w = scan24.c2w_gt.double().numpy()
    K = scan24.K_gt.double().numpy()
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    on_mask = []
    for i in range(49):
        uv, z = project(K[i], c2w[i], np.zeros((1, 3)))
        assert z[0] > 0 and (uv[0] >= 0).all() and (uv[0] < [400, 300]).all(), (i, uv)
        on_mask.append(scan24.masks[i, int(uv[0, 1]), int(uv[0, 0])].item() > 0.5)
    assert np.mean(on_mask) > 0.9


def test_dtu_world_from_input_maps_dtu_world_to_ours(scan24):
    # Camera centres in DTU's own world (world_mat alone, without scale_mat) land on ours.
    cams = np.load(SCAN24 / "cameras_sphere.npz")
    T = scan24.extras["world_from_input"].double().numpy()
    for i in (0, 25, 48):
        _, c2w_dtu = decompose_projection(cams[f"world_mat_{i}"][:3].astype(np.float64))
        centre = T[:3, :3] @ c2w_dtu[:3, 3] + T[:3, 3]
        np.testing.assert_allclose(centre, scan24.c2w_gt[i, :3, 3].double().numpy(), atol=1e-3)


def test_dtu_epipolar_geometry_matches_photos(scan24):
    for a, b in ((22, 23), (40, 41)):
        dist = epipolar_distances(scan24, a, b)
        assert len(dist) > 50 and np.median(dist) < 1.0, (a, b, np.median(dist))


def test_dtu_default_split_and_errors(tmp_path):
    need(SCAN24)
    scene = load_scene(data_cfg(type="dtu", data_dir=str(SCAN24), use_masks=False))
    assert scene.train_ids == sorted(PROTOCOL_TRAIN_VIEWS) and scene.masks is None
    with pytest.raises(DataError, match=r"\[99\]"):
        load_scene(data_cfg(type="dtu", data_dir=str(SCAN24), train_views=[25, 99]))
    with pytest.raises(DataError, match=r"views \[25\] are in both"):
        load_scene(data_cfg(type="dtu", data_dir=str(SCAN24), train_views=[25], test_views=[25]))
    with pytest.raises(DataError, match=r"data.train_views \[\] names no view"):
        load_scene(data_cfg(type="dtu", data_dir=str(SCAN24), train_views=[]))
    with pytest.raises(DataError, match="data.test_views and the views DTU's protocol excludes"):
        load_scene(data_cfg(type="dtu", data_dir=str(SCAN24), test_views=list(range(49))))
    (tmp_path / "image").mkdir()
    shutil.copy(SCAN24 / "image" / "000000.png", tmp_path / "image")
    with pytest.raises(DataError, match=r"cameras_sphere\.npz is missing"):
        load_scene(data_cfg(type="dtu", data_dir=str(tmp_path)))


# ---------------------------------------------------------------- image decoding


def _save_exif_orientation(img: Image.Image, path: Path, orientation: int, **kwargs) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, **kwargs)


def test_exif_orientation_6_rotates_a_jpeg(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # landscape as stored, red block top-left
    stored[:6, :6] = [255, 0, 0]
    _save_exif_orientation(Image.fromarray(stored), tmp_path / "r.jpg", 6, quality=95)
    img = read_image(tmp_path / "r.jpg")
    assert img.shape == (40, 20, 3)  # displayed portrait
    np.testing.assert_allclose(img[2, 17], [1.0, 0.0, 0.0], atol=0.08)  # now top-right
    assert img[37, 2].max() < 0.08


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_match_pillow(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    _save_exif_orientation(Image.fromarray(stored), tmp_path / "o.png", orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "o.png") * 255), expected)
    np.testing.assert_array_equal(apply_exif_orientation(stored, orientation), expected)


def test_channels_alpha_and_bit_depths(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    img = read_image(tmp_path / "grey.png")
    assert img.shape == (3, 4, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, np.repeat(grey[..., None] / 255.0, 3, 2), atol=1e-6)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [200, 0, 0]
    rgba[..., 3] = [[0, 255], [128, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(img[0, 0], [1, 1, 1], atol=1e-6)  # transparent -> white
    np.testing.assert_allclose(img[0, 1], [200 / 255, 0, 0], atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(img[1, 0], [200 / 255 * a + 1 - a, 1 - a, 1 - a], atol=1e-6)

    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png")[..., 1], grey / 255.0, atol=1e-6)

    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 7).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    np.testing.assert_allclose(
        read_image(tmp_path / "grey16.png")[..., 2], grey16 / 65535, atol=1e-7
    )

    rgb16 = np.random.default_rng(0).integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_allclose(read_image(tmp_path / "rgb16.png"), rgb16 / 65535, atol=1e-7)

    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == (3, 4, 3)


def test_area_resize_averages():
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[..., None].repeat(3, 2)
    np.testing.assert_allclose(resize_image(checker, 4, 4), 0.5, atol=1e-6)


def test_corrupt_images_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match=r"bad\.png"):
        load_scene(data_cfg(type="folder", data_dir=str(tmp_path), downscale=1))


# ---------------------------------------------------------------- folder and video


def test_folder_of_mixed_photos(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("b.JPG", "a.png", "c.jpeg"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "d.png")
    Image.new("RGB", (5, 5)).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    scene = load_scene(data_cfg(type="folder", data_dir=str(tmp_path), downscale=2))
    assert scene.image_names == ["a.png", "b.JPG", "c.jpeg", "d.png"]
    assert scene.images.shape == (4, 15, 20, 3)  # first image's size / downscale, all alike
    assert scene.c2w_gt is None and scene.K_gt is None and scene.test_ids == []
    assert scene.train_ids == [0, 1, 2, 3] and (scene.near, scene.far) == (1.0, 100.0)
    expected = resize_image(read_image(tmp_path / "a.png"), 15, 20)
    np.testing.assert_allclose(scene.images[0].numpy(), expected)

    scene = load_scene(
        data_cfg(type="folder", data_dir=str(tmp_path), target_width=10, max_images=2)
    )
    assert scene.image_names == ["a.png", "d.png"] and scene.images.shape == (2, 8, 10, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=f"no images .* in {re.escape(str(tmp_path))}"):
        load_scene(data_cfg(type="folder", data_dir=str(tmp_path)))
    Image.new("RGB", (40, 30)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))} has 1 image.*at least 2"):
        load_scene(data_cfg(type="folder", data_dir=str(tmp_path)))
    Image.new("RGB", (30, 40)).save(tmp_path / "tall.png")
    with pytest.raises(DataError, match=r"tall\.png is 30x40 but .*wide\.png is 40x30"):
        load_scene(data_cfg(type="folder", data_dir=str(tmp_path)))
    Image.new("RGB", (41, 31)).save(tmp_path / "tall.png")  # same aspect within a pixel
    assert load_scene(data_cfg(type="folder", data_dir=str(tmp_path), downscale=1)).W == 41
    unknown = data_cfg(type="folder", data_dir=str(tmp_path))
    unknown.type = "blender"  # the config loader refuses it first; a direct caller meets this
    with pytest.raises(DataError, match=r"unknown data\.type 'blender'"):
        load_scene(unknown)


def _write_video(path: Path, n_frames: int) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(path, format="ffmpeg", fps=10, codec="libx264", quality=9) as writer:
        for k in range(n_frames):
            writer.append_data(np.full((48, 64, 3), 8 * k, np.uint8))


def test_video_frames_with_stride_and_max_images(tmp_path):
    video = tmp_path / "walk.mp4"
    _write_video(video, 25)
    scene = load_scene(data_cfg(type="folder", data_dir=str(video), downscale=2))
    assert scene.image_names == ["frame_000000", "frame_000010", "frame_000020"]
    assert scene.images.shape == (3, 24, 32, 3)
    np.testing.assert_allclose(
        scene.images.mean((1, 2, 3)).numpy(), [0, 80 / 255, 160 / 255], atol=0.03
    )
    scene = load_scene(
        data_cfg(type="folder", data_dir=str(video), video_stride=4, max_images=3, target_width=16)
    )
    assert scene.image_names == ["frame_000000", "frame_000012", "frame_000024"]
    assert scene.images.shape == (3, 12, 16, 3)
    with pytest.raises(DataError, match=r"walk\.mp4 gave 1 frame"):
        load_scene(data_cfg(type="folder", data_dir=str(video), video_stride=30))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"broken\.mp4"):
        load_scene(data_cfg(type="folder", data_dir=str(tmp_path / "broken.mp4")))


def _write_pan_video(path: Path, n_frames: int, blurred: set[int]) -> None:
    """A pan across a sharp texture (a 2-pixel shift a frame); the frames in `blurred`
    Gaussian-blurred (sigma 3), as a shaky hand would smear them."""
    import cv2
    import imageio.v2 as imageio

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (16, 40 + n_frames // 2, 3), dtype=np.uint8)
    texture = cv2.resize(texture, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    with imageio.get_writer(path, format="ffmpeg", fps=10, codec="libx264", quality=9) as writer:
        for k in range(n_frames):
            frame = np.ascontiguousarray(texture[:, 2 * k : 2 * k + 96])
            if k in blurred:
                frame = cv2.GaussianBlur(frame, (0, 0), 3)
            writer.append_data(frame)


def test_video_drops_blurred_frames_within_the_stride_bound(tmp_path):
    from dataio.folder import load_folder

    # 30 frames in windows of 3: window 1 has its stride frame (3) blurred, window 4 (12-14)
    # and windows 7 and 8 (21-26) are blurred throughout.
    blurred = {3, 12, 13, 14, *range(21, 27)}
    video = tmp_path / "shaky.mp4"
    _write_pan_video(video, 30, blurred)
    lines = []
    scene = load_folder(video, downscale=1, video_stride=3, log=lines.append)
    kept = [int(name.split("_")[1]) for name in scene.image_names]
    windows = [k // 3 for k in kept]
    # Window 4 and window 7 are dropped; window 8 is kept although blurred, since dropping it
    # too would leave two windows in a row without a frame.
    assert windows == [0, 1, 2, 3, 5, 6, 8, 9]
    assert kept[1] in (4, 5)  # window 1: a sharp neighbour instead of the blurred frame 3
    assert not blurred & set(kept[:6]) and kept[6] in blurred and kept[7] not in blurred
    assert scene.images.shape == (8, 64, 96, 3)
    assert len(lines) == 1 and "8 frames kept of 30" in lines[0] and "dropped 2 blurred" in lines[0]
    # Margin 0: every stride-th frame, blurred or not, and nothing logged.
    lines.clear()
    plain = load_folder(video, downscale=1, video_stride=3, video_blur_margin=0, log=lines.append)
    assert plain.image_names == [f"frame_{k:06d}" for k in range(0, 30, 3)] and not lines
    # The config key reaches the reader (data.video_blur_margin).
    cfg = data_cfg(type="folder", data_dir=str(video), downscale=1, video_stride=3)
    assert load_scene({**cfg, "video_blur_margin": 0}).image_names == plain.image_names
    assert load_scene(cfg).image_names == scene.image_names
    with pytest.raises(DataError, match="video_blur_margin"):
        load_scene({**cfg, "video_blur_margin": 1.5})


def test_rotated_phone_video_comes_out_upright(tmp_path):
    import imageio.v2 as imageio
    import imageio_ffmpeg

    plain, rotated = tmp_path / "plain.mp4", tmp_path / "rotated.mp4"
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:8, :8] = 255  # a marker in the top-left corner
    with imageio.get_writer(plain, format="ffmpeg", fps=10, codec="libx264", quality=9) as w:
        for _ in range(12):
            w.append_data(rgb)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90"]
    done = subprocess.run([*cmd, "-i", str(plain), "-c", "copy", str(rotated)], check=False)
    if done.returncode != 0:
        pytest.skip("this ffmpeg cannot tag a video with a rotation")
    scene = load_scene(data_cfg(type="folder", data_dir=str(rotated), downscale=1))
    assert scene.images.shape == (2, 64, 48, 3)  # portrait, as a phone would show it
    upright = np.rot90(rgb, 1) / 255.0  # display rotation 90 = a quarter turn anticlockwise
    np.testing.assert_allclose(scene.images[0].numpy(), upright, atol=0.1)


def test_a_text_file_named_mp4_is_one_sentence_not_ffmpeg_output(tmp_path):
    from dataio.folder import load_folder
    from utils.errors import DataError

    fake = tmp_path / "notes.mp4"
    fake.write_text("shopping list: eggs, flour\n" * 20)
    with pytest.raises(DataError) as err:
        load_folder(fake)
    message = str(err.value)
    assert "notes.mp4" in message and "\n" not in message and len(message) < 250
    assert "ffmpeg version" not in message and "configuration:" not in message
