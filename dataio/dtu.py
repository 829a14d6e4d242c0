"""DTU scans in the NeuS/IDR layout: image/*.png, mask/*.png, cameras_sphere.npz.

world_mat_i is the projection K [R | t] of view i at the original 1600x1200, scale_mat_i maps
the unit sphere around the object into DTU's world; P = world_mat @ scale_mat projects points
of the normalised world (object inside the unit sphere), which is the world frame we return.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from dataio.images import list_images, load_images, read_image, resize_image, same_aspect
from dataio.scene import SceneData, check_disjoint, checked_view_ids
from utils.errors import DataError

# Sparse-view protocol (SPARF / TrackNeRF): training views in this order (first 3, 6 or 9 used),
# views never used, and every remaining view is a test view.
PROTOCOL_TRAIN_VIEWS = (25, 22, 28, 40, 44, 48, 0, 8, 13)
EXCLUDED_VIEWS = (*range(3, 8), *range(16, 22), *range(36, 40))

# (height, width) the DTU camera matrices were calibrated at, when camera_mat_0 does not tell.
DTU_FULL_SIZE = (1200, 1600)

# Margin around the unit sphere holding the object, for near / far.
SPHERE_MARGIN = 1.1
MIN_NEAR = 0.05


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, 4) projection P ~ K [R | t] with integer pixel centres -> (K (3, 3) with positive
    focals and K[2, 2] = 1, c2w (4, 4) in OpenCV axes)."""
    K, R, centre_h = cv2.decomposeProjectionMatrix(P)[:3]
    K = K / K[2, 2]
    # RQ leaves one sign per axis free: K R = (K D)(D R) with D = diag(+-1); choose positive focals.
    signs = np.sign(np.diag(K))
    signs[signs == 0] = 1.0
    K = K * signs[None, :]
    R = signs[:, None] * R
    if np.linalg.det(R) < 0:
        # P is defined up to scale; a negative scale shows up as an improper R.
        R = -R
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = centre_h[:3, 0] / centre_h[3, 0]
    return K, c2w


def _full_size(cams: np.lib.npyio.NpzFile) -> tuple[float, float]:
    """(height, width) the cameras were calibrated at."""
    # NeuS's camera_mat maps pixels to [-1, 1]: its diagonal is 2 / W, 2 / H.
    if "camera_mat_0" in cams.files:
        cam = cams["camera_mat_0"]
        if cam[0, 0] > 0 and cam[1, 1] > 0:
            return 2.0 / cam[1, 1], 2.0 / cam[0, 0]
    return DTU_FULL_SIZE


def split_views(
    n_views: int, train_views: list[int] | None, test_views: list[int] | None, where: Path
) -> tuple[list[int], list[int]]:
    """Train / test view ids for the sparse-view protocol, checked against the scan's views.

    train_views None: every id that is neither excluded nor a test view. test_views None: every
    id outside the 9-view training list, the excluded ids and train_views."""
    train_views = checked_view_ids("train_views", train_views, n_views, where)
    test_views = checked_view_ids("test_views", test_views, n_views, where)
    if test_views is None:
        reserved = set(PROTOCOL_TRAIN_VIEWS) | set(EXCLUDED_VIEWS) | set(train_views or ())
        test_ids = [i for i in range(n_views) if i not in reserved]
    else:
        test_ids = [int(i) for i in test_views]
    if train_views is None:
        unused = set(EXCLUDED_VIEWS) | set(test_ids)
        train_ids = [i for i in range(n_views) if i not in unused]
    else:
        train_ids = [int(i) for i in train_views]
    check_disjoint(train_ids, test_ids)
    if not train_ids and train_views is not None:
        raise DataError(
            f"data.train_views [] names no view of {where}, so there is nothing to train on; "
            "list the views to train on, or null for the protocol's."
        )
    if not train_ids:
        raise DataError(
            f"data.test_views and the views DTU's protocol excludes leave no view of {where} to "
            "train on; hold out fewer or set data.train_views."
        )
    return train_ids, test_ids


