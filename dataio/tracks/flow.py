"""Stage 2 of the feature tracks (optional, tracks.flow): dense optical-flow correspondences.

OpenCV DIS flow between training images, one correspondence per `flow_stride` cell, refined by
Lucas-Kanade and kept when forward-backward consistent and consistent with the pair's epipolar
geometry: a second, weaker source than SIFT for sparse wide-baseline views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from geometry.epipolar import epipolar_distance

# Flow pairs: every pair up to this many training views, else each view with its next
# FLOW_NEIGHBOURS views in training order (captures are usually ordered).
FLOW_ALL_PAIRS_MAX_VIEWS = 9
FLOW_NEIGHBOURS = 2


# A flow pair without a SIFT-verified F is kept only when RANSAC on F finds at least this
# fraction of its forward-backward-consistent correspondences consistent: wide-baseline flow
# that is mostly wrong still yields a (wrong) F with some inliers.
FLOW_MIN_INLIER_RATIO = 0.6


# Lucas-Kanade refinement of flow correspondences: window (pixels) and the forward-backward
# round trip it must close to. Small windows do best (fewer pixels across depth edges): the
# refinement brings most correspondences within 1 px of the truth, far more than DIS alone.
FLOW_REFINE_WINDOW = 5
FLOW_REFINE_FB_MAX_ERROR = 0.3


def _to_gray_u8(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def flow_matches(
    img_a: np.ndarray, img_b: np.ndarray, stride: int, fb_max_error: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense-flow correspondences from image a to image b, one per stride x stride cell.

    img_a, img_b: (H, W, 3) float in [0, 1] (same size). The dense flow a->b (OpenCV DIS,
    coarse to fine, so large motions are found) is read at each cell's centre pixel and the
    flow b->a bilinearly at the landing point; a correspondence is kept when it lands inside b
    and the two flows cancel to within fb_max_error pixels. DIS smooths across depth edges, so
    each survivor is then refined by pyramidal Lucas-Kanade on a small window, forward and
    backward, and kept only when that round trip closes to within FLOW_REFINE_FB_MAX_ERROR (this
    also drops cells without texture, where LK has nothing to lock on).
    Returns uv_a (K, 2), uv_b (K, 2) float64 (pixel centres at +0.5) and the DIS
    forward-backward error (K,)."""
    gray_a, gray_b = _to_gray_u8(img_a), _to_gray_u8(img_b)
    H, W = gray_a.shape
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    forward = dis.calc(gray_a, gray_b, None)
    backward = dis.calc(gray_b, gray_a, None)
    rows, cols = np.mgrid[stride // 2 : H : stride, stride // 2 : W : stride]
    rows, cols = rows.ravel(), cols.ravel()
    uv_a = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)
    flow_ab = forward[rows, cols].astype(np.float64)
    uv_b = uv_a + flow_ab
    # OpenCV's sub-pixel coordinates put pixel centres on integers: theirs = ours - 0.5.
    map_x = (uv_b[:, 0] - 0.5).astype(np.float32)[:, None]
    map_y = (uv_b[:, 1] - 0.5).astype(np.float32)[:, None]
    flow_ba = cv2.remap(
        backward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan
    )[:, 0].astype(np.float64)
    fb_error = np.linalg.norm(flow_ab + flow_ba, axis=1)
    inside = (uv_b[:, 0] > 0) & (uv_b[:, 0] < W) & (uv_b[:, 1] > 0) & (uv_b[:, 1] < H)
    keep = inside & np.isfinite(fb_error) & (fb_error <= fb_max_error)
    uv_a, uv_b, fb_error = uv_a[keep], uv_b[keep], fb_error[keep]
    if not len(uv_a):
        return uv_a, uv_b, fb_error

    lk = {
        "winSize": (FLOW_REFINE_WINDOW, FLOW_REFINE_WINDOW),
        "maxLevel": 1,
        "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        "flags": cv2.OPTFLOW_USE_INITIAL_FLOW,
    }
    # (K, 1, 2) float32 arrays owning their memory: the initial guesses are written in place.
    pts_a = (uv_a - 0.5).astype(np.float32).reshape(-1, 1, 2).copy()
    guess_b = (uv_b - 0.5).astype(np.float32).reshape(-1, 1, 2).copy()
    pts_b, ok_ab, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, pts_a, guess_b, **lk)
    back_a, ok_ba, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, pts_b, pts_a.copy(), **lk)
    refined_b = pts_b[:, 0].astype(np.float64) + 0.5
    round_trip = np.linalg.norm(back_a[:, 0] - pts_a[:, 0], axis=1)
    keep = (ok_ab[:, 0] == 1) & (ok_ba[:, 0] == 1) & (round_trip <= FLOW_REFINE_FB_MAX_ERROR)
    keep &= (refined_b[:, 0] > 0) & (refined_b[:, 0] < W) & (refined_b[:, 1] > 0)
    keep &= refined_b[:, 1] < H
    return uv_a[keep], refined_b[keep], fb_error[keep]


