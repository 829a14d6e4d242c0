"""Bundle adjustment on the feature tracks: a fast warm-up of the cameras before the field.

Every track gets its own depth (inverse depth along the ray of its first observation); cameras
(rotation, translation, focal: the Cameras module's own parameters) and depths are optimised
so each track's point re-projects onto all of its observations. No MLP is involved, so
thousands of steps take seconds on a CPU; the training loop then starts from these cameras and
the rendered-depth track loss takes over. It answers the small-baseline ambiguity that the
photometric loss alone resolves slowly (rotation vs. translation of near-parallel cameras).
"""

from __future__ import annotations

import math
import time

import torch

from geometry.poses import rigid_inverse
from geometry.rays import pixels_to_rays, project
from losses.tracks import robust
from models.cameras import focal_ratio_from_param, param_from_focal_ratio


def _first_of_each_track(obs_track: torch.Tensor) -> torch.Tensor:
    lengths = torch.bincount(obs_track)
    return torch.cumsum(lengths, 0) - lengths


def track_points(cameras, tracks, inv_depth: torch.Tensor, c2w=None, K=None) -> torch.Tensor:
    """(n_tracks, 3) world points: each track's first observation's ray at depth 1/inv_depth."""
    c2w = cameras.c2w() if c2w is None else c2w
    K = cameras.K() if K is None else K
    ref = _first_of_each_track(tracks.obs_track)
    img = tracks.obs_image[ref]
    origins, dirs = pixels_to_rays(tracks.obs_uv[ref], K[img], c2w[img])
    return origins + dirs / inv_depth[:, None]


def reprojection_errors(cameras, tracks, inv_depth: torch.Tensor) -> torch.Tensor:
    """(M,) pixel distance between each observation and its track's point re-projected into
    the observation's camera (0 for the reference observations by construction)."""
    c2w, K = cameras.c2w(), cameras.K()
    points = track_points(cameras, tracks, inv_depth, c2w, K)[tracks.obs_track]
    w2c = rigid_inverse(c2w)[tracks.obs_image]
    proj = project(points, K[tracks.obs_image], w2c)
    err = torch.linalg.norm(proj[:, :2] - tracks.obs_uv, dim=-1)
    return torch.where(proj[:, 2] > 1e-6, err, torch.full_like(err, 1e3))


