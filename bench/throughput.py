"""Training-step throughput: ray-samples per second of one full optimisation step (forward,
backward, optimisers), for the NeRF-- baseline step and ours, in float32, bfloat16 autocast and
torch.compile, side by side on one machine.

python bench/throughput.py [--shapes nerfmm,default] [--modes ...] [--steps 20] [--warmup 5]
                           [--threads N] [--device cpu|cuda] [--json bench/results/throughput.json]

Shapes: `nerfmm` = 8 x 128 MLP (skip after layer 4), 128 samples, 1024 rays (NeRF--'s step);
`default` = the model configs/base.yaml ships (the frequency MLP; read from the file).
Modes: `nerfmm-fp32` (bench/nerfmm_step.py, the baseline),
`ours-fp32`, `ours-bf16`, `ours-fp32-compile`, `ours-bf16-compile` (engine/trainer.py's
Trainer.train_step on a generated 504x378 forward-facing scene of 17 images, LLFF images_8).

Every (shape, mode) runs in a fresh subprocess: its own peak memory (resident set on CPU,
max allocated on CUDA), no compile cache or allocator state carried over. Beside each step the
same MLP's matrix multiplies (forward and both backward products of every linear layer, at the
step's batch of ray-samples and dtype) are timed alone: `matmul %` is that time over the step
time, i.e. how much of the step is the unavoidable dense work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]

SHAPES = {
    "nerfmm": {"depth": 8, "width": 128, "skips": [4], "samples": 128, "rays": 1024},
}


def default_shape() -> dict:
    """The network, samples and rays of configs/base.yaml: the default training step."""
    from utils.config import load_config

    cfg = load_config(None, {})
    model = cfg.model
    return {
        "depth": model.net_depth,
        "width": model.net_width,
        "skips": list(model.skips),
        "samples": model.n_samples,
        "rays": cfg.training.n_rays,
    }


SHAPES["default"] = default_shape()
MODES = ("nerfmm-fp32", "ours-fp32", "ours-bf16", "ours-fp32-compile", "ours-bf16-compile")
DEFAULT_MODES = "nerfmm-fp32,ours-fp32,ours-bf16,ours-bf16-compile"
N_IMAGES, H, W = 17, 378, 504


def synthetic_images(device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(N_IMAGES, H, W, 3, generator=gen).to(device)


def our_step(shape: dict, mode: str, device: torch.device):
    """(step function, ray-samples per step, MLP linear layers) for engine/trainer.py's step."""
    import tempfile

    from dataio.scene import SceneData
    from engine.experiment import build_model
    from engine.trainer import Trainer
    from utils.config import load_config

    overrides = {
        "device": str(device),
        "model:net_depth": shape["depth"],
        "model:net_width": shape["width"],
        "model:skips": shape["skips"],
        "model:n_samples": shape["samples"],
        "training:n_rays": shape["rays"],
        "training:autocast": "bf16" if "bf16" in mode else "none",
        "training:compile": mode.endswith("compile"),
    }
    cfg = load_config(None, overrides)
    images = synthetic_images("cpu")
    scene = SceneData(
        name="bench",
        images=images,
        image_names=[f"{i:03d}.png" for i in range(N_IMAGES)],
        train_ids=list(range(N_IMAGES)),
        test_ids=[],
        c2w_gt=None,
        K_gt=None,
        near=1.0,
        far=10.0,
        forward_facing=True,
    )
    model = build_model(cfg, scene, device)
    trainer = Trainer(cfg, scene, model, Path(tempfile.mkdtemp()), device)
    linears = [m for m in model.field.modules() if isinstance(m, torch.nn.Linear)]
    layers = [(m.in_features, m.out_features) for m in linears]
    return trainer.train_step, shape["rays"] * shape["samples"], layers


