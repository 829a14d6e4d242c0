"""Rigid poses as pure functions (batch dims leading): se(3) exp / log, the rigid inverse, the
average pose, look-at cameras and what a camera layout is (forward-facing or around an object).

Poses are camera-to-world (c2w), OpenCV camera axes (x right, y down, z forward), column vectors;
a function's name and arguments say which direction a transform maps. rigid_inverse and
average_pose also take numpy arrays and give numpy arrays back (the readers and the COLMAP code
work in numpy); everything else is torch.
"""

from __future__ import annotations

import numpy as np
import torch

from geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

# Below this rotation angle (radians) the se(3) series are evaluated by their Taylor expansions.
_SMALL_ANGLE = 1e-4


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """(..., 6) twists (rotation w, translation v) -> (..., 4, 4) rigid transforms (exact exp)."""
    w, v = xi[..., :3], xi[..., 3:]
    R = axis_angle_to_matrix(w)
    theta = w.norm(dim=-1, keepdim=True)[..., None]
    wx = _skew(w)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(wx)
    small = theta < _SMALL_ANGLE
    theta_s = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(theta_s)) / theta_s**2)
    b = torch.where(small, 1 / 6 - theta**2 / 120, (theta_s - torch.sin(theta_s)) / theta_s**3)
    V = eye + a * wx + b * (wx @ wx)
    T = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype, device=xi.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = (V @ v[..., None])[..., 0]
    T[..., 3, 3] = 1
    return T


