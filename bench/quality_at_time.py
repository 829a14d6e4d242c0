"""Camera quality against wall time for one training run: rotation error (rotation-aware and
centre-only alignments), translation error, focal error and the training-batch PSNR, from the
start of the command (feature extraction, bundle adjustment and training all count).

python bench/quality_at_time.py --config configs/fern_tracks.yaml [--section:key value ...]
                                [--json bench/results/quality_<expname>.json]

It runs train.py in this process with an observer on the trainer: a point after every round of
the track bundle adjustment (100 L-BFGS iterations) and at every training.eval_every step. It
prints a markdown table, the first time each rotation threshold (1 and 0.5 degrees,
rotation-aware median) was reached and the time from which the error stayed under it (a joint
adjustment can pass under a threshold on its way to a wrong focal; the retry comes back later),
and writes JSON (also to <exp>/quality_at_time.json).
Needs a scene with ground-truth poses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLDS_DEG = (1.0, 0.5)


def point(event: dict, t0: float) -> dict:
    report = event["report"]
    ra, co = report["rotation-aware"], report["centre-only"]
    return {
        "wall_s": time.perf_counter() - t0,
        "phase": event["phase"],
        "iteration": event["iteration"],
        "rot_median_deg": ra["rot_median_deg"],
        "rot_median_deg_centre_only": co["rot_median_deg"],
        "trans_median": ra["trans_median"],
        "focal_error_percent": report.get("focal_error_percent"),
        "psnr_train_batch": event.get("psnr"),
        "identity_start_rot_median_deg": ra["identity_start"]["rot_median_deg"],
    }


def first_below(points: list[dict], threshold: float) -> dict | None:
    for p in points:
        if p["rot_median_deg"] < threshold:
            return p
    return None


def stays_below(points: list[dict], threshold: float) -> dict | None:
    """The first point from which every later point is under `threshold`."""
    settled = None
    for p in points:
        if p["rot_median_deg"] < threshold:
            settled = settled or p
        else:
            settled = None
    return settled


def _when(p: dict | None) -> str:
    if p is None:
        return "not reached"
    minutes = p["wall_s"] / 60
    return f"{p['wall_s']:.0f} s ({minutes:.1f} min), {p['phase']} iteration {p['iteration']}"


def table(points: list[dict]) -> str:
    rows = [
        "| wall s | phase | iteration | rot median deg (rot-aware) | centre-only | trans median "
        "| focal err % | PSNR (batch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        focal = "" if p["focal_error_percent"] is None else f"{p['focal_error_percent']:.2f}"
        psnr = "" if p["psnr_train_batch"] is None else f"{p['psnr_train_batch']:.2f}"
        rows.append(
            f"| {p['wall_s']:.0f} | {p['phase']} | {p['iteration']} | {p['rot_median_deg']:.3f} "
            f"| {p['rot_median_deg_centre_only']:.3f} | {p['trans_median']:.4f} | {focal} "
            f"| {psnr} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    json_path = None
    if "--json" in argv:
        i = argv.index("--json")
        json_path = Path(argv[i + 1])
        del argv[i : i + 2]
    import train
    from bench.throughput import machine
    from engine.callbacks import Callback

    points: list[dict] = []
    exp_dirs: list[Path] = []
    t0 = time.perf_counter()

    class Recorder(Callback):
        def on_camera_report(self, trainer, event: dict) -> None:
            points.append(point(event, t0))
            exp_dirs.append(Path(event["exp_dir"]))

    rc = train.main(argv, callbacks=[Recorder()])
    if not points:
        print("no camera errors were recorded (does the scene have ground-truth poses?)")
        return rc or 1
    print(f"\nidentity start: rotation median {points[0]['identity_start_rot_median_deg']:.3f} deg")
    print(table(points))
    reached, settled = {}, {}
    for threshold in THRESHOLDS_DEG:
        reached[str(threshold)] = first = first_below(points, threshold)
        settled[str(threshold)] = stays = stays_below(points, threshold)
        print(
            f"rotation median under {threshold} deg (rotation-aware): first {_when(first)}; "
            f"stays under from {_when(stays)}"
        )
    result = {
        "command": "python bench/quality_at_time.py " + " ".join(argv),
        "machine": machine(),
        "points": points,
        "first_below_deg": reached,
        "stays_below_deg": settled,
        "exit_code": rc,
    }
    text = json.dumps(result, indent=1)
    (exp_dirs[-1] / "quality_at_time.json").write_text(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
        print(f"wrote {json_path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
