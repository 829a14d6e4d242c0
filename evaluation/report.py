"""<exp>/metrics.json (its one writer) and the printed camera summary."""

from __future__ import annotations

import json
from pathlib import Path

from utils.io import write_json_atomic

METRICS_FILE = "metrics.json"


def write_metrics(exp_dir: Path, updates: dict, fresh: bool = False) -> dict:
    """Write `updates` into <exp_dir>/metrics.json atomically and return what the file holds.
    fresh=False merges them into the file's blocks (the training report and the "eval" block
    of eval.py live side by side); fresh=True replaces the file (the end of a training run, so
    no block from an earlier run outlives it)."""
    path = Path(exp_dir) / METRICS_FILE
    metrics = {}
    if not fresh and path.is_file():
        try:
            metrics = json.loads(path.read_text())
        except ValueError:
            metrics = {}
    metrics.update(updates)
    write_json_atomic(path, metrics)
    return metrics


def format_camera_report(report: dict, step: int, dropped: list[str] = ()) -> str:
    """The printed camera errors; `dropped`: training views the camera start left out (named:
    they are not in the errors)."""
    n = report["rotation-aware"]["n_cameras"]
    lines = [
        f"final camera errors after {step} steps ({n} training views"
        + (f"; dropped by the camera start, not measured: {', '.join(dropped)}" if dropped else "")
        + "):"
    ]
    for alignment in ("rotation-aware", "centre-only"):
        r, i = report[alignment], report[alignment]["identity_start"]
        lines.append(
            f"  {alignment:>14} alignment: rotation median {r['rot_median_deg']:.3f} deg "
            f"(mean {r['rot_mean_deg']:.3f}, max {r['rot_max_deg']:.3f}; identity start "
            f"{i['rot_median_deg']:.3f} / "
            f"{i['rot_mean_deg']:.3f}), translation median {r['trans_median']:.4f} "
            f"(identity start {i['trans_median']:.4f})"
        )
        if "start" in r and r["start"]["rot_median_deg"] != i["rot_median_deg"]:
            s = r["start"]
            lines.append(
                f"  {'':>14}   initial poses: rotation median {s['rot_median_deg']:.3f} deg, "
                f"translation median {s['trans_median']:.4f}"
            )
    if "focal_error_percent" in report:
        lines.append(f"  focal error {report['focal_error_percent']:.2f} %")
    return "\n".join(lines)