def _adjust(
    cameras,
    tracks,
    depth_init: float,
    max_iters: int = 3000,
    huber_delta: float = 1.0,
    log=print,
    callback=None,
    focal_first_fixed: bool = False,
) -> dict:
    """Optimise `cameras` in place (their learnable r, t and focal) jointly with one inverse
    depth per track, by L-BFGS with a strong-Wolfe line search (Adam stalls on this badly
    conditioned problem, degrees and a large focal error short of the solution).

    Cost: per-track mean of the Huber reprojection cost over the track's observations. Gauges:
    the first camera's pose is held fixed, and the mean log depth is tied to log(depth_init)
    so the scene keeps the scale its ray space expects. Stops after `max_iters` L-BFGS
    iterations or when the cost stops changing. With `focal_first_fixed` (and a learnable
    focal) it runs in two stages, first with the focal held at its start, then with it free
    (each stage up to `max_iters`). `callback(iterations_done)` runs after every
    round of 100 iterations (bench/quality_at_time.py records errors against time there).
    Returns a summary dict.
    """
    t0 = time.perf_counter()
    device = cameras.t.device
    n_tracks = int(tracks.n_tracks)
    log_d0 = math.log(depth_init)
    inv_depth = torch.full((n_tracks,), 1.0 / depth_init, device=device, requires_grad=True)
    pose_params = [inv_depth] + [p for p in (cameras.r, cameras.t) if p.requires_grad]
    focal_params = [p for p in cameras.focal_parameters() if p.requires_grad]
    if focal_params and focal_first_fixed:
        stages = [pose_params, pose_params + focal_params]
    else:
        stages = [pose_params + focal_params]
    counts = torch.bincount(tracks.obs_track, minlength=n_tracks).clamp_min(2).float()
    weight = 1.0 / (counts[tracks.obs_track] - 1)  # per-track normalisation: tracks weigh alike
    non_ref = torch.ones(tracks.obs_track.numel(), dtype=torch.bool, device=device)
    non_ref[_first_of_each_track(tracks.obs_track)] = False
    start_err = reprojection_errors(cameras, tracks, inv_depth.detach()).detach()

    def closure():
        opt.zero_grad(set_to_none=True)
        err = reprojection_errors(cameras, tracks, inv_depth.clamp_min(1e-4))
        data = (robust(err, "huber", huber_delta, math.inf) * weight).sum() / n_tracks
        scale = (torch.log(inv_depth.clamp_min(1e-4)).mean() + log_d0) ** 2
        loss = data + scale
        loss.backward()
        for p in (cameras.r, cameras.t):
            if p.grad is not None:
                p.grad[0] = 0  # the first camera is the gauge
        return loss

    round_iters = 100
    done = 0
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Tensors of a few thousand elements: a second thread costs more than it gives
        # (several times slower on a real scene's observations).
        torch.set_num_threads(1)
    try:
        for params in stages:
            opt = torch.optim.LBFGS(
                params,
                lr=1.0,
                max_iter=round_iters,
                history_size=50,
                line_search_fn="strong_wolfe",
                tolerance_grad=1e-12,
                tolerance_change=1e-14,
            )
            stage_done, previous = 0, math.inf
            while stage_done < max_iters:
                loss = float(opt.step(closure).detach())
                stage_done += round_iters
                done += round_iters
                with torch.no_grad():
                    inv_depth.clamp_(min=1e-4)
                if callback is not None:
                    callback(done)
                if abs(previous - loss) <= 1e-7 * max(abs(loss), 1e-12):
                    break
                previous = loss
    finally:
        torch.set_num_threads(threads)
    end_err = reprojection_errors(cameras, tracks, inv_depth.detach()).detach()
    summary = {
        "iters": done,
        "seconds": time.perf_counter() - t0,
        "median_px_start": float(start_err[non_ref].median()),
        "median_px_end": float(end_err[non_ref].median()),
        "inlier_fraction_2px": float((end_err[non_ref] < 2).float().mean()),
    }
    held = " (focal held first)" if len(stages) > 1 else ""
    log(
        f"track bundle adjustment{held}: {done} L-BFGS iterations in {summary['seconds']:.1f} s, "
        f"median reprojection error {summary['median_px_start']:.2f} -> "
        f"{summary['median_px_end']:.2f} px ({100 * summary['inlier_fraction_2px']:.0f}% under "
        "2 px)"
    )
    return summary


GOOD_FIT_2PX = 0.95
# Focal sweep: multiples of the starting focal (with NeRF--'s default fx = W, fields of view
# from 90 to 28 degrees), each tried held fixed for SWEEP_ITERS iterations.
SWEEP_SCALES = tuple(2.0 ** (k / 4) for k in range(-4, 5))
SWEEP_ITERS = 3000


def _fit(summary: dict) -> tuple:
    """Ordering of adjustments: more observations within 2 px, then a lower median error."""
    return (summary["inlier_fraction_2px"], -summary["median_px_end"])


def _snapshot(cameras) -> dict:
    """A copy of the cameras' state to come back to (load_state_dict)."""
    return {k: v.detach().clone() for k, v in cameras.state_dict().items()}


@torch.no_grad()
def _scale_focal(cameras, scale: float) -> None:
    kind = cameras.focal_parameterisation
    ratio = focal_ratio_from_param(cameras.focal_raw, kind) * scale
    cameras.focal_raw.copy_(param_from_focal_ratio(ratio, kind))


