"""Camera and image quality against wall time: rotation error (rotation-aware and centre-only
alignments), translation error, focal error, the training-batch PSNR and, with
--heldout_every, the held-out PSNR after test-time pose refinement (and the masked one where
the scene has object masks, as DTU's protocol reports it), from the start of the
command (feature extraction, bundle adjustment and training all count; the held-out
evaluations themselves do not).

python bench/quality_at_time.py --config configs/fern_tracks.yaml [--section:key value ...]
                                [--json bench/results/quality_<expname>.json]
                                [--heldout_every N] [--arms "name:--section:key value ..." ...]
                                [--plot quality_<scene>.png] [--markdown docs/results.md]
python bench/quality_at_time.py --from_json "name=run.json" ... [--plot ...] [--markdown ...]

--arms runs the command once per arm, in this process, one after the other, each with its own
overrides appended and its own experiment (<expname>_<name>; a fresh tracks cache unless the
overrides name one), and prints their held-out PSNR against wall time side by side, e.g. the
frequency MLP against the grid encoding:
    --arms "frequency:--model:encoding frequency" "grid:--model:encoding grid"

It runs train.py in this process with an observer on the trainer: a point after every round of
the track bundle adjustment (100 L-BFGS iterations) and at every training.eval_every step. It
prints a markdown table, the first time each rotation threshold (1 and 0.5 degrees,
rotation-aware median) was reached and the time from which the error stayed under it (a joint
adjustment can pass under a threshold on its way to a wrong focal; the retry comes back later),
and writes JSON (also to <exp>/quality_at_time.json).
Needs a scene with ground-truth poses.

--from_json "name=path.json" ... runs nothing: it reads the JSON of earlier runs of this bench
(one arm each) and writes their --plot and --markdown together, each arm with its own command
and machine, e.g. a recipe change's 20-minute run beside the one before it:
    python bench/quality_at_time.py --from_json "ray mining=bench/results/quality_horns_mined.json"
        "uniform rays=logs/horns_20min/quality_at_time.json" --plot docs/quality_horns.png
        --markdown docs/results.md

A run may also come from a section this bench wrote earlier: "name=docs/results.md#flower"
takes the arm `name` of that file's flower section (its command, machine line and rows), so a
section can gain a run without the JSON of the runs already in it:
    python bench/quality_at_time.py --from_json "new=bench/results/quality_flower_new.json"
        "ray mining, 7500 steps=docs/results.md#flower" --plot docs/quality_flower.png
        --markdown docs/results.md

--plot writes the held-out PSNR after test-time refinement against wall time (a line per arm;
needs --heldout_every) with the published anchors of the LLFF scenes beside it (TensoRF VM-192
with ground-truth cameras, BARF with its own; ANCHORS); --markdown puts the held-out table, the
command, the machine and the plot in the scene's own section of that file.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLDS_DEG = (1.0, 0.5)
UNNAMED_ARM = "posefree"  # a run without --arms, in tables and plots
# Published held-out PSNR of the LLFF scenes (TensoRF VM-192 with ground-truth cameras, from
# its published logs; BARF with its own cameras, from its paper): the anchors the field is
# judged against, and the targets set for a 20-minute run on 2 cores.
ANCHORS = {
    "fern": {"TensoRF": 25.27, "BARF": 23.79, "target (20 min)": 25.3},
    "flower": {"TensoRF": 28.60, "BARF": 23.37, "target (20 min)": 27.5},
    "horns": {"TensoRF": 28.14, "BARF": 22.78, "target (20 min)": 26.5},
}


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


def heldout_table(arms: dict) -> str:
    """Held-out PSNR per arm and step; with a masked column (after test-time refinement) when
    the scene has object masks (DTU: the measure SPARF and TrackNeRF report)."""
    masked = any("psnr_masked_after_tto" in p for r in arms.values() for p in r["heldout"])
    head = "| arm | step | wall s | held-out PSNR | after test-time pose refinement |"
    rows = [head + (" masked, after |" if masked else "")]
    rows.append("|---|---|---|---|---|" + ("---|" if masked else ""))
    for name, result in arms.items():
        for p in result["heldout"]:
            row = (
                f"| {name} | {p['step']} | {p['wall_s']:.0f} | {p['psnr_before_tto']:.2f} "
                f"| {p['psnr_after_tto']:.2f} |"
            )
            if masked:
                value = p.get("psnr_masked_after_tto")
                row += f" {value:.2f} |" if value is not None else " |"
            rows.append(row)
    return "\n".join(rows)


def write_plot(path: Path, scene: str, arms: dict) -> None:
    """Held-out PSNR after test-time refinement against wall time, one line per arm, and the
    scene's anchors (ANCHORS) as horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, result in arms.items():
        rows = result["heldout"]
        minutes = [r["wall_s"] / 60 for r in rows]
        ax.plot(minutes, [r["psnr_after_tto"] for r in rows], "o-", label=name or UNNAMED_ARM)
    styles = {"TensoRF": "--", "BARF": ":", "target (20 min)": "-."}
    for label, value in ANCHORS.get(scene, {}).items():
        ax.axhline(
            value, linestyle=styles[label], color="grey", linewidth=1, label=f"{label} {value:.2f}"
        )
    ax.set_xlabel("wall time from the photos (min)")
    ax.set_ylabel("held-out PSNR after test-time refinement (dB)")
    ax.set_title(scene)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_section(
    path: Path, scene: str, runs: list[tuple[str, str, dict]], arms: dict, plot: Path | None
) -> None:
    """The scene's section of the markdown file `path`: held-out table, the command and machine
    of each run (runs: (name, command, machine); name "" for a single run), plot."""
    import os

    from bench.throughput import cpu_line, replace_section

    begin, end = f"<!-- quality_at_time {scene} begin -->", f"<!-- quality_at_time {scene} end -->"
    anchors = ", ".join(f"{k} {v:.2f}" for k, v in ANCHORS.get(scene, {}).items())
    lines = [
        begin,
        f"## Novel views against time: {scene}",
        "",
        "Held-out PSNR of the whole pipeline from the photos (cameras, then the field), before "
        "and after test-time pose refinement; wall time from the start of the command, the "
        "held-out evaluations not counted." + (f" Published: {anchors}." if anchors else ""),
    ]
    for name, command, m in runs:
        lines += [
            "",
            (f"{name}: " if name else "")
            + f"Machine: {cpu_line(m)}, {m['cpu_count']} cores, torch {m['torch']}, "
            f"{m['threads']} thread(s). Command: `{command}`",
        ]
    lines += ["", heldout_table({name or UNNAMED_ARM: result for name, result in arms.items()})]
    if plot is not None:
        rel = os.path.relpath(plot, path.parent)
        lines += ["", f"![held-out PSNR against time, {scene}]({rel})"]
    replace_section(path, begin, end, "\n".join(lines + [end]))


