"""Camera accuracy and time: cameras.init auto against COLMAP's mappers alone, in one run.

python bench/cameras.py [--scenes fern flower horns leaves room] [--config configs/fern_tracks.yaml]
    [--json bench/results/cameras.json] [--section:key value ...]

For every LLFF scene (../shared/data/llff/<scene>), from nothing (fresh caches in a temporary
folder, so every time includes SIFT extraction and matching):
- COLMAP global (GLOMAP) alone and COLMAP incremental alone, on one feature database;
- posefree's cameras.init auto (its own features, matching, tracks, candidates and choice).
Errors against the scene's poses_bounds.npy: median rotation error under the rotation-aware
alignment (centre-only beside it), focal error, registered views; the identity start's error
is printed with them. Wall times in seconds on this machine (see the machine line).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.throughput import machine
from dataio.loaders import load_scene
from engine.experiment import build_cameras, prepare_tracks
from evaluation.pose_metrics import camera_report
from sfm.colmap import colmap_init
from sfm.initialise import init_cameras
from utils.config import load_config, parse_overrides

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "llff"
SCENES = ("fern", "flower", "horns", "leaves", "room")


def errors(scene, c2w, focal) -> dict:
    ids = scene.train_ids
    K = scene.K_gt[ids].double()
    report = camera_report(
        torch.as_tensor(c2w).double(),
        scene.c2w_gt[ids].double(),
        torch.as_tensor(focal).double(),
        torch.stack([K[:, 0, 0], K[:, 1, 1]], -1),
    )
    return {
        "rot_deg": report["rotation-aware"]["rot_median_deg"],
        "rot_deg_centre_only": report["centre-only"]["rot_median_deg"],
        "identity_rot_deg": report["rotation-aware"]["identity_start"]["rot_median_deg"],
        "focal_error_percent": report["focal_error_percent"],
    }


def colmap_alone(cfg, scene, folder: Path) -> list[dict]:
    rows = []
    for mapper in ("global", "incremental"):
        t0 = time.perf_counter()
        try:
            start = colmap_init(scene, cfg.tracks, folder, log=lambda s: None, mapper=mapper)
            c2w, focal, registered = start.c2w, start.focal, start.registered
        except ValueError as err:  # DataError: no model
            rows.append({"method": f"COLMAP {mapper}", "failed": str(err)})
            continue
        # the first mapper's time includes the feature database (extraction + matching)
        rows.append(
            {
                "method": f"COLMAP {mapper}",
                "seconds": time.perf_counter() - t0,
                "registered": f"{sum(registered)}/{len(registered)}",
                **errors(scene, c2w, focal),
            }
        )
    return rows


def ours(cfg, scene, folder: Path) -> dict:
    t0 = time.perf_counter()
    cams = build_cameras(cfg, scene)
    tracks = prepare_tracks(cfg, scene, folder, log=lambda s: None)
    summary = init_cameras(cfg, scene, cams, tracks, folder, log=print, out_dir=folder / "sfm")
    with torch.no_grad():
        c2w, focal = cams.c2w().double(), cams.focal_px().double()
    kept = next(c for c in summary["candidates"] if c["name"] == summary["kept"])
    return {
        "method": f"posefree auto (kept {summary['kept']})",
        "seconds": time.perf_counter() - t0,
        "registered": f"{kept['n_registered']}/{kept['n_views']}",
        **errors(scene, c2w, focal),
    }


def table(results: dict) -> str:
    lines = [
        "| scene | method | rot median deg (rotation-aware) | centre-only | identity start "
        "| focal err % | registered | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scene, rows in results.items():
        for r in rows:
            if "failed" in r:
                lines.append(f"| {scene} | {r['method']} | failed: {r['failed'][:60]} ||||||")
                continue
            lines.append(
                f"| {scene} | {r['method']} | {r['rot_deg']:.3f} | {r['rot_deg_centre_only']:.3f} "
                f"| {r['identity_rot_deg']:.2f} | {r['focal_error_percent']:.2f} "
                f"| {r['registered']} | {r['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    scenes, config, json_path = list(SCENES), "configs/fern_tracks.yaml", None
    for flag in ("--scenes", "--config", "--json"):
        if flag in argv:
            i = argv.index(flag)
            values = []
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                values.append(argv[j])
                j += 1
            del argv[i:j]
            if flag == "--scenes":
                scenes = values
            elif flag == "--config":
                config = values[0]
            else:
                json_path = Path(values[0])
    overrides = parse_overrides(argv)
    if overrides.get("num_threads"):
        torch.set_num_threads(int(overrides["num_threads"]))
    results = {}
    for name in scenes:
        if not (DATA / name).is_dir():
            print(f"skipping {name}: {DATA / name} is absent")
            continue
        cfg = load_config(
            config, {**overrides, "data:data_dir": str(DATA / name), "tracks:cache_dir": None}
        )
        scene = load_scene(cfg.data)
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            rows = colmap_alone(cfg, scene, Path(a))
            rows.append(ours(cfg, scene, Path(b)))
        results[name] = rows
        print(table({name: rows}), flush=True)
    print(f"\n{machine()}")
    print(table(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        command = "python bench/cameras.py " + " ".join(sys.argv[1:] if argv is None else argv)
        json_path.write_text(
            json.dumps({"command": command, "machine": machine(), "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
