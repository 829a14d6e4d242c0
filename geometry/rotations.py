"""Rotation parameterisations as pure functions (batch dims leading).

Quaternions here are (w, x, y, z); roma uses (x, y, z, w) and its quaternion-to-matrix does not
normalise, so both are handled at this boundary.
"""

from __future__ import annotations

import roma
import torch

REPRESENTATIONS = ("axis-angle", "quaternion", "rotation6D")


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) so(3) vectors -> (..., 3, 3) rotation matrices (finite gradients at angle 0)."""
    return roma.rotvec_to_rotmat(rotvec)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) with angle in [0, pi]."""
    return roma.rotmat_to_rotvec(R)


def quaternion_to_matrix(quat_wxyz: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm > 0 -> (..., 3, 3)."""
    quat_xyzw = torch.cat([quat_wxyz[..., 1:], quat_wxyz[..., :1]], dim=-1)
    return roma.unitquat_to_rotmat(quat_xyzw / quat_xyzw.norm(dim=-1, keepdim=True))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternions (w, x, y, z) with w >= 0."""
    quat_xyzw = roma.rotmat_to_unitquat(R)
    quat_wxyz = torch.cat([quat_xyzw[..., 3:], quat_xyzw[..., :3]], dim=-1)
    return torch.where(quat_wxyz[..., :1] < 0, -quat_wxyz, quat_wxyz)


def rotation6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) first two columns (Zhou et al.) -> (..., 3, 3) by Gram-Schmidt."""
    return roma.special_gramschmidt(d6.unflatten(-1, (2, 3)).transpose(-1, -2))


def matrix_to_rotation6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, column after column."""
    return R[..., :, :2].transpose(-1, -2).flatten(-2)


def identity_params(representation: str, n: int) -> torch.Tensor:
    """(n, D) parameters of the identity rotation in the given representation."""
    eye = torch.eye(3).expand(n, 3, 3)
    return matrix_to_params(representation, eye)


def matrix_to_params(representation: str, R: torch.Tensor) -> torch.Tensor:
    if representation == "axis-angle":
        return matrix_to_axis_angle(R)
    if representation == "quaternion":
        return matrix_to_quaternion(R)
    if representation == "rotation6D":
        return matrix_to_rotation6d(R)
    raise ValueError(
        f"unknown rotation representation {representation!r}; use one of {REPRESENTATIONS}"
    )


def params_to_matrix(representation: str, params: torch.Tensor) -> torch.Tensor:
    if representation == "axis-angle":
        return axis_angle_to_matrix(params)
    if representation == "quaternion":
        return quaternion_to_matrix(params)
    if representation == "rotation6D":
        return rotation6d_to_matrix(params)
    raise ValueError(
        f"unknown rotation representation {representation!r}; use one of {REPRESENTATIONS}"
    )


def geodesic_angle(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) x2 -> (...) angle of R_a R_b^T in radians.

    atan2(sin, cos) rather than arccos(cos): arccos loses half the digits near 0 (a float32
    round-off of 1e-8 in the trace reads as 0.01 degrees), atan2 keeps them."""
    M = R_a @ R_b.transpose(-1, -2)
    cos = (M.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    axis = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1
    )
    return torch.atan2(axis.norm(dim=-1) / 2, cos)
