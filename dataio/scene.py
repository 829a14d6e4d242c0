"""The one in-memory form every reader returns, and the error a reader raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from utils.errors import DataError


@dataclass
class SceneData:
    """A loaded scene. All images share one size (H, W).

    Conventions (docs/conventions.md): c2w are camera-to-world 4x4 with OpenCV camera axes
    (x right, y down, z forward); K uses pixel centres at +0.5 (top-left pixel centre (0.5, 0.5)).

    images:      (N, H, W, 3) float32 in [0, 1], every image of the scene (train and test).
    image_names: N file names (sorted order used to match pose rows).
    train_ids / test_ids: indices into images.
    c2w_gt:      (N, 4, 4) float32 ground-truth camera-to-world, or None when unknown.
                 Used only for initialisation modes that ask for it and for evaluation.
    K_gt:        (N, 3, 3) float32 ground-truth intrinsics at (H, W), or None.
    near, far:   depth bounds of the scene in the c2w_gt world units (or a sensible default
                 when unknown); forward-facing scenes are scaled so near is about 1.
    forward_facing: True for LLFF-like captures (NDC rays), False for cameras around an object.
    masks:       (N, H, W) float32 in [0, 1] object masks, or None.
    unbounded:   True when the scene reaches far beyond the cameras (a real 360-degree capture)
                 and the reader has put the cameras inside the unit ball, the region mip-NeRF
                 360's contraction leaves as it is: euclidean rays then contract what lies
                 beyond (model.contract auto). False for bounded objects (DTU's sphere, Blender
                 renders on a transparent background) and for forward-facing scenes, whose depth
                 NDC handles (their world is not normalised for contraction).
    extras:      reader-specific extras, e.g. world_from_input (4, 4): x_ours = T @ [x_input, 1].
    """

    name: str
    images: torch.Tensor
    image_names: list[str]
    train_ids: list[int]
    test_ids: list[int]
    c2w_gt: torch.Tensor | None
    K_gt: torch.Tensor | None
    near: float
    far: float
    forward_facing: bool
    masks: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    unbounded: bool = False

    @property
    def H(self) -> int:
        return int(self.images.shape[1])

    @property
    def W(self) -> int:
        return int(self.images.shape[2])

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])


def checked_view_ids(key: str, ids, n_views: int, where) -> list[int] | None:
    """data.train_views / data.test_views as a list of distinct ids within the scene's views
    (None stays None); anything else is one sentence naming the key."""
    if ids is None:
        return None
    bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= i < n_views]
    if bad:
        raise DataError(
            f"data.{key} {bad} are not view ids of {where} (it has views 0..{n_views - 1})."
        )
    if len(set(ids)) != len(ids):
        raise DataError(f"data.{key} {list(ids)} repeats a view id; list each view once.")
    return [int(i) for i in ids]


def choose_views(scene: SceneData, train_views, test_views) -> SceneData:
    """The scene with the views data.train_views / data.test_views name (a sparse-view run on
    any reader that splits by test_every): train_views None keeps every view that is not a test
    view; test_views None keeps the reader's test views, less any named for training."""
    n, where = scene.n_images, f"scene {scene.name!r}"
    train = checked_view_ids("train_views", train_views, n, where)
    test = checked_view_ids("test_views", test_views, n, where)
    if test is None:
        test = [i for i in scene.test_ids if train is None or i not in train]
    if train is None:
        train = [i for i in range(n) if i not in set(test)]
    check_disjoint(train, test)
    return replace(scene, train_ids=train, test_ids=test)


def check_disjoint(train_ids: list[int], test_ids: list[int]) -> None:
    """A view is a training or a held-out view, not both."""
    both = sorted(set(train_ids) & set(test_ids))
    if both:
        raise DataError(
            f"views {both} are in both data.train_views and data.test_views; keep them in one."
        )
