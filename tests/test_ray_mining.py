"""training.ray_mining (engine/sampling.py): tiles drawn in proportion to their error with every
pixel inside its tile, loss weights that keep the plain mean's expectation at alpha 1, the error
map filled by training and kept by the checkpoint, and one sentence for a setting it cannot
follow."""

import pytest
import torch
from test_train import run_train

from engine.checkpoint import load_checkpoint
from engine.sampling import BatchSampler, ErrorMap
from utils.config import load_config
from utils.errors import ConfigError

H, W, T = 10, 13, 4  # 3 x 4 tiles an image; the last row of tiles 2 pixels high, the last column 1


def test_tiles_are_drawn_in_proportion_to_their_error_and_pixels_stay_inside_them():
    torch.manual_seed(0)
    errors = ErrorMap(2, H, W, T, "cpu")
    assert errors.err.shape == (2 * 3 * 4,) and bool((errors.err == 1).all())
    corner = errors.tile_of(torch.tensor([1]), torch.tensor([9 * W + 12]))  # image 1, 2 pixels
    assert int(errors.pixels_in(corner)) == 2
    errors.err[corner] = 23.0  # half of the total error (23 other tiles at 1)
    cam, pix = errors.draw(40000)
    row, col = pix // W, pix % W
    assert bool(((row < H) & (col < W)).all())
    in_corner = (cam == 1) & (row >= 8) & (col == 12)
    assert abs(float(in_corner.float().mean()) - 0.5) < 0.015
    assert abs(float((row[in_corner] == 9).float().mean()) - 0.5) < 0.02  # uniform inside it
    # draw()'s probability of every pixel of both images sums to one
    every = torch.arange(H * W)
    p = [errors.probability(errors.tile_of(torch.full_like(every, i), every)) for i in (0, 1)]
    assert abs(float(torch.cat(p).sum()) - 1.0) < 1e-5


def mined_sampler(alpha: float, mining: float = 0.75) -> BatchSampler:
    overrides = {"training:ray_mining": mining, "training:ray_mining_alpha": alpha}
    cfg = load_config(None, {**overrides, "training:ray_mining_tile": T})
    sampler = BatchSampler(cfg, torch.rand(3, H * W, 3), H, W, 2048)
    sampler.errors.err = torch.linspace(0, 1, 3 * 3 * 4) ** 4 + 0.01  # uneven
    return sampler


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_importance_weights_keep_the_mean_over_every_pixel_at_alpha_one(alpha):
    """A quantity that grows with a tile's error: its weighted mean over the mined batches
    matches its mean over every pixel at alpha 1 and is far above it at alpha 0."""
    torch.manual_seed(0)
    sampler = mined_sampler(alpha)
    value = sampler.errors.err  # per tile
    every = torch.arange(H * W)
    tiles = [sampler.errors.tile_of(torch.full_like(every, i), every) for i in range(3)]
    truth = value[torch.cat(tiles)]
    means = []
    for _ in range(300):
        cam, _, _, weight = sampler.sample_rays()
        assert sampler.last_tiles is not None and weight.shape == cam.shape
        means.append(float((weight * value[sampler.last_tiles]).mean()))
    ratio = sum(means) / len(means) / float(truth.mean())
    if alpha == 1.0:
        assert abs(ratio - 1) < 0.02
    else:
        assert ratio > 1.5


def test_observed_errors_replace_the_start_and_uniform_sampling_has_no_map():
    sampler = mined_sampler(0.5)
    sampler.errors.err.fill_(1.0)
    _, _, target, _ = sampler.sample_rays()
    tiles = sampler.last_tiles
    sampler.observe(target + 0.2, target)  # every ray 0.2 off
    assert torch.allclose(sampler.errors.err[tiles], torch.tensor(0.6))  # half old, half new
    assert sampler.last_tiles is None
    cfg = load_config(None, {})
    plain = BatchSampler(cfg, torch.rand(3, H * W, 3), H, W, 64)
    assert plain.errors is None and plain.sample_rays()[3] is None and plain.state_dict() == {}


def test_mining_with_rays_from_one_image_is_one_sentence():
    cfg = load_config(None, {"training:ray_mining": 0.5, "training:rays_from": "one"})
    with pytest.raises(ConfigError, match="rays_from one"):
        BatchSampler(cfg, torch.rand(3, H * W, 3), H, W, 64)


def test_training_fills_the_error_map_and_the_checkpoint_keeps_it(tiny_args, tmp_path):
    args = tiny_args + ["--training:num_iters", "30", "--training:ray_mining", "0.75"]
    assert run_train(args + ["--expname", "mined"]) == 0
    saved = load_checkpoint(tmp_path / "logs" / "mined" / "ckpts" / "latest.pt")["sampler"]
    err = saved["errors"]
    # 6 views of 6 x 5 tiles: every tile was drawn and holds an observed error, below the start
    assert err.shape == (6 * 6 * 5,) and 0 < float(err.min()) and float(err.max()) < 0.5
