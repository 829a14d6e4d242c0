"""data.type colmap (images + a COLMAP sparse model) and the exports of poses/ (transforms.json,
COLMAP, poses_bounds.npy) in the input's world: each export read back by our readers and by
pycolmap gives the cameras it was written from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from conftest import SHARED_DATA, TINY, data_cfg, need
from PIL import Image

import train
from dataio.colmap_model import load_colmap
from dataio.export import FRAME_FILE, align_to_input, export_cameras, input_frame
from dataio.llff import BOUND_FACTOR, llff_to_opencv, load_llff
from dataio.loaders import load_scene
from dataio.scene import SceneData
from dataio.transforms import load_transforms
from engine.experiment import load_experiment
from geometry.distortion import distort
from geometry.frames import CV_GL_FLIP, move_cameras
from geometry.poses import average_pose, look_at, rigid_inverse
from geometry.rotations import axis_angle_to_matrix
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def ring_c2w(n: int, radius: float = 3.0) -> np.ndarray:
    """(n, 4, 4) OpenCV c2w on a tilted ring, looking at a point off the origin."""
    theta = np.arange(n) * 2 * np.pi / n
    centres = np.stack([radius * np.cos(theta), np.full(n, -1.5), radius * np.sin(theta)], 1)
    return look_at(
        torch.from_numpy(centres + [0.4, 0.0, -0.2]),
        torch.tensor([0.4, 0.3, -0.2], dtype=torch.float64),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
    ).numpy()


def forward_c2w(n: int) -> np.ndarray:
    """(n, 4, 4) OpenCV c2w of a forward-facing rig (centres on a small grid, looking along +z,
    slightly turned), in a world that is rotated and moved away from the origin."""
    rng = np.random.default_rng(1)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2w[i, :3, :3] = axis_angle_to_matrix(torch.from_numpy(rng.normal(0, 0.05, 3))).numpy()
        c2w[i, :3, 3] = [0.3 * (i % 3), 0.2 * (i // 3), 0.05 * i]
    world = np.eye(4)
    world[:3, :3] = axis_angle_to_matrix(torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64))
    world[:3, 3] = [5.0, -2.0, 3.0]
    return world @ c2w


def write_png(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_colmap_scene(
    folder: Path,
    c2w: np.ndarray,
    cameras: list[tuple[str, int, int, list[float]]],
    camera_of: list[int],
    points: np.ndarray | None = None,
    binary: bool = True,
    model_dir: str = "sparse/0",
) -> list[str]:
    """A COLMAP scene written with pycolmap: images/<k>.png (random pixels at each camera's
    size) and a model of cameras (model, width, height, params), image k seen by camera
    camera_of[k] (1-based) at c2w[k] (OpenCV), and 3D points each image sees. Returns names."""
    rec = pycolmap.Reconstruction()
    for cam_id, (model, width, height, params) in enumerate(cameras, start=1):
        camera = pycolmap.Camera(
            model=model, width=width, height=height, params=params, camera_id=cam_id
        )
        rec.add_camera_with_trivial_rig(camera)
    names = [f"view_{k:02d}.png" for k in range(len(c2w))]
    for k, name in enumerate(names):
        width, height = cameras[camera_of[k] - 1][1:3]
        write_png(folder / "images" / name, height, width, seed=k)
        w2c = rigid_inverse(c2w[k])
        keypoints = np.zeros((0, 2)) if points is None else np.zeros((len(points), 2))
        image = pycolmap.Image(
            name=name, keypoints=keypoints, camera_id=camera_of[k], image_id=k + 1
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3]))
    for j, xyz in enumerate([] if points is None else points):
        elements = [pycolmap.TrackElement(k + 1, j) for k in range(len(c2w))]
        rec.add_point3D(xyz, pycolmap.Track(elements))
    out = folder / model_dir
    out.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if binary else rec.write_text)(str(out))
    return names


def in_input_world(scene: SceneData) -> np.ndarray:
    """The scene's ground-truth cameras moved back into the input's world."""
    T = scene.extras["world_from_input"].double().numpy()
    return move_cameras(np.linalg.inv(T), scene.c2w_gt.double().numpy())


def pycolmap_cameras(model_dir: Path) -> dict[str, tuple[np.ndarray, pycolmap.Camera]]:
    """{image name: (c2w (4, 4) OpenCV, camera)} of a COLMAP model, as pycolmap reads it."""
    rec = pycolmap.Reconstruction(str(model_dir))
    out = {}
    for im in rec.images.values():
        w2c = np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]])
        out[im.name] = (rigid_inverse(w2c), rec.cameras[im.camera_id])
    return out


# ------------------------------------------------------------------------- the colmap reader


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_reads_as_its_cameras(tmp_path, binary):
    """A model around an object with an OPENCV and a SIMPLE_RADIAL camera: the scene's cameras,
    moved back by world_from_input, are the model's; K is each camera's at the loaded size; the
    distortion is kept; every 4th image is a test view."""
    c2w = ring_c2w(8)
    cameras = [
        ("OPENCV", 40, 30, [52.0, 50.0, 21.0, 14.5, 0.02, -0.01, 0.001, -0.002]),
        ("SIMPLE_RADIAL", 80, 60, [96.0, 40.5, 29.0, 0.03]),
    ]
    camera_of = [1, 2] * 4
    names = write_colmap_scene(tmp_path, c2w, cameras, camera_of, binary=binary)
    scene = load_scene(data_cfg(type="colmap", data_dir=str(tmp_path), downscale=1, test_every=4))
    assert scene.image_names == names and (scene.H, scene.W) == (30, 40)
    assert scene.test_ids == [0, 4] and scene.train_ids == [1, 2, 3, 5, 6, 7]
    assert not scene.forward_facing and scene.unbounded
    assert np.abs(in_input_world(scene) - c2w).max() < 1e-5
    # Camera 2 is 80x60: its intrinsics halve at the 40x30 the scene is loaded at.
    K_want = {1: [[52.0, 0, 21.0], [0, 50.0, 14.5]], 2: [[48.0, 0, 20.25], [0, 48.0, 14.5]]}
    for k in range(8):
        assert np.allclose(scene.K_gt[k, :2].numpy(), K_want[camera_of[k]], atol=1e-5)
    dist = scene.extras["distortion"]
    assert set(dist) == {"k1", "k2", "p1", "p2"}
    assert np.allclose(dist["k1"][:2].numpy(), [0.02, 0.03])
    assert np.allclose(dist["p2"][:2].numpy(), [-0.002, 0.0])
    # The camera centres sit within the unit ball around the point the cameras look at.
    centres = scene.c2w_gt[:, :3, 3].double()
    assert float(centres.norm(dim=-1).max()) == pytest.approx(1.0, abs=1e-5)


def test_forward_facing_model_gets_the_llff_frame_from_its_points(tmp_path):
    """Forward-facing cameras with points at depths 4..20: LLFF's frame (average camera the
    identity) and scale (nearest depth bound at 1 / 0.75, far bound at the same ratio)."""
    c2w = forward_c2w(6)
    rng = np.random.default_rng(0)
    local = np.stack([rng.uniform(-2, 2, 400), rng.uniform(-2, 2, 400), rng.uniform(4, 20, 400)])
    points = local.T @ c2w[0, :3, :3].T + c2w[0, :3, 3]
    cameras = [("PINHOLE", 40, 30, [40.0, 40.0, 20.0, 15.0])]
    write_colmap_scene(tmp_path, c2w, cameras, [1] * 6, points=points, model_dir="sparse")
    scene = load_colmap(tmp_path, test_every=0)
    assert scene.forward_facing and not scene.unbounded and scene.test_ids == []
    assert scene.near == pytest.approx(1 / BOUND_FACTOR)
    assert np.allclose(average_pose(scene.c2w_gt.double()).numpy(), np.eye(4), atol=1e-5)
    # Bounds as LLFF's imgs2poses: percentiles of the depths of the points each image sees.
    depth = np.stack([(points - c[:3, 3]) @ c[:3, 2] for c in c2w])
    near, far = np.percentile(depth, 0.1, axis=1), np.percentile(depth, 99.9, axis=1)
    assert scene.far / scene.near == pytest.approx(far.max() / near.min(), rel=1e-6)
    assert np.abs(in_input_world(scene) - c2w).max() < 1e-5


def _drop_an_image(folder: Path) -> None:
    (folder / "images" / "view_03.png").unlink()


def _no_model(folder: Path) -> None:
    for path in (folder / "sparse" / "0").iterdir():
        path.unlink()


def _garbage_model(folder: Path) -> None:
    _no_model(folder)
    for name in ("images.txt", "points3D.txt"):
        (folder / "sparse" / "0" / name).write_text("")
    (folder / "sparse" / "0" / "cameras.txt").write_text("1 PINHOLE forty thirty\n")


PINHOLE = ("PINHOLE", 40, 30, [40.0, 40.0, 20.0, 15.0])
FISHEYE = ("OPENCV_FISHEYE", 40, 30, [40.0, 40.0, 20.0, 15.0, 0.1, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "camera, breaks, message",
    [
        (PINHOLE, _no_model, "no COLMAP sparse model"),
        (PINHOLE, _garbage_model, "cannot read the COLMAP model"),
        (PINHOLE, _drop_an_image, "view_03.png"),
        (FISHEYE, None, "model OPENCV_FISHEYE"),
    ],
)
def test_bad_colmap_scenes_are_one_sentence_data_errors(tmp_path, camera, breaks, message):
    write_colmap_scene(tmp_path, ring_c2w(6), [camera], [1] * 6)
    if breaks is not None:
        breaks(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        load_colmap(tmp_path)
    assert str(err.value).count("; ") == 1 and str(err.value).endswith(".")


def test_llff_room_reads_as_colmap_with_the_llff_cameras():
    """room ships its COLMAP model beside poses_bounds.npy (made from it): both readers give the
    same cameras in the input's world and the same intrinsics, and nearly the same frame."""
    room = need(SHARED_DATA / "llff" / "room" / "sparse" / "0").parents[1]
    kw = {"data_dir": str(room), "target_width": 64}
    colmap = load_scene(data_cfg(type="colmap", **kw))
    llff = load_scene(data_cfg(type="llff", **kw))
    assert colmap.image_names == llff.image_names and colmap.forward_facing
    assert torch.allclose(colmap.K_gt, llff.K_gt, atol=1e-5)
    assert np.abs(in_input_world(colmap) - in_input_world(llff)).max() < 1e-5
    # The depth bounds are LLFF's percentiles of the same points: poses_bounds.npy's differ by up
    # to 2% per image, but the nearest bound, which sets the scale, agrees to 2e-6.
    assert (colmap.c2w_gt - llff.c2w_gt).abs().max() < 1e-4
    assert colmap.extras["distortion"]["k1"][0] == pytest.approx(0.0096159, rel=1e-4)


