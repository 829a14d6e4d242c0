"""The viewer's speed targets: the page up within 5 s of the command, and from a camera that stops
moving a preview within 1 s and the full frame within 5 s.

python bench/viewer_speed.py --page logs/<demo exp> --frames logs/<fern exp> [--repeats 3]
    [--markdown docs/results.md] [--json bench/results/viewer_speed.json]

--page: `python view.py --load_dir <exp> --port <free>` is started REPEATS times and timed
from the command to the first HTTP answer of the page. --frames: the experiment is loaded
here and a simulated browser (bench/viewer_overhead.py's) connects to the viewer; REPEATS
times its camera moves to another training view, and the times from that move to the first
preview (64 rows) and to the full frame at the photos' size reaching the client are recorded
(rendering, JPEG encoding and the hand-over to viser's server; not the network). --markdown
writes the results into that file's viewer speed section (between its markers).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.throughput import cpu_line, machine, replace_section
from bench.viewer_overhead import SimulatedBrowser, take
from engine.experiment import load_experiment
from utils.malloc import tune_malloc
from vis import viewer as viewer_module
from vis.viewer import Viewer
from vis.viewer_scene import build_viewer_scene

REPO = Path(__file__).resolve().parents[1]
LOAD = os.getloadavg()  # other jobs on the machine: the numbers' context
BEGIN = "<!-- bench/viewer_speed.py: begin -->"
END = "<!-- bench/viewer_speed.py: end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_up(exp: Path) -> tuple[float, float]:
    """Seconds from starting view.py to the page's first HTTP answer, and to the line saying
    the page shows the experiment (cameras, points, panel)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "view.py"), "--load_dir", str(exp), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    up = None
    try:
        while up is None and time.perf_counter() - t0 < 120:
            if proc.poll() is not None:
                raise SystemExit(f"view.py on {exp} ended with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        up = time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        for line in proc.stdout:
            if re.search(r" at http://\S+ in ", line):
                return up, time.perf_counter() - t0
        raise SystemExit(f"view.py on {exp} did not show it")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def frame_times(exp: Path, repeats: int) -> dict:
    """Seconds from a camera move to the first preview and to the full frame at the client."""
    cfg, scene, model, step = load_experiment(exp)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    view = build_viewer_scene(exp, cfg, scene, model)
    viewer = Viewer(view, model, port=0, chunk=cfg.model.chunk, log=lambda line: None)
    browser = SimulatedBrowser(view)
    arrivals = []
    browser.scene.set_background_image = lambda rgb, **kw: arrivals.append(
        (time.perf_counter(), rgb.shape)
    )
    previews, fulls = [], []
    try:
        viewer._connect(browser)
        while not any(shape[0] == view.H for _, shape in arrivals):  # the first full frame
            time.sleep(0.05)
        for k in range(1, repeats + 1):
            arrivals.clear()
            browser._pose(k)
            t0 = time.perf_counter()
            for callback in browser.moved:
                callback(browser.camera)
            deadline = t0 + 120
            while time.perf_counter() < deadline:
                done = [t for t, shape in arrivals if shape[0] == view.H]
                if done:
                    break
                time.sleep(0.01)
            small = [t for t, shape in arrivals if shape[0] == viewer_module.PREVIEW_HEIGHT]
            previews.append(small[0] - t0 if small else float("nan"))
            fulls.append(done[0] - t0 if done else float("nan"))
    finally:
        viewer.stop()
    return {
        "size": f"{view.W}x{view.H}",
        "step": step,
        "preview_s": previews,
        "full_s": fulls,
        "render_s": list(viewer.stats["frame_s"])[-repeats:],
    }


def section(command: str, page: list[float] | None, frames: dict | None, names) -> str:
    m = machine()
    lines = [
        BEGIN,
        "## The viewer's speed",
        "",
        f"Machine: {cpu_line(m)}, "
        f"{m['cpu_count']} cores shared with other jobs (load average {LOAD[0]:.1f} at the "
        f"start), torch {m['torch']}. Command: `{command}`",
        "",
        "| what | experiment | target | median s | runs (s) |",
        "|---|---|---|---|---|",
    ]
    if page:
        for k, what, target in (
            (0, "page up (view.py started -> HTTP answer)", 5),
            (1, "page shows the experiment (view.py started -> its line)", ""),
        ):
            runs = ", ".join(f"{t[k]:.2f}" for t in page)
            lines.append(
                f"| {what} | {names['page']} | {target} | "
                f"{np.median([t[k] for t in page]):.2f} | {runs} |"
            )
    if frames:
        for key, what, target in (
            ("preview_s", "preview, 64 rows (camera moved -> at the client)", 1),
            ("full_s", f"full frame {frames['size']} (camera moved -> at the client)", 5),
            ("render_s", f"of which rendering the full frame {frames['size']}", ""),
        ):
            runs = ", ".join(f"{t:.2f}" for t in frames[key])
            lines.append(
                f"| {what} | {names['frames']} (step {frames['step']}) | {target} | "
                f"{np.nanmedian(frames[key]):.2f} | {runs} |"
            )
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_malloc()  # as view.py's process (utils/cli.py), before the viewer's threads
    command = "python bench/viewer_speed.py " + " ".join(argv)
    page_exp, frames_exp = take(argv, "--page", None), take(argv, "--frames", None)
    repeats = int(take(argv, "--repeats", 3))
    markdown, json_path = take(argv, "--markdown", None), take(argv, "--json", None)
    if argv or (page_exp is None and frames_exp is None):
        print(f"usage: {__doc__.splitlines()[3]}")
        return 2
    page = [page_up(Path(page_exp)) for _ in range(repeats)] if page_exp else None
    if page:
        print(f"page up, experiment shown: {page} s", flush=True)
    frames = frame_times(Path(frames_exp), repeats) if frames_exp else None
    if frames:
        print(json.dumps(frames), flush=True)
    names = {"page": page_exp, "frames": frames_exp}
    text = section(command, page, frames, names)
    print(text)
    if markdown is not None:
        replace_section(Path(markdown), BEGIN, END, text)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        result = {"command": command, "machine": machine(), "page_s": page, "frames": frames}
        Path(json_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
