"""FreeNeRF's occlusion regulariser (Yang et al. 2023, eq. 6): few-view fields put floaters
right in front of the training cameras, where one view alone explains a pixel with density no
other view checks. The term charges the weight a ray spends on its nearest samples."""

from __future__ import annotations

import torch


def occlusion_loss(
    weights: torch.Tensor, fraction: float, s: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """{'occlusion': mean over rays of the weight on the nearest `fraction` of the ray}.
    weights (R, S), samples sorted from the near end; s (R, S): the samples' positions along
    the ray normalised to [0, 1], or None for samples uniform over it, of which the first
    `fraction` (at least one) are charged."""
    if s is not None:
        return {"occlusion": (weights * (s < fraction)).sum(-1).mean()}
    m = max(1, round(fraction * weights.shape[-1]))
    return {"occlusion": weights[:, :m].sum(-1).mean()}