# ---------------------------------------------------------------------------------- exports


def random_cameras(n: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2w[i, :3, :3] = axis_angle_to_matrix(torch.from_numpy(rng.normal(0, 1, 3))).numpy()
        c2w[i, :3, 3] = rng.normal(0, 1, 3)
    return c2w


def test_export_without_an_input_world_writes_the_cameras_as_they_are(tmp_path):
    c2w = random_cameras(3)
    K = np.tile(np.array([[50.0, 0, 16], [0, 52.0, 12], [0, 0, 1]]), (3, 1, 1))
    export_cameras(tmp_path, c2w, K, 24, 32, ["a.png", "b.png", "c.png"], 1.0, 10.0)
    rows = np.load(tmp_path / "poses_bounds.npy")
    assert rows.shape == (3, 17) and np.allclose(rows[:, 15:], [1.0, 10.0])
    assert np.allclose(rows[:, :15].reshape(3, 3, 5)[:, :, 4], [24, 32, 50.0])
    back = llff_to_opencv(rows[:, :15].reshape(3, 3, 5)[:, :, :4])
    assert np.allclose(back, c2w)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "PINHOLE" and (meta["w"], meta["h"]) == (32, 24)
    assert [f["file_path"] for f in meta["frames"]] == ["a.png", "b.png", "c.png"]
    assert np.allclose(np.array(meta["frames"][1]["transform_matrix"]) @ CV_GL_FLIP, c2w[1])
    read = pycolmap_cameras(tmp_path / "colmap")
    for name, want in zip(["a.png", "b.png", "c.png"], c2w):
        got, camera = read[name]
        assert np.abs(got - want).max() < 1e-9
        assert camera.model.name == "PINHOLE" and np.allclose(camera.calibration_matrix(), K[0])
    note = json.loads((tmp_path / FRAME_FILE).read_text())
    assert np.allclose(note["world_from_input"], np.eye(4)) and "no world" in note["about"]


def similarity(scale: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = scale * axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.2])).double().numpy()
    T[:3, 3] = [0.7, -1.2, 2.5]
    return T