def focal_sweep(cameras, tracks, depth_init, huber_delta=1.0, log=print, iters=None):
    """From the cameras' current state, adjust poses and depths with the focal held at each of
    SWEEP_SCALES x its current value (`iters` iterations each, default SWEEP_ITERS); leave the
    cameras as the best fit left them (focal still held there) and return (scale, summary of
    that fit, all summaries)."""
    iters = SWEEP_ITERS if iters is None else iters
    start = _snapshot(cameras)
    learn = cameras.focal_raw.requires_grad
    cameras.focal_raw.requires_grad_(False)
    summaries, states = [], []
    try:
        for scale in SWEEP_SCALES:
            cameras.load_state_dict(start)
            _scale_focal(cameras, scale)
            summaries.append(_adjust(cameras, tracks, depth_init, iters, huber_delta, log))
            states.append(_snapshot(cameras))
    finally:
        cameras.focal_raw.requires_grad_(learn)
    best = max(range(len(SWEEP_SCALES)), key=lambda i: _fit(summaries[i]))
    cameras.load_state_dict(states[best])
    return SWEEP_SCALES[best], summaries[best], summaries


def bundle_adjust(
    cameras,
    tracks,
    depth_init: float,
    max_iters: int = 3000,
    huber_delta: float = 1.0,
    log=print,
    callback=None,
    retry_focal_fixed: bool = True,
    focal_sweep_if_poor: bool = True,
) -> dict:
    """Adjust cameras (and focal) and track depths jointly (see _adjust). When the focal is
    learnable and the result fits poorly (fewer than 95% of observations within 2 px), start
    again from the same cameras with the focal held first, then freed, and keep the better fit
    (more observations within 2 px, then the lower median error). From identity a joint
    adjustment can slide into the focal/depth valley (a focal several times too long, degrees
    of rotation error) where holding the focal first does not; holding it first is not always
    better either (a synthetic rig stalls in that valley), hence a retry rather than the
    default. If that fits poorly too (`focal_sweep_if_poor`), the focal start itself is wrong:
    sweep it (focal_sweep) and keep the best swept focal fixed (freed after the sweep, the
    focal slides off again)."""
    start = _snapshot(cameras)
    first = _adjust(cameras, tracks, depth_init, max_iters, huber_delta, log, callback)
    learn_focal = any(p.requires_grad for p in cameras.focal_parameters())
    if not (retry_focal_fixed and learn_focal) or first["inlier_fraction_2px"] >= GOOD_FIT_2PX:
        return first
    log(
        f"track bundle adjustment: only {100 * first['inlier_fraction_2px']:.0f}% of the "
        "observations fit within 2 px; trying again with the focal held first"
    )
    first["kept"] = "joint"
    results = [(first, _snapshot(cameras))]
    cameras.load_state_dict(start)
    shifted = None if callback is None else (lambda done: callback(first["iters"] + done))
    second = _adjust(
        cameras, tracks, depth_init, max_iters, huber_delta, log, shifted, focal_first_fixed=True
    )
    second["kept"] = "focal held first"
    results.append((second, _snapshot(cameras)))
    if focal_sweep_if_poor and second["inlier_fraction_2px"] < GOOD_FIT_2PX:
        log(
            f"track bundle adjustment: {100 * second['inlier_fraction_2px']:.0f}% within 2 px "
            f"with the focal held first; sweeping the starting focal over x{SWEEP_SCALES[0]:.2f}"
            f"-x{SWEEP_SCALES[-1]:.2f}"
        )
        cameras.load_state_dict(start)
        scale, third, sweep = focal_sweep(cameras, tracks, depth_init, huber_delta, log)
        third = dict(third, kept=f"focal swept, held at x{scale:.2f} of the start")
        third["iters"] = sum(s["iters"] for s in sweep)
        third["seconds"] = sum(s["seconds"] for s in sweep)
        results.append((third, _snapshot(cameras)))
    best, state = max(results, key=lambda r: _fit(r[0]))
    cameras.load_state_dict(state)
    log(
        f"track bundle adjustment: kept the {best['kept']} fit "
        f"({100 * best['inlier_fraction_2px']:.0f}% within 2 px, "
        f"median {best['median_px_end']:.2f} px)"
    )
    best = dict(best)
    best["iters"] = sum(r[0]["iters"] for r in results)
    best["seconds"] = sum(r[0]["seconds"] for r in results)
    return best