MACHINE_LINE = re.compile(
    r"^(?:(?P<name>.*?): )?Machine: (?P<cpu>.*) \(AVX512-BF16 (?P<bf16>yes|no)\), "
    r"(?P<cores>\d+) cores, torch (?P<torch>\S+), (?P<threads>\d+) thread\(s\)\. "
    r"Command: `(?P<command>.*)`$"
)


def arm_from_section(path: Path, scene: str, name: str) -> dict | None:
    """Arm `name` of the scene's section of a markdown file that write_section wrote: its
    command, machine and held-out rows as that run's JSON has them (wall time to the second,
    PSNR to the hundredth, as the table shows them); None when the section has no such arm."""
    text = Path(path).read_text()
    begin, end = f"<!-- quality_at_time {scene} begin -->", f"<!-- quality_at_time {scene} end -->"
    if begin not in text or end not in text:
        return None
    lines = text.split(begin, 1)[1].split(end, 1)[0].splitlines()
    found = None
    for line in lines:
        m = MACHINE_LINE.match(line)
        if m and (m["name"] or "") == name:
            found = m
    if found is None:
        return None
    machine = {
        "cpu": found["cpu"],
        "avx512_bf16": found["bf16"] == "yes",
        "cpu_count": int(found["cores"]),
        "torch": found["torch"],
        "threads": int(found["threads"]),
    }
    heldout = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] != (name or UNNAMED_ARM) or not cells[1].isdigit():
            continue
        row = {
            "step": int(cells[1]),
            "wall_s": float(cells[2]),
            "psnr_before_tto": float(cells[3]),
            "psnr_after_tto": float(cells[4]),
        }
        if len(cells) > 5 and cells[5]:
            row["psnr_masked_after_tto"] = float(cells[5])
        heldout.append(row)
    return {"command": found["command"], "machine": machine, "heldout": heldout}