def load_dtu(
    data_dir: str | Path,
    train_views: list[int] | None = None,
    test_views: list[int] | None = None,
    use_masks: bool = True,
    name: str | None = None,
) -> SceneData:
    """Read a DTU scan (NeuS layout) in its normalised world: object inside the unit sphere.

    View id i is the i-th image in sorted name order and owns world_mat_i / scale_mat_i."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"scene folder {data_dir} does not exist; check data.data_dir.")
    cam_path = data_dir / "cameras_sphere.npz"
    if not cam_path.is_file():
        raise DataError(
            f"{cam_path} is missing; a DTU scan needs NeuS's cameras_sphere.npz next to image/."
        )
    paths = list_images(data_dir / "image")
    if not paths:
        raise DataError(f"{data_dir / 'image'} holds no images; check the DTU scan folder.")
    try:
        cams = np.load(cam_path)
        full_h, full_w = _full_size(cams)
        n = len(paths)
        missing = [
            f"{k}_{i}"
            for i in range(n)
            for k in ("world_mat", "scale_mat")
            if f"{k}_{i}" not in cams
        ]
        if missing:
            raise DataError(
                f"{cam_path} lacks {missing[:4]} for the {n} images in {data_dir / 'image'}; "
                "every image needs world_mat_i and scale_mat_i."
            )
        projections = [(cams[f"world_mat_{i}"] @ cams[f"scale_mat_{i}"])[:3] for i in range(n)]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read {cam_path} ({e}); restore the file.") from None

    images = load_images(paths)
    h, w = images.shape[1:3]
    if not same_aspect((round(full_h), round(full_w)), (h, w)):
        raise DataError(
            f"images in {data_dir / 'image'} are {w}x{h} but {cam_path} is calibrated for "
            f"{full_w:.0f}x{full_h:.0f}; use images with that aspect ratio."
        )
    sx, sy = w / full_w, h / full_h
    K = np.zeros((n, 3, 3))
    c2w = np.zeros((n, 4, 4))
    for i, P in enumerate(projections):
        K_cv, c2w[i] = decompose_projection(P.astype(np.float64))
        # OpenCV/DTU put pixel centres on integers, ours on +0.5: shift, then scale to our size.
        to_ours = np.array([[sx, 0.0, 0.5 * sx], [0.0, sy, 0.5 * sy], [0.0, 0.0, 1.0]])
        K[i] = to_ours @ K_cv

    # The object sits at the origin of the normalised world: every camera must see it in front.
    origin_depth = np.einsum("nj,nj->n", -c2w[:, :3, 3], c2w[:, :3, 2])
    if (origin_depth <= 0).any():
        raise DataError(
            f"{cam_path} puts the object behind camera(s) {np.flatnonzero(origin_depth <= 0)}; "
            "it is not a NeuS cameras_sphere.npz for these images."
        )
    dists = np.linalg.norm(c2w[:, :3, 3], axis=1)
    near = max(dists.min() - SPHERE_MARGIN, MIN_NEAR)
    far = dists.max() + SPHERE_MARGIN

    masks = None
    if use_masks:
        mask_paths = list_images(data_dir / "mask") if (data_dir / "mask").is_dir() else []
        if len(mask_paths) != n:
            raise DataError(
                f"{data_dir / 'mask'} holds {len(mask_paths)} masks for {n} images; provide one "
                "mask per image or set data.use_masks false."
            )
        # Masks are soft 0..255 in three equal channels; one channel is the mask.
        masks = np.stack([resize_image(read_image(p)[..., 0], h, w) for p in mask_paths])

    train_ids, test_ids = split_views(n, train_views, test_views, data_dir)
    world_from_input = np.linalg.inv(cams["scale_mat_0"].astype(np.float64))
    return SceneData(
        name=name or data_dir.name,
        images=torch.from_numpy(images),
        image_names=[p.name for p in paths],
        train_ids=train_ids,
        test_ids=test_ids,
        c2w_gt=torch.from_numpy(c2w.astype(np.float32)),
        K_gt=torch.from_numpy(K.astype(np.float32)),
        near=float(near),
        far=float(far),
        forward_facing=False,
        masks=None if masks is None else torch.from_numpy(masks.astype(np.float32)),
        extras={
            # Maps points of DTU's world (x_input) to ours, as LLFF's: x = T @ [x_input, 1]. DTU's
            # scale_mat maps ours to DTU's (a similarity, so a general inverse).
            "world_from_input": torch.from_numpy(world_from_input.astype(np.float32)),
            "full_size": (float(full_h), float(full_w)),  # (height, width) calibrated at
            # Highest-resolution version of each image (feature tracks extract SIFT there):
            # image_full/ holds the sparse-protocol views at the calibrated size.
            "feature_images": [
                str(full if (full := data_dir / "image_full" / p.name).is_file() else p)
                for p in paths
            ],
        },
    )