def baseline_step(shape: dict, device: torch.device):
    from bench.nerfmm_step import NerfmmStep

    if shape["skips"] not in ([4], [shape["depth"] // 2]):
        raise SystemExit("nerfmm-fp32 runs the official MLP: its skip sits at depth // 2.")
    step = NerfmmStep(
        synthetic_images(device),
        shape["depth"],
        shape["width"],
        shape["samples"],
        shape["rays"],
        device,
    )
    return step.step, step.n_ray_samples(), step.mlp_layers()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_seconds(layers, rows: int, dtype, device, reps: int) -> float:
    """Seconds for the forward and both backward matrix multiplies of `layers` at `rows`."""
    gen = torch.Generator().manual_seed(0)
    mats = []
    for fan_in, fan_out in layers:
        x = torch.randn(rows, fan_in, generator=gen).to(device, dtype)
        w = torch.randn(fan_in, fan_out, generator=gen).to(device, dtype)
        g = torch.randn(rows, fan_out, generator=gen).to(device, dtype)
        mats.append((x, w, g))

    def once():
        for x, w, g in mats:
            x @ w  # forward
            g @ w.T  # gradient of the input
            x.T @ g  # gradient of the weight

    once()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync(device)
    return (time.perf_counter() - t0) / reps


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(shape_name: str, mode: str, steps: int, warmup: int, device: torch.device) -> dict:
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    if mode == "nerfmm-fp32":
        step, samples, layers = baseline_step(shape, device)
    else:
        step, samples, layers = our_step(shape, mode, device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - t0) / steps
    dtype = torch.bfloat16 if "bf16" in mode else torch.float32
    mm_s = matmul_seconds(layers, samples, dtype, device, reps=max(3, steps // 4))
    flops = sum(6 * samples * a * b for a, b in layers)
    return {
        "shape": shape_name,
        "mode": mode,
        "step_ms": step_s * 1e3,
        "ray_samples_per_s": samples / step_s,
        "peak_mem_mib": peak_memory_mib(device),
        "mlp_gflops": flops / step_s / 1e9,
        "matmul_gflops": flops / mm_s / 1e9,
        "matmul_fraction": mm_s / step_s,
        "warmup_s": warm_s,
    }


def replace_section(path: Path, begin: str, end: str, section: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) in place of the markdown
    file's text between those markers, or at its end; the rest of the file is kept (each bench
    script owns one section of docs/results.md)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table of `header` and `rows` (cells formatted already, or str()-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_line(m: dict) -> str:
    """The CPU and whether it has native bfloat16, for a results section's machine line."""
    return f"{m['cpu']} (AVX512-BF16 {'yes' if m.get('avx512_bf16') else 'no'})"


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        fields = {}  # the first processor's
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if fields.get("model name"):
            info["cpu"] = fields["model name"]
        # a virtual machine's model name can be as bare as "AMD EPYC": the family and model
        # tell its generations apart, which train at different speeds
        if fields.get("cpu family") and fields.get("model"):
            info["cpu"] += f" (family {fields['cpu family']}, model {fields['model']})"
        flags = fields.get("flags", "").split()
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx_bf16"] = "amx_bf16" in flags
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(rows: list[dict]) -> str:
    """Markdown table; `x NeRF-- step` divides by the nerfmm-fp32 row of the nerfmm shape (the
    NeRF-- step as published), `x same shape` by the nerfmm-fp32 row of the row's own shape."""
    base = {
        r["shape"]: r["ray_samples_per_s"]
        for r in rows
        if r["mode"] == "nerfmm-fp32" and "error" not in r
    }
    out = [
        "| shape | mode | step ms | ray-samples/s | x NeRF-- step | x same shape | peak MiB "
        "| MLP GFLOP/s | matmul GFLOP/s | matmul % | warm-up s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in rows:
        if "error" in r:
            out.append(f"| {r['shape']} | {r['mode']} | failed: {r['error']} |")
            continue
        rate = r["ray_samples_per_s"]
        vs_nerfmm = rate / base["nerfmm"] if "nerfmm" in base else nan
        vs_shape = rate / base[r["shape"]] if r["shape"] in base else nan
        out.append(
            f"| {r['shape']} | {r['mode']} | {r['step_ms']:.1f} | {rate:,.0f} | {vs_nerfmm:.2f} "
            f"| {vs_shape:.2f} | {r['peak_mem_mib']:.0f} | {r['mlp_gflops']:.1f} "
            f"| {r['matmul_gflops']:.1f} | {100 * r['matmul_fraction']:.0f} | {r['warmup_s']:.1f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/throughput.py")
    p.add_argument("--shapes", default="nerfmm,default")
    p.add_argument("--modes", default=DEFAULT_MODES)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="bench/results/throughput.json")
    p.add_argument("--one", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps, args.warmup, device)))
        return 0
    rows = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        for mode in args.modes.split(","):
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
            if mode == "nerfmm-fp32" and shape != "nerfmm":
                continue  # the baseline is NeRF--'s own network
            cmd = [sys.executable, __file__, "--one", shape, mode, "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--device", args.device]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"shape": shape, "mode": mode, "error": err[:200]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {shape} {mode}: done", file=sys.stderr)
    from engine.experiment import resolve_autocast

    info = machine()
    info["autocast_auto"] = resolve_autocast("auto", device)  # what the default step runs in
    print(f"machine: {info}")
    print(f"default shape (configs/base.yaml): {SHAPES['default']}")
    print(table(rows))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