def photo_scene(folder: Path, n: int = 5, H: int = 30, W: int = 40) -> SceneData:
    """A scene as a reader leaves it: photos on disk at twice the training size, cameras in a
    world that is a similarity (scale 2.5) of the input's, OpenCV distortion kept."""
    T = similarity(2.5)
    c2w_in = ring_c2w(n)
    paths = []
    for k in range(n):
        paths.append(folder / "data" / "images" / f"{k:03d}.png")
        write_png(paths[-1], 2 * H, 2 * W, seed=k)
    K = np.tile(np.array([[45.0, 0, 20.5], [0, 46.0, 14.0], [0, 0, 1]]), (n, 1, 1))
    return SceneData(
        name="photos",
        images=torch.rand(n, H, W, 3),
        image_names=[p.name for p in paths],
        train_ids=list(range(1, n)),
        test_ids=[0],
        c2w_gt=torch.from_numpy(move_cameras(T, c2w_in)).float(),
        K_gt=torch.from_numpy(K).float(),
        near=0.5,
        far=1.5,
        forward_facing=False,
        extras={
            "world_from_input": torch.from_numpy(T).float(),
            "distortion": {
                "k1": torch.full((n,), 0.05),
                "k2": torch.full((n,), -0.01),
                "p1": torch.full((n,), 0.002),
                "p2": torch.full((n,), -0.001),
            },
            "feature_images": [str(p) for p in paths],
        },
    )


