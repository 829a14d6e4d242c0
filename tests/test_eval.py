"""Evaluation: pose alignments (known answers), image metrics, test-time pose optimisation,
eval.py end to end, and registration of new photos against a trained demo run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, demo_args
from PIL import Image

import eval as eval_cli
import train
from engine.experiment import load_experiment
from evaluation.heldout import evaluate_experiment, image_metrics, render_rgb
from evaluation.pose_metrics import camera_report, pose_errors
from evaluation.tto import refine_pose
from geometry.alignment import align, apply_similarity, gt_to_learned
from geometry.poses import se3_exp
from geometry.rotations import axis_angle_to_matrix, geodesic_angle
from sfm.pnp import absolute_pose

# ----------------------------------------------------------------------------------- poses


def random_cameras(n, seed=0, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    xi = torch.randn(n, 6, generator=gen, dtype=torch.float64) * spread
    return se3_exp(xi)


def known_similarity(seed=1):
    gen = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(3, generator=gen, dtype=torch.float64))
    return 2.5, R, torch.tensor([0.3, -1.2, 4.0], dtype=torch.float64)


def degrees(R_a, R_b):
    return torch.rad2deg(geodesic_angle(R_a, R_b))


@pytest.mark.parametrize("alignment", ["rotation-aware", "centre-only", "pairwise"])
def test_alignment_recovers_a_known_similarity_exactly(alignment):
    c2w_gt = random_cameras(7)
    s, R, t = known_similarity()
    # Learned cameras = ground truth seen in another frame: x_pred = (R^T (x_gt - t)) / s.
    c2w_pred = apply_similarity(c2w_gt, 1 / s, R.T, -(R.T @ t) / s)
    s_fit, R_fit, t_fit = align(c2w_pred, c2w_gt, alignment)
    assert s_fit == pytest.approx(s, rel=1e-9)
    assert torch.allclose(R_fit, R, atol=1e-9) and torch.allclose(t_fit, t, atol=1e-9)
    errors = pose_errors(c2w_pred, c2w_gt, alignment)
    assert errors["alignment"] == alignment
    assert errors["rot_max_deg"] < 1e-4 and errors["trans_mean"] < 1e-9
    # Held-out ground-truth cameras go into the learned frame through the inverse.
    c2w_gt_new = random_cameras(3, seed=5)
    mapped, scale = gt_to_learned(c2w_gt_new, c2w_pred, c2w_gt, alignment)
    assert scale == pytest.approx(s)
    assert torch.allclose(mapped, apply_similarity(c2w_gt_new, 1 / s, R.T, -(R.T @ t) / s))


def test_a_known_camera_rotation_is_reported_as_that_angle():
    c2w_gt = random_cameras(6)
    angle = 3.0
    gen = torch.Generator().manual_seed(3)
    axes = torch.nn.functional.normalize(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    turn = axis_angle_to_matrix(axes * math.radians(angle))
    c2w_pred = c2w_gt.clone()
    c2w_pred[:, :3, :3] = c2w_gt[:, :3, :3] @ turn  # each camera turned in place
    centre_only = pose_errors(c2w_pred, c2w_gt, "centre-only")
    assert np.allclose(centre_only["rot_deg_per_camera"], angle, atol=1e-6)
    assert centre_only["trans_mean"] < 1e-9
    # A rig of parallel cameras turned as one: the rotation-aware alignment absorbs a shared
    # rotation (as documented), the centre-only one reports it.
    rig = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    rig[:, 0, 3] = torch.arange(5.0)
    rig[:, 1, 3] = torch.tensor([0.0, 1.0, 0.0, 2.0, 1.0])
    turned = rig.clone()
    turned[:, :3, :3] = axis_angle_to_matrix(
        torch.tensor([0.0, math.radians(angle), 0.0], dtype=torch.float64)
    )
    assert pose_errors(turned, rig, "rotation-aware")["rot_max_deg"] < 1e-4
    assert np.allclose(pose_errors(turned, rig, "centre-only")["rot_deg_per_camera"], angle)


def test_pairwise_alignment_agrees_with_umeyama_when_exact_and_ignores_an_outlier():
    c2w_gt = random_cameras(5)
    s, R, t = known_similarity()
    c2w_pred = apply_similarity(c2w_gt, 1 / s, R.T, -(R.T @ t) / s)
    pairwise, umeyama = align(c2w_pred, c2w_gt, "pairwise"), align(c2w_pred, c2w_gt, "centre-only")
    assert pairwise[0] == pytest.approx(umeyama[0], rel=1e-9)
    for a, b in zip(pairwise[1:], umeyama[1:]):
        assert torch.allclose(a, b, atol=1e-9)
    # One learned camera off by 5 degrees and a centre shift d: the best pair is two exact
    # cameras, so the others come out exact and the outlier shows exactly d (x100 in papers).
    d = 0.05 / s
    bad = c2w_pred.clone()
    bad[4, :3, :3] = bad[4, :3, :3] @ axis_angle_to_matrix(
        torch.tensor([math.radians(5.0), 0.0, 0.0], dtype=torch.float64)
    )
    bad[4, :3, 3] += torch.tensor([d, 0.0, 0.0], dtype=torch.float64)
    r = pose_errors(bad, c2w_gt, "pairwise")
    assert 4 not in r["pair"]
    c_gt = c2w_gt[:, :3, 3]
    unit = float(((c_gt - c_gt.mean(0)) ** 2).sum(-1).mean().sqrt())
    assert np.allclose(r["trans_per_camera"][:4], 0, atol=1e-9)
    assert r["trans_per_camera"][4] == pytest.approx(0.05 / unit)
    assert r["trans_mean_x100"] == pytest.approx(100 * r["trans_mean"])
    assert np.allclose(r["rot_deg_per_camera"][:4], 0, atol=1e-4)
    assert r["rot_deg_per_camera"][4] == pytest.approx(5.0, abs=1e-6)
    assert pose_errors(bad, c2w_gt, "centre-only")["trans_per_camera"][0] > 1e-4


def test_camera_report_names_alignments_and_uses_pairwise_for_few_views():
    few, many = random_cameras(9), random_cameras(10)
    report = camera_report(few, few, torch.full((9, 2), 50.0), torch.full((9, 2), 40.0))
    assert report["alignments"] == ["rotation-aware", "centre-only", "pairwise"]
    assert report["headline_alignment"] == "rotation-aware"
    for name in report["alignments"]:
        assert report[name]["alignment"] == name
        assert report[name]["identity_start"]["alignment"] == name
        assert report[name]["identity_start"]["rot_median_deg"] > 1.0
    assert report["focal_error_percent"] == pytest.approx(25.0)
    assert report["focal_error"]["per_camera_percent"] == pytest.approx([25.0] * 9)
    assert "pairwise" not in camera_report(many, many)


# --------------------------------------------------------------------------- image metrics


def test_image_metrics_psnr_ssim_and_white_background_mask():
    rng = np.random.default_rng(0)
    gt = rng.random((32, 40, 3))
    rgb = gt.copy()
    mask = np.zeros((32, 40))
    mask[8:24, 10:30] = 1.0
    rgb[mask == 0] = np.clip(rgb[mask == 0] + 0.1 * rng.standard_normal(3), 0, 1)
    m = image_metrics(rgb, gt, mask)
    mse = np.mean((rgb - gt) ** 2)
    assert m["psnr"] == pytest.approx(-10 * np.log10(mse))
    assert m["ssim"] < 1.0
    # Only the background differs: white-background masking makes both images identical.
    assert m["psnr_masked"] == np.inf and m["ssim_masked"] == pytest.approx(1.0)
    assert "psnr_masked" not in image_metrics(rgb, gt)


def test_pnp_recovers_a_known_pose():
    K = np.array([[80.0, 0, 48], [0, 80.0, 36], [0, 0, 1]])
    c2w = se3_exp(torch.tensor([0.05, -0.1, 0.02, 0.3, -0.1, 0.2], dtype=torch.float64)).numpy()
    rng = np.random.default_rng(0)
    cam = np.stack([rng.uniform(-2, 2, 40), rng.uniform(-1.5, 1.5, 40), rng.uniform(3, 8, 40)], 1)
    points = cam @ c2w[:3, :3].T + c2w[:3, 3]
    uv = (cam / cam[:, 2:]) @ K.T
    est, inliers = absolute_pose(uv[:, :2], points, (80.0, 80.0), (48.0, 36.0), 96, 72, 1.0)
    assert inliers == 40 and np.allclose(est, c2w, atol=1e-6)
    assert absolute_pose(uv[:3, :2], points[:3], (80.0, 80.0), (48.0, 36.0), 96, 72) == (None, 0)
    # one wrong correspondence: found, left out of the inliers
    uv[7, :2] += 25.0
    est, inliers = absolute_pose(uv[:, :2], points, (80.0, 80.0), (48.0, 36.0), 96, 72, 1.0)
    assert inliers == 39 and np.allclose(est, c2w, atol=1e-6)


# --------------------------------------------------------------------- trained demo model

# The demo scene at 96x72 (enough texture for SIFT), 8 views, every 6th held out (ids 0, 6);
# the field is trained at the ground-truth cameras and focal, so it is good and in the gt frame.
GT_POSES = [
    "--data:demo_size",
    "[96, 72]",
    "--cameras:init",
    "gt",
    "--cameras:focal_init",
    "gt",
    "--cameras:learn_R",
    "false",
    "--cameras:learn_t",
    "false",
    "--cameras:learn_focal",
    "false",
    "--model:barf_c2f",
    "null",
    "--training:eval_every",
    "0",
]


def train_demo(root, name, iters, extra=()):
    args = demo_args(root, *GT_POSES, "--training:num_iters", iters)
    args += ["--training:lr_field_decay_steps", str(iters), "--expname", name, *map(str, extra)]
    assert train.main(args) == 0
    return root / "logs" / name


@pytest.fixture(scope="module")
def gt_run(tmp_path_factory):
    """A tiny field trained for 400 steps at the ground-truth cameras (a few seconds)."""
    return train_demo(tmp_path_factory.mktemp("gt_run"), "gt", 400)


def run_eval(args):
    return eval_cli.main([str(a) for a in args])


def test_test_time_optimisation_recovers_a_perturbed_pose(gt_run):
    cfg, scene, model, _ = load_experiment(gt_run, "final.pt", "cpu")
    view = scene.test_ids[0]
    gt_image = scene.images[view]
    c2w_gt = scene.c2w_gt[view].float()
    K = scene.K_gt[view].float()
    at_gt = image_metrics(render_rgb(model, c2w_gt, K, None, 4096), gt_image.numpy())["psnr"]
    c2w_bad = c2w_gt @ se3_exp(torch.tensor([0.04, -0.05, 0.02, 0.06, 0.04, 0.0]))  # ~4 deg
    before = image_metrics(render_rgb(model, c2w_bad, K, None, 4096), gt_image.numpy())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    c2w_fit, history = refine_pose(model, gt_image, c2w_bad, K, 100, 3e-3, 512)
    after = image_metrics(render_rgb(model, c2w_fit, K, None, 4096), gt_image.numpy())
    assert after["psnr"] > before["psnr"] + 1.0
    assert after["psnr"] > at_gt - 0.3  # as good as the true pose (the tiny field's optimum)
    assert history["loss_end"] < history["loss_start"]
    assert degrees(c2w_fit[:3, :3], c2w_gt[:3, :3]) < 0.5 * degrees(c2w_bad[:3, :3], c2w_gt[:3, :3])
    # The model is frozen: nothing in it changed, and its parameters are trainable again.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.field_parameters())


def test_test_time_optimisation_on_an_object_mask_ignores_the_pixels_outside_it(gt_run):
    """A photo whose right half the field cannot explain (a backdrop few views saw): refined on
    every pixel, that half pulls the pose away; refined on the left half (the mask), it does
    not. eval.tto_pixels decides which."""
    from types import SimpleNamespace

    from evaluation.heldout import tto_pixels

    cfg, scene, model, _ = load_experiment(gt_run, "final.pt", "cpu")
    view = scene.test_ids[0]
    photo = scene.images[view].clone()
    H, W = photo.shape[:2]
    g = torch.Generator().manual_seed(0)
    photo[:, W // 2 :] = torch.rand(photo[:, W // 2 :].shape, generator=g)
    mask = torch.zeros(H, W)
    mask[:, : W // 2] = 1.0
    c2w_gt, K = scene.c2w_gt[view].float(), scene.K_gt[view].float()
    c2w_bad = c2w_gt @ se3_exp(torch.tensor([0.04, -0.05, 0.02, 0.06, 0.04, 0.0]))
    errors = {}
    for pixels in ("all", "mask"):
        allowed = tto_pixels(SimpleNamespace(tto_pixels=pixels), mask.numpy(), "cpu")
        assert (allowed is None) == (pixels == "all")
        c2w_fit, _ = refine_pose(model, photo, c2w_bad, K, 100, 3e-3, 512, pixels_from=allowed)
        errors[pixels] = degrees(c2w_fit[:3, :3], c2w_gt[:3, :3])
    assert errors["mask"] < 0.5 * degrees(c2w_bad[:3, :3], c2w_gt[:3, :3])
    assert errors["mask"] < errors["all"]
    auto = SimpleNamespace(tto_pixels="auto")
    assert tto_pixels(auto, None, "cpu") is None  # no masks: every pixel
    assert tto_pixels(auto, mask.numpy(), "cpu") is not None


def test_a_refinement_step_whose_loss_is_not_finite_is_skipped():
    from evaluation.tto import _adam

    x = torch.zeros(2, requires_grad=True)
    target = torch.tensor([1.0, -1.0])
    calls = []

    def loss_fn():  # the third batch goes NaN (e.g. a ray through a degenerate sample)
        calls.append(1)
        loss = ((x - target) ** 2).sum()
        return loss * float("nan") if len(calls) == 3 else loss

    history = _adam(x, 0.1, 20, loss_fn)
    assert history["skipped"] == 1 and torch.isfinite(x).all()
    assert ((x.detach() - target) ** 2).sum() < 1.0 and history["loss_end"] < history["loss_start"]


def test_eval_cli_writes_metrics_and_images(gt_run, capsys):
    before = json.loads((gt_run / "metrics.json").read_text())
    assert run_eval(["--load_dir", gt_run, "--device", "cpu", "--eval:tto_iters", "20"]) == 0
    metrics = json.loads((gt_run / "metrics.json").read_text())
    for key, value in before.items():  # the training report is kept
        assert metrics[key] == value
    block = metrics["eval"]
    assert block["step"] == 400 and block["poses"]["rotation-aware"]["rot_median_deg"] < 0.1
    protocol = block["protocol"]
    assert protocol["tto"]["iterations"] == 20 and protocol["tto"]["lr"] == 1e-3
    assert protocol["alignment"].startswith("rotation-aware")
    assert "every 6th image" in protocol["test_split"] and protocol["test_ids"] == [0, 6]
    views = block["novel_views"]["per_view"]
    assert [v["id"] for v in views] == [0, 6]
    for v in views:
        assert v["after_tto"]["psnr"] > 15 and 0 < v["before_tto"]["ssim"] <= 1
        assert v["tto_rotation_change_deg"] > 0  # the optimisation ran and moved the pose
        assert v["tto_steps_skipped"] == 0  # none of its steps went non-finite
    mean = block["novel_views"]["mean"]["after_tto"]["psnr"]
    assert mean == pytest.approx(np.mean([v["after_tto"]["psnr"] for v in views]))
    side = np.asarray(Image.open(gt_run / "eval" / "000_000_render_vs_gt.png"))
    render = np.asarray(Image.open(gt_run / "eval" / "000_000_render.png"))
    assert render.shape == (72, 96, 3) and side.shape == (72, 2 * 96 + 2, 3)
    assert (gt_run / "eval" / "006_006_render_before_tto.png").is_file()
    assert "PSNR" in capsys.readouterr().out


def test_evaluate_experiment_places_views_through_the_alignment_and_masks(gt_run, tmp_path):
    cfg, scene, model, step = load_experiment(gt_run, "final.pt", "cpu")
    cfg.eval.tto_iters = 0
    cfg.eval.save_images = False
    view = scene.test_ids[0]
    expected = image_metrics(
        render_rgb(model, scene.c2w_gt[view], scene.K_gt[view], None, 4096),
        scene.images[view].numpy(),
    )
    # Ground truth expressed in another frame: only the inverse alignment of the training
    # cameras puts the held-out view back where the model was trained to see it.
    s, R, t = known_similarity()
    scene.c2w_gt = apply_similarity(scene.c2w_gt.double(), s, R, t).float()
    scene.masks = torch.zeros(scene.images.shape[:3])
    scene.masks[:, 20:50, 30:70] = 1.0
    lines = []
    block = evaluate_experiment(tmp_path, cfg, scene, model, "cpu", log=lines.append, step=step)
    result = block["novel_views"]["per_view"][0]
    assert result["id"] == view
    assert result["before_tto"]["psnr"] == pytest.approx(expected["psnr"], abs=0.05)
    assert result["before_tto"] == result["after_tto"]  # no test-time optimisation asked for
    assert result["after_tto"]["psnr_masked"] > result["after_tto"]["psnr"]
    assert json.loads((tmp_path / "metrics.json").read_text())["eval"]["step"] == step
    assert not (tmp_path / "eval").exists() and any("PSNR" in line for line in lines)
    masked = block["novel_views"]["mean"]["after_tto"]["psnr_masked"]
    said = [x for x in lines if "with the object masks (background white): PSNR" in x]
    assert len(said) == 1 and f"-> {masked:.2f}, SSIM" in said[0].split("object masks")[1]


def test_register_with_a_given_start_pose(gt_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    src = gt_run.parent.parent / "demo_scene" / "images" / "001.png"
    (photos / "new_001.png").write_bytes(src.read_bytes())
    # A start 2 degrees off training camera 001, keyed by file stem; no refinement steps, so
    # the registered pose must be exactly the given one, exported and read back.
    c2w_start = load_experiment(gt_run, "final.pt", "cpu")[2].cam_param.c2w()[0].detach()
    c2w_start = c2w_start.double() @ se3_exp(
        torch.tensor([0.0, 0.035, 0.0, 0.0, 0.0, 0.01], dtype=torch.float64)
    )
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"new_001": c2w_start.tolist()}))
    args = ["--load_dir", gt_run, "--register", photos, "--init_pose_json", init]
    assert run_eval(args + ["--eval:register_iters", "0"]) == 0
    out = gt_run / "registered"
    record = json.loads((out / "registration.json").read_text())["photos"][0]
    assert record["name"] == "new_001.png" and record["start"] == "init_pose_json"
    exported = json.loads((out / "transforms.json").read_text())["frames"][0]
    assert exported["file_path"] == "new_001.png"
    gl_to_cv = torch.diag(torch.tensor([1.0, -1, -1, 1], dtype=torch.float64))
    c2w = torch.tensor(exported["transform_matrix"], dtype=torch.float64) @ gl_to_cv
    assert torch.allclose(c2w, c2w_start, atol=1e-6)
    # This run was trained at the ground-truth cameras: its frame is the ground truth's.
    in_gt = torch.tensor(record["c2w_in_ground_truth_frame"], dtype=torch.float64)
    assert torch.allclose(in_gt, c2w_start, atol=1e-4)
    assert (out / "poses_bounds.npy").is_file() and (out / "colmap" / "images.txt").is_file()
    assert np.asarray(Image.open(out / "render" / "new_001.png")).shape == (72, 96, 3)


@pytest.mark.slow
def test_register_a_held_out_view_from_sift(tmp_path):
    # A field good enough to pin a pose below a degree needs more capacity and steps.
    bigger = ["--model:net_depth", "4", "--model:net_width", "64", "--model:pos_enc_levels", "8"]
    bigger += ["--model:n_samples", "32", "--training:n_rays", "512"]
    run = train_demo(tmp_path, "reg", 1000, bigger)
    cfg, scene, _, _ = load_experiment(run, "final.pt", "cpu")
    photos = tmp_path / "photos"
    photos.mkdir()
    view = scene.test_ids[0]
    pixels = np.round(scene.images[view].numpy() * 255).astype(np.uint8)
    name = Path(scene.image_names[view]).name  # its own name: the error is reported
    Image.fromarray(pixels).save(photos / name)
    assert run_eval(["--load_dir", run, "--register", photos]) == 0
    result = json.loads((run / "registered" / "registration.json").read_text())
    record = result["photos"][0]
    assert record["nearest_view"] in ("001.png", "007.png")  # its ring neighbours
    assert record["start"].startswith("PnP")
    c2w = torch.tensor(record["c2w_in_ground_truth_frame"], dtype=torch.float64)
    c2w_gt = scene.c2w_gt[view].double()
    assert degrees(c2w[:3, :3], c2w_gt[:3, :3]) < 1.0
    assert abs(record["rotation_error_deg"] - degrees(c2w[:3, :3], c2w_gt[:3, :3])) < 1e-6
    assert result["ground_truth_errors"]["photos"] == 1


# ------------------------------------------------------------------------------ bad input


def test_experiment_without_ground_truth_says_so(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((36, 48, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    args = ["--data:type", "folder", "--data:data_dir", photos, "--data:downscale", "1"]
    args += ["--log_root", tmp_path / "logs", "--expname", "nogt", *TINY]
    args += ["--training:num_iters", "2"]
    assert train.main([str(a) for a in ["--config", REPO / "configs" / "demo.yaml", *args]]) == 0
    exp = tmp_path / "logs" / "nogt"
    capsys.readouterr()
    assert run_eval(["--load_dir", exp]) == 0
    assert "no ground-truth poses" in capsys.readouterr().out
    block = json.loads((exp / "metrics.json").read_text())["eval"]
    assert "novel_views" not in block and "no ground-truth" in block["note"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not an experiment directory"),
        ("empty_register", "holds no images"),
        ("missing_register", "does not exist"),
        ("foreign_key", "only eval:* keys"),
        ("bad_key", "unknown config key 'eval:tto_iter'"),
        ("pose_json_missing_name", "gives no pose for"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(gt_run, tmp_path, capsys, case, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "missing": ["--load_dir", tmp_path / "nope"],
        "empty_register": ["--load_dir", gt_run, "--register", empty],
        "missing_register": ["--load_dir", gt_run, "--register", tmp_path / "nope"],
        "foreign_key": ["--load_dir", gt_run, "--training:num_iters", "5"],
        "bad_key": ["--load_dir", gt_run, "--eval:tto_iter", "5"],
    }.get(case)
    if case == "pose_json_missing_name":
        photos = tmp_path / "photos"
        photos.mkdir()
        Image.fromarray(np.zeros((72, 96, 3), np.uint8)).save(photos / "a.png")
        (tmp_path / "init.json").write_text(json.dumps({"b.png": np.eye(4).tolist()}))
        args = [
            "--load_dir",
            gt_run,
            "--register",
            photos,
            "--init_pose_json",
            tmp_path / "init.json",
        ]
    assert run_eval(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_max_views_picks_an_evenly_spaced_subset_of_held_out_views():
    from evaluation.heldout import held_out_subset
    from utils.errors import ConfigError

    assert held_out_subset(25, None) == list(range(25))
    assert held_out_subset(3, 5) == [0, 1, 2]
    assert held_out_subset(25, 5) == [0, 6, 12, 18, 24]
    assert held_out_subset(25, 1) == [0]
    with pytest.raises(ConfigError, match="max_views"):
        held_out_subset(25, 0)
