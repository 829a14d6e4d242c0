"""Free-viewpoint rendering and pose plots: camera paths are the curves they claim to be, videos
decode with the frames asked for and show the right views, pose plots and the pose history."""

import json
import math
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import roma
import torch
from conftest import REPO, demo_args

import render
import train
from engine.experiment import load_experiment
from engine.pose_history import PoseHistory
from geometry.paths import focus_depth_from_bounds, interpolate_path, spiral_angles, spiral_path
from geometry.poses import average_pose
from models.scene_model import SceneModel
from utils.config import load_config, to_yaml
from utils.errors import DataError
from vis import plot_camera_pose, videos
from vis.plot_camera_pose import align_to_gt, figure_to_array, plot_cameras
from vis.videos import (
    camera_path,
    colorize_depth,
    depth_range,
    load_path_json,
    parse_order,
    render_frames,
    scale_intrinsics,
)


def random_poses(n, seed=0, angle=0.4, spread=1.0):
    """(n, 4, 4) float64 c2w with rotations up to `angle` radians and centres in a cube."""
    gen = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    rotvec = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * angle / math.sqrt(3)
    c2w[:, :3, :3] = roma.rotvec_to_rotmat(rotvec)
    c2w[:, :3, 3] = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    return c2w


def angle_between(R_a, R_b):
    return roma.rotmat_geodesic_distance(R_a, R_b)


# ------------------------------------------------------------------------------ camera paths
def test_spiral_centres_follow_the_spiral_and_every_frame_looks_at_the_focus():
    c2w_avg = random_poses(1, seed=3, angle=1.0)[0]
    radii = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
    focus_depth, n_frames, n_rots, z_rate = 4.0, 40, 2, 0.5
    path = spiral_path(c2w_avg, radii, focus_depth, n_frames, n_rots, z_rate)
    assert path.shape == (n_frames, 4, 4)
    # the centres in the average camera's frame
    local = (path[:, :3, 3] - c2w_avg[:3, 3]) @ c2w_avg[:3, :3]
    theta = spiral_angles(n_frames, n_rots)
    expected = torch.stack(
        [0.3 * torch.cos(theta), 0.2 * torch.sin(theta), 0.1 * torch.sin(z_rate * theta)], -1
    )
    assert torch.allclose(local, expected, atol=1e-9)
    assert torch.allclose(theta[[0, -1]], torch.tensor([0.0, 2 * math.pi * 2 * 39 / 40]).double())
    # every camera's z axis passes through the focus point, looking towards it
    focus = c2w_avg[:3, 3] + focus_depth * c2w_avg[:3, 2]
    to_focus = focus - path[:, :3, 3]
    z = path[:, :3, 2]
    assert torch.linalg.cross(z, to_focus).abs().max() < 1e-9
    assert ((z * to_focus).sum(-1) > 0).all()
    # proper rotations, kept upright (y axis along the average camera's down)
    R = path[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=R.dtype).expand_as(R))
    assert torch.allclose(torch.det(R), torch.ones(n_frames, dtype=R.dtype))
    assert (R[:, :, 1] @ c2w_avg[:3, 1] > 0.9).all()


def test_spiral_from_learned_cameras_uses_their_average_pose_spread_and_bounds():
    c2w_avg = random_poses(1, seed=5, angle=0.8)[0]
    # cameras at +-(0.4, 0.2, 0.1) around the average pose along its axes, same orientation
    offsets = torch.tensor(
        [[s * 0.4, 0, 0] for s in (-1, 1)] + [[0, s * 0.2, 0] for s in (-1, 1)]
        + [[0, 0, s * 0.1] for s in (-1, 1)],
        dtype=torch.float64,
    )  # fmt: skip
    cams = c2w_avg.repeat(len(offsets), 1, 1)
    cams[:, :3, 3] += offsets @ c2w_avg[:3, :3].T
    assert torch.allclose(average_pose(cams), c2w_avg, atol=1e-9)
    path = camera_path("spiral", cams, near=1.0, far=10.0, n_frames=24, radius_percentile=100)
    local = (path[:, :3, 3] - c2w_avg[:3, 3]) @ c2w_avg[:3, :3]
    assert torch.allclose(local.abs().amax(0), torch.tensor([0.4, 0.2, 0.1]).double(), atol=1e-3)
    focus = c2w_avg[:3, 3] + focus_depth_from_bounds(1.0, 10.0) * c2w_avg[:3, 2]
    cross = torch.linalg.cross(path[:, :3, 2], focus - path[:, :3, 3])
    assert cross.abs().max() < 1e-9
    # LLFF's formula: 1 / (0.25 / (0.9 near) + 0.75 / (5 far))
    assert focus_depth_from_bounds(1.0, 10.0) == pytest.approx(1 / (0.25 / 0.9 + 0.75 / 50))


