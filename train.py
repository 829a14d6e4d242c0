"""Jointly optimise a radiance field, the focal length and every camera pose.

python train.py --config configs/<scene>.yaml [--section:key value ...]
python train.py --load_dir logs/<exp>            # resume from ckpts/latest.pt
python train.py ... --viewer [--host 127.0.0.1] [--port 8080]   # watch it in a browser
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
    " | --load_dir logs/<exp>; add --viewer [--host 127.0.0.1] [--port 8080] to watch it in a"
    " browser"
)


def parse_args(argv: list[str]) -> tuple[str | None, str | None, dict, dict | None]:
    """(config, load_dir, overrides, viewer): viewer is None without --viewer, else its host
    and port (--host/--port need --viewer)."""
    config, load_dir, rest = None, None, []
    viewer, serve = {"host": "127.0.0.1", "port": 8080}, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg == "--viewer":
            serve = True
            i += 1
        elif arg in ("--host", "--port"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a value. {USAGE}")
            viewer[arg[2:]] = argv[i + 1]
            i += 2
        elif arg in ("--config", "--load_dir"):
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
    if not serve and viewer != {"host": "127.0.0.1", "port": 8080}:
        raise ConfigError("--host and --port choose where --viewer serves; add --viewer.")
    try:
        viewer["port"] = int(viewer["port"])
    except ValueError:
        raise ConfigError(f"--port {viewer['port']} is not a port number (0 to 65535).") from None
    if not 0 <= viewer["port"] <= 65535:
        raise ConfigError(f"--port {viewer['port']} is not a port number (0 to 65535).")
    return config, load_dir, parse_overrides(rest), viewer if serve else None


def run(argv: list[str], callbacks: list | None = None) -> int:
    """Parse the command line and train (engine/session.py); the pose plot, the viewer
    (--viewer) and `callbacks` are added to the trainer's periodic work."""
    config, load_dir, overrides, viewer = parse_args(argv)
    live = None
    if viewer is not None:
        from vis.viewer_live import LiveViewer
        from vis.viewer_server import check_port_free

        check_port_free(viewer["host"], viewer["port"])  # before the camera start: fail now
        live = LiveViewer(viewer["host"], viewer["port"])

    def extra(cfg) -> list:
        return [
            PosePlot(cfg.training.pose_plot_every),
            *([live] if live else []),
            *(callbacks or []),
        ]

    try:
        return run_training(config, load_dir, overrides, extra)
    finally:
        if live is not None:
            live.close()  # Ctrl-C or an error: the server stops with the run


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
