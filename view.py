"""Look at an experiment in a browser: its cameras, track points, metrics and the field.

python view.py --load_dir logs/<exp> [--host 127.0.0.1] [--port 8080] [--export scene.viser]

Serves a viser page (vis/viewer.py) on localhost by default: the learned cameras as frustums
with their photos (coloured by rotation error against the aligned ground truth, which is drawn
beside them in grey, when the scene has it), the views the camera start dropped, re-registered
or found weak (labelled), the triangulated track points, render.py's spiral or orbit path, the
run's metrics, and a render of the field from the browser's camera (a small preview while it
moves, full size when it rests). Clicking a camera flies to it and shows its photo beside the
render. Ctrl-C stops the server. train.py --viewer serves the same page while it trains.
--export writes the scene (the metrics as a label in it) as a .viser recording instead of
serving it (replay it offline with viser's client: see the line it prints). view.py takes no
experiment lock: it reads ckpts/latest.pt, which a run still training writes atomically.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

# torch and the experiment's modules load after the page is up (run); these load in a second
from utils.cli import run_cli
from utils.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; see python view.py --help.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python view.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--load_dir", required=True, help="experiment directory, logs/<exp>")
    p.add_argument("--ckpt", default="latest.pt", help="checkpoint in <exp>/ckpts (final.pt, ...)")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto; default: the experiment's")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (0: any free one)")
    p.add_argument("--export", help="write the scene to this .viser file and exit")
    p.add_argument(
        "--baked",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after loading, bake the grid field into a voxel lattice and render from it "
        "(models/baked.py: several times faster a frame; --no-baked: the field itself)",
    )
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number (0 to 65535).")
    t0 = time.perf_counter()
    exp_dir = Path(args.load_dir)
    if not exp_dir.is_dir():
        raise ConfigError(f"{exp_dir} does not exist; check --load_dir.")
    server = rebuild = viewer = None
    try:
        if args.export is None:
            # the page first (torch and the model take seconds to load on a small CPU): a
            # browser opened now sees it fill in
            from vis.viewer_server import page_url, start_server

            server = start_server(args.host, args.port)
            note = server.gui.add_markdown(f"loading {exp_dir} ...")
            url = page_url(args.host, server.get_port())
            print(f"viewer: {url} is up; loading {exp_dir}", flush=True)
        import torch

        from engine.experiment import check_experiment_dir, load_experiment
        from vis.viewer import Viewer
        from vis.viewer_scene import build_viewer_scene

        check_experiment_dir(exp_dir)
        # the occupancy grid for rendering is rebuilt once the page shows the experiment (the
        # checkpoint's renders the same frames, more slowly), taking seconds of a small CPU
        cfg, scene, model, step = load_experiment(
            exp_dir, args.ckpt, args.device, render_grid=False
        )
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        view = build_viewer_scene(exp_dir, cfg, scene, model)
        viewer = Viewer(view, model, args.host, 0, cfg.model.chunk, server=server)
        if args.export is not None:
            path = viewer.export(Path(args.export))
            print(
                f"wrote {path} ({view.n} cameras, {len(view.points)} points); replay it with "
                "viser's client: viser-build-client --out-dir site, copy the file into site/, "
                f"python -m http.server -d site, open http://localhost:8000/?playbackPath=/"
                f"{path.name}"
            )
            return 0
        note.remove()
        print(
            f"viewer: {exp_dir} (step {step}, {view.n} cameras, {len(view.points)} track points) "
            f"at {viewer.url} in {time.perf_counter() - t0:.1f} s; Ctrl-C stops it",
            flush=True,
        )
        rebuild = threading.Thread(
            target=finer_grid, args=(viewer, model, cfg, args.baked), daemon=True
        )
        rebuild.start()
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nviewer stopped", file=sys.stderr)
        return 0
    finally:
        if viewer is not None:
            viewer.stop()
        elif server is not None:
            server.stop()
        if rebuild is not None:  # a thread inside torch when the interpreter exits aborts it
            rebuild.join()


def finer_grid(viewer, model, cfg, baked: bool = False) -> None:
    """Render from a copy of the model with the occupancy grid rebuilt for rendering, then
    (baked) from that copy's field baked into a voxel lattice (models/baked.py)."""
    import copy

    from engine.experiment import render_occupancy
    from models.baked import bake

    t0 = time.perf_counter()
    finer = copy.deepcopy(model)
    if render_occupancy(finer, cfg) and not viewer.stopping.is_set():
        viewer.set_model(finer)
        print(f"viewer: occupancy grid rebuilt in {time.perf_counter() - t0:.1f} s", flush=True)
    if not baked or viewer.stopping.is_set():
        return
    try:
        lattice = bake(finer, cfg.render.bake_resolution, log=lambda m: print(f"viewer: {m}"))
    except ConfigError as err:  # a field with nothing to bake renders as it is
        print(f"viewer: not baked: {err}", flush=True)
        return
    except (MemoryError, RuntimeError) as err:  # e.g. a lattice too large for the memory left
        print(f"viewer: not baked ({err}); the page keeps rendering from the field", flush=True)
        return
    if not viewer.stopping.is_set():
        finer.baked = lattice
        viewer.set_model(finer)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
