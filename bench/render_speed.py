"""Render speed of a trained experiment: a full-quality frame and a preview (vis/videos.py:
a quarter of the pixels, half the samples per ray), each with the render shortcuts
(SceneModel.render_shortcuts: the occupancy grid, early ray termination, colour only where a
sample shows) and without them (the reference: every sample's density and colour), and how far
the shortcuts move the full-quality image.

python bench/render_speed.py --load_dir logs/<exp> [--frames 3] [--chunk N] [--device cpu]
    [--autocast none|bf16] [--threads N] [--render_resample N] [--fast_only]
    [--baked] [--bake_resolution N] [--baked_also logs/<exp2> ...] [--markdown docs/results.md]
    [--json bench/results/render_speed.json]

The frames are training views (the learned cameras at the training size, evenly spaced over
the views), so both renders are also scored against the photo. Prints the wall and CPU seconds
of every frame, the mean per mode, the peak resident memory, and the check: the full frame with
the shortcuts against the reference (PSNR between the two, their largest pixel difference, and
the change of PSNR against the photos, which must stay under MAX_PSNR_CHANGE dB). --baked adds
the same frames rendered from the field baked into a voxel lattice (models/baked.py: render.py
--baked, the viewer), its bake time and size, and the same comparison against the field's
frames (reported, not held to the limit: the lattice interpolates the field). --markdown
writes the table, the machine and the command into that file's render section (between its
markers; the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import cpu_line, machine, markdown_table, replace_section
from engine.experiment import load_experiment
from models.baked import bake
from vis.videos import preview_of, render_frames

MAX_PSNR_CHANGE = 0.1  # dB against the photos: the shortcuts may not cost more than this
BEGIN, END = "<!-- bench/render_speed.py: begin -->", "<!-- bench/render_speed.py: end -->"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()


def count_samples(model) -> dict:
    """Counts of the samples whose density and whose colour the model's NeRF fields compute
    (their density and colour methods; colour_on_rays where the sparse path colours), from now
    on: what the shortcuts save, independent of the machine's load."""
    counts = {"density": 0, "colour": 0}
    for field in model.fields():
        if not hasattr(field, "density"):
            continue
        density, colour, on_rays = field.density, field.colour, field.colour_on_rays

        def counted_density(points, progress=None, density=density):
            counts["density"] += points.numel() // 3
            return density(points, progress)

        def counted_colour(h, dirs, points_dim, colour=colour):
            counts["colour"] += h.numel() // max(h.shape[-1], 1)
            return colour(h, dirs, points_dim)

        def counted_on_rays(h, condition, on_rays=on_rays):  # the render path's colour head
            counts["colour"] += h.numel() // max(h.shape[-1], 1)
            return on_rays(h, condition)

        field.density, field.colour = counted_density, counted_colour
        field.colour_on_rays = counted_on_rays
    return counts


def time_frames(model, c2w, Ks, H, W, chunk, preview, shortcuts, label, counts, log=print):
    """Render the cameras c2w (F, 4, 4) with intrinsics Ks (F, 3, 3) at (H, W) (or their
    previews); returns the row of the table and the images. counts: count_samples's."""
    model.render_shortcuts = shortcuts
    walls, cpus, images = [], [], []
    counts.update(density=0, colour=0)
    rays = 0
    size = (W, H)
    for k in range(len(c2w)):
        K, h, w, samples = Ks[k], H, W, (None, None)
        if preview:
            p = preview_of(model, Ks[k], H, W)
            K, h, w, samples = p.K, p.H, p.W, (p.n_samples, p.n_importance)
        size = (w, h)
        rays += h * w
        t0, c0 = time.perf_counter(), time.process_time()
        frame = next(
            render_frames(model, c2w[k : k + 1], K, h, w, 1.0, chunk, False, None, *samples)
        )
        walls.append(time.perf_counter() - t0)
        # CPU seconds beside wall seconds: on a shared machine the wall time includes waiting.
        cpus.append(time.process_time() - c0)
        images.append(frame["rgb"])
        log(f"{label} frame {k + 1}: {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU", flush=True)
    n_samples = samples[0] if preview else model.cfg.n_samples
    row = {
        "mode": label,
        "size": f"{size[0]}x{size[1]}",
        "samples": n_samples,
        "shortcuts": shortcuts,
        "wall_s": sum(walls) / len(walls),
        "wall_min_s": min(walls),
        "cpu_s": sum(cpus) / len(cpus),
        "density_per_ray": counts["density"] / rays,
        "colour_per_ray": counts["colour"] / rays,
    }
    return row, images


