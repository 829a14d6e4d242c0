"""The training objective: which loss applies to which group of rays, and their weights.

Each loss function (losses/) returns {name: scalar}; the total is the sum of
training.w_<name> * term, and a term without a declared weight is an error.
"""

from __future__ import annotations

import torch

from geometry.poses import rigid_inverse
from losses.depth_prior import depth_prior_loss
from losses.interval import interval_loss
from losses.occlusion import occlusion_loss
from losses.photometric import photometric_loss
from losses.smoothness import depth_smoothness
from losses.tracks import reprojection_loss
from models.rendering import sample_edges


def track_kernel(tracks_cfg, progress: float) -> str:
    """Huber early; the configured late kernel (tracks.late_kernel) from tracks.late_after."""
    late = tracks_cfg.late_kernel
    return late if late != "none" and progress >= tracks_cfg.late_after else "huber"


def loss_terms(cfg, model, groups: dict, rays: dict, render: dict, c2w, K, progress: float):
    """Loss terms {name: scalar} and logged extras {name: scalar} of one step.

    groups: BatchSampler.sample's groups; rays[group] = (origins, directions) and
    render[group] = the renderer's outputs for that group's rays; c2w (N, 4, 4), K (N, 3, 3)
    the cameras the rays were cast from."""
    terms = photometric_loss(render["rgb"], groups["rgb"]["target"], groups["rgb"].get("weight"))
    extras = {}
    grids = model.grids()
    if grids and cfg.training.w_tv > 0:
        terms["tv"] = sum(g.total_variation() for g in grids)
    if grids and cfg.training.w_l1 > 0:
        terms["l1"] = sum(g.l1() for g in grids)
    # the ray-weight terms read the samples of uniform spacing (the coarse pass), or the
    # resampled ones (model.resample), whose intervals the distortion loss is given
    out = render["rgb"]
    weights = out.get("weights_coarse", out.get("weights"))
    u = out.get("u_samples")  # None: uniform samples
    if cfg.training.w_distortion > 0:
        terms.update(interval_loss(weights, None if u is None else sample_edges(u)))
    if cfg.training.w_occlusion > 0:
        terms.update(occlusion_loss(weights, cfg.training.occlusion_range, u))
    if "prior" in groups["rgb"]:
        rgb_out = render["rgb"]
        depths = model.depth_from_t(rgb_out["t_samples"])
        terms.update(depth_prior_loss(rgb_out["weights"], depths, groups["rgb"]["prior"]))
    if "track" in groups:
        track = groups["track"]
        img = track["image"]
        origins, dirs = rays["track"]
        points = model.points_at(origins, dirs, render["track"]["t"], K[img])
        dst_img = img[track["dst"]]
        track_terms, err = reprojection_loss(
            points[track["src"]],
            track["uv"][track["dst"]],
            rigid_inverse(c2w)[dst_img],
            K[dst_img],
            track["pair_track"],
            track_kernel(cfg.tracks, progress),
            cfg.tracks.huber_delta,
            cfg.tracks.gate_px,
        )
        terms.update(track_terms)
        extras["track_px"] = err.median() if err.numel() else err.sum()
    if "smooth" in groups:
        P = cfg.smoothness.patch_size
        t = render["smooth"]["t"].reshape(-1, P, P)
        # NDC t grows like disparity (1 - near / z); euclidean t is z-depth
        disparity = t if model.use_ndc else 1.0 / t.clamp_min(1e-6)
        target = groups["smooth"]["target"].reshape(-1, P, P, 3)
        terms.update(depth_smoothness(disparity, target))
    return terms, extras


def weighted_total(terms: dict, training_cfg) -> torch.Tensor:
    unknown = [name for name in terms if f"w_{name}" not in training_cfg]
    if unknown:
        raise KeyError(f"loss terms {unknown} have no training.w_<name> weight in base.yaml")
    return sum(training_cfg[f"w_{name}"] * value for name, value in terms.items())
