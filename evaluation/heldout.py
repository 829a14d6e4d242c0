"""Evaluation of a trained run: pose errors on the training cameras, and image metrics on the
held-out views after test-time pose optimisation (model frozen).

Held-out views are not among the model's cameras. Their ground-truth poses are mapped into the
learned frame through the inverse of the alignment (learned -> ground truth) fitted on the
training cameras, then each gets a zero-initialised 6-vector se(3) correction composed on the
camera side (c2w = c2w_init exp(xi), as models/cameras.py composes its corrections), optimised
by Adam on random rays of its image. PSNR / SSIM are computed on the full rendered image before
and after that optimisation, and on the masked image where the scene has object masks
(background set to white in render and ground truth, SPARF's protocol). docs/conventions.md
describes these protocols.

A model with per-image appearance codes (model.appearance_dim > 0) renders held-out views with
the mean of the training codes; beside those numbers, NeRF-W's protocol (Martin-Brualla et al.
2021): after the pose refinement, the view's own code is optimised on the left half of its image
(model and pose frozen) and PSNR / SSIM are scored on the right half ("right_half"). Without codes
"right_half" is the right half of the refined render, so the two kinds of model compare there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dataio.scene import SceneData
from evaluation.pose_metrics import camera_report
from evaluation.report import write_metrics
from evaluation.tto import fit_appearance, frozen, refine_pose
from geometry.alignment import gt_to_learned
from geometry.rotations import geodesic_angle
from utils.errors import ConfigError

LPIPS_NOTE = "absent: LPIPS needs network weights that are not available offline"


# ------------------------------------------------------------------------------ pure helpers
def image_metrics(rgb: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """PSNR and SSIM (scikit-image, data_range 1, channel_axis -1) of rgb against gt, both
    (H, W, 3) in [0, 1]; with an object mask (H, W) in [0, 1] also psnr_masked / ssim_masked,
    where the background of both images is set to white (SPARF's DTU protocol)."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    gt = np.asarray(gt, dtype=np.float64)
    with np.errstate(divide="ignore"):  # identical images: PSNR is inf, which is the answer
        return _image_metrics(rgb, gt, mask)


def _image_metrics(rgb: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> dict:
    out = {
        "psnr": float(peak_signal_noise_ratio(gt, rgb, data_range=1.0)),
        "ssim": float(structural_similarity(gt, rgb, data_range=1.0, channel_axis=-1)),
    }
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)[..., None]
        rgb_m, gt_m = rgb * m + (1 - m), gt * m + (1 - m)
        out["psnr_masked"] = float(peak_signal_noise_ratio(gt_m, rgb_m, data_range=1.0))
        out["ssim_masked"] = float(
            structural_similarity(gt_m, rgb_m, data_range=1.0, channel_axis=-1)
        )
    return out


def save_png(path: Path, rgb) -> None:
    """(H, W, 3) float in [0, 1] (numpy or tensor) -> 8-bit PNG."""
    arr = np.asarray(rgb.detach().cpu() if torch.is_tensor(rgb) else rgb, dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)


def side_by_side(left, right, gap: int = 2) -> np.ndarray:
    """(H, W, 3) x2 -> (H, 2W + gap, 3): left | white gap | right."""
    left, right = np.asarray(left), np.asarray(right)
    white = np.ones((left.shape[0], gap, 3), dtype=left.dtype)
    return np.concatenate([left, white, right], axis=1)


def pose_change(c2w_a: torch.Tensor, c2w_b: torch.Tensor) -> tuple[float, float]:
    """(rotation angle in degrees, centre distance) between two (4, 4) camera poses."""
    angle = geodesic_angle(c2w_a[:3, :3].double(), c2w_b[:3, :3].double())
    return float(torch.rad2deg(angle)), float((c2w_a[:3, 3] - c2w_b[:3, 3]).double().norm())


# ----------------------------------------------------------------------------- rendering
def right_half(image: np.ndarray) -> np.ndarray:
    """The columns u >= W // 2 of an (H, W, ...) image: what fit_appearance never sees."""
    return image[:, image.shape[1] // 2 :]


def render_rgb(
    model, c2w: torch.Tensor, K: torch.Tensor, progress, chunk: int, appearance=None
) -> np.ndarray:
    """(H, W, 3) numpy render of one camera (c2w (4, 4), K (3, 3) on the model's device), with
    the (A,) appearance code given (None: the mean of the training codes)."""
    out = model.render_image(c2w.float(), K.float(), progress, chunk, appearance=appearance)
    return out["rgb"].numpy()


def photometric_mse(model, image, c2w, K, progress, n_rays: int = 4096, seed: int = 0) -> float:
    """MSE of a fixed random set of pixels of image (H, W, 3) rendered from c2w / K: a cheap
    score to compare candidate poses of one image."""
    device = c2w.device
    H, W = image.shape[:2]
    gen = torch.Generator(device=device).manual_seed(int(seed))
    pix = torch.randint(H * W, (min(n_rays, H * W),), generator=gen, device=device)
    uv = torch.stack([pix % W, torch.div(pix, W, rounding_mode="floor")], -1).float() + 0.5
    ids = torch.zeros(len(pix), dtype=torch.long, device=device)
    with torch.no_grad(), frozen(model):
        o, d, v = model.rays(ids, uv, c2w.float()[None], K.float()[None])
        rgb = model.render_rays(o, d, v, progress, perturb=False)["rgb"]
    return float(((rgb - image.reshape(-1, 3)[pix]) ** 2).mean())


# ----------------------------------------------------------------------------- the cameras
def learned_intrinsics(model) -> torch.Tensor:
    """(3, 3) K for a view the model has no camera for: the learned focal (mean over cameras
    when per-image) and the mean principal point, pixel centres at +0.5."""
    cams = model.cam_param
    with torch.no_grad():
        return cams.K().mean(0)


def view_intrinsics(cfg, scene: SceneData, model, view_id: int) -> torch.Tensor:
    """(3, 3) K of a held-out view: its calibrated K when the run kept the dataset focal fixed
    (focal_init gt, learn_focal false), else the learned intrinsics."""
    known = cfg.cameras.focal_init == "gt" and not cfg.cameras.learn_focal
    if known and scene.K_gt is not None:
        return scene.K_gt[view_id].float().to(model.cam_param.t.device)
    return learned_intrinsics(model)


def split_rule(cfg, scene: SceneData) -> str:
    """One sentence naming how the held-out views were chosen."""
    kind, every = cfg.data.type, cfg.data.test_every
    if not scene.test_ids:
        return "no held-out views"
    if kind in ("llff", "demo") and every:
        return (
            f"every {every}th image held out (ids 0, {every}, {2 * every}, ...), the "
            "NeRF--/SPARF/TrackNeRF LLFF split"
        )
    if kind == "dtu":
        if cfg.data.test_views is None:
            return (
                "DTU sparse-view protocol: every id outside the 9 protocol training views and "
                "the excluded ids"
            )
        return f"data.test_views {list(cfg.data.test_views)}"
    return f"test ids {list(scene.test_ids)}"


def training_cameras(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c2w (N, 4, 4), focal (N, 2), c2w_init (N, 4, 4)) of the model's cameras, float64 CPU."""
    cams = model.cam_param
    with torch.no_grad():
        return (
            cams.c2w().double().cpu(),
            cams.focal_px().double().cpu(),
            cams.c2w_init.double().cpu(),
        )


def pose_report(scene: SceneData, model) -> dict | None:
    """camera_report of the training cameras against ground truth (None without it)."""
    if scene.c2w_gt is None:
        return None
    c2w, focal, start = training_cameras(model)
    focal_gt = None
    if scene.K_gt is not None:
        K = scene.K_gt[scene.train_ids].double()
        focal_gt = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)
    return camera_report(c2w, scene.c2w_gt[scene.train_ids].double(), focal, focal_gt, start)


# ---------------------------------------------------------------------------- novel views
def _id_list(ids, most: int = 12) -> str:
    """Image ids for a log line: all of a short list, the first and last few of a long one."""
    ids = [int(i) for i in ids]
    if len(ids) <= most:
        return str(ids)
    head, tail = ", ".join(map(str, ids[:4])), ", ".join(map(str, ids[-2:]))
    return f"[{head}, ..., {tail}] ({len(ids)})"


def held_out_subset(n: int, max_views: int | None) -> list[int]:
    """Indices of the held-out views to evaluate: all, or max_views evenly spaced."""
    if max_views is None or max_views >= n:
        return list(range(n))
    if max_views < 1:
        raise ConfigError(f"eval.max_views must be at least 1 (or null), not {max_views}.")
    return sorted({round(i * (n - 1) / max(max_views - 1, 1)) for i in range(max_views)})


MIN_MASK_FRACTION = 0.01  # a mask covering less of the view is no object to align on


def tto_pixels(ec, mask, device) -> torch.Tensor | None:
    """The pixels test-time pose refinement draws its rays from (None: all of them).
    eval.tto_pixels mask (auto where the scene has object masks, as DTU's protocol does): the
    object only. The protocol scores the masked image because a few views cannot predict the
    backdrop; letting that backdrop pull the pose can misalign the object the score measures."""
    if ec.tto_pixels == "all" or mask is None:
        if ec.tto_pixels == "mask" and mask is None:
            raise ConfigError("eval.tto_pixels mask needs object masks (data.use_masks, DTU).")
        return None
    inside = torch.as_tensor(mask) > 0.5
    return inside.to(device) if inside.float().mean() >= MIN_MASK_FRACTION else None


def evaluate_novel_views(
    cfg,
    scene: SceneData,
    model,
    device,
    out_dir: Path,
    progress: float | None = None,
    log=print,
) -> dict:
    """Image metrics of every held-out view before and after test-time pose optimisation;
    renders and render | gt images go to out_dir. Needs scene.c2w_gt and scene.test_ids."""
    ec = cfg.eval
    c2w_train, _, _ = training_cameras(model)
    c2w_test, scale = gt_to_learned(
        scene.c2w_gt[scene.test_ids].double(),
        c2w_train,
        scene.c2w_gt[scene.train_ids].double(),
        ec.alignment,
    )
    if scale <= 0:
        log(
            "note: the learned camera centres coincide (alignment scale 0); held-out views are "
            "placed at their centroid with mapped rotations."
        )
    chunk = cfg.model.chunk
    views = []
    picked = held_out_subset(len(scene.test_ids), ec.max_views)
    if len(picked) < len(scene.test_ids):
        log(f"evaluating {len(picked)} of {len(scene.test_ids)} held-out views (eval.max_views)")
    for k in picked:
        view_id = scene.test_ids[k]
        name = scene.image_names[view_id]
        stem = f"{view_id:03d}_{Path(name).stem}"
        gt = scene.images[view_id]
        mask = None if scene.masks is None else scene.masks[view_id].numpy()
        K = view_intrinsics(cfg, scene, model, view_id)
        c2w0 = c2w_test[k].float().to(device)
        before = render_rgb(model, c2w0, K, progress, chunk)
        c2w1, history = refine_pose(
            model,
            gt.to(device),
            c2w0,
            K,
            ec.tto_iters,
            ec.tto_lr,
            ec.tto_n_rays,
            progress,
            seed=cfg.seed + view_id,
            pixels_from=tto_pixels(ec, mask, device),
        )
        after = render_rgb(model, c2w1, K, progress, chunk) if ec.tto_iters > 0 else before
        metrics_before = image_metrics(before, gt.numpy(), mask)
        metrics_after = image_metrics(after, gt.numpy(), mask)
        rot, trans = pose_change(c2w0.cpu(), c2w1.cpu())
        code, fit = fit_appearance(
            model,
            gt.to(device),
            c2w1,
            K,
            ec.appearance_iters,
            ec.appearance_lr,
            ec.tto_n_rays,
            progress,
            seed=cfg.seed + view_id,
        )
        gt_right = right_half(gt.numpy())
        metrics_right = image_metrics(right_half(after), gt_right)
        appearance = {}
        if code is not None:
            fitted = render_rgb(model, c2w1, K, progress, chunk, code)
            appearance = {
                "right_half_mean_appearance": metrics_right,
                "appearance_loss_start": fit["loss_start"],
                "appearance_loss_end": fit["loss_end"],
            }
            metrics_right = image_metrics(right_half(fitted), gt_right)
        views.append(
            {
                "id": int(view_id),
                "name": name,
                "before_tto": metrics_before,
                "after_tto": metrics_after,
                "tto_loss_start": history["loss_start"],
                "tto_loss_end": history["loss_end"],
                "tto_steps_skipped": history["skipped"],
                "tto_rotation_change_deg": rot,
                "tto_centre_change": trans,
                "right_half": metrics_right,
                **appearance,
            }
        )
        if ec.save_images:
            save_png(out_dir / f"{stem}_render_before_tto.png", before)
            save_png(out_dir / f"{stem}_render.png", after)
            save_png(out_dir / f"{stem}_render_vs_gt.png", side_by_side(after, gt.numpy()))
        log(
            f"  view {view_id} ({name}): PSNR {metrics_before['psnr']:.2f} -> "
            f"{metrics_after['psnr']:.2f}, SSIM {metrics_before['ssim']:.3f} -> "
            f"{metrics_after['ssim']:.3f} after test-time pose optimisation "
            f"(moved {rot:.2f} deg); right half {_right_half_note(views[-1])}"
            + (
                f"; {history['skipped']} refinement steps skipped (loss or gradient not finite)"
                if history["skipped"]
                else ""
            )
        )
    stages = ("before_tto", "after_tto", "right_half", "right_half_mean_appearance")
    mean = {
        stage: {key: float(np.mean([v[stage][key] for v in views])) for key in views[0][stage]}
        for stage in stages
        if stage in views[0]
    }
    return {"mean": mean, "per_view": views}


def _right_half_note(metrics: dict) -> str:
    """'PSNR a' or, with appearance codes, 'PSNR a (mean code b)' of a view or of the mean."""
    note = f"PSNR {metrics['right_half']['psnr']:.2f}"
    if "right_half_mean_appearance" in metrics:
        note += (
            f" with its appearance fitted on the left half (mean code "
            f"{metrics['right_half_mean_appearance']['psnr']:.2f})"
        )
    return note


def protocol(cfg, scene: SceneData) -> dict:
    """What the held-out numbers mean (stored beside them in metrics.json)."""
    ec = cfg.eval
    known = cfg.cameras.focal_init == "gt" and not cfg.cameras.learn_focal
    return {
        "test_split": split_rule(cfg, scene),
        "test_ids": [int(i) for i in scene.test_ids],
        "alignment": (
            f"{ec.alignment} (learned -> ground truth) fitted on the training cameras; its "
            "inverse maps the held-out ground-truth poses into the learned frame"
        ),
        "tto": {
            "iterations": int(ec.tto_iters),
            "lr": float(ec.tto_lr),
            "optimizer": "Adam",
            "rays_per_iteration": int(ec.tto_n_rays),
            "rays_from": (
                "the object mask's pixels"
                if ec.tto_pixels == "mask" or (ec.tto_pixels == "auto" and scene.masks is not None)
                else "every pixel"
            ),
            "correction": "zero-initialised 6-vector se(3), c2w = c2w_init exp(xi), model frozen",
        },
        "intrinsics": (
            "calibrated K of each view (focal kept fixed in training)"
            if known and scene.K_gt is not None
            else "learned focal and principal point"
        ),
        "image_metrics": (
            "PSNR and SSIM (scikit-image, data_range 1, channel_axis -1) on the full image; "
            "*_masked: background set to white by the object mask in render and ground truth"
        ),
        "lpips": LPIPS_NOTE,
        "right_half": (
            f"PSNR / SSIM on the right half of the image (columns u >= W // 2) after the view's "
            f"appearance code, from the mean of the training codes, was fitted on the left half "
            f"(NeRF-W; Adam, {int(ec.appearance_iters)} iterations, lr "
            f"{float(ec.appearance_lr)}, model and refined pose frozen); "
            "right_half_mean_appearance: the same half with the mean code"
            if cfg.model.appearance_dim > 0
            else "PSNR / SSIM on the right half of the image (columns u >= W // 2) of the "
            "refined render: no appearance codes (model.appearance_dim 0) to fit"
        ),
    }


# -------------------------------------------------------------------------- the experiment
def evaluate_experiment(
    exp_dir, cfg, scene: SceneData, model, device, log=print, step: int | None = None
) -> dict:
    """Evaluate a trained model and record it: pose errors of the training cameras and, for the
    held-out views, PSNR / SSIM before and after test-time pose optimisation.

    Writes per-view renders and render | gt images to <exp_dir>/eval/ and merges an "eval"
    block into <exp_dir>/metrics.json (the training report's keys are kept). Without ground
    truth or held-out views it says so and does what it can. `step` (the checkpoint's) sets the
    coarse-to-fine progress; None renders with every frequency band. Returns the eval block.
    The model is left as it was (parameters, requires_grad and train/eval mode)."""
    exp_dir = Path(exp_dir)
    progress = None if step is None else min(step / max(cfg.training.num_iters, 1), 1.0)
    block: dict = {"step": step}
    if scene.c2w_gt is None:
        log(
            f"{scene.name} has no ground-truth poses: no pose errors or held-out view metrics "
            "can be computed."
        )
        block["note"] = "no ground-truth poses: no pose or held-out view metrics"
        write_metrics(exp_dir, {"eval": block})
        return block
    block["poses"] = pose_report(scene, model)
    r = block["poses"][block["poses"]["headline_alignment"]]
    log(
        f"training cameras ({r['alignment']} alignment): rotation median "
        f"{r['rot_median_deg']:.3f} deg (identity start "
        f"{r['identity_start']['rot_median_deg']:.3f}), translation median "
        f"{r['trans_median_x100']:.3f} (x100, unit-scale ground truth)"
    )
    if not scene.test_ids:
        log(f"{scene.name} has no held-out views: only pose errors are reported.")
        block["note"] = "no held-out views: only pose errors"
        write_metrics(exp_dir, {"eval": block})
        return block
    block["protocol"] = protocol(cfg, scene)
    log(
        f"held-out views {_id_list(scene.test_ids)}: {cfg.eval.tto_iters} iterations of test-time "
        f"pose optimisation (lr {cfg.eval.tto_lr}, rays from "
        f"{block['protocol']['tto']['rays_from']}), {cfg.eval.alignment} alignment"
    )
    block["novel_views"] = evaluate_novel_views(
        cfg, scene, model, device, exp_dir / "eval", progress, log
    )
    m = block["novel_views"]["mean"]
    log(
        f"mean over held-out views: PSNR {m['before_tto']['psnr']:.2f} -> "
        f"{m['after_tto']['psnr']:.2f}, SSIM {m['before_tto']['ssim']:.3f} -> "
        f"{m['after_tto']['ssim']:.3f} (before -> after test-time pose optimisation); right half "
        f"{_right_half_note(m)}"
        + (
            f"; with the object masks (background white): PSNR {m['before_tto']['psnr_masked']:.2f}"
            f" -> {m['after_tto']['psnr_masked']:.2f}, SSIM {m['before_tto']['ssim_masked']:.3f} "
            f"-> {m['after_tto']['ssim_masked']:.3f}"
            if "psnr_masked" in m["after_tto"]
            else ""
        )
    )
    write_metrics(exp_dir, {"eval": block})
    return block
