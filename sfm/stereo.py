"""A dense depth prior from the training photos and their cameras: plane-sweep stereo.

For each training view a, fronto-parallel planes at `n_depths` depths between near and far
(evenly spaced in inverse depth) are swept through its camera; at each depth the nearest other
views are warped onto a by the plane's homography and compared with it by zero-mean normalised
cross-correlation (ZNCC) over a small window. A pixel takes the depth of its best score (the
best of the neighbours at each depth, so a surface one neighbour cannot see still matches in
the other), refined to sub-plane precision by a parabola through the scores either side.

A depth is kept only when it is checked, the classic multi-view stereo filters:
- its score is at least `min_score` and the pixel's window has texture (ZNCC is undefined on a
  flat patch);
- it is not at either end of the swept range (no minimum found inside it);
- it agrees with a neighbour's own depth map: the point it places, projected into a neighbour,
  lands where that neighbour measured the same depth within `max_rel_error`.
Everything else is NaN: the textured pixels seen in two views are kept, flat or occluded
regions say nothing. What gets through wrong is mostly the far side of occlusion edges, which
takes the near depth for about half a window (the correlation window's "foreground fattening";
both views see it alike, so the consistency check keeps it). Dropping the pixels near a depth
edge would cost coverage where sparse views have little, so the loss's robust L1 takes them.

Pure numpy and OpenCV, no learned weights. Pixel centres at +0.5 (docs/conventions.md);
OpenCV's warps put them on integers, hence the half-pixel shift of the intrinsics handed to
them.
"""

from __future__ import annotations

import cv2
import numpy as np


def _cv_intrinsics(K: np.ndarray) -> np.ndarray:
    out = np.array(K, dtype=np.float64)
    out[0, 2] -= 0.5
    out[1, 2] -= 0.5
    return out


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)


def nearest_views(c2w: np.ndarray, k: int) -> list[list[int]]:
    """For each camera, the k others whose centres are nearest (fewer when there are fewer)."""
    centres = c2w[:, :3, 3]
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    k = min(k, len(c2w) - 1)
    return [list(np.argsort(row, kind="stable")[:k]) for row in dist]


def plane_homography(K_a, K_b, c2w_a, c2w_b, depth: float) -> np.ndarray:
    """3x3 homography taking pixels of camera a to camera b through the plane z_a = depth
    (fronto-parallel in a). Intrinsics in the convention of the pixels it maps."""
    T = np.linalg.inv(c2w_b) @ c2w_a  # a's camera frame -> b's
    R, t = T[:3, :3], T[:3, 3:]
    normal = np.array([[0.0, 0.0, 1.0]])
    return K_b @ (R + t @ normal / depth) @ np.linalg.inv(K_a)


class _Zncc:
    """ZNCC of a fixed reference image against warped images, window `win` (box filter)."""

    def __init__(self, ref: np.ndarray, win: int, min_var: float):
        self.win, self.min_var = (win, win), min_var
        self.ref = ref
        self.mu = cv2.boxFilter(ref, -1, self.win)
        self.var = cv2.boxFilter(ref * ref, -1, self.win) - self.mu**2
        self.flat = self.var < min_var

    def score(self, warped: np.ndarray, valid: np.ndarray) -> np.ndarray:
        mu = cv2.boxFilter(warped, -1, self.win)
        var = cv2.boxFilter(warped * warped, -1, self.win) - mu**2
        cov = cv2.boxFilter(self.ref * warped, -1, self.win) - self.mu * mu
        z = cov / np.sqrt(np.maximum(self.var * var, 1e-12))
        # the whole window must land inside the other image
        inside = cv2.erode(valid, np.ones(self.win, np.uint8)) > 0
        z[~inside | self.flat | (var < self.min_var)] = -1.0
        return z


