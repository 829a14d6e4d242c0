"""Test-time optimisation (tto, as the eval.tto_* keys call it) against a frozen model: the
pose of a view the model has no camera for (refine_pose), and its appearance code
(fit_appearance, NeRF-W). Used by the held-out view evaluation (evaluation/heldout.py) and the
registration of new photos."""

from __future__ import annotations

import contextlib

import torch

from geometry.poses import se3_exp
from losses.photometric import photometric_loss


@contextlib.contextmanager
def frozen(model):
    """The model's parameters frozen and the model in eval mode (no density noise) inside;
    both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def refine_pose(
    model,
    image: torch.Tensor,
    c2w_init: torch.Tensor,
    K: torch.Tensor,
    iters: int,
    lr: float,
    n_rays: int,
    progress: float | None = None,
    seed: int = 0,
    pixels_from: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Photometric pose optimisation of one view against the frozen model.

    image (H, W, 3) in [0, 1], c2w_init (4, 4), K (3, 3): on the model's device. A 6-vector
    se(3) correction xi (rotation, translation), zero at the start, gives c2w = c2w_init
    exp(xi); Adam(lr) for `iters` steps, each on `n_rays` uniformly drawn pixels (seeded), or
    drawn from the pixels where the (H, W) bool `pixels_from` holds (an object mask).
    Returns the refined (4, 4) c2w (detached) and {"loss_start", "loss_end", "skipped"}
    (photometric MSE of the first and last batch; steps skipped as not finite, see _adam)."""
    device = c2w_init.device
    H, W = image.shape[:2]
    pixels = image.reshape(-1, 3)
    xi = torch.zeros(1, 6, device=device, requires_grad=True)
    history = {"loss_start": None, "loss_end": None, "skipped": 0}
    if iters <= 0:
        return c2w_init.detach().clone(), history
    gen = torch.Generator(device=device).manual_seed(int(seed))
    ids = torch.zeros(n_rays, dtype=torch.long, device=device)
    c2w_init, K = c2w_init.detach().float(), K.detach().float()

    allowed = None if pixels_from is None else torch.nonzero(pixels_from.reshape(-1))[:, 0]

    def loss_fn():
        if allowed is None:
            pix = torch.randint(H * W, (n_rays,), generator=gen, device=device)
        else:
            pix = allowed[torch.randint(len(allowed), (n_rays,), generator=gen, device=device)]
        uv = torch.stack([pix % W, torch.div(pix, W, rounding_mode="floor")], -1) + 0.5
        c2w = c2w_init @ se3_exp(xi)[0]  # correction in the camera's own frame
        o, d, v = model.rays(ids, uv.float(), c2w[None], K[None])
        render = model.render_rays(o, d, v, progress, perturb=False)
        return sum(photometric_loss(render, pixels[pix]).values())

    with frozen(model):
        history = _adam(xi, lr, iters, loss_fn)
    return (c2w_init @ se3_exp(xi.detach())[0]).detach(), history


def fit_appearance(
    model,
    image: torch.Tensor,
    c2w: torch.Tensor,
    K: torch.Tensor,
    iters: int,
    lr: float,
    n_rays: int,
    progress: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor | None, dict]:
    """NeRF-W's test-time appearance: the code of a view the model was not trained on,
    optimised on the left half of its image (columns u < W // 2) with the model and the pose
    frozen, so that the right half can be scored on pixels the fit never saw.

    image (H, W, 3), c2w (4, 4), K (3, 3) on the model's device. The code starts at the mean of
    the training codes; Adam(lr) for `iters` steps of `n_rays` seeded random left-half pixels.
    Returns the code (A,) (None for a model without codes) and {"loss_start", "loss_end",
    "skipped"} (as refine_pose's)."""
    history = {"loss_start": None, "loss_end": None, "skipped": 0}
    if not model.has_appearance:
        return None, history
    device = c2w.device
    H, W = image.shape[:2]
    with torch.no_grad():
        code = model.appearance_code().detach().clone()
    if iters <= 0:
        return code, history
    code.requires_grad_(True)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    ids = torch.zeros(n_rays, dtype=torch.long, device=device)
    c2w, K = c2w.detach().float(), K.detach().float()

    def loss_fn():
        u = torch.randint(W // 2, (n_rays,), generator=gen, device=device)
        v = torch.randint(H, (n_rays,), generator=gen, device=device)
        uv = torch.stack([u, v], -1).float() + 0.5
        o, d, vd = model.rays(ids, uv, c2w[None], K[None])
        render = model.render_rays(o, d, vd, progress, perturb=False, appearance=code)
        return sum(photometric_loss(render, image[v, u]).values())

    with frozen(model):
        history = _adam(code, lr, iters, loss_fn)
    return code.detach(), history


def _adam(param: torch.Tensor, lr: float, iters: int, loss_fn) -> dict:
    """Adam(lr) on one tensor for `iters` steps of loss_fn(); returns {"loss_start",
    "loss_end", "skipped"}: the loss of the first and the last step, and how many steps were
    skipped because their loss or gradient was not finite (the parameter keeps its last finite
    value: a NaN pose would put NaN sample points into the grid's lookups, and torch's CPU
    grid_sample with border padding reads out of bounds on NaN coordinates)."""
    optimizer = torch.optim.Adam([param], lr=lr)
    history = {"loss_start": None, "loss_end": None, "skipped": 0}
    for it in range(iters):
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(loss) and torch.isfinite(param.grad).all():
            optimizer.step()
        else:
            history["skipped"] += 1
        if it == 0:
            history["loss_start"] = float(loss.detach())
    history["loss_end"] = float(loss.detach())
    return history
