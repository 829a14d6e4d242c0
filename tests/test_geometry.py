"""Rotation maps, ray generation, NDC, volume rendering and pose metrics: known answers and
invariants."""

import math

import numpy as np
import pytest
import torch

from evaluation.pose_metrics import camera_report, pose_errors
from geometry.alignment import umeyama
from geometry.frames import CV_GL_FLIP, move_cameras, similarity_scale
from geometry.poses import average_pose, rigid_inverse, se3_exp, se3_log
from geometry.rays import ndc_rays, ndc_to_world_depth, pixel_centers, pixels_to_rays, project
from geometry.rotations import (
    REPRESENTATIONS,
    axis_angle_to_matrix,
    geodesic_angle,
    matrix_to_axis_angle,
    matrix_to_params,
    matrix_to_quaternion,
    matrix_to_rotation6d,
    params_to_matrix,
    quaternion_to_matrix,
    rotation6d_to_matrix,
)
from models.encoding import band_weights, positional_encoding
from models.rendering import composite, sample_pdf, stratified_t


def random_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    rotvec = torch.randn(n, 3, generator=g, dtype=torch.float64)
    rotvec = (
        rotvec
        / rotvec.norm(dim=-1, keepdim=True)
        * torch.rand(n, 1, generator=g, dtype=torch.float64)
        * 3.0
    )
    return axis_angle_to_matrix(rotvec)


def is_rotation(R, atol=1e-6):
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    return torch.allclose(R @ R.transpose(-1, -2), eye, atol=atol) and torch.allclose(
        torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol
    )


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_rotation_round_trip(representation):
    R = random_rotations(64)
    back = params_to_matrix(representation, matrix_to_params(representation, R))
    assert is_rotation(back)
    assert torch.allclose(back, R, atol=1e-9)


def test_representations_agree_on_known_rotation():
    # 90 degrees about z maps x to y.
    rotvec = torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64)
    R = axis_angle_to_matrix(rotvec)
    assert torch.allclose(
        R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
        torch.tensor([0.0, 1, 0], dtype=torch.float64),
        atol=1e-12,
    )
    quat = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    assert torch.allclose(quaternion_to_matrix(quat), R, atol=1e-12)
    assert torch.allclose(matrix_to_quaternion(R), quat, atol=1e-12)
    assert torch.allclose(rotation6d_to_matrix(matrix_to_rotation6d(R)), R, atol=1e-12)