def load_run(spec: str) -> tuple[str, dict | None]:
    """(name, the run's saved result, or None when there is none) of a --from_json spec:
    "name=run.json" or "name=results.md#scene"."""
    name, sep, path = spec.partition("=")
    file, _, scene = path.rpartition("#")
    if sep and file.endswith(".md") and scene:
        return name, arm_from_section(Path(file), scene, name) if Path(file).is_file() else None
    if not sep or not Path(path).is_file():
        return name, None
    return name, json.loads(Path(path).read_text())


def from_json(specs: list[str], plot: Path | None, markdown: Path | None) -> int:
    """--from_json: the plot and section of earlier runs ("name=path.json", or
    "name=results.md#scene" for an arm of a section written before)."""
    import shlex

    runs, arms, scenes = [], {}, set()
    for spec in specs:
        name, saved = load_run(spec)
        if saved is None:
            print(
                "error: --from_json takes name=path.json of an existing file, or "
                f"name=results.md#scene naming an arm of that section, not {spec!r}"
            )
            return 2
        if "arms" in saved or not saved.get("heldout"):
            print(f"error: {spec!r} is not one run with held-out points (--heldout_every)")
            return 2
        runs.append((name, saved["command"], saved["machine"]))
        arms[name] = saved
        argv = shlex.split(saved["command"])[2:]
        take_bench_flags(argv)
        scenes.add(scene_name(argv))
    if len(scenes) != 1:
        print(f"error: --from_json runs are of different scenes ({', '.join(sorted(scenes))})")
        return 2
    scene = scenes.pop()
    print(heldout_table(arms))
    if plot is not None:
        write_plot(plot, scene, arms)
        print(f"wrote {plot}")
    if markdown is not None:
        write_section(markdown, scene, runs, arms, plot)
        print(f"wrote the {scene} section of {markdown}")
    return 0


def run_arm(argv: list[str], heldout_every: int) -> dict:
    """One training run with the recorders; returns its points, held-out points and exit code."""
    import tempfile

    import train
    from engine.callbacks import Callback, step_check
    from evaluation.heldout import evaluate_novel_views

    points: list[dict] = []
    heldout: list[dict] = []
    exp_dirs: list[Path] = []
    clock = {"t0": time.perf_counter(), "paused": 0.0}

    def now() -> float:
        return time.perf_counter() - clock["t0"] - clock["paused"]

    class Recorder(Callback):
        def on_camera_report(self, trainer, event: dict) -> None:
            points.append(point(event, clock["t0"] + clock["paused"]))
            exp_dirs.append(Path(event["exp_dir"]))

        def on_step_end(self, trainer, values: dict) -> None:
            last = trainer.cfg.training.num_iters
            if not step_check(trainer.step, heldout_every, last) or not trainer.scene.test_ids:
                return
            wall, start = now(), time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                result = evaluate_novel_views(
                    trainer.cfg,
                    trainer.scene,
                    trainer.model,
                    trainer.device,
                    Path(out),
                    trainer.progress(),
                    log=lambda s: None,
                )
            clock["paused"] += time.perf_counter() - start
            mean = result["mean"]
            row = {
                "step": trainer.step,
                "wall_s": wall,
                "psnr_before_tto": mean["before_tto"]["psnr"],
                "psnr_after_tto": mean["after_tto"]["psnr"],
            }
            masked = ""
            if "psnr_masked" in mean["after_tto"]:
                for when in ("before_tto", "after_tto"):
                    row[f"psnr_masked_{when}"] = mean[when]["psnr_masked"]
                masked = (
                    f" (masked {row['psnr_masked_before_tto']:.2f} -> "
                    f"{row['psnr_masked_after_tto']:.2f})"
                )
            heldout.append(row)
            print(
                f"step {trainer.step}, {wall:.0f} s: held-out PSNR {mean['before_tto']['psnr']:.2f}"
                f" -> {mean['after_tto']['psnr']:.2f}{masked}",
                flush=True,
            )

    callbacks = [Recorder()]
    rc = train.main(argv, callbacks=callbacks)
    return {"points": points, "heldout": heldout, "exit_code": rc, "exp_dirs": exp_dirs}


