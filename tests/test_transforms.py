"""data.type transforms: instant-ngp / nerfstudio / Blender transforms.json read into OpenCV
cameras in a normalised world; an inward-facing capture trains with the contracted ray space."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_cfg, need
from PIL import Image

import train
from dataio.demo import Plane, demo_cameras, demo_focal, demo_planes, render_demo
from dataio.loaders import load_scene
from dataio.transforms import FORWARD_SPREAD, load_transforms
from geometry.poses import average_pose, look_at, rigid_inverse
from geometry.rays import pixels_to_rays
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z; its own inverse


def ring_c2w(n: int, radius: float = 3.0, height: float = -3.0) -> np.ndarray:
    """(n, 4, 4) OpenCV c2w on a ring above the ground (y down), looking at the origin."""
    theta = np.arange(n) * 2 * np.pi / n
    centres = np.stack([radius * np.cos(theta), np.full(n, height), radius * np.sin(theta)], 1)
    c2w = look_at(
        torch.from_numpy(centres),
        torch.zeros(3, dtype=torch.float64),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
    )
    return c2w.numpy()


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(path)


def write_json(path: Path, meta: dict) -> None:
    path.write_text(json.dumps(meta, indent=1))


def frame(name: str, c2w_cv: np.ndarray, **extra) -> dict:
    return {"file_path": name, "transform_matrix": (c2w_cv @ GL_FROM_CV).tolist(), **extra}


def test_opengl_poses_become_opencv_cameras_that_see_a_known_point(tmp_path):
    """A camera of the file (OpenGL: looks down -z, y up) and a world point: the pixel it lands on
    by the file's convention is where our camera (K_gt, c2w_gt in our world) projects it, and
    the ray through that pixel passes through the point."""
    rng = np.random.default_rng(0)
    c2w_gl = np.eye(4)
    c2w_gl[:3, :3] = (
        look_at(
            torch.tensor([[0.3, -0.2, 2.0]]),
            torch.tensor([0.1, 0.2, -1.0]),
            torch.tensor([0.0, 1.0, 0.0]),
        )[0, :3, :3].numpy()
        @ GL_FROM_CV[:3, :3]
    )
    c2w_gl[:3, 3] = [0.3, -0.2, 2.0]
    intr = {"fl_x": 50.0, "fl_y": 52.0, "cx": 21.0, "cy": 14.5, "w": 40, "h": 30}
    other = c2w_gl.copy()
    other[:3, 3] += [0.5, 0.0, 0.1]
    frames = [
        {"file_path": f"images/{k}.png", "transform_matrix": m.tolist()}
        for k, m in enumerate((c2w_gl, other))
    ]
    for k in range(2):
        write_png(tmp_path / "images" / f"{k}.png", rng.random((30, 40, 3)))
    write_json(tmp_path / "transforms.json", {**intr, "k1": 0.01, "p2": -0.002, "frames": frames})
    point = np.array([0.4, 0.1, 0.3])
    # The file's convention: camera coordinates (x right, y up, z back), in front when z < 0.
    x, y, z = rigid_inverse(c2w_gl)[:3] @ np.append(point, 1.0)
    assert z < 0
    expected_uv = np.array([21.0 + 50.0 * x / -z, 14.5 - 52.0 * y / -z])

    for downscale in (1, 2):
        scene = load_transforms(tmp_path, downscale=downscale, test_every=0)
        assert scene.images.shape == (2, 30 // downscale, 40 // downscale, 3)
        T = scene.extras["world_from_input"].double().numpy()
        p = torch.from_numpy((T @ np.append(point, 1.0))[:3])
        c2w = scene.c2w_gt[0].double()
        K = scene.K_gt[0].double()
        cam = rigid_inverse(c2w)[:3] @ torch.cat([p, torch.ones(1, dtype=p.dtype)])
        assert cam[2] > 0  # in front of the OpenCV camera
        uv = (K @ (cam / cam[2]))[:2]
        np.testing.assert_allclose(uv.numpy(), expected_uv / downscale, atol=1e-4)
        o, d = pixels_to_rays(uv[None], K, c2w[None])
        along = (p - o[0]) @ d[0] / (d[0] @ d[0])
        assert float((o[0] + along * d[0] - p).norm()) < 1e-5
        assert set(scene.extras["distortion"]) == {"k1", "p2"}
        assert float(scene.extras["distortion"]["k1"][0]) == pytest.approx(0.01)


def test_blender_files_camera_angle_split_and_white_background(tmp_path):
    """Blender: transforms_train/test.json, camera_angle_x, file_path without extension,
    RGBA renders composited on white; a bounded object (no contraction) seen from a ring."""
    c2w = ring_c2w(5)
    angle = 0.69
    rgba = np.zeros((20, 20, 4))
    rgba[5:15, 5:15] = [0.2, 0.4, 0.6, 1.0]  # an opaque square on a transparent background
    for split, ids in (("train", [0, 1, 2]), ("test", [3, 4])):
        for k in ids:
            path = tmp_path / split / f"r_{k}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").save(path)
        frames = [frame(f"./{split}/r_{k}", c2w[k], rotation=0.01) for k in ids]
        write_json(
            tmp_path / f"transforms_{split}.json", {"camera_angle_x": angle, "frames": frames}
        )
    scene = load_scene(data_cfg(type="transforms", data_dir=str(tmp_path), downscale=1))
    assert scene.train_ids == [0, 1, 2] and scene.test_ids == [3, 4]
    assert scene.image_names == [
        "train/r_0.png",
        "train/r_1.png",
        "train/r_2.png",
        "test/r_3.png",
        "test/r_4.png",
    ]
    focal = 0.5 * 20 / math.tan(0.5 * angle)
    torch.testing.assert_close(scene.K_gt[:, 0, 0], torch.full((5,), focal))
    torch.testing.assert_close(scene.K_gt[:, 1, 1], torch.full((5,), focal))
    torch.testing.assert_close(scene.K_gt[:, :2, 2], torch.full((5, 2), 10.0))
    assert torch.equal(scene.images[0, 0, 0], torch.ones(3))  # transparent -> white
    torch.testing.assert_close(
        scene.images[0, 10, 10], torch.tensor([0.2, 0.4, 0.6]), atol=3e-3, rtol=0
    )
    assert not scene.forward_facing and not scene.unbounded and scene.extras["white_background"]
    # the ring's centre is the origin, its radius 1; NeRF's Blender bounds scaled alike
    torch.testing.assert_close(scene.c2w_gt[:, :3, 3].norm(dim=-1), torch.ones(5))
    assert (scene.near, scene.far) == (0.5, 1.5)
    torch.testing.assert_close(
        torch.from_numpy(ring_c2w(5)[:, :3, :3]).float(), scene.c2w_gt[:, :3, :3]
    )


def test_per_frame_intrinsics_sizes_and_split_lists(tmp_path):
    """nerfstudio: intrinsics per frame (one photo at twice the size), its test_filenames split,
    a photo capture around an object: unbounded, cameras within the unit ball."""
    rng = np.random.default_rng(1)
    c2w = ring_c2w(4)
    frames = []
    for k in range(4):
        scale = 2 if k == 1 else 1
        write_png(tmp_path / "images" / f"f{k}.jpg", rng.random((30 * scale, 40 * scale, 3)))
        intr = {
            "fl_x": (45.0 + k) * scale,
            "fl_y": (46.0 + k) * scale,
            "cx": 20.5 * scale,
            "cy": 15.0 * scale,
        }
        frames.append(
            frame(f"images/f{k}.jpg", c2w[k], w=40 * scale, h=30 * scale, k1=0.01 * k, **intr)
        )
    meta = {"camera_model": "OPENCV", "frames": frames, "test_filenames": ["images/f2.jpg"]}
    write_json(tmp_path / "transforms.json", meta)
    scene = load_transforms(tmp_path / "transforms.json", downscale=1)
    assert scene.images.shape == (4, 30, 40, 3)
    assert scene.train_ids == [0, 1, 3] and scene.test_ids == [2]
    torch.testing.assert_close(scene.K_gt[:, 0, 0], torch.tensor([45.0, 46.0, 47.0, 48.0]))
    torch.testing.assert_close(scene.K_gt[:, 1, 1], torch.tensor([46.0, 47.0, 48.0, 49.0]))
    torch.testing.assert_close(scene.K_gt[:, 0, 2], torch.full((4,), 20.5))
    torch.testing.assert_close(
        scene.extras["distortion"]["k1"], torch.tensor([0.0, 0.01, 0.02, 0.03])
    )
    assert scene.unbounded and not scene.forward_facing
    assert float(scene.c2w_gt[:, :3, 3].norm(dim=-1).max()) == pytest.approx(1.0)
    assert scene.near < 0.5 and scene.far > 10
    # without a split in the file: every test_every-th frame, as LLFF
    write_json(tmp_path / "transforms.json", {**meta, "test_filenames": None})
    assert load_transforms(tmp_path, downscale=2, test_every=3).test_ids == [0, 3]


def test_forward_facing_rig_gets_the_llff_frame(tmp_path):
    """An LLFF-like rig in a transforms.json: forward-facing (NDC rays), the average camera at
    the identity, centres spread FORWARD_SPREAD, not unbounded (NDC covers the depth)."""
    c2w = demo_cameras(6)
    c2w[:, :3, 3] = c2w[:, :3, 3] * 7.0 + np.array([1.0, -2.0, 3.0])  # another scale and origin
    for k in range(6):
        write_png(tmp_path / "images" / f"{k}.png", np.full((12, 16, 3), k / 6))
    frames = [frame(f"images/{k}.png", c2w[k]) for k in range(6)]
    write_json(tmp_path / "transforms.json", {"camera_angle_x": 1.0, "frames": frames})
    scene = load_transforms(tmp_path, test_every=0)
    assert scene.forward_facing and not scene.unbounded
    np.testing.assert_allclose(average_pose(scene.c2w_gt.double()).numpy(), np.eye(4), atol=1e-5)
    centres = scene.c2w_gt[:, :3, 3]
    spread = (centres - centres.mean(0)).norm(dim=-1).max()
    assert float(spread) == pytest.approx(FORWARD_SPREAD, rel=1e-4)
    assert scene.near == 1.0


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"fl_x": None}, "no focal"),
        (
            {
                "frames": [
                    {"file_path": "images/missing.png", "transform_matrix": np.eye(4).tolist()}
                ]
            },
            "does not exist",
        ),
        ({"frames": "x"}, "frames"),
    ],
)
def test_bad_files_are_data_errors(tmp_path, broken, message):
    write_png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3)))
    meta = {
        "fl_x": 10.0,
        "frames": [frame("images/a.png", np.eye(4)), frame("images/a.png", np.eye(4))],
    }
    meta.update(broken)
    meta = {k: v for k, v in meta.items() if v is not None}
    write_json(tmp_path / "transforms.json", meta)
    with pytest.raises(DataError, match=message):
        load_transforms(tmp_path)


def test_shared_fox_and_lego_load():
    fox = load_scene(
        data_cfg(type="transforms", data_dir=str(need(DATA / "instant_ngp_fox")), downscale=16)
    )
    assert fox.n_images == 67 and (fox.H, fox.W) == (120, 68)
    assert fox.unbounded and not fox.forward_facing
    # fl_x 1375.52 for 1080 px wide photos
    assert float(fox.K_gt[0, 0, 0]) == pytest.approx(1375.52 * 68 / 1080, rel=1e-5)
    # every camera looks within 20 degrees of the scene centre (the axes' focus)
    centres, axes = fox.c2w_gt[:, :3, 3], fox.c2w_gt[:, :3, 2]
    cos = (-centres / centres.norm(dim=-1, keepdim=True) * axes).sum(-1)
    assert float(cos.min()) > math.cos(math.radians(20))
    lego = load_scene(
        data_cfg(
            type="transforms", data_dir=str(need(DATA / "nerf_synthetic_lego_200")), downscale=1
        )
    )
    assert (len(lego.train_ids), len(lego.test_ids), lego.H) == (100, 200, 200)
    assert not lego.unbounded and lego.extras["white_background"]


def write_inward_scene(
    folder: Path, n_views: int = 6, height: int = 24, width: int = 32, **camera
) -> None:
    """A textured ground plane with two crossed panels at the origin, seen by a ring of cameras
    45 degrees above it, written as an instant-ngp transforms.json."""
    textures = [p.texture for p in demo_planes()[:3]]
    x, y, z = np.eye(3)
    planes = [
        Plane(np.array([0.0, 1.0, 0.0]), x, z, np.inf, np.inf, textures[0], tex_half=2.0),
        Plane(np.zeros(3), x, y, 0.7, 0.9, textures[1]),
        Plane(np.zeros(3), z, y, 0.7, 0.9, textures[2]),
    ]
    c2w = ring_c2w(n_views)
    focal = demo_focal(width)
    colours, _ = render_demo(c2w, focal, height, width, planes)
    for k, colour in enumerate(colours):
        write_png(folder / "images" / f"{k:03d}.png", colour)
    frames = [frame(f"images/{k:03d}", c2w[k]) for k in range(n_views)]
    write_json(
        folder / "transforms.json",
        {"fl_x": focal, "fl_y": focal, "w": width, "h": height, "frames": frames, **camera},
    )


def test_inward_facing_capture_trains_with_contracted_rays(tmp_path):
    """End to end: a generated 360-degree capture gets euclidean rays and the contraction (auto
    and forced), trains a few steps and writes its checkpoint."""
    write_inward_scene(tmp_path / "scene")
    scene = load_transforms(tmp_path / "scene", downscale=1, test_every=3)
    assert scene.unbounded and not scene.forward_facing
    config = tmp_path / "ring.yaml"
    config.write_text(
        "expname: ring\n"
        f"data: {{type: transforms, data_dir: {tmp_path / 'scene'}, downscale: 1, test_every: 3}}\n"
        "model: {contract: true, net_depth: 2, net_width: 32, n_samples: 16, pos_enc_levels: 4,"
        " dir_enc_levels: 2}\n"
        "cameras: {init: noisy_gt, noise_sigma: 0.02, focal_init: gt}\n"
        "training: {num_iters: 6, n_rays: 128, progress_bar: false, image_every: 0,"
        " eval_every: 3}\n"
        "eval: {tto_iters: 2, max_views: 1, save_images: false}\n"
    )
    args = ["--config", config, "--log_root", tmp_path / "logs", "--device", "cpu"]
    assert train.main([str(a) for a in args]) == 0
    exp = tmp_path / "logs" / "ring"
    assert (exp / "ckpts" / "final.pt").is_file()
    from engine.experiment import load_experiment

    _, _, model, step = load_experiment(exp, "final.pt", device="cpu")
    assert model.contract and not model.use_ndc and step == 6
    metrics = json.loads((exp / "metrics.json").read_text())
    assert "rotation-aware" in metrics


def test_a_start_from_the_files_cameras_removes_the_files_lens_distortion(tmp_path):
    """cameras.init gt on a transforms.json with k1: the photos, taken through that lens, are
    undistorted once into the pinhole views the file's cameras describe."""
    from geometry.distortion import undistort_pixels
    from sfm.distortion import load as load_distortion
    from sfm.initialise import remove_input_distortion
    from sfm.start import apply_saved_start

    H, W, k1 = 48, 64, -0.2
    p1, p2 = 0.01, -0.005
    write_inward_scene(tmp_path / "lens", height=H, width=W, k1=k1, p1=p1, p2=p2, k3=0.01)
    write_inward_scene(tmp_path / "pinhole", height=H, width=W)
    pinhole = load_transforms(tmp_path / "pinhole", downscale=1, test_every=3).images
    f, c = demo_focal(W), torch.tensor([W / 2, H / 2], dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    lens = (k1, 0.0, p1, p2)
    seen = undistort_pixels(torch.stack([u, v], -1).double(), f, c, lens)  # through the lens
    grid = torch.stack([seen[..., 0] / W * 2 - 1, seen[..., 1] / H * 2 - 1], -1).float()
    for k, image in enumerate(pinhole):
        photo = torch.nn.functional.grid_sample(
            image.permute(2, 0, 1)[None], grid[None], align_corners=False
        )[0].permute(1, 2, 0)
        write_png(tmp_path / "lens" / "images" / f"{k:03d}.png", photo.numpy())
    scene = load_transforms(tmp_path / "lens", downscale=1, test_every=3)
    messages = []
    assert remove_input_distortion(scene, tmp_path / "sfm", messages.append) == pytest.approx(lens)
    assert "k3 are not modelled" in messages[0]
    assert load_distortion(tmp_path / "sfm")["model"] == "OPENCV"  # what the export writes

    def gap(images):  # blurred first: where things are, not the resampling's softening
        a, b = (
            torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 5, 1) for x in (images, pinhole)
        )
        return (a - b)[..., 6:-6, 6:-6].abs().mean()

    before = gap(scene.images)
    apply_saved_start(scene, tmp_path)
    assert gap(scene.images) < 0.5 * before  # 0.0066 -> 0.0023 when written

    plain = load_transforms(tmp_path / "pinhole", downscale=1, test_every=3)
    assert remove_input_distortion(plain, tmp_path / "none", messages.append) is None
    assert not (tmp_path / "none").exists()