def test_quaternion_is_normalised_at_the_boundary():
    quat = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # not unit: still identity
    assert torch.allclose(quaternion_to_matrix(quat), torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("angle", [0.0, 1e-8, math.pi - 1e-4])
@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_gradients_finite_at_singularities(representation, angle):
    R = axis_angle_to_matrix(torch.tensor([angle, 0.0, 0.0], dtype=torch.float64))
    params = matrix_to_params(representation, R).clone().requires_grad_(True)
    out = params_to_matrix(representation, params)
    assert torch.isfinite(out).all()
    (out * torch.randn(3, 3, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(params.grad).all()


def test_axis_angle_angle_is_geodesic():
    R = random_rotations(32, seed=3)
    angles = matrix_to_axis_angle(R).norm(dim=-1)
    assert torch.allclose(
        geodesic_angle(R, torch.eye(3, dtype=R.dtype).expand_as(R)), angles, atol=1e-6
    )


def test_se3_exp_matches_matrix_exponential():
    xi = torch.tensor(
        [[0.3, -0.2, 0.1, 0.5, -1.0, 2.0], [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]], dtype=torch.float64
    )
    for i in range(2):
        twist = torch.zeros(4, 4, dtype=torch.float64)
        w, v = xi[i, :3], xi[i, 3:]
        twist[:3, :3] = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
        twist[:3, 3] = v
        assert torch.allclose(se3_exp(xi[i]), torch.linalg.matrix_exp(twist), atol=1e-10)


def random_twists(n, seed=0, max_angle=3.0):
    """(n, 6) twists with rotation angles up to max_angle (< pi) and unit-scale translations."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle
    return torch.cat([axis * angle, torch.randn(n, 3, generator=g, dtype=torch.float64)], dim=-1)


def test_se3_log_inverts_se3_exp():
    xi = random_twists(64, seed=5)
    assert torch.allclose(se3_log(se3_exp(xi)), xi, atol=1e-9)
    T = se3_exp(xi)
    assert torch.allclose(se3_exp(se3_log(T)), T, atol=1e-9)
    assert torch.allclose(se3_log(T[:, :3]), xi, atol=1e-9)  # 3x4 poses too


@pytest.mark.parametrize("angle", [0.0, 1e-8, 1e-5, math.pi - 1e-4, math.pi])
def test_se3_log_and_rigid_inverse_finite_at_singular_angles(angle):
    w = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64) / 3 * angle
    xi = torch.cat([w, torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)])
    T = se3_exp(xi).requires_grad_(True)
    log = se3_log(T)
    inv = rigid_inverse(T)
    assert torch.isfinite(log).all() and torch.isfinite(inv).all()
    weights = torch.randn(6, dtype=torch.float64)
    ((log * weights).sum() + inv.sum()).backward()
    assert torch.isfinite(T.grad).all()
    # At exactly pi the axis sign is a free choice: compare the transforms, not the twists.
    assert torch.allclose(se3_exp(log.detach()), T.detach(), atol=1e-9)
    assert torch.allclose(inv.detach() @ T.detach(), torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_rigid_inverse_matches_the_general_inverse():
    T = se3_exp(random_twists(16, seed=7))
    inv = rigid_inverse(T)
    assert inv.shape == (16, 4, 4)
    assert torch.allclose(inv, torch.linalg.inv(T), atol=1e-12)
    assert torch.equal(rigid_inverse(T[:, :3]), inv[:, :3])  # (..., 3, 4) in, (..., 3, 4) out
    assert torch.allclose(rigid_inverse(inv), T, atol=1e-12)
    as_numpy = rigid_inverse(T.numpy())
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, np.linalg.inv(T.numpy()), atol=1e-12)


def test_average_pose_is_the_identity_for_symmetric_cameras_and_numpy_in_numpy_out():
    # Cameras tilted symmetrically about the identity: the mean centre and viewing direction.
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    tilt = torch.tensor([[0.0, 0.2, 0.0], [0.0, -0.2, 0.0]], dtype=torch.float64)
    c2w[:, :3, :3] = axis_angle_to_matrix(tilt)
    c2w[:, :3, 3] = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    assert torch.allclose(average_pose(c2w), torch.eye(4, dtype=torch.float64), atol=1e-12)
    moved = se3_exp(random_twists(1, seed=2))[0]
    assert torch.allclose(average_pose(moved @ c2w), moved, atol=1e-12)
    avg = average_pose((moved @ c2w).numpy())
    assert isinstance(avg, np.ndarray)
    np.testing.assert_allclose(avg, moved.numpy(), atol=1e-12)


def camera(seed=0):
    R = random_rotations(1, seed)[0].float()
    c2w = torch.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, torch.tensor([0.3, -0.5, 1.2])
    K = torch.tensor([[80.0, 0, 33.0], [0, 75.0, 24.5], [0, 0, 1]])
    return c2w, K


def test_ray_through_projected_point_hits_it():
    c2w, K = camera()
    w2c = rigid_inverse(c2w)
    g = torch.Generator().manual_seed(1)
    p_cam = torch.randn(50, 3, generator=g) * 0.5 + torch.tensor([0, 0, 4.0])
    p_world = p_cam @ c2w[:3, :3].T + c2w[:3, 3]
    uvz = project(p_world, K, w2c)
    o, d = pixels_to_rays(uvz[:, :2], K, c2w.expand(50, 4, 4))
    # Directions have camera z = 1, so depth along the ray is the camera-space depth.
    assert torch.allclose(o + uvz[:, 2:] * d, p_world, atol=1e-4)


def test_pixel_centres_are_at_half_integers():
    uv = pixel_centers(2, 3)
    assert uv[0, 0].tolist() == [0.5, 0.5]
    assert uv[1, 2].tolist() == [2.5, 1.5]
    # The ray through the centre of a 2x2 image's principal point (1, 1) is the optical axis.
    K = torch.tensor([[10.0, 0, 1.0], [0, 10.0, 1.0], [0, 0, 1]])
    o, d = pixels_to_rays(torch.tensor([[1.0, 1.0]]), K, torch.eye(4)[None])
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, 1.0]]))


def test_ndc_maps_points_to_projection_and_lines_to_lines():
    H, W, fx, fy = 48, 64, 60.0, 58.0
    K = torch.tensor([[fx, 0, W / 2], [0, fy, H / 2], [0, 0, 1]])
    uv = torch.tensor([[5.5, 7.5], [40.5, 30.5], [32.0, 24.0]])
    c2w = torch.eye(4).expand(3, 4, 4).clone()
    c2w[:, :3, 3] = torch.tensor([0.1, -0.2, 0.0])
    o, d = pixels_to_rays(uv, K, c2w)
    o_ndc, d_ndc = ndc_rays(o, d, torch.full((3,), fx), torch.full((3,), fy), H, W, near=1.0)
    for depth in (1.0, 2.5, 10.0):
        p = o + depth * d  # camera z = depth (camera at z = 0)
        expected = torch.stack(
            [2 * fx * p[:, 0] / (W * p[:, 2]), 2 * fy * p[:, 1] / (H * p[:, 2]), 1 - 2 / p[:, 2]],
            -1,
        )
        # The NDC point of p lies on the NDC ray (lines map to lines) ...
        t = (expected[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        assert torch.allclose(o_ndc + t[:, None] * d_ndc, expected, atol=1e-5)
        # ... at the ray parameter that ndc_to_world_depth inverts (origins on z = 1 here).
        assert torch.allclose(ndc_to_world_depth(t), p[:, 2], rtol=1e-4)
    assert torch.allclose(o_ndc[:, 2], torch.full((3,), -1.0))  # origins on the near plane


def test_volume_rendering_known_answers():
    t = torch.linspace(0, 1, 65)[None, :-1]
    dirs = torch.tensor([[0.0, 0.0, 1.0]])
    rgb = torch.zeros(1, 64, 3)
    rgb[:, 32:] = torch.tensor([0.2, 0.4, 0.6])
    sigma = torch.zeros(1, 64)
    sigma[:, 32] = 1e6  # an opaque wall at t[32]
    out = composite(rgb, sigma, t, dirs)
    assert torch.allclose(out["rgb"], torch.tensor([[0.2, 0.4, 0.6]]), atol=1e-5)
    assert torch.allclose(out["t"], t[:, 32], atol=1e-5)
    assert torch.allclose(out["acc"], torch.ones(1), atol=1e-5)
    # Empty space: nothing accumulated, white background shows through.
    empty = composite(rgb, torch.zeros(1, 64), t, dirs, white_bkgd=True)
    assert torch.allclose(empty["rgb"], torch.ones(1, 3)) and empty["acc"].item() == 0
    # Homogeneous medium: opacity after distance L is 1 - exp(-sigma L) (last bin is infinite).
    const = composite(rgb, torch.full((1, 64), 2.0), t, dirs)
    assert torch.allclose(
        const["weights"][:, :-1].sum(),
        torch.tensor(1 - math.exp(-2.0 * t[0, -1].item())),
        atol=1e-5,
    )


def test_stratified_and_pdf_sampling():
    t = stratified_t(4, 16, 2.0, 6.0, perturb=True)
    assert (t >= 2).all() and (t <= 6).all() and (t.diff(dim=-1) > 0).all()
    bins = torch.linspace(0, 1, 11).expand(2, 11)
    weights = torch.zeros(2, 10)
    weights[:, 7] = 1.0
    samples = sample_pdf(bins, weights, 100, deterministic=False)
    assert ((samples >= 0.69) & (samples <= 0.81)).float().mean() > 0.95


def test_barf_band_weights():
    assert torch.allclose(band_weights(4, 0.0, (0.1, 0.5)), torch.zeros(4))
    assert torch.allclose(band_weights(4, 0.5, (0.1, 0.5)), torch.ones(4))
    w = band_weights(4, 0.3, (0.1, 0.5))  # alpha = 2: two bands on, the rest off
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-6)
    x = torch.rand(5, 3)
    enc = positional_encoding(x, 4, progress=0.0, c2f=(0.1, 0.5))
    assert torch.equal(enc[:, :3], x) and torch.count_nonzero(enc[:, 3:]) == 0


def test_umeyama_recovers_similarity():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(10, 3, generator=g, dtype=torch.float64)
    R = random_rotations(1, seed=5)[0]
    dst = 2.5 * src @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, R_est, t_est = umeyama(src, dst)
    assert abs(s - 2.5) < 1e-9 and torch.allclose(R_est, R, atol=1e-9)


@pytest.mark.parametrize("alignment", ["rotation-aware", "centre-only"])
def test_pose_errors_zero_for_similar_copy_and_report_known_angle(alignment):
    g = torch.Generator().manual_seed(2)
    n = 8
    c2w_gt = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w_gt[:, :3, :3] = random_rotations(n, seed=7)
    c2w_gt[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64)
    S = torch.eye(4, dtype=torch.float64)
    S[:3, :3] = random_rotations(1, seed=9)[0] * 3.0
    S[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    pred = S @ c2w_gt  # a similar copy of the ground truth
    pred[:, :3, :3] /= 3.0
    err = pose_errors(pred, c2w_gt, alignment)
    assert err["rot_max_deg"] < 1e-4 and err["trans_mean"] < 1e-6
    # Rotating one camera about its own centre by 5 degrees reports 5 degrees for it.
    bumped = c2w_gt.clone()
    bumped[0, :3, :3] = bumped[0, :3, :3] @ axis_angle_to_matrix(
        torch.tensor([0.0, math.radians(5.0), 0.0], dtype=torch.float64)
    )
    err = pose_errors(bumped, c2w_gt, alignment)
    assert err["rot_median_deg"] < 1.0 and 3.0 < err["rot_max_deg"] < 5.5


def test_identity_start_error_is_reported():
    c2w_gt = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    c2w_gt[:, :3, 3] = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.float64
    )
    c2w_gt[1, :3, :3] = axis_angle_to_matrix(torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64))
    report = camera_report(c2w_gt, c2w_gt, torch.tensor([100.0]), torch.tensor([110.0]))
    assert report["rotation-aware"]["rot_max_deg"] < 1e-4
    assert report["rotation-aware"]["identity_start"]["rot_max_deg"] > 3.0
    assert abs(report["focal_error_percent"] - 100 * 10 / 110) < 1e-6


def test_the_opencv_opengl_flip_and_a_similarity_move_of_cameras():
    assert np.array_equal(CV_GL_FLIP @ CV_GL_FLIP, np.eye(4))  # one matrix, either way
    c2w_cv = rigid_inverse(se3_exp(torch.tensor([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]))).numpy()
    c2w_gl = c2w_cv @ CV_GL_FLIP
    # the same camera: OpenCV looks along +z and points y down, OpenGL along -z with y up
    assert np.allclose(c2w_gl[:3, 2], -c2w_cv[:3, 2]) and np.allclose(c2w_gl[:3, 1], -c2w_cv[:3, 1])
    assert np.allclose(c2w_gl[:3, 3], c2w_cv[:3, 3])
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.4, 0.0], dtype=torch.float64)).numpy()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = 2.5 * R, [1.0, -1.0, 0.5]
    assert similarity_scale(T) == pytest.approx(2.5)
    moved = move_cameras(T, c2w_cv[None])[0]
    assert np.allclose(moved[:3, 3], T[:3, :3] @ c2w_cv[:3, 3] + T[:3, 3])
    assert np.allclose(moved[:3, :3], R @ c2w_cv[:3, :3])  # still a rotation
    assert np.allclose(move_cameras(np.linalg.inv(T), moved[None])[0], c2w_cv)