def compare(frames: list, others: list, photos: list) -> tuple[float, float, float]:
    """The lowest PSNR between frames and others (frame by frame), and each one's mean PSNR
    against the photos."""
    between = min(psnr(a, b) for a, b in zip(frames, others, strict=True))
    n = len(photos)
    mine = sum(psnr(a, g) for a, g in zip(frames, photos, strict=True)) / n
    theirs = sum(psnr(a, g) for a, g in zip(others, photos, strict=True)) / n
    return between, mine, theirs


def table(rows: list[dict]) -> str:
    header = ["render", "size", "samples / ray", "shortcuts", "densities / ray"]
    header += ["colours / ray", "s / frame (mean)", "fastest", "CPU s"]
    return markdown_table(
        header,
        [
            [r["mode"], r["size"], r["samples"], "on" if r["shortcuts"] else "off"]
            + [_per_ray(r["density_per_ray"]), _per_ray(r["colour_per_ray"])]
            + [f"{r['wall_s']:.2f}", f"{r['wall_min_s']:.2f}", f"{r['cpu_s']:.2f}"]
            for r in rows
        ],
    )


def _per_ray(count: float | None) -> str:
    return "lattice" if count is None else f"{count:.1f}"  # None: read from the baked lattice


def baked_line(check: dict) -> str:
    return (
        f"Baked lattice ({check['resolution']}^3 nodes, {check['mib']:.0f} MiB, baked in "
        f"{check['bake_s']:.1f} s) against the field's full frame with the shortcuts: PSNR between "
        f"the two {check['psnr_between_db']:.1f} dB (lowest over the frames); PSNR against the "
        f"photos {check['psnr_baked_db']:.3f} dB baked, {check['psnr_field_db']:.3f} dB from the "
        f"field (change {check['psnr_change_db']:+.3f} dB)."
    )


def check_line(check: dict) -> str:
    return (
        f"Full frame with the shortcuts against the reference: PSNR between the two "
        f"{check['psnr_between_db']:.1f} dB (lowest over the frames), largest pixel difference "
        f"{check['max_abs_diff']:.4f}; PSNR against the photos {check['psnr_fast_db']:.3f} dB "
        f"with, {check['psnr_reference_db']:.3f} dB without (change "
        f"{check['psnr_change_db']:.4f} dB, allowed {MAX_PSNR_CHANGE})."
    )


def write_section(
    path: Path, command: str, rows: list[dict], check: dict | None, info: str, baked=None, others=()
):
    """Replace the render section of the markdown file `path` (created when missing)."""
    m = machine()
    section = "\n".join(
        [
            BEGIN,
            "## Render speed",
            "",
            "Seconds per frame of a trained experiment's training views, full quality and "
            "preview (a quarter of the pixels, half the samples per ray), with the render "
            "shortcuts (occupancy grid, early ray termination, colour only where a sample shows) "
            "and without them (every sample evaluated: the reference); the samples per ray "
            "whose density and colour were computed do not depend on the machine's load. "
            "Baked rows (with --baked): the same frames from the field baked into a sparse "
            "voxel lattice (models/baked.py; render.py --baked, the viewer's default), whose "
            "reads the field's counters do not see.",
            "",
            f"Machine: {cpu_line(m)}, {m['cpu_count']} cores (shared with other jobs), torch "
            f"{m['torch']}, {m['threads']} thread(s). Command: `{command}`",
            "",
            info,
            "",
            table(rows),
            *(["", check_line(check)] if check else []),
            *(["", baked_line(baked)] if baked else []),
            *(
                [
                    "",
                    "Baked on other experiments (--baked_also; training views, PSNR against "
                    "the photos, between: baked against the field's frame, lowest):",
                    "",
                    others_table(others),
                ]
                if others
                else []
            ),
            END,
        ]
    )
    replace_section(path, BEGIN, END, section)


