"""Render videos along camera paths from an experiment (also while it is still training).

python render.py --load_dir logs/<exp> [--render_type auto|spiral|orbit|interpolate|path] [options]

Defaults come from the experiment's `render` section (configs/base.yaml documents every key);
the flags override them. Videos go to <exp_dir>/render/<type>_step<step>_<kind>.mp4 with kind
rgb, depth (colour-mapped metric depth) or rgb_depth (side by side). --preview renders a quick
look instead (half the rows and columns, half the samples per ray; vis/videos.py) into
<type>_step<step>_preview_<kind>.mp4. --baked renders from the field baked into a voxel lattice
first (models/baked.py): several times faster a frame for a grid field, after tens of seconds
of baking.

render.py takes no experiment lock (engine/lock.py), so it can render while the run trains: it
reads ckpts/latest.pt, which training writes atomically, and adds only its own files, each
written under a temporary name and renamed when complete, so renders never share a half-written
video (see VideoWriters). Flags that need no model are checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import torch

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from engine.experiment import check_experiment_dir, load_experiment
from models.baked import bake
from utils.cli import run_cli
from utils.config import check_range, load_saved_config
from utils.errors import ConfigError, DataError
from vis.videos import (
    RENDER_TYPES,
    check_video_kinds,
    load_path_json,
    path_from_options,
    pick_appearance,
    render_video,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; see python render.py --help.")


def _comma_list(text: str) -> list[str]:
    return [item for item in text.replace(" ", "").split(",") if item]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python render.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--load_dir", required=True, help="experiment directory, logs/<exp>")
    p.add_argument("--ckpt", default="latest.pt", help="checkpoint in <exp>/ckpts (final.pt, ...)")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto; default: the experiment's")
    p.add_argument(
        "--render_type", choices=("auto", *RENDER_TYPES), help="camera path (path: --path_json)"
    )
    p.add_argument("--path_json", help="JSON list of 4x4 c2w matrices (implies --render_type path)")
    p.add_argument("--order", help="interpolate: learned camera indices, e.g. 3,1,2")
    p.add_argument("--frames_per_segment", type=int, help="interpolate: frames between two poses")
    p.add_argument("--n_frames", type=int, help="spiral: number of frames")
    p.add_argument("--n_rots", type=float, help="spiral: turns around the average pose")
    p.add_argument("--z_rate", type=float, help="spiral: forward-back oscillations per turn")
    p.add_argument("--radius_percentile", type=float, help="spiral: percentile of camera spread")
    p.add_argument("--radius_scale", type=float, help="spiral: factor on the radii")
    p.add_argument("--focus_depth", type=float, help="spiral: depth looked at (scene units)")
    p.add_argument("--scale", type=float, help="image size factor (H, W and K), e.g. 0.5")
    p.add_argument("--chunk", type=int, help="rays per rendering chunk (memory bound)")
    p.add_argument("--fps", type=float, help="video frame rate")
    p.add_argument("--videos", type=_comma_list, help="comma list of rgb, depth, rgb_depth")
    p.add_argument("--gif", action=argparse.BooleanOptionalAction, help="also write gifs")
    p.add_argument("--progress_bar", action=argparse.BooleanOptionalAction, help="tqdm bar")
    p.add_argument(
        "--baked",
        action=argparse.BooleanOptionalAction,
        help="render from the field baked into a voxel lattice (faster; grid fields)",
    )
    p.add_argument("--bake_resolution", type=int, help="--baked: nodes per axis of the lattice")
    p.add_argument(
        "--preview",
        action="store_true",
        help="a quick look: a quarter of the pixels and half the samples per ray",
    )
    p.add_argument(
        "--appearance",
        help="model.appearance_dim > 0: render with this training image's appearance code "
        "(index or file name); default the mean code",
    )
    return p


def resolve_options(args: argparse.Namespace, render_cfg) -> dict:
    """The render section with the given flags on top; checks what does not need the model
    (ranges, the videos, that render type path has its file)."""
    opts = dict(render_cfg)
    opts.update({k: v for k, v in vars(args).items() if k in opts and v is not None})
    if args.path_json is not None:
        if args.render_type not in (None, "path"):
            raise ConfigError(
                f"--path_json gives the path itself; drop --render_type {args.render_type} "
                "(or use --render_type path)."
            )
        opts["render_type"] = "path"
    if opts["depth_cmap"] not in matplotlib.colormaps:
        raise ConfigError(
            f"render depth_cmap '{opts['depth_cmap']}' is not a matplotlib colormap (e.g. turbo_r)."
        )
    for key, value in vars(args).items():  # flags get the ranges base.yaml declares
        if key in render_cfg and value is not None and not isinstance(value, str):
            check_range(f"render:{key}", value, render_cfg[key], "the command line")
    check_video_kinds(opts["videos"])
    if opts["render_type"] == "path" and args.path_json is None:
        raise DataError("render type path needs --path_json, a JSON list of 4x4 c2w matrices.")
    return opts


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    exp_dir = Path(args.load_dir)
    check_experiment_dir(exp_dir)
    opts = resolve_options(args, load_saved_config(exp_dir / "config.yaml").render)
    path = load_path_json(args.path_json) if opts["render_type"] == "path" else None
    cfg, scene, model, step = load_experiment(exp_dir, args.ckpt, args.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if opts["baked"]:
        model.baked = bake(model, opts["bake_resolution"])
    with torch.no_grad():
        c2w = model.cam_param.c2w().cpu()
    if path is None:
        opts["render_type"], path = path_from_options(opts, c2w, model, scene)
    progress = min(step / max(cfg.training.num_iters, 1), 1.0)
    names = [scene.image_names[i] for i in scene.train_ids]
    appearance = pick_appearance(model, names, opts["appearance"])
    print(
        f"rendering {len(path)} frames ({opts['render_type']}) from {exp_dir / 'ckpts' / args.ckpt}"
        f" (step {step}) on {model.cam_param.t.device}"
    )
    paths = render_video(
        model,
        path,
        exp_dir / "render",
        f"{opts['render_type']}_step{step}" + ("_preview" if args.preview else ""),
        scale=opts["scale"],
        progress=progress,
        chunk=opts["chunk"] or cfg.model.chunk,
        fps=opts["fps"],
        kinds=opts["videos"],
        gif=opts["gif"],
        depth_cmap=opts["depth_cmap"],
        depth_percentiles=opts["depth_percentiles"],
        show_progress=opts["progress_bar"],
        appearance=appearance,
        preview=args.preview,
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        run,
        argv,
        interrupted=(KeyboardInterrupt, "\ninterrupted: no video was written (earlier ones stay)."),
    )


if __name__ == "__main__":
    sys.exit(main())
