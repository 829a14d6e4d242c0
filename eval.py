"""Evaluate a trained run, or register new photos against it.

python eval.py --load_dir logs/<exp> [--ckpt final.pt] [--device cpu] [--eval:key value ...]
    pose errors of the training cameras; held-out views rendered after test-time pose
    optimisation, PSNR / SSIM -> <exp>/metrics.json ("eval" block) and <exp>/eval/*.png
python eval.py --load_dir logs/<exp> --register <photo folder> [--init_pose_json poses.json]
    poses of new photos in the experiment's frame -> <exp>/registered/

Both write into the experiment, so eval.py holds its lock (engine/lock.py) while it runs and
refuses an experiment that another process is training or evaluating: the end of training
rewrites metrics.json afresh (an "eval" block written meanwhile would vanish) and writes eval/
itself, two evaluations would interleave their eval/ images, and --training:overwrite would
remove the files under it. render.py, which only adds videos of its own, takes no lock.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from engine.experiment import load_experiment, lock_experiment
from evaluation.heldout import evaluate_experiment
from evaluation.registration import register_photos
from utils.cli import run_cli
from utils.config import load_saved_config, parse_overrides
from utils.errors import ConfigError, DataError

USAGE = (
    "usage: python eval.py --load_dir logs/<exp> [--ckpt final.pt] [--device cpu] "
    "[--register <photo folder> [--init_pose_json poses.json]] [--eval:key value ...]"
)
OPTIONS = ("--load_dir", "--ckpt", "--device", "--register", "--init_pose_json")


def parse_args(argv: list[str]) -> tuple[dict, dict]:
    """({option: value} for OPTIONS, eval:* config overrides)."""
    opts, rest = {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        name, eq, value = arg.partition("=")
        if name in OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value. {USAGE}")
                value = argv[i + 1]
                i += 1
            opts[name[2:]] = value
        else:
            rest.append(arg)
        i += 1
    if "load_dir" not in opts:
        raise ConfigError(f"give --load_dir <experiment directory>. {USAGE}")
    if "init_pose_json" in opts and "register" not in opts:
        raise ConfigError("--init_pose_json only applies with --register <photo folder>.")
    overrides = parse_overrides(rest)
    foreign = sorted(k for k in overrides if not k.startswith("eval:"))
    if foreign:
        raise ConfigError(
            f"eval.py keeps the experiment's config; only eval:* keys can change, not "
            f"{', '.join(foreign)}."
        )
    return opts, overrides


def run(argv: list[str]) -> int:
    opts, overrides = parse_args(argv)
    exp_dir = Path(opts["load_dir"])
    register = opts.get("register")
    if register is not None and not Path(register).is_dir():
        raise DataError(f"--register folder {register} does not exist; give a folder of photos.")
    advice = "eval.py writes into the experiment, so run it once that process has ended."
    lock = lock_experiment(exp_dir, "eval.py", advice)
    try:
        return evaluate(exp_dir, opts, overrides, register)
    finally:
        lock.release()


def evaluate(exp_dir: Path, opts: dict, overrides: dict, register: str | None) -> int:
    ckpt = opts.get("ckpt")
    if ckpt is None:
        ckpt = "final.pt" if (exp_dir / "ckpts" / "final.pt").is_file() else "latest.pt"
    cfg, scene, model, step = load_experiment(exp_dir, ckpt, opts.get("device"))
    if overrides:
        extra = {"device": opts["device"]} if "device" in opts else {}
        cfg = load_saved_config(exp_dir / "config.yaml", {**overrides, **extra})
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = model.cam_param.t.device
    print(f"{exp_dir}: ckpts/{ckpt} at step {step}, {scene.name}, device {device}")
    if register is not None:
        print(f"registering the photos in {register}")
        register_photos(
            exp_dir, cfg, scene, model, device, register, opts.get("init_pose_json"), step=step
        )
        print(f"poses written to {exp_dir / 'registered'}")
        return 0
    evaluate_experiment(exp_dir, cfg, scene, model, device, step=step)
    print(f"metrics written to {exp_dir / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