def training_views(model, scene, frames: int):
    """c2w (n, 4, 4), K (n, 3, 3) and photos of n = `frames` training views evenly spaced."""
    with torch.no_grad():
        c2w, Ks = model.cam_param.c2w(), model.cam_param.K()
    n = min(frames, len(c2w))
    views = torch.linspace(0, len(c2w) - 1, n).round().long()
    return c2w[views], Ks[views], scene.images[torch.as_tensor(scene.train_ids)[views]]


def warm_up(model, c2w, Ks, chunk, counts) -> None:
    """One preview frame, not timed: the allocator, kernels, compiled reads."""
    H, W = model.cam_param.H, model.cam_param.W
    quiet = lambda *a, **k: None  # noqa: E731
    time_frames(model, c2w[:1], Ks[:1], H, W, chunk, True, True, "warm-up", counts, quiet)


def measure_baked(model, c2w, Ks, chunk, counts, field_frames, photos, args):
    """Bake the model's field (args.bake_resolution), time full frames and previews from it
    (after an untimed one that compiles the reads) and compare the full frames with the
    field's (field_frames, with the shortcuts) and the photos. Returns (rows, check)."""
    H, W = model.cam_param.H, model.cam_param.W
    t0 = time.perf_counter()
    model.baked = bake(model, args.bake_resolution)
    bake_s = time.perf_counter() - t0
    warm_up(model, c2w, Ks, chunk, counts)
    full, frames = time_frames(model, c2w, Ks, H, W, chunk, False, True, "baked", counts)
    preview = time_frames(model, c2w, Ks, H, W, chunk, True, True, "baked preview", counts)[0]
    for row in (full, preview):  # the field's counters do not see the lattice's reads
        row["density_per_ray"] = row["colour_per_ray"] = None
    mib, resolution = model.baked.nbytes() / 2**20, model.baked.index.shape[0]
    model.baked = None
    between, p_baked, p_field = compare(frames, field_frames, photos)
    check = {
        "resolution": resolution,
        "bake_s": bake_s,
        "mib": mib,
        "psnr_between_db": between,
        "psnr_baked_db": p_baked,
        "psnr_field_db": p_field,
        "psnr_change_db": p_baked - p_field,
    }
    return [full, preview], check


def baked_elsewhere(load_dir: Path, args) -> dict:
    """--baked_also: the field's full frames with the shortcuts and measure_baked on another
    experiment (the same frames per mode)."""
    cfg, scene, model, step = load_experiment(load_dir, args.ckpt, args.device)
    chunk = args.chunk or cfg.model.chunk
    c2w, Ks, photos = training_views(model, scene, args.frames)
    H, W = model.cam_param.H, model.cam_param.W
    counts = count_samples(model)
    warm_up(model, c2w, Ks, chunk, counts)
    full, fast = time_frames(model, c2w, Ks, H, W, chunk, False, True, "full", counts)
    rows, check = measure_baked(model, c2w, Ks, chunk, counts, fast, photos, args)
    scene_name = f"{scene.name} (`{load_dir}`, step {step})"
    return {"scene": scene_name, "field": full, "baked": rows, "check": check}


