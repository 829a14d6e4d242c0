"""Jointly optimise a radiance field, the focal length and every camera pose.

python train.py --config configs/<scene>.yaml [--section:key value ...]
python train.py --load_dir logs/<exp>            # resume from ckpts/latest.pt
torchrun --nproc_per_node N train.py ...         # N processes (engine/distributed.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from engine.session import run_training
from utils.cli import run_cli
from utils.config import parse_overrides
from utils.errors import ConfigError, Interrupted, TrainingError
from vis.callbacks import PosePlot

USAGE = (
    "usage: python train.py --config configs/<scene>.yaml [--section:key value ...]"
    " | --load_dir logs/<exp>"
)


def parse_args(argv: list[str]) -> tuple[str | None, str | None, dict]:
    config, load_dir, rest = None, None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg in ("--config", "--load_dir"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a path. {USAGE}")
            if arg == "--config":
                config = argv[i + 1]
            else:
                load_dir = argv[i + 1]
            i += 2
        elif arg.startswith(("--config=", "--load_dir=")):
            key, value = arg[2:].split("=", 1)
            config, load_dir = (value, load_dir) if key == "config" else (config, value)
            i += 1
        else:
            rest.append(arg)
            i += 1
    if config is None and load_dir is None:
        raise ConfigError(f"give --config or --load_dir. {USAGE}")
    if config is not None and load_dir is not None:
        raise ConfigError("give either --config (new experiment) or --load_dir (resume), not both.")
    return config, load_dir, parse_overrides(rest)


def run(argv: list[str], callbacks: list | None = None) -> int:
    """Parse the command line and train (engine/session.py); the pose plot and `callbacks` are
    added to the trainer's periodic work."""
    config, load_dir, overrides = parse_args(argv)

    def extra(cfg) -> list:
        return [PosePlot(cfg.training.pose_plot_every), *(callbacks or [])]

    return run_training(config, load_dir, overrides, extra)


def main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    """callbacks: added to the trainer's (engine.callbacks.Callback; benchmarks use it)."""
    return run_cli(
        lambda args: run(args, callbacks),
        argv,
        user_errors=(TrainingError,),
        interrupted=(Interrupted, "\ninterrupted: saved ckpts/latest.pt; resume with --load_dir"),
    )


if __name__ == "__main__":
    sys.exit(main())