def sweep_view(
    a: int,
    neighbours: list[int],
    grays: list[np.ndarray],
    K: np.ndarray,
    c2w: np.ndarray,
    depths: np.ndarray,
    win: int,
    min_var: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W), score (H, W)) of view a's best plane, sub-plane refined in inverse
    depth; depth NaN where the best plane is at either end of the range."""
    H, W = grays[a].shape
    zncc = _Zncc(grays[a], win, min_var)
    ones = np.ones((H, W), np.uint8)
    best = np.full((H, W), -np.inf, np.float32)
    index = np.zeros((H, W), np.int64)
    left = np.full((H, W), np.nan, np.float32)  # score one plane before the best
    right = np.full((H, W), np.nan, np.float32)  # and one after
    prev = np.full((H, W), np.nan, np.float32)
    Ka = _cv_intrinsics(K[a])
    for k, depth in enumerate(depths):
        score = np.full((H, W), -1.0, np.float32)
        for b in neighbours:
            Hab = plane_homography(Ka, _cv_intrinsics(K[b]), c2w[a], c2w[b], float(depth))
            warped = cv2.warpPerspective(
                grays[b], Hab, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            )
            valid = cv2.warpPerspective(
                ones, Hab, (W, H), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
            )
            np.maximum(score, zncc.score(warped, valid), out=score)
        after_best = index == k - 1
        right[after_best] = score[after_best]
        better = score > best
        best[better] = score[better]
        index[better] = k
        left[better] = prev[better]
        right[better] = np.nan
        prev = score
    # parabola through (k-1, k, k+1) in plane index, the planes even in inverse depth
    inv = 1.0 / depths
    denom = left - 2 * best + right
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(denom < 0, 0.5 * (left - right) / denom, 0.0)
    offset = np.clip(np.nan_to_num(offset), -0.5, 0.5)
    step = inv[1] - inv[0] if len(inv) > 1 else 0.0
    inv_best = inv[index] + offset * step
    depth = (1.0 / inv_best).astype(np.float32)
    depth[(index == 0) | (index == len(depths) - 1)] = np.nan
    return depth, best


def _backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W] + 0.5
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    cam = np.stack([x, y, depth], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def world_z(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """(N, H, W) world z of the points that camera z-depths (N, H, W) place (NaN stays NaN):
    the depth NDC rays measure, NDC being set along the world's z axis (geometry.rays)."""
    return np.stack([_backproject(d, k, m)[..., 2] for d, k, m in zip(depth, K, c2w)])


def consistent(
    a: int, neighbours: list[int], depth: list[np.ndarray], K, c2w, max_rel_error: float
) -> np.ndarray:
    """(H, W) bool: view a's depth agrees with at least one neighbour's depth map (the point
    projected into the neighbour lies at the depth that neighbour measured there, to within
    max_rel_error of it)."""
    H, W = depth[a].shape
    points = _backproject(depth[a], K[a], c2w[a])
    ok = np.zeros((H, W), bool)
    for b in neighbours:
        w2c = np.linalg.inv(c2w[b])
        p = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = p[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            u = p[..., 0] / z * K[b][0, 0] + K[b][0, 2]
            v = p[..., 1] / z * K[b][1, 1] + K[b][1, 2]
        inside = np.isfinite(u) & np.isfinite(v) & (z > 0)
        inside &= (u >= 0) & (u < W) & (v >= 0) & (v < H)
        iu = np.where(inside, u, 0).astype(np.int64)
        iv = np.where(inside, v, 0).astype(np.int64)
        measured = np.where(inside, depth[b][iv, iu], np.nan)
        with np.errstate(invalid="ignore"):
            ok |= inside & (np.abs(measured - z) <= max_rel_error * z)
    return ok


def plane_sweep_depths(
    images: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    near: float,
    far: float,
    n_depths: int = 128,
    window: int = 7,
    neighbours: int = 2,
    min_score: float = 0.5,
    max_rel_error: float = 0.01,
    min_std: float = 0.01,
    log=None,
) -> np.ndarray:
    """(N, H, W) float32 camera z-depth of each training view, NaN where unchecked (module doc).

    images (N, H, W, 3) in [0, 1]; K (N, 3, 3) and c2w (N, 4, 4) OpenCV axes, pixel centres at
    +0.5; near < far bound the swept depths; min_std: the least intensity standard deviation
    (of [0, 1] grey) a window needs to count as textured."""
    n = len(images)
    if n < 2:
        raise ValueError("a stereo depth prior needs at least two training views")
    if not 0 < near < far:
        raise ValueError(f"plane sweep needs 0 < near < far, not {near}, {far}")
    K = np.asarray(K, np.float64)
    c2w = np.asarray(c2w, np.float64)
    grays = [_gray(im) for im in images]
    depths = 1.0 / np.linspace(1.0 / near, 1.0 / far, n_depths)
    near_views = nearest_views(c2w, neighbours)
    raw, scores = [], []
    for a in range(n):
        d, s = sweep_view(a, near_views[a], grays, K, c2w, depths, window, min_std**2)
        raw.append(d)
        scores.append(s)
    out = np.empty((n, *grays[0].shape), np.float32)
    for a in range(n):
        keep = consistent(a, near_views[a], raw, K, c2w, max_rel_error)
        keep &= scores[a] >= min_score
        out[a] = np.where(keep, raw[a], np.nan)
        if log is not None:
            log(f"  view {a}: depth for {keep.mean():.0%} of the pixels")
    return out