def _skew(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(w[..., 0])
    return torch.stack(
        [
            torch.stack([zero, -w[..., 2], w[..., 1]], -1),
            torch.stack([w[..., 2], zero, -w[..., 0]], -1),
            torch.stack([-w[..., 1], w[..., 0], zero], -1),
        ],
        -2,
    )


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """(..., 3|4, 4) rigid transforms -> (..., 6) twists (rotation w, translation v), the inverse
    of se3_exp for rotation angles in [0, pi] (at exactly pi the axis sign is roma's choice).

    v = V^-1 t with V^-1 = I - wx / 2 + c wx^2, c = (1 - (theta / 2) cot(theta / 2)) / theta^2,
    which stays finite up to theta = pi (c = 1 / pi^2 there)."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    w = matrix_to_axis_angle(R)
    theta = w.norm(dim=-1, keepdim=True)[..., None]
    wx = _skew(w)
    eye = torch.eye(3, dtype=T.dtype, device=T.device).expand_as(wx)
    small = theta < _SMALL_ANGLE
    half = torch.where(small, torch.ones_like(theta), theta) / 2
    c = torch.where(
        small,
        1 / 12 + theta**2 / 720,
        (1 - half * torch.cos(half) / torch.sin(half)) / (2 * half) ** 2,
    )
    V_inv = eye - 0.5 * wx + c * (wx @ wx)
    return torch.cat([w, (V_inv @ t[..., None])[..., 0]], dim=-1)


def rigid_inverse(T):
    """Inverse of rigid transforms (..., 3|4, 4), e.g. c2w -> w2c: [R^T | -R^T t] (exact, cheaper
    and better conditioned than a general matrix inverse). Returns the input's shape and type
    (torch tensor or numpy array); a 4x4 input keeps its bottom row [0, 0, 0, 1]."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    if isinstance(T, np.ndarray):
        R_inv = np.swapaxes(R, -1, -2)
        top = np.concatenate([R_inv, -R_inv @ t], axis=-1)
        return np.concatenate([top, T[..., 3:, :]], axis=-2)
    R_inv = R.transpose(-1, -2)
    top = torch.cat([R_inv, -R_inv @ t], dim=-1)
    return torch.cat([top, T[..., 3:, :]], dim=-2)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def look_at(centres: torch.Tensor, targets: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Cameras at centres (F, 3) whose z axis points at targets (F, 3) or (3,), with the y axis
    as close to `down` (3,) as possible. Returns c2w (F, 4, 4) (OpenCV axes)."""
    z = _normalize(targets - centres)
    x = _normalize(torch.linalg.cross(down.expand_as(z), z))
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=centres.dtype).repeat(len(centres), 1, 1)
    c2w[:, :3, :3] = torch.stack([x, y, z], dim=-1)
    c2w[:, :3, 3] = centres
    return c2w


def average_pose(c2w):
    """(N, 3|4, 4) c2w -> (4, 4) average camera-to-world: mean centre, viewing direction (z)
    along the summed z axes, down axis (y) the summed y axes made orthogonal to it (LLFF's
    poses_avg in OpenCV axes). A numpy array in gives a numpy array out."""
    if isinstance(c2w, np.ndarray):
        return average_pose(torch.from_numpy(c2w)).numpy()
    centre = c2w[:, :3, 3].mean(0)
    z = _normalize(c2w[:, :3, 2].sum(0))
    return look_at(centre[None], (centre + z)[None], c2w[:, :3, 1].sum(0))[0]


# A layout is forward-facing (LLFF-like, NDC rays) when every optical axis lies within this angle
# of the mean axis ...
FORWARD_MAX_AXIS_DEG = 60.0
# ... and the camera centres spread (largest distance from their mean) at most this fraction of
# the depth the cameras look at (the axes' nearest point; infinite when they do not converge).
FORWARD_MAX_SPREAD = 0.5


def focus_point(c2w):
    """(N, 3|4, 4) c2w -> (3,) the point nearest to every optical axis in the least-squares sense
    (where inward-facing cameras look; instant-ngp's scene centre), or None when the axes are
    (nearly) parallel. A numpy array in gives a numpy array out."""
    if isinstance(c2w, np.ndarray):
        point = focus_point(torch.from_numpy(c2w))
        return None if point is None else point.numpy()
    c2w = c2w.double()
    centres, axes = c2w[:, :3, 3], _normalize(c2w[:, :3, 2])
    # Sum over cameras of the projector onto the plane orthogonal to the axis: (I - z z^T) p.
    proj = torch.eye(3, dtype=c2w.dtype) - axes[:, :, None] * axes[:, None, :]
    A, b = proj.sum(0), (proj @ centres[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    if eig[0] < 1e-3 * len(c2w):  # parallel axes: no finite point is nearer than another
        return None
    return torch.linalg.solve(A, b)


def is_forward_facing(c2w, max_axis_deg: float = FORWARD_MAX_AXIS_DEG) -> bool:
    """Whether cameras (N, 3|4, 4) c2w (torch or numpy) form a forward-facing capture (LLFF:
    all look roughly one way at a scene in front of them) rather than a walk around an object.

    True when every optical axis lies within `max_axis_deg` of the mean axis and the centres'
    spread (largest distance from the mean centre) is at most FORWARD_MAX_SPREAD of the depth
    the cameras look at: the distance along the mean axis to the axes' focus point, infinite
    when the axes are parallel or diverge. A ring of cameras looking at an object fails both:
    its axes differ by up to twice its elevation angle and its diameter is comparable to the
    distance to the object; a camera that sees another one in front of it at the scene's depth
    (looks back at the others) has a large spread for that depth."""
    if isinstance(c2w, np.ndarray):
        c2w = torch.from_numpy(c2w)
    c2w = c2w.double()
    axes = _normalize(c2w[:, :3, 2])
    mean_axis = axes.sum(0)
    if mean_axis.norm() < 1e-6 * len(axes):
        return False
    mean_axis = mean_axis / mean_axis.norm()
    cos_min = float((axes @ mean_axis).min())
    if cos_min < float(np.cos(np.radians(max_axis_deg))):
        return False
    centres = c2w[:, :3, 3]
    mean_centre = centres.mean(0)
    spread = float((centres - mean_centre).norm(dim=-1).max())
    point = focus_point(c2w)
    depth = np.inf if point is None else float((point - mean_centre) @ mean_axis)
    if depth <= 0:  # the axes diverge: the scene in front is at no finite depth
        depth = np.inf
    return spread <= FORWARD_MAX_SPREAD * depth


def object_centred_frame(c2w: np.ndarray) -> np.ndarray:
    """(4, 4) similarity world_from_input for cameras (N, 4, 4) (numpy) around an object: the
    origin at their focus point (the mean centre when the axes are parallel), scaled so the
    farthest camera is at distance 1 (the unit ball a scene contraction expects)."""
    centres = c2w[:, :3, 3]
    centre = focus_point(c2w)
    if centre is None:
        centre = centres.mean(0)
    scale = 1.0 / max(np.linalg.norm(centres - centre, axis=1).max(), 1e-12)
    world_from_input = np.diag([scale, scale, scale, 1.0])
    world_from_input[:3, 3] = -scale * centre
    return world_from_input
