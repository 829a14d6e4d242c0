"""FreeNeRF's occlusion regulariser (Yang et al. 2023, eq. 6): few-view fields put floaters
right in front of the training cameras, where one view alone explains a pixel with density no
other view checks. The term charges the weight a ray spends on its nearest samples."""

from __future__ import annotations

import torch


def occlusion_loss(weights: torch.Tensor, fraction: float) -> dict[str, torch.Tensor]:
    """{'occlusion': mean over rays of the weight on the first `fraction` of the S samples}
    (at least one sample). weights (R, S), samples sorted from the near end."""
    m = max(1, round(fraction * weights.shape[-1]))
    return {"occlusion": weights[:, :m].sum(-1).mean()}
