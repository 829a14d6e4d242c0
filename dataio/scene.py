"""The one in-memory form every reader returns, and the error a reader raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SceneData:
    """A loaded scene. All images share one size (H, W).

    Conventions (see ../shared/DESIGN.md): c2w are camera-to-world 4x4 with OpenCV camera axes
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