def learned(scene: SceneData, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cameras a run might have learned: the ground truth nudged, the focal 10% longer."""
    c2w = scene.c2w_gt[ids].double().numpy().copy()
    c2w[:, :3, 3] += 0.01 * np.arange(len(ids))[:, None]
    K = scene.K_gt[ids].double().numpy().copy()
    K[:, :2, :2] *= 1.1
    return c2w, K


def test_export_is_in_the_input_world_and_reads_back_as_the_same_cameras(tmp_path):
    """Learned cameras exported with the scene's input frame: after the saved transform the
    COLMAP model (pycolmap), transforms.json and poses_bounds.npy are the learned cameras (to
    1e-5); our transforms and colmap readers read the exports back as the same cameras, the
    distortion rescaled to the learned focal; near / far are in the input's scale."""
    scene = photo_scene(tmp_path)
    ids = scene.train_ids
    c2w, K = learned(scene, ids)
    out = tmp_path / "exp" / "poses"
    names = [scene.image_names[k] for k in ids]
    export_cameras(out, c2w, K, scene.H, scene.W, names, 0.5, 1.5, input_frame(scene, ids))

    note = json.loads((out / FRAME_FILE).read_text())
    T = np.array(note["world_from_input"])
    assert np.allclose(T, scene.extras["world_from_input"].double().numpy())
    assert note["scale"] == pytest.approx(2.5, rel=1e-6)
    ratio = 1.1  # learned focal / the focal the distortion was given at
    want = {
        "k1": 0.05 * ratio**2,
        "k2": -0.01 * ratio**4,
        "p1": 0.002 * ratio,
        "p2": -0.001 * ratio,
    }

    # COLMAP: OPENCV cameras at the photos' size (twice the training size), names relative to
    # the folder the note gives, cameras that are ours after T.
    read = pycolmap_cameras(out / "colmap")
    image_root = (out / "colmap" / note["colmap_image_path"]).resolve()
    assert image_root == (tmp_path / "data" / "images").resolve()
    for i, k in enumerate(ids):
        got, camera = read[scene.image_names[k]]
        assert np.abs(move_cameras(T, got) - c2w[i]).max() < 1e-5
        assert camera.model.name == "OPENCV" and (camera.width, camera.height) == (80, 60)
        assert np.allclose(camera.calibration_matrix(), np.diag([2, 2, 1]) @ K[i], atol=1e-5)
        assert np.allclose(camera.params[4:], list(want.values()), atol=1e-7)

    # transforms.json: nerfstudio's keys, file_path relative to the json and pointing at the
    # photo; our reader gives the same cameras in the input's world, K at the loaded size.
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and (meta["w"], meta["h"]) == (80, 60)
    for key, value in want.items():
        assert meta[key] == pytest.approx(value, rel=1e-6)
    for frame, k in zip(meta["frames"], ids):
        assert not Path(frame["file_path"]).is_absolute()
        photo = Path(scene.extras["feature_images"][k]).resolve()
        assert (out / frame["file_path"]).resolve() == photo
    from_json = load_transforms(out, downscale=2, test_every=0)
    c2w_in = move_cameras(np.linalg.inv(T), c2w)
    assert np.abs(in_input_world(from_json) - c2w_in).max() < 1e-5
    assert np.abs(from_json.K_gt.double().numpy() - K).max() < 1e-5
    assert float(from_json.extras["distortion"]["k2"][0]) == pytest.approx(want["k2"], rel=1e-6)

    # The COLMAP model read back by data.type colmap: same cameras, same distortion.
    cfg = data_cfg(
        type="colmap",
        data_dir=str(tmp_path / "data"),
        colmap_model=str(out / "colmap"),
        downscale=2,
        test_every=0,
    )
    from_colmap = load_scene(cfg)
    assert from_colmap.image_names == [scene.image_names[k] for k in ids]
    assert np.abs(in_input_world(from_colmap) - c2w_in).max() < 1e-5
    assert np.abs(from_colmap.K_gt.double().numpy() - K).max() < 1e-5
    assert float(from_colmap.extras["distortion"]["p1"][0]) == pytest.approx(want["p1"], rel=1e-6)

    # LLFF: the same poses, hwf of the photos, the scene's bounds in the input's scale.
    rows = np.load(out / "poses_bounds.npy")
    assert np.abs(llff_to_opencv(rows[:, :15].reshape(-1, 3, 5)[:, :, :4]) - c2w_in).max() < 1e-5
    assert np.allclose(rows[:, 15:], [0.5 / 2.5, 1.5 / 2.5])
    assert np.allclose(rows[:, 4:15:5], [60, 80, 2 * K[0, 0, 0]])


def test_cameras_learned_in_their_own_world_are_aligned_onto_the_input_before_export(tmp_path):
    """A run from identity / auto learns its cameras in a world of its own (here a similarity of
    the ground truth, scale 0.3): align_to_input moves them onto the input's cameras, so the
    COLMAP export sits on the input's poses, and the note says it was aligned."""
    scene = photo_scene(tmp_path)
    ids = scene.train_ids
    gt = scene.c2w_gt[ids].double().numpy()
    own = move_cameras(similarity(0.3), gt)
    c2w, s = align_to_input(own, gt)
    assert s == pytest.approx(1 / 0.3, rel=1e-6) and np.abs(c2w - gt).max() < 1e-6
    frame = input_frame(scene, ids)
    frame.aligned_scale = s
    out = tmp_path / "poses"
    names = [scene.image_names[k] for k in ids]
    export_cameras(
        out, c2w, scene.K_gt[ids].double().numpy(), scene.H, scene.W, names, 0.5, 1.5, frame
    )
    note = json.loads((out / FRAME_FILE).read_text())
    assert note["aligned_scale"] == pytest.approx(s) and "moved onto the input's" in note["about"]
    read = pycolmap_cameras(out / "colmap")
    want = in_input_world(scene)
    for k in ids:
        assert np.abs(read[scene.image_names[k]][0] - want[k]).max() < 1e-5
    # collapsed centres (the identity start): nothing to fit, cameras unchanged
    still = np.tile(np.eye(4), (len(ids), 1, 1))
    assert align_to_input(still, gt)[1] is None


def test_a_k3_term_is_exported_as_full_opencv_and_read_back(tmp_path):
    scene = photo_scene(tmp_path)
    scene.extras["distortion"]["k3"] = torch.full((scene.n_images,), 0.004)
    ids = scene.train_ids
    c2w, K = learned(scene, ids)
    names = [scene.image_names[k] for k in ids]
    out = tmp_path / "poses"
    export_cameras(out, c2w, K, scene.H, scene.W, names, 0.5, 1.5, input_frame(scene, ids))
    _, camera = pycolmap_cameras(out / "colmap")[names[0]]
    assert camera.model.name == "FULL_OPENCV"
    assert camera.params[8] == pytest.approx(0.004 * 1.1**6) and not camera.params[9:].any()
    cfg = {"downscale": 2, "test_every": 0}
    from_colmap = load_colmap(tmp_path / "data", model_dir=out / "colmap", **cfg)
    from_json = load_transforms(out, **cfg)
    for back in (from_colmap, from_json):
        assert float(back.extras["distortion"]["k3"][0]) == pytest.approx(0.004 * 1.1**6)


def test_the_starts_undistortion_is_exported_at_the_learned_focal(tmp_path):
    """The start undistorted the photos (sfm/distortion.json) at focal f0, the run learned a
    pinhole camera with focal f of those undistorted images: the exported OPENCV camera maps a
    point to the pixel of the original photo where the undistortion took it from."""
    scene = photo_scene(tmp_path)
    ids = scene.train_ids
    c2w, K = learned(scene, ids)
    K[:, 1, 1] = K[:, 0, 0]  # square pixels, as the learned cameras have by default
    principal = K[0, :2, 2]
    saved = {"k1": -0.08, "k2": 0.02, "focal_px": [40.0, 40.0], "principal_px": principal.tolist()}
    out = tmp_path / "poses"
    frame = input_frame(scene, ids, saved)
    names = [scene.image_names[k] for k in ids]
    export_cameras(out, c2w, K, scene.H, scene.W, names, 0.5, 1.5, frame)
    _, camera = pycolmap_cameras(out / "colmap")[scene.image_names[ids[0]]]
    xy = np.array([[0.1, -0.2], [0.3, 0.25], [-0.35, -0.1]])  # normalised, in front of it
    # The learned camera sees xy at pixel K xy of the undistorted image, which the undistortion
    # filled from the photo's pixel f0 distort((p - c) / f0) + c (training size; x2 for files).
    pinhole = xy * K[0, [0, 1], [0, 1]] + principal
    photo = distort(torch.from_numpy((pinhole - principal) / 40.0), (-0.08, 0.02)).numpy()
    photo = 2 * (photo * 40.0 + principal)
    got = camera.img_from_cam(np.concatenate([xy, np.ones((3, 1))], 1))
    assert np.abs(got - photo).max() < 1e-6


def test_fern_ground_truth_exported_reads_back_as_the_llff_cameras(tmp_path):
    """fern's cameras exported through its input frame: the COLMAP model (pycolmap and data.type
    colmap), transforms.json and poses_bounds.npy give the llff reader's cameras back."""
    fern_dir = need(SHARED_DATA / "llff" / "fern")
    fern = load_llff(fern_dir, downscale=8)
    ids = list(range(fern.n_images))
    c2w, K = fern.c2w_gt.double().numpy(), fern.K_gt.double().numpy()
    out = tmp_path / "poses"
    export_cameras(
        out, c2w, K, fern.H, fern.W, fern.image_names, fern.near, fern.far, input_frame(fern, ids)
    )
    T = np.array(json.loads((out / FRAME_FILE).read_text())["world_from_input"])
    by_name = pycolmap_cameras(out / "colmap")
    photos = [Path(p).name for p in fern.extras["feature_images"]]
    for i, name in enumerate(photos):
        assert np.abs(move_cameras(T, by_name[name][0]) - c2w[i]).max() < 1e-5

    def in_fern_world(scene):
        """The scene's cameras moved from its own normalised world into fern's."""
        return move_cameras(T, in_input_world(scene))

    # The exported cameras are at the size of the photos the scene's feature_images name
    # (fern's largest folder); downscale reads them at the training size again.
    factor = Image.open(fern.extras["feature_images"][0]).size[0] // fern.W
    cfg = data_cfg(
        type="colmap",
        data_dir=str(fern_dir),
        colmap_model=str(out / "colmap"),
        downscale=factor,
        test_every=8,
    )
    for scene in (load_scene(cfg), load_transforms(out, downscale=factor)):
        assert (scene.H, scene.W) == (fern.H, fern.W)
        assert np.abs(in_fern_world(scene) - c2w).max() < 1e-5
        assert np.abs(scene.K_gt.double().numpy() - K).max() < 1e-4 * K.max()
    # poses_bounds.npy with fern's images: the llff reader's frame and bounds are fern's.
    copy = tmp_path / "fern_copy"
    copy.mkdir()
    (copy / "poses_bounds.npy").write_bytes((out / "poses_bounds.npy").read_bytes())
    os.symlink(fern.extras["image_dir"], copy / "images_8")
    again = load_llff(copy, downscale=8)
    assert np.abs(again.c2w_gt.double().numpy() - c2w).max() < 1e-5
    assert again.near == pytest.approx(fern.near, rel=1e-5)


def test_a_training_run_exports_its_cameras_in_the_input_world(tmp_path):
    """End to end (the demo scene, read as LLFF, two steps from its ground truth): poses/colmap
    after the saved transform is the run's cameras, transforms.json names the photos."""
    args = [
        "--config",
        REPO / "configs" / "demo.yaml",
        "--log_root",
        tmp_path / "logs",
        "--data:data_dir",
        tmp_path / "demo_scene",
        *TINY,
        "--training:num_iters",
        "2",
        "--cameras:init",
        "gt",
    ]
    assert train.main([str(a) for a in args]) == 0
    exp = tmp_path / "logs" / "demo"
    _, scene, model, _ = load_experiment(exp, "final.pt", "cpu")
    c2w = model.cam_param.c2w().detach().double().numpy()
    note = json.loads((exp / "poses" / FRAME_FILE).read_text())
    T = np.array(note["world_from_input"])
    assert np.allclose(T, scene.extras["world_from_input"].double().numpy())
    assert abs(note["scale"] - 1.0) > 0.1  # a real change of frame
    read = pycolmap_cameras(exp / "poses" / "colmap")
    for i, k in enumerate(scene.train_ids):
        assert np.abs(move_cameras(T, read[scene.image_names[k]][0]) - c2w[i]).max() < 1e-5
    frames = json.loads((exp / "poses" / "transforms.json").read_text())["frames"]
    assert all((exp / "poses" / f["file_path"]).is_file() for f in frames)