def test_interpolation_passes_through_the_keys_and_is_smooth_between():
    keys = random_poses(4, seed=1, angle=1.2, spread=2.0)
    F = 20
    path = interpolate_path(keys, F)
    assert path.shape == (3 * F + 1, 4, 4)
    assert torch.allclose(path[::F], keys, atol=1e-9)  # frames 0, F, 2F, 3F are the keys
    R = path[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=R.dtype).expand_as(R))
    # rotations: slerp turns at a constant rate, segment angle / F per frame
    steps = angle_between(R[1:], R[:-1])
    for k in range(3):
        segment = angle_between(keys[k, :3, :3], keys[k + 1, :3, :3])
        assert torch.allclose(steps[k * F : (k + 1) * F], segment / F, atol=1e-9)
    # centres: no jumps, and no kink at the interior keys (a spline, not straight segments)
    c = path[:, :3, 3]
    d = c[1:] - c[:-1]
    longest = (keys[1:, :3, 3] - keys[:-1, :3, 3]).norm(dim=-1).max()
    assert d.norm(dim=-1).max() < 2 * longest / F
    for k in (1, 2):
        kink = (d[k * F] - d[k * F - 1]).norm()
        p = keys[:, :3, 3]
        linear_kink = ((p[k + 1] - p[k]) - (p[k] - p[k - 1])).norm() / F
        assert kink < 0.2 * linear_kink


def test_interpolation_follows_the_given_order():
    cams = random_poses(5, seed=2)
    path = camera_path("interpolate", cams, near=1, far=5, frames_per_segment=3, order="3,1,2")
    assert len(path) == 7
    assert torch.allclose(path[[0, 3, 6]], cams[[3, 1, 2]], atol=1e-9)
    image_order = camera_path("interpolate", cams, near=1, far=5, frames_per_segment=2)
    assert torch.allclose(image_order[::2], cams, atol=1e-9)


@pytest.mark.parametrize("order", ["3,x", "2", "0,5", "-1,2", [0, 7]])
def test_bad_order_is_refused(order):
    with pytest.raises(DataError, match="--order"):
        parse_order(order, 5)


def test_path_json_round_trips_and_rejects_non_rotations(tmp_path):
    cams = random_poses(3, seed=4).float().double()
    good = tmp_path / "path.json"
    good.write_text(json.dumps(cams.tolist()))
    assert torch.allclose(load_path_json(good), cams)
    three_by_four = tmp_path / "path34.json"
    three_by_four.write_text(json.dumps(cams[:, :3].tolist()))
    assert torch.allclose(load_path_json(three_by_four), cams)
    scaled = cams.clone()
    scaled[1, :3, :3] *= 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(scaled.tolist()))
    with pytest.raises(DataError, match="matrix 1"):
        load_path_json(bad)
    (tmp_path / "flat.json").write_text("[1, 2, 3]")
    with pytest.raises(DataError, match="expected"):
        load_path_json(tmp_path / "flat.json")


def test_scaled_intrinsics_project_points_to_scaled_pixels():
    K = torch.tensor([[50.0, 0, 24], [0, 52.0, 18], [0, 0, 1]])
    K_s, H_s, W_s = scale_intrinsics(K, 36, 48, 0.5)
    assert (H_s, W_s) == (18, 24)
    point = torch.tensor([0.3, -0.2, 2.0])
    uv, uv_s = (K @ point)[:2] / 2.0, (K_s @ point)[:2] / 2.0
    assert torch.allclose(uv_s, uv * 0.5)
    # odd sizes are rounded to even ones (H.264), K follows each axis' ratio
    K_o, H_o, W_o = scale_intrinsics(K, 37, 49, 1.0)
    assert (H_o, W_o) == (36, 48) and K_o[0, 0] == pytest.approx(50 * 48 / 49)


def test_depth_for_display_is_metric_and_its_colour_range_ignores_the_far_background():
    t_ndc = torch.tensor([0.0, 0.5, 0.75])
    ndc, euclidean = SimpleNamespace(use_ndc=True), SimpleNamespace(use_ndc=False)
    assert torch.allclose(SceneModel.depth_from_t(ndc, t_ndc), torch.tensor([1.0, 2.0, 4.0]))
    assert torch.equal(SceneModel.depth_from_t(euclidean, t_ndc), t_ndc)
    depth = torch.linspace(1, 3, 1000)
    depth[:10] = 1e6  # 1 % of the pixels at infinity
    lo, hi = depth_range(depth, (2, 98))
    assert 1.0 <= lo < 1.1 and 2.9 < hi <= 3.0
    image = colorize_depth(depth.reshape(20, 50), lo, hi, "gray")
    assert image.dtype == np.uint8 and image.shape == (20, 50, 3)
    assert image[0, 10:].min() < 20 and image.max() == 255  # near dark, far (and beyond) white