def flow_pairs(n_views: int) -> list[tuple[int, int]]:
    """Training-view pairs (a < b) that get flow: all when few views, else near neighbours."""
    if n_views <= FLOW_ALL_PAIRS_MAX_VIEWS:
        return [(a, b) for a in range(n_views) for b in range(a + 1, n_views)]
    return [
        (a, b) for a in range(n_views) for b in range(a + 1, min(a + 1 + FLOW_NEIGHBOURS, n_views))
    ]


def verified_flow(uv_a, uv_b, fb, F_train, s: dict):
    """Keep the flow correspondences of one pair that agree with its epipolar geometry: the
    SIFT-verified F when there is one, else an F fitted to them by RANSAC (the pair is dropped
    when too few or too small a fraction agree). Returns (uv_a, uv_b, fb, F or None)."""
    if len(uv_a) < max(8, s["min_num_inliers"]):
        return uv_a[:0], uv_b[:0], fb[:0], None
    if F_train is not None:
        ok = epipolar_distance(F_train, uv_a, uv_b) <= s["epipolar_max_error"]
        F = F_train
    else:
        F, mask = cv2.findFundamentalMat(
            uv_a, uv_b, cv2.FM_RANSAC, float(s["ransac_max_error"]), 0.999, 5000
        )
        if F is None or mask is None or F.shape != (3, 3):
            return uv_a[:0], uv_b[:0], fb[:0], None
        ok = mask.ravel().astype(bool)
        if ok.mean() < FLOW_MIN_INLIER_RATIO:
            ok[:] = False
    if ok.sum() < s["min_num_inliers"]:
        return uv_a[:0], uv_b[:0], fb[:0], None
    return uv_a[ok], uv_b[ok], fb[ok], F


@dataclass
class FlowObservations:
    """Flow correspondences as track observations, to append after the SIFT ones.

    obs_image / obs_uv: lists of (k,) int64 training-view indices and (k, 2) float64 training
    pixels (centres at +0.5); edges: list of (E, 2) int64 observation ids to merge, strongest
    pair (most correspondences) first and inside a pair the most forward-backward-consistent
    first; F_pairs: {(a, b): F (3, 3)} fitted to the flow of pairs SIFT left without one."""

    obs_image: list[np.ndarray] = field(default_factory=list)
    obs_uv: list[np.ndarray] = field(default_factory=list)
    edges: list[np.ndarray] = field(default_factory=list)
    F_pairs: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    n_pairs: int = 0
    n_matches: int = 0


def flow_observations(
    images: np.ndarray, F_pairs: Mapping[tuple[int, int], np.ndarray], s: Mapping, first_id: int
) -> FlowObservations:
    """Flow correspondences between the training views of flow_pairs as observations.

    images: (n, H, W, 3) float training images in [0, 1]; F_pairs: SIFT-verified F per pair
    (a < b) in training pixels; s: the track settings; first_id: the id of the first new
    observation (the number of observations already there). Every view that is the first of a
    kept pair gets a grid of observations (one per flow_stride cell, row-major), and each kept
    correspondence an observation in the second view linked to its cell."""
    stride = int(s["flow_stride"])
    H, W = images.shape[1:3]
    cells_x = len(range(stride // 2, W, stride))
    out = FlowObservations()
    n_obs = first_id
    grid_ids: dict[int, int] = {}  # view -> first observation id of its flow grid
    weighted_edges = []
    for a, b in flow_pairs(len(images)):
        uv_a, uv_b, fb = flow_matches(images[a], images[b], stride, s["flow_fb_max_error"])
        uv_a, uv_b, fb, F = verified_flow(uv_a, uv_b, fb, F_pairs.get((a, b)), s)
        if not len(uv_a):
            continue
        if a not in grid_ids:
            rows, cols = np.mgrid[stride // 2 : H : stride, stride // 2 : W : stride]
            grid_ids[a] = n_obs
            out.obs_image.append(np.full(rows.size, a, dtype=np.int64))
            out.obs_uv.append(np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1))
            n_obs += rows.size
        cell = ((uv_a[:, 1] - 0.5) // stride) * cells_x + (uv_a[:, 0] - 0.5) // stride
        ids_a = grid_ids[a] + cell.astype(np.int64)
        ids_b = n_obs + np.arange(len(uv_b))
        out.obs_image.append(np.full(len(uv_b), b, dtype=np.int64))
        out.obs_uv.append(uv_b)
        n_obs += len(uv_b)
        order = np.argsort(fb, kind="stable")
        weighted_edges.append((len(uv_a), np.stack([ids_a[order], ids_b[order]], 1)))
        if (a, b) not in F_pairs and F is not None:
            out.F_pairs[(a, b)] = F
        out.n_pairs += 1
        out.n_matches += len(uv_a)
    weighted_edges.sort(key=lambda e: -e[0])
    out.edges = [e for _, e in weighted_edges]
    return out
