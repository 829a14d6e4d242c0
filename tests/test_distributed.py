"""Multi-process training (torchrun, gloo on the CPU): averaged gradients reproduce the
single-process step on the same global batch, cameras stay identical across ranks, and only
rank 0 writes the experiment; resume under torchrun."""

import copy
import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY

from engine import distributed
from engine.experiment import build_model, seed_everything
from utils.config import load_config, parse_overrides
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
N_RAYS, STEPS, WORLD = 64, 4, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_cfg(tmp_path, extra=()):
    args = [
        *TINY,
        "--data:data_dir",
        str(tmp_path / "demo_scene"),
        "--log_root",
        str(tmp_path / "logs"),
        "--model:perturb",  # no random sample jitter: the batch alone decides the step
        "false",
        "--training:n_rays",
        str(N_RAYS),
        "--cameras:lr_pose",
        "1e-2",
        "--training:autocast",  # float64 comparison: no bfloat16 (training.autocast auto)
        "none",
        *extra,
    ]
    return load_config(REPO / "configs" / "demo.yaml", parse_overrides(args))


def fixed_batch(trainer, step, part=None):
    """The global batch of step `step` (the same on every rank), or its rank-`part` share."""
    g = torch.Generator().manual_seed(1000 + step)
    n_img, n_pix = trainer.images.shape[:2]
    cam_ids = torch.randint(n_img, (N_RAYS,), generator=g)
    pix = torch.randint(n_pix, (N_RAYS,), generator=g)
    if part is not None:
        share = slice(part * N_RAYS // WORLD, (part + 1) * N_RAYS // WORLD)
        cam_ids, pix = cam_ids[share], pix[share]
    uv = torch.stack([pix % trainer.W, pix // trainer.W], -1).float() + 0.5
    return cam_ids, uv, trainer.images[cam_ids, pix], None  # None: no loss weights


def run_steps(tmp_path, rank=None):
    """STEPS train_steps on fixed batches; per-step logged values and gradients, final state.
    In float64: Adam's first steps (about lr * sign(grad)) would turn the float32 rounding of
    two summation orders into visible differences."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run_steps(tmp_path, rank)
    finally:
        torch.set_default_dtype(dtype)


def _run_steps(tmp_path, rank):
    from dataio.loaders import load_scene
    from engine.trainer import Trainer

    cfg = tiny_cfg(tmp_path)
    seed_everything(cfg.seed + (rank or 0))  # different init per rank: the broadcast fixes it
    scene = load_scene(cfg.data)
    model = build_model(cfg, scene, torch.device("cpu")).double()
    trainer = Trainer(cfg, scene, model, tmp_path / "logs" / "unused", torch.device("cpu"))
    trainer.images = trainer.sampler.images = trainer.images.double()
    distributed.broadcast_module(model)
    values, grads = [], []
    for step in range(STEPS):
        trainer.sampler.sample_rays = lambda step=step: fixed_batch(trainer, step, rank)
        values.append(trainer.train_step())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        trainer.step += 1
    state, optimizers = model.state_dict(), trainer.optimizers
    return {"values": values, "grads": grads, "state": state, "optimizers": optimizers}


def refuse():
    raise ConfigError("rank 0 says no")


def worker(rank, port, tmp_path):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    with distributed.session(torch.device("cpu")):
        assert distributed.world() == distributed.World(rank, WORLD, rank)
        out = run_steps(tmp_path, rank)
        # A parameter with a gradient on one rank only gets the mean (zeros from the other);
        # one with no gradient anywhere keeps None.
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        if rank == 0:
            a.grad = torch.full((3,), 4.0)
        distributed.all_reduce_grads([a, b])
        out["partial_grad"] = (a.grad, b.grad)
        # rank 0's result (or error) reaches every rank
        out["shared"] = distributed.on_main(lambda: f"from {distributed.world().rank}")
        try:
            distributed.on_main(refuse)
        except ConfigError as err:
            out["error"] = str(err)
    torch.save(out, tmp_path / f"rank{rank}.pt")


def test_averaged_gradients_match_one_process_on_the_global_batch(tmp_path):
    from dataio.loaders import load_scene

    load_scene(tiny_cfg(tmp_path).data)  # generate the demo scene once, before the workers
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_steps(tmp_path)
    finally:
        torch.set_num_threads(threads)

    # the ranks hold bit-identical parameters: field and cameras
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    for step in range(STEPS):
        # logged numbers are the global batch's (mean of the two halves' means)
        for name in ("rgb", "total"):
            assert ranks[0]["values"][step][name] == pytest.approx(
                single["values"][step][name], rel=1e-5
            )
        for key, grad in single["grads"][step].items():
            got = ranks[0]["grads"][step][key]
            assert torch.allclose(got, grad, rtol=1e-4, atol=1e-6 * grad.abs().max()), (step, key)
    for key, value in single["state"].items():
        assert torch.allclose(ranks[0]["state"][key], value, rtol=0, atol=1e-5), key
    start = tiny_state_at_start(tmp_path)
    for key in ("cam_param.r", "cam_param.t", "cam_param.focal_raw"):  # the cameras did move
        assert (single["state"][key] - start[key]).abs().max() > 1e-3, key

    for out in ranks:
        a_grad, b_grad = out["partial_grad"]
        assert torch.equal(a_grad, torch.full((3,), 2.0)) and b_grad is None
        assert out["shared"] == "from 0" and out["error"] == "rank 0 says no"


def tiny_state_at_start(tmp_path):
    from dataio.loaders import load_scene

    cfg = tiny_cfg(tmp_path)
    seed_everything(cfg.seed)
    return build_model(cfg, load_scene(cfg.data), torch.device("cpu")).state_dict()


def test_n_rays_must_split_evenly(tmp_path, monkeypatch):
    from dataio.loaders import load_scene
    from engine.trainer import Trainer

    cfg = tiny_cfg(tmp_path, ["--training:n_rays", "255"])
    scene = load_scene(cfg.data)
    model = build_model(cfg, scene, torch.device("cpu"))
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(1, 2, 1))
    with pytest.raises(ConfigError, match="n_rays 255 does not split evenly across 2 processes"):
        Trainer(cfg, scene, model, tmp_path / "x", torch.device("cpu"))


def torchrun(args, timeout=120):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(REPO / "train.py"),
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_trains_writes_once_and_resumes(tiny_args, tmp_path):
    from engine.checkpoint import load_checkpoint

    args = tiny_args + ["--num_threads", "1", "--training:num_iters", "6", "--expname", "ddp"]
    proc = torchrun(args + ["--training:ckpt_every", "3", "--training:pose_history_every", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = tmp_path / "logs" / "ddp"
    assert proc.stdout.count("x 2 processes") == 1  # rank 0 alone prints
    ckpt = load_checkpoint(exp / "ckpts" / "latest.pt")
    assert ckpt["step"] == 6 and len(ckpt["rng_ranks"]) == WORLD
    assert len(list((exp / "events").iterdir())) == 1  # one tensorboard writer
    for path in ("config.yaml", "ckpts/final.pt", "poses/transforms.json", "metrics.json"):
        assert (exp / path).is_file(), path

    proc = torchrun(["--load_dir", exp, "--training:num_iters", "8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resuming") == 1
    resumed = load_checkpoint(exp / "ckpts" / "final.pt")
    assert resumed["step"] == 8
    assert len(list((exp / "events").iterdir())) == 2  # one per run, rank 0's
    moved = [k for k in ("cam_param.r", "cam_param.t") if k in resumed["model"]]
    assert moved and not all(torch.equal(resumed["model"][k], ckpt["model"][k]) for k in moved)


def test_the_optimisers_are_fused_adam_and_step_as_the_reference_loop(tmp_path, monkeypatch):
    """Every optimiser of a CPU run takes Adam's fused kernel (the grid's millions of parameters
    cost a fraction of the per-tensor loop's time) and the parameters it produces over a few
    steps are those of torch's reference single-tensor Adam."""
    import engine.trainer

    fused = run_steps(tmp_path / "fused")
    assert fused["optimizers"]
    for opt in fused["optimizers"].values():
        assert opt.defaults["fused"] is True
    reference = functools.partial(torch.optim.Adam, foreach=False)
    monkeypatch.setattr(engine.trainer, "adam", reference)
    plain = run_steps(tmp_path / "plain")
    for opt in plain["optimizers"].values():
        assert not opt.defaults["fused"]
    for key, value in fused["state"].items():
        assert torch.allclose(value, plain["state"][key], atol=1e-10, rtol=0), key


def test_a_checkpoint_of_the_unfused_adam_resumes_on_the_fused_kernel():
    """Optimiser state saved by the per-tensor Adam (checkpoints from before the fused kernel)
    loads into the run's fused optimiser, keeps it fused, and continues the same trajectory."""
    from engine.trainer import adam, load_optimizer_state

    torch.manual_seed(0)
    start, grads = torch.randn(50, dtype=torch.float64), torch.randn(4, 50, dtype=torch.float64)
    old_param = torch.nn.Parameter(start.clone())
    old = torch.optim.Adam([old_param], lr=0.1, foreach=False)
    for g in grads[:2]:
        old_param.grad = g.clone()
        old.step()
    new_param = torch.nn.Parameter(old_param.detach().clone())
    new = adam([{"params": [new_param], "lr": 0.1}])
    load_optimizer_state(new, copy.deepcopy(old.state_dict()))  # as from a file: no shared moments
    assert new.param_groups[0]["fused"] is True
    for g in grads[2:]:
        old_param.grad, new_param.grad = g.clone(), g.clone()
        old.step()
        new.step()
    torch.testing.assert_close(new_param, old_param, atol=1e-12, rtol=0)