# ------------------------------------------------------------------- rendering a trained run
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo experiment trained for 10 steps (shared by the tests below)."""
    root = tmp_path_factory.mktemp("render")
    args = demo_args(root, "--training:num_iters", 10, "--training:pose_history_every", 5)
    args += ["--training:pose_plot_every", "10", "--expname", "tiny"]
    assert train.main(args) == 0
    return root / "logs" / "tiny"


def read_frames(path):
    reader = imageio.get_reader(path)
    try:
        return [frame[..., :3] for frame in reader]  # iterate the reader, never list() it
    finally:
        reader.close()


def test_spiral_videos_decode_with_the_requested_frames_and_size(trained):
    argv = ["--load_dir", trained, "--n_frames", "5", "--scale", "0.5", "--no-progress_bar"]
    assert render.main(argv) == 0
    out = trained / "render"
    for kind, width in (("rgb", 24), ("depth", 24), ("rgb_depth", 48)):
        frames = read_frames(out / f"spiral_step10_{kind}.mp4")
        assert len(frames) == 5 and frames[0].shape == (18, width, 3), kind
    assert not (out / "spiral_step10_rgb.gif").exists()  # gif only when asked


def test_a_preview_video_has_a_quarter_of_the_pixels_beside_the_full_one(trained):
    argv = ["--load_dir", trained, "--n_frames", "2", "--preview", "--videos", "rgb"]
    assert render.main(argv + ["--no-progress_bar"]) == 0
    frames = read_frames(trained / "render" / "spiral_step10_preview_rgb.mp4")
    assert len(frames) == 2 and frames[0].shape == (18, 24, 3)  # the demo's 36x48, halved


def test_video_frames_show_the_views_of_the_path(trained):
    # Interpolating 2 -> 0 in 2 frames per segment: frames 0 and 2 are learned cameras 2 and 0.
    # The gif is (near) lossless, so its depth frames can be compared with direct renders.
    argv = ["--load_dir", trained, "--render_type", "interpolate", "--order", "2,0"]
    argv += ["--frames_per_segment", "2", "--scale", "0.5", "--gif", "--no-progress_bar"]
    assert render.main(argv) == 0
    frames = [f.astype(float) for f in read_frames(trained / "render/interpolate_step10_depth.gif")]
    assert len(frames) == 3 and frames[0].shape == (18, 24, 3)
    _, _, model, _ = load_experiment(trained, device="cpu")
    with torch.no_grad():
        c2w, K = model.cam_param.c2w(), model.cam_param.K()[0]
    K_s, H, W = scale_intrinsics(K, model.cam_param.H, model.cam_param.W, 0.5)
    direct = list(render_frames(model, c2w[[2, 0]], K_s, H, W, 1.0, 1000, show_progress=False))
    assert direct[0]["depth"].shape == (18, 24) and model.cam_param.H == 36  # size restored
    lo, hi = depth_range(direct[0]["depth"])
    cam2, cam0 = (colorize_depth(d["depth"], lo, hi).astype(float) for d in direct)
    assert np.abs(frames[0] - cam2).mean() < 2 and np.abs(frames[2] - cam0).mean() < 2
    assert np.abs(frames[0] - cam0).mean() > 5 * max(np.abs(frames[0] - cam2).mean(), 0.5)


def test_path_json_renders_those_cameras_from_the_final_checkpoint(trained, tmp_path):
    _, _, model, _ = load_experiment(trained, device="cpu")
    with torch.no_grad():
        c2w = model.cam_param.c2w()[:2]
    path_file = tmp_path / "cams.json"
    path_file.write_text(json.dumps(c2w.tolist()))
    argv = ["--load_dir", trained, "--path_json", path_file, "--ckpt", "final.pt"]
    argv += ["--videos", "rgb", "--no-progress_bar"]
    assert render.main(argv) == 0
    frames = read_frames(trained / "render/path_step10_rgb.mp4")
    assert len(frames) == 2 and frames[0].shape == (36, 48, 3)
    assert not (trained / "render/path_step10_depth.mp4").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--render_type", "helix"], "invalid choice: 'helix'"),
        (["--render_type", "interpolate", "--order", "1,99"], "--order 1,99"),
        (["--render_type", "interpolate", "--order", "1;2"], "comma-separated"),
        (["--ckpt", "missing.pt"], "does not exist"),
        (["--render_type", "path"], "needs --path_json"),
        (["--render_type", "spiral", "--path_json", "p.json"], "drop --render_type spiral"),
        (["--videos", "rgb,normals"], "must be a non-empty list"),
        (["--scale", "0"], "render:scale must be > 0"),
        (["--n_frames", "0"], "render:n_frames must be >= 1"),
        (["--radius_percentile", "101"], "render:radius_percentile must be in [0, 100]"),
        (["--appearance", "1"], "model.appearance_dim 0"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(trained, capsys, extra, message):
    before = set((trained / "render").glob("*")) if (trained / "render").exists() else set()
    assert render.main(["--load_dir", trained, "--no-progress_bar", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    after = set((trained / "render").glob("*")) if (trained / "render").exists() else set()
    assert after == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n_frames", "0"], "render:n_frames must be >= 1"),
        (["--videos", "rgb,normals"], "must be a non-empty list"),
        (["--path_json", "missing.json"], "path file missing.json does not exist"),
        (["--render_type", "path"], "needs --path_json"),
    ],
)
def test_flags_are_checked_before_the_model_is_loaded(tmp_path, capsys, extra, message):
    # An experiment without a checkpoint: loading it fails, so only a check made before
    # loading can answer with the flag's sentence.
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(to_yaml(load_config(REPO / "configs" / "demo.yaml")))
    assert render.main(["--load_dir", exp, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "checkpoint" not in err and err.count("\n") == 1


def test_an_interrupted_render_keeps_the_earlier_video_and_no_partial_file(
    trained, monkeypatch, capsys
):
    argv = ["--load_dir", trained, "--n_frames", "3", "--scale", "0.5", "--videos", "rgb"]
    argv += ["--no-progress_bar"]
    assert render.main(argv) == 0
    video = trained / "render" / "spiral_step10_rgb.mp4"
    before = video.read_bytes()
    real = videos.render_frames

    def cut(*args, **kwargs):  # Ctrl-C after the first frame
        frames = real(*args, **kwargs)
        yield next(frames)
        raise KeyboardInterrupt

    monkeypatch.setattr(videos, "render_frames", cut)
    assert render.main(argv) == 130
    assert "no video was written" in capsys.readouterr().err
    assert video.read_bytes() == before and len(read_frames(video)) == 3
    assert sorted(p.name for p in video.parent.iterdir() if ".tmp-" in p.name) == []


def test_missing_experiment_exits_2(tmp_path, capsys):
    assert render.main(["--load_dir", tmp_path / "nope"]) == 2
    assert "not an experiment directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pose plots
def test_alignment_maps_a_similar_copy_onto_the_ground_truth():
    gt = random_poses(6, seed=7, angle=0.6)
    R = roma.rotvec_to_rotmat(torch.tensor([0.3, -1.0, 0.4], dtype=torch.float64))
    learned = gt.clone()
    learned[:, :3, :3] = R @ gt[:, :3, :3]
    learned[:, :3, 3] = 0.3 * gt[:, :3, 3] @ R.T + torch.tensor([1.0, 2.0, -1.0]).double()
    assert torch.allclose(align_to_gt(learned, gt), gt, atol=1e-9)


def test_plot_is_an_image_that_changes_with_the_poses():
    gt = random_poses(6, seed=8, angle=0.3)
    fig = plot_cameras(gt, figsize=(4, 3), dpi=50)
    image = figure_to_array(fig)
    assert image.dtype == np.uint8 and image.shape == (150, 200, 3)
    assert image.std() > 5  # something is drawn
    again = figure_to_array(plot_cameras(gt, figsize=(4, 3), dpi=50))
    moved = gt.clone()
    moved[0, :3, 3] += 0.5
    other = figure_to_array(plot_cameras(moved, figsize=(4, 3), dpi=50))
    assert np.array_equal(image, again) and not np.array_equal(image, other)
    # with ground truth: a learned copy equal up to a similarity lands on it (same picture
    # as the ground truth plotted against itself), a perturbed one does not
    same = figure_to_array(plot_cameras(gt, gt, figsize=(4, 3), dpi=50))
    copy = gt.clone()
    copy[:, :3, 3] = 2 * gt[:, :3, 3] + 1
    aligned = figure_to_array(plot_cameras(copy, gt, figsize=(4, 3), dpi=50))
    assert np.abs(aligned.astype(int) - same).mean() < 0.5
    assert not np.array_equal(
        figure_to_array(plot_cameras(moved, gt, figsize=(4, 3), dpi=50)), same
    )


def test_training_records_the_pose_history_and_logs_the_plot(trained):
    history = PoseHistory.load(trained)
    assert history.steps.tolist() == [5, 10] and history.c2w.shape[1:] == (6, 4, 4)
    _, _, model, _ = load_experiment(trained, device="cpu")
    with torch.no_grad():
        assert np.allclose(history.c2w[-1], model.cam_param.c2w().numpy(), atol=1e-6)
    events = b"".join(f.read_bytes() for f in (trained / "events").iterdir())
    assert b"cameras" in events  # the pose plot image went to tensorboard


def test_plot_cli_writes_png_and_history_gif(trained, capsys):
    (trained / "pose_history.npz").unlink()  # as for an experiment trained without history
    assert plot_camera_pose.main(["--load_dir", trained, "--gif"]) == 2
    assert "pose_history.npz does not exist" in capsys.readouterr().err
    _, _, model, _ = load_experiment(trained, device="cpu")
    with torch.no_grad():
        c2w = model.cam_param.c2w()
    history = PoseHistory(trained, max_snapshots=8)
    for step in range(3):
        moved = c2w.clone()
        moved[:, 0, 3] += 0.05 * step * torch.arange(len(c2w))  # spread out over "training"
        history.append(step * 5, moved)
    assert plot_camera_pose.main(["--load_dir", trained, "--gif"]) == 0
    png = trained / "plots" / "poses.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imageio.imread(png).ndim == 3
    gif = trained / "plots" / "pose_history.gif"
    assert gif.read_bytes()[:6] == b"GIF89a"
    frames = read_frames(gif)
    assert len(frames) == 3 and not np.array_equal(frames[0], frames[-1])


# ---------------------------------------------------------------------------- pose history
def test_pose_history_stays_bounded_evenly_spaced_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    appended = {}
    for step in range(0, 1000, 10):
        c2w = torch.randn(3, 4, 4, generator=gen)
        appended[step] = c2w
        # the training loop builds a new PoseHistory each time: state lives in the file
        PoseHistory(tmp_path, max_snapshots=16).append(step, c2w)
        assert len(PoseHistory.load(tmp_path)) <= 16
    history = PoseHistory.load(tmp_path)
    steps = history.steps
    assert steps[0] == 0 and 8 <= len(steps) <= 16
    assert len(set(np.diff(steps))) == 1  # evenly spaced
    assert steps[-1] >= 990 - np.diff(steps)[0]  # covers the whole run
    for step, c2w in zip(steps, history.c2w):
        assert np.array_equal(c2w, appended[int(step)].numpy())


def test_pose_history_rewinds_on_resume_from_an_earlier_step(tmp_path):
    history = PoseHistory(tmp_path, max_snapshots=10)
    for step in (0, 10, 20, 30):
        assert history.append(step, torch.eye(4).repeat(2, 1, 1) * (step + 1))
    assert PoseHistory(tmp_path).append(15, torch.eye(4).repeat(2, 1, 1))
    assert PoseHistory.load(tmp_path).steps.tolist() == [0, 10, 15]
    with pytest.raises(ValueError, match="cameras"):
        PoseHistory(tmp_path).append(40, torch.eye(4).repeat(3, 1, 1))


def test_orbit_circles_a_ring_capture_looking_at_its_focus_point():
    from test_transforms import ring_c2w

    from geometry.paths import orbit_path

    ring = torch.from_numpy(ring_c2w(8, radius=3.0, height=-2.0))  # looking at the origin
    path = orbit_path(ring, 24)
    assert path.shape == (24, 4, 4)
    centres = path[:, :3, 3]
    horizontal = torch.stack([centres[:, 0], centres[:, 2]], -1).norm(dim=-1)
    assert torch.allclose(horizontal, torch.full((24,), 3.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(centres[:, 1], torch.full((24,), -2.0, dtype=torch.float64), atol=1e-6)
    to_focus = -centres / centres.norm(dim=-1, keepdim=True)
    assert torch.allclose(path[:, :3, 2], to_focus, atol=1e-6)  # every frame looks at it
    assert camera_path("orbit", ring, near=0.1, far=10.0, n_frames=24).shape == (24, 4, 4)
    half = orbit_path(ring[:4], 24)  # a half ring: back and forth over its own arc
    azimuth = torch.atan2(half[:, 2, 3], half[:, 0, 3])
    seen = torch.atan2(ring[:4, 2, 3], ring[:4, 0, 3])
    assert azimuth.min() >= seen.min() - 1e-6 and azimuth.max() <= seen.max() + 1e-6
