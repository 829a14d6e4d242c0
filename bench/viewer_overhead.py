"""What train.py --viewer costs a training step: the same short demo run with and without it.

python bench/viewer_overhead.py [--steps 150] [--repeats 2] [--markdown docs/results.md]
    [--json bench/results/viewer_overhead.json] [--section:key value ...]

Runs configs/demo.yaml for --steps steps (num_iters), alternately without and with the viewer
(--repeats times each, so a load that drifts on a shared machine falls on both arms alike), on
one generated scene and one tracks cache. With the viewer a simulated browser is connected from
the first step: it rests on a training camera and moves to the next every MOVE_S seconds, so the
viewer renders a preview and then a resting frame after each move, and again whenever it takes a
newer copy of the field. A step's time is the wall time from one step's end to the next (the
step and every callback, the viewer's waits included); the first WARMUP steps are left out.
--markdown writes the table into that file's viewer section (between its markers; the rest of
the file is kept).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import train
from bench.throughput import machine
from engine.callbacks import Callback
from vis.viewer_live import SHARE, LiveViewer
from vis.viewer_scene import c2w_to_viser, fov_of

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5
MOVE_S = 3.0
BEGIN, END = "<!-- bench/viewer_overhead.py: begin -->", "<!-- bench/viewer_overhead.py: end -->"


class SimulatedBrowser:
    """The parts of a viser client the viewer uses; a thread moves its camera from one training
    view to the next every MOVE_S seconds (as a person clicking through them would)."""

    def __init__(self, view, client_id: int = 999):
        self.view, self.client_id, self.frames = view, client_id, 0
        self.moved = []
        self.camera = type("Camera", (), {})()
        self.camera.fov = fov_of(view.K[0], view.H)
        self.camera.aspect = view.W / view.H
        self.camera.on_update = self.moved.append
        self.camera._state = type("State", (), {"update_timestamp": 1.0})()
        self.scene = type("Scene", (), {})()
        self.scene.set_background_image = self._frame
        self.stop = threading.Event()
        self._pose(0)

    def _frame(self, rgb, **kwargs) -> None:
        self.frames += 1

    def _pose(self, k: int) -> None:
        self.camera.wxyz, self.camera.position = c2w_to_viser(self.view.c2w[k % self.view.n])

    def run(self) -> None:
        k = 0
        while not self.stop.wait(MOVE_S):
            k += 1
            self._pose(k)
            for callback in self.moved:
                callback(self.camera)


class StepTimes(Callback):
    """Wall time between consecutive step ends; connects a SimulatedBrowser to the viewer."""

    def __init__(self):
        self.times, self.last, self.browser, self.viewer = [], None, None, None

    def on_train_start(self, trainer) -> None:
        live = [c for c in trainer.callbacks if isinstance(c, LiveViewer)]
        if live:
            self.viewer = live[0].viewer
            self.gate = live[0].gate
            self.browser = SimulatedBrowser(self.viewer.view)
            self.viewer._connect(self.browser)
            threading.Thread(target=self.browser.run, daemon=True).start()
        self.last = time.perf_counter()

    def on_step_end(self, trainer, values: dict) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now

    def on_train_end(self, trainer) -> None:
        if self.browser is not None:
            self.browser.stop.set()
            self.waited = self.gate.waited


def run_arm(folder: Path, name: str, steps: int, viewer: bool, overrides: list[str]) -> dict:
    timer = StepTimes()
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--log_root", str(folder / "logs")]
    args += ["--data:data_dir", str(folder / "scene"), "--tracks:cache_dir", str(folder / "tracks")]
    args += ["--training:num_iters", str(steps), "--training:progress_bar", "false"]
    args += ["--training:eval_at_end", "false", "--expname", name, *overrides]
    if viewer:
        args += ["--viewer", "--port", "0"]
    t0 = time.perf_counter()
    if train.main(args, callbacks=[timer]) != 0:
        raise SystemExit(f"the {name} run failed")
    times = np.asarray(timer.times[WARMUP:])
    row = {
        "arm": "viewer" if viewer else "no viewer",
        "steps": len(times),
        "median_ms": 1000 * float(np.median(times)),
        "mean_ms": 1000 * float(times.mean()),
        "run_s": time.perf_counter() - t0,
    }
    if viewer:
        stats = timer.viewer.stats
        row.update(
            frames=stats["frames"],
            previews=stats["previews"],
            copies=timer.viewer.version,
            waited_s=timer.waited,
            sent=timer.browser.frames,
        )
    print(json.dumps(row), flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    """Per arm: the median of the runs' median and mean step times; the viewer's overhead."""
    out = {}
    for arm in ("no viewer", "viewer"):
        mine = [r for r in rows if r["arm"] == arm]
        out[arm] = {
            "median_ms": float(np.median([r["median_ms"] for r in mine])),
            "mean_ms": float(np.median([r["mean_ms"] for r in mine])),
        }
    for key in ("median_ms", "mean_ms"):
        base = out["no viewer"][key]
        out["overhead_" + key[:-3] + "_percent"] = 100 * (out["viewer"][key] / base - 1)
    return out


def table(rows: list[dict], s: dict) -> str:
    lines = [
        "| run | arm | steps timed | median step ms | mean step ms | frames | previews | field "
        "copies | training waited s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(rows):
        extra = (
            f"{r['frames']} | {r['previews']} | {r['copies']} | {r['waited_s']:.1f}"
            if r["arm"] == "viewer"
            else " | | | "
        )
        lines.append(
            f"| {k + 1} | {r['arm']} | {r['steps']} | {r['median_ms']:.1f} | {r['mean_ms']:.1f} "
            f"| {extra} |"
        )
    lines.append(
        f"\nWith the viewer a step took {s['overhead_median_percent']:+.1f}% (median) and "
        f"{s['overhead_mean_percent']:+.1f}% (mean) of its time without it."
    )
    return "\n".join(lines)


def write_section(path: Path, command: str, rows: list[dict], s: dict, note: str = "") -> None:
    """Replace the viewer section of the markdown file `path` (created when missing)."""
    m = machine()
    section = "\n".join(
        [
            BEGIN,
            "## The viewer's cost to a training step",
            "",
            "configs/demo.yaml for a fixed number of steps, alternately without and with "
            "`--viewer` (a simulated browser connected throughout, moving to another training "
            f"view every {MOVE_S:.0f} s); a step's time runs from one step's end to the next, "
            f"callbacks included, the first {WARMUP} steps left out. The viewer's share of the "
            f"training's time is capped at {100 * SHARE:.0f}% (vis/viewer_live.py).",
            "",
            f"Machine: {m['cpu']} (AVX512-BF16 {'yes' if m.get('avx512_bf16') else 'no'}), "
            f"{m['cpu_count']} cores shared with other jobs, torch {m['torch']}, {m['threads']} "
            f"thread(s). Command: `{command}`",
            *([note] if note else []),
            "",
            table(rows, s),
            END,
        ]
    )
    text = path.read_text() if path.is_file() else "# Results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def take(argv: list[str], flag: str, default):
    if flag not in argv:
        return default
    i = argv.index(flag)
    value = argv[i + 1]
    del argv[i : i + 2]
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/viewer_overhead.py " + " ".join(argv)
    steps = int(take(argv, "--steps", 150))
    repeats = int(take(argv, "--repeats", 2))
    json_path = take(argv, "--json", None)
    markdown = take(argv, "--markdown", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k in range(repeats):
            for viewer in (False, True):
                name = f"{'viewer' if viewer else 'plain'}{k}"
                rows.append(run_arm(folder, name, steps, viewer, argv))
    s = summary(rows)
    print(f"\n{machine()}\n{table(rows, s)}")
    if markdown is not None:
        write_section(Path(markdown), command, rows, s)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        result = {"command": command, "machine": machine(), "rows": rows, "summary": s}
        Path(json_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
