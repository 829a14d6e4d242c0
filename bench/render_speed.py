"""Render speed and peak memory of render.py's frame loop (spiral frames at the training size).

python bench/render_speed.py --load_dir logs/<exp> [--frames 3] [--chunk N] [--device cpu]
                             [--autocast none|bf16] [--threads N] [--dense]

Prints the wall and CPU seconds of every frame, the mean, rays/s, and the peak resident memory
of the process (resource.getrusage ru_maxrss) after loading the experiment and after rendering.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.experiment import load_experiment
from vis.videos import camera_path, render_frames, scene_bounds


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/render_speed.py")
    p.add_argument("--load_dir", required=True)
    p.add_argument("--ckpt", default="latest.pt")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--chunk", type=int, default=None, help="default: the config's model.chunk")
    p.add_argument("--device", default=None)
    p.add_argument("--autocast", choices=("none", "bf16"), default=None, help="default: config's")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--dense", action="store_true", help="ignore the occupancy grid (model.occupancy)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, scene, model, step = load_experiment(Path(args.load_dir), args.ckpt, args.device)
    if args.autocast is not None:
        model.autocast = args.autocast
    if args.dense:
        model.occupancy = None
    chunk = args.chunk or cfg.model.chunk
    rss_loaded = peak_rss_mib()
    with torch.no_grad():
        c2w = model.cam_param.c2w().cpu()
        K = model.cam_param.K().mean(0).cpu()
    near, far = scene_bounds(model, scene)
    path = camera_path("spiral", c2w, near=near, far=far, n_frames=args.frames)
    H, W = model.cam_param.H, model.cam_param.W
    m = cfg.model
    print(
        f"{scene.name} {W}x{H}, NeRF {m.net_depth}x{m.net_width}, {m.encoding} encoding, "
        f"{m.n_samples} samples (+{m.n_importance} fine), occupancy "
        f"{'on' if model.occupancy is not None else 'off'}, autocast {model.autocast}, "
        f"chunk {chunk}, "
        f"device {model.cam_param.t.device}, {torch.get_num_threads()} threads"
    )
    times = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in render_frames(model, path, K, H, W, 1.0, chunk, show_progress=False):
        t1, c1 = time.perf_counter(), time.process_time()
        times.append(t1 - t0)
        # CPU seconds beside wall seconds: on a shared machine the wall time includes waiting.
        print(f"frame {len(times)}: {times[-1]:.2f} s wall, {c1 - c0:.2f} s CPU", flush=True)
        t0, c0 = t1, c1
    mean = sum(times) / len(times)
    print(
        f"mean {mean:.2f} s/frame ({H * W / mean:.0f} rays/s); peak RSS {rss_loaded:.0f} MiB "
        f"after loading, {peak_rss_mib():.0f} MiB after rendering"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
