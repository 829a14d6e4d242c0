"""What train.py --viewer costs a training step: one demo run, the viewer on and off in turns.

python bench/viewer_overhead.py [--steps 300] [--block 10] [--markdown docs/results.md]
    [--json bench/results/viewer_overhead.json] [--section:key value ...]

Trains configs/demo.yaml for --steps steps with the viewer of train.py --viewer (LiveViewer, in
the same place among the callbacks) and a simulated browser connected from the first step: it
rests on a training camera and moves to the next every MOVE_S seconds, so the viewer renders a
preview and then a resting frame after each move, and again whenever it takes a newer copy of
the field. The viewer is switched off and on every --block steps (off: it does nothing between
steps and its time budget stands still), so both arms share one process, one field and one
stretch of time: on a machine shared with other jobs a load that comes and goes falls on both.
A step's time is the wall time from one step's end to the next (the step and every callback,
the viewer's waits included); the first WARMUP steps are left out. --markdown writes the table
into that file's viewer section (between its markers; the rest of the file is kept).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import train
from bench.throughput import cpu_line, machine, replace_section
from engine.callbacks import Callback
from utils.malloc import tune_malloc
from vis.viewer_live import SHARE, LiveViewer
from vis.viewer_scene import c2w_to_viser, fov_of

REPO = Path(__file__).resolve().parents[1]
LOAD = os.getloadavg()  # other jobs on the machine: the numbers' context
WARMUP = 5
MOVE_S = 20.0
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


class Switched(LiveViewer):
    """train.py --viewer's callback, switched off (nothing between steps, its budget standing
    still) while `on` is false."""

    on = True

    def on_step_end(self, trainer, values: dict) -> None:
        if self.on:
            super().on_step_end(trainer, values)


class StepTimes(Callback):
    """Wall time between consecutive step ends, each tagged with whether the viewer was on;
    connects a SimulatedBrowser and switches the viewer every `block` steps."""

    def __init__(self, live: Switched, block: int):
        self.live, self.block = live, block
        self.times, self.net, self.on, self.last, self.browser = [], [], [], None, None
        self.other = 0.0

    def _timed(self, hook):
        def timed(trainer, values):
            t = time.perf_counter()
            hook(trainer, values)
            self.other += time.perf_counter() - t

        return timed

    def on_train_start(self, trainer) -> None:
        # the run's other periodic work (logging, evaluation, checkpoints, grid upsampling)
        # lands on a few steps of either arm: timed apart, so that it can be left out
        for callback in trainer.callbacks:
            if callback is not self and callback is not self.live:
                callback.on_step_end = self._timed(callback.on_step_end)
        self.viewer = self.live.viewer  # the callback lets it go at the end
        self.browser = SimulatedBrowser(self.viewer.view)
        self.viewer._connect(self.browser)
        threading.Thread(target=self.browser.run, daemon=True).start()
        self.last = time.perf_counter()

    def on_step_end(self, trainer, values: dict) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.net.append(now - self.last - self.other)
        self.other = 0.0
        self.on.append(self.live.on)
        if trainer.step % self.block == 0:  # switch for the next block
            self.live.on = not self.live.on
            (self.live.gate.resume if self.live.on else self.live.gate.pause)()
        self.last = time.perf_counter()

    def on_train_end(self, trainer) -> None:
        self.browser.stop.set()
        viewer = self.viewer
        self.stats = {
            "frames": viewer.stats["frames"],
            "previews": viewer.stats["previews"],
            "copies": viewer.version,
            "waited_s": self.live.gate.waited,
            "sent": self.browser.frames,
        }


def run(folder: Path, steps: int, block: int, overrides: list[str]) -> dict:
    live = Switched("127.0.0.1", 0)
    timer = StepTimes(live, block)
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--log_root", str(folder / "logs")]
    args += ["--data:data_dir", str(folder / "scene"), "--tracks:cache_dir", str(folder / "tracks")]
    args += ["--training:num_iters", str(steps), "--training:progress_bar", "false"]
    args += ["--training:eval_at_end", "false", "--expname", "viewer", *overrides]
    t0 = time.perf_counter()
    try:
        if train.main(args, callbacks=[live, timer]) != 0:
            raise SystemExit("the run failed")
    finally:
        live.close()
    times, on = np.asarray(timer.times[WARMUP:]), np.asarray(timer.on[WARMUP:])
    net = np.asarray(timer.net[WARMUP:])
    arms = {}
    for name, mask in (("no viewer", ~on), ("viewer", on)):
        arms[name] = {
            "steps": int(mask.sum()),
            "median_ms": 1000 * float(np.median(times[mask])),
            "mean_ms": 1000 * float(times[mask].mean()),
            "net_median_ms": 1000 * float(np.median(net[mask])),
            "net_mean_ms": 1000 * float(net[mask].mean()),
        }
    for key in ("median_ms", "mean_ms", "net_median_ms", "net_mean_ms"):
        ratio = arms["viewer"][key] / arms["no viewer"][key]
        arms["overhead_" + key[:-3] + "_percent"] = 100 * (ratio - 1)
    result = {"arms": arms, "viewer": timer.stats, "run_s": time.perf_counter() - t0}
    result["block"], result["steps"] = block, steps
    print(json.dumps(result), flush=True)
    return result


def table(r: dict) -> str:
    a = r["arms"]
    v = r["viewer"]
    lines = [
        "| arm | steps timed | median step ms | mean step ms | without the run's other "
        "periodic work: median | mean |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {a[name]['steps']} | {a[name]['median_ms']:.1f} | "
            f"{a[name]['mean_ms']:.1f} | {a[name]['net_median_ms']:.1f} | "
            f"{a[name]['net_mean_ms']:.1f} |"
            for name in ("no viewer", "viewer")
        ),
        "",
        f"With the viewer on, a step took {a['overhead_net_mean_percent']:+.1f}% (mean) and "
        f"{a['overhead_net_median_percent']:+.1f}% (median) longer than with it off, leaving "
        "out the time of the run's other periodic work (logging, evaluation, checkpoints, grid "
        "upsampling), which falls on a few steps of either arm; with it, "
        f"{a['overhead_mean_percent']:+.1f}% (mean) and {a['overhead_median_percent']:+.1f}% "
        "(median). Meanwhile the "
        f"viewer rendered {v['previews']} previews and {v['frames']} resting frames for the "
        f"browser, took {v['copies']} copies of the field, and training waited "
        f"{v['waited_s']:.1f} s for it in {r['run_s']:.0f} s.",
    ]
    return "\n".join(lines)


def write_section(path: Path, command: str, result: dict, note: str = "") -> None:
    """Replace the viewer section of the markdown file `path` (created when missing)."""
    m = machine()
    section = "\n".join(
        [
            BEGIN,
            "## The viewer's cost to a training step",
            "",
            f"configs/demo.yaml for {result['steps']} steps with train.py --viewer's viewer and a "
            f"simulated browser (another training view every {MOVE_S:.0f} s), the viewer "
            f"switched off and on every {result['block']} steps of the same run; a step's time "
            "runs from one step's end to the next, callbacks included, the first "
            f"{WARMUP} steps left out. The viewer's share of the training's time is capped at "
            f"{100 * SHARE:.0f}% (vis/viewer_live.py).",
            "",
            f"Machine: {cpu_line(m)}, "
            f"{m['cpu_count']} cores shared with other jobs (load average {LOAD[0]:.1f} at the "
            f"start), torch {m['torch']}, {m['threads']} "
            f"thread(s). Command: `{command}`",
            *([note] if note else []),
            "",
            table(result),
            END,
        ]
    )
    replace_section(path, BEGIN, END, section)


def take(argv: list[str], flag: str, default):
    if flag not in argv:
        return default
    i = argv.index(flag)
    value = argv[i + 1]
    del argv[i : i + 2]
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_malloc()  # as train.py's process (utils/cli.py), before the viewer's threads
    command = "python bench/viewer_overhead.py " + " ".join(argv)
    steps = int(take(argv, "--steps", 300))
    block = int(take(argv, "--block", 10))
    json_path = take(argv, "--json", None)
    markdown = take(argv, "--markdown", None)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), steps, block, argv)
    print(f"\n{machine()}\n{table(result)}")
    if markdown is not None:
        write_section(Path(markdown), command, result)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        out = {"command": command, "machine": machine(), **result}
        Path(json_path).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