def _take(argv: list[str], flag: str, n: int | None = 1) -> list[str] | None:
    """Remove `flag` and its values (n of them, or up to the next --flag) from argv."""
    if flag not in argv:
        return None
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and (n is None or j - i <= n) and (n is not None or argv[j][:2] != "--"):
        j += 1
    values = argv[i + 1 : j]
    del argv[i:j]
    return values


def take_bench_flags(argv: list[str]) -> dict:
    """Remove this bench's own flags from argv (the rest is train.py's command line); their
    values: json, plot, markdown (Path or None), every (int), arms, from_json (lists or None)."""
    values = {}
    for key, flag in (("json", "--json"), ("plot", "--plot"), ("markdown", "--markdown")):
        taken = _take(argv, flag)
        values[key] = Path(taken[0]) if taken else None
    every = _take(argv, "--heldout_every")
    values["every"] = int(every[0]) if every else 0
    values["arms"] = _take(argv, "--arms", None)
    values["from_json"] = _take(argv, "--from_json", None)
    return values


def config_of(argv: list[str]):
    """The configuration train.py would read from argv (--config and overrides)."""
    from utils.config import load_config, parse_overrides

    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    return load_config(config, parse_overrides([a for a in argv if a not in ("--config", config)]))


def scene_name(argv: list[str]) -> str:
    """The scene's folder name (data.data_dir), or the experiment's name without one."""
    cfg = config_of(argv)
    return Path(cfg.data.data_dir).name if cfg.data.get("data_dir") else cfg.expname


def main(argv: list[str] | None = None) -> int:
    import shlex

    from bench.throughput import machine

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/quality_at_time.py " + shlex.join(argv)
    flags = take_bench_flags(argv)
    json_path, every, plot, markdown = (flags[k] for k in ("json", "every", "plot", "markdown"))
    if flags["from_json"] is not None:
        return from_json(flags["from_json"], plot, markdown)
    if (plot or markdown) and not every:
        print("error: --plot and --markdown show the held-out PSNR: add --heldout_every N")
        return 2
    arm_specs = flags["arms"] or []
    arms_argv = {}
    for spec in arm_specs:
        name, _, extra = spec.partition(":")
        arms_argv[name] = shlex.split(extra)
    if not arms_argv:
        arms_argv = {"": []}
    results = {}
    for name, extra in arms_argv.items():
        run_argv = argv + extra
        if name:
            expname = config_of(run_argv).expname
            run_argv += ["--expname", f"{expname}_{name}"]
            if not any(a.startswith("--tracks:cache_dir") for a in extra):
                run_argv += ["--tracks:cache_dir", "null"]
            print(f"\n== arm {name}: {shlex.join(run_argv)}", flush=True)
        results[name] = run_arm(run_argv, every)
    for name, result in results.items():
        points = result["points"]
        title = f"arm {name}: " if name else ""
        if not points:
            print(f"{title}no camera errors were recorded (no ground-truth poses?)")
            continue
        print(
            f"\n{title}identity start: rotation median "
            f"{points[0]['identity_start_rot_median_deg']:.3f} deg"
        )
        print(table(points))
        result["first_below_deg"], result["stays_below_deg"] = {}, {}
        for threshold in THRESHOLDS_DEG:
            first, stays = first_below(points, threshold), stays_below(points, threshold)
            result["first_below_deg"][str(threshold)] = first
            result["stays_below_deg"][str(threshold)] = stays
            print(
                f"rotation median under {threshold} deg (rotation-aware): first {_when(first)}; "
                f"stays under from {_when(stays)}"
            )
    if every:
        print("\n" + heldout_table(results))
    print(f"\n{machine()}")
    out = {"command": command, "machine": machine()}
    for result in results.values():
        exp_dirs = result.pop("exp_dirs")
        text = json.dumps({**out, **result}, indent=1)
        if exp_dirs:
            (exp_dirs[-1] / "quality_at_time.json").write_text(text)
    scene = scene_name(argv)
    if plot is not None:
        write_plot(plot, scene, results)
        print(f"wrote {plot}")
    if markdown is not None:
        write_section(markdown, scene, [("", command, machine())], results, plot)
        print(f"wrote the {scene} section of {markdown}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        whole = {**out, **results[""]} if list(results) == [""] else {**out, "arms": results}
        json_path.write_text(json.dumps(whole, indent=1))
        print(f"wrote {json_path}")
    return max(int(r["exit_code"] or 0) for r in results.values())


if __name__ == "__main__":
    sys.exit(main())