def others_table(others: list[dict]) -> str:
    header = ["experiment", "field s / frame", "baked s / frame", "baked preview", "bake s"]
    header += ["MiB", "PSNR field", "PSNR baked", "change", "between"]
    rows = []
    for o in others:
        c, full, preview = o["check"], o["baked"][0], o["baked"][1]
        rows.append(
            [o["scene"], f"{o['field']['wall_s']:.2f}", f"{full['wall_s']:.2f}"]
            + [f"{preview['wall_s']:.2f}", f"{c['bake_s']:.1f}", f"{c['mib']:.0f}"]
            + [f"{c['psnr_field_db']:.3f}", f"{c['psnr_baked_db']:.3f}"]
            + [f"{c['psnr_change_db']:+.3f}", f"{c['psnr_between_db']:.1f}"]
        )
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/render_speed.py")
    p.add_argument("--load_dir", required=True)
    p.add_argument("--ckpt", default="latest.pt")
    p.add_argument("--frames", type=int, default=3, help="training views rendered per mode")
    p.add_argument("--chunk", type=int, default=None, help="default: the config's model.chunk")
    p.add_argument("--device", default=None)
    p.add_argument("--autocast", choices=("none", "bf16"), default=None, help="default: config's")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--render_resample", type=int, default=None, help="model.render_resample; default: config's"
    )
    p.add_argument(
        "--fast_only", action="store_true", help="skip the reference (shortcuts off) renders"
    )
    p.add_argument("--baked", action="store_true", help="also render from the baked lattice")
    p.add_argument("--bake_resolution", type=int, help="--baked: nodes per axis (default: grid's)")
    p.add_argument(
        "--baked_also",
        nargs="*",
        default=[],
        help="other experiments: their field's full frame and the baked rows only, one table",
    )
    p.add_argument("--markdown", type=Path, help="write the render section of this file")
    p.add_argument("--json", type=Path, help="write the rows and the check as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, scene, model, step = load_experiment(Path(args.load_dir), args.ckpt, args.device)
    if args.autocast is not None:
        model.autocast = args.autocast
    if args.render_resample is not None:
        model.cfg.render_resample = args.render_resample
    chunk = args.chunk or cfg.model.chunk
    rss_loaded = peak_rss_mib()
    c2w, Ks, photos = training_views(model, scene, args.frames)
    n = len(c2w)
    H, W = model.cam_param.H, model.cam_param.W
    m = cfg.model
    info = (
        f"{scene.name} (`{args.load_dir}`, step {step}), {W}x{H}, {m.encoding} encoding, "
        f"{m.net_depth}x{m.net_width} decoder, occupancy grid "
        f"{model.occupancy.resolution if model.occupancy is not None else 'none'}"
        f"{'^3' if model.occupancy is not None else ''}, autocast {model.autocast}, chunk "
        f"{chunk}, device {model.cam_param.t.device}, {torch.get_num_threads()} threads, "
        f"{n} frames per mode."
    )
    print(info)
    counts = count_samples(model)
    warm_up(model, c2w, Ks, chunk, counts)
    rows, check = [], None
    full, fast = time_frames(model, c2w, Ks, H, W, chunk, False, True, "full", counts)
    rows.append(full)
    rows.append(time_frames(model, c2w, Ks, H, W, chunk, True, True, "preview", counts)[0])
    if not args.fast_only:
        ref_row, ref = time_frames(model, c2w, Ks, H, W, chunk, False, False, "full", counts)
        rows.append(ref_row)
        rows.append(time_frames(model, c2w, Ks, H, W, chunk, True, False, "preview", counts)[0])
        between, p_fast, p_ref = compare(fast, ref, photos)
        diff = max(float((a - b).abs().max()) for a, b in zip(fast, ref, strict=True))
        check = {
            "psnr_between_db": between,
            "max_abs_diff": diff,
            "psnr_fast_db": p_fast,
            "psnr_reference_db": p_ref,
            "psnr_change_db": abs(p_fast - p_ref),
        }
    model.render_shortcuts = True
    baked_check = None
    if args.baked:
        baked_rows, baked_check = measure_baked(model, c2w, Ks, chunk, counts, fast, photos, args)
        rows += baked_rows
    others = [baked_elsewhere(Path(d), args) for d in args.baked_also]
    print(table(rows))
    if check:
        print(check_line(check))
    if baked_check:
        print(baked_line(baked_check))
    if others:
        print(others_table(others))
    print(f"peak RSS {rss_loaded:.0f} MiB after loading, {peak_rss_mib():.0f} MiB after rendering")
    command = "python bench/render_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown is not None:
        write_section(args.markdown, command, rows, check, info, baked_check, others)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": command, "machine": machine(), "info": info, "rows": rows}
        record["baked"], record["baked_also"] = baked_check, others
        args.json.write_text(json.dumps({**record, "check": check}, indent=1))
    if check and check["psnr_change_db"] >= MAX_PSNR_CHANGE:
        print(f"the shortcuts moved the PSNR by more than {MAX_PSNR_CHANGE} dB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
