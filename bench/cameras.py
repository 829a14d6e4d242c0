"""Camera accuracy and time: cameras.init auto against COLMAP's mappers alone, in one run.

python bench/cameras.py [--scenes fern flower horns leaves room scan24 fox lego]
    [--json bench/results/cameras.json] [--markdown docs/results.md] [--section:key value ...]

--markdown writes the table, the machine and the command into that file's cameras section
(between its markers; the rest of the file is kept).

For every scene (SCENES: the LLFF captures with configs/fern_tracks.yaml, the captures around an
object with their own configs and cameras.init auto), from nothing (fresh caches in a temporary
folder, so every time includes SIFT extraction and matching):
- COLMAP global (GLOMAP) alone and COLMAP incremental alone, on one feature database;
- posefree's cameras.init auto (its own features, matching, tracks, candidates and choice);
- around an object, posefree's own candidate tracks_global alone (sfm/track_global.py) on
  auto's tracks, without auto's choice, PnP of missing views or final adjustment.
Errors against the scene's own cameras (poses_bounds.npy, cameras_sphere.npz, transforms.json):
median and max rotation error under the rotation-aware alignment (centre-only beside it) over
the views the method placed, focal error, placed views; auto's dropped views are named, never
counted at a placeholder. The identity start's error is printed with them. Wall times in seconds
on this machine (see the machine line).
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

from bench.throughput import machine, replace_section
from dataio.loaders import load_scene
from engine.experiment import build_cameras, prepare_tracks
from evaluation.pose_metrics import camera_report
from sfm.colmap import colmap_init
from sfm.initialise import init_cameras
from utils.config import load_config, parse_overrides

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LLFF = ("fern", "flower", "horns", "leaves", "room")
# name: (config, data folder under DATA, overrides)
SCENES = {
    **{name: ("configs/fern_tracks.yaml", f"llff/{name}", {}) for name in LLFF},
    "scan24": ("configs/dtu_scan24_49views.yaml", "dtu/scan24", {}),
    "fox": ("configs/fox.yaml", "instant_ngp_fox", {}),
    "lego": (
        "configs/lego.yaml",
        "nerf_synthetic_lego_200",
        {"cameras:init": "auto", "cameras:focal_init": "default"},
    ),
}


def errors(scene, c2w, focal, placed=None) -> dict:
    """Errors of the cameras of the training views `placed` (bool, default all)."""
    keep = torch.ones(len(scene.train_ids), dtype=torch.bool) if placed is None else placed
    keep = torch.as_tensor(keep, dtype=torch.bool)
    ids = torch.as_tensor(scene.train_ids)[keep]
    K = scene.K_gt[ids].double()
    report = camera_report(
        torch.as_tensor(c2w).double()[keep],
        scene.c2w_gt[ids].double(),
        torch.as_tensor(focal).double()[keep],
        torch.stack([K[:, 0, 0], K[:, 1, 1]], -1),
    )
    return {
        "rot_deg": report["rotation-aware"]["rot_median_deg"],
        "rot_max_deg": report["rotation-aware"]["rot_max_deg"],
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
                **errors(scene, c2w, focal, registered),
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
    names = [scene.image_names[i] for i in scene.train_ids]
    placed = [name not in summary["dropped"] for name in names]
    return {
        "method": f"posefree auto (kept {summary['kept']})",
        "seconds": time.perf_counter() - t0,
        "registered": f"{sum(placed)}/{len(placed)}",
        "dropped": summary["dropped"],
        "check_failed": sorted(summary["view_check"]["failed"]),
        **errors(scene, c2w, focal, placed),
    }


def own_alone(cfg, scene, folder: Path) -> dict | None:
    """tracks_global alone (captures around an object), on the tracks auto's run cached in
    `folder`: its time excludes the features. Views it could not place are left out."""
    if scene.forward_facing:
        return None
    from sfm.track_global import global_start

    cams = build_cameras(cfg, scene)
    tracks = prepare_tracks(cfg, scene, folder, log=lambda s: None)
    t0 = time.perf_counter()
    c2w, focal, registered, _, _ = global_start(cams, tracks, scene, log=lambda s: None)
    return {
        "method": "posefree tracks_global alone (features reused)",
        "seconds": time.perf_counter() - t0,
        "registered": f"{int(registered.sum())}/{len(registered)}",
        **errors(scene, c2w, focal, torch.from_numpy(registered)),
    }


def table(results: dict) -> str:
    lines = [
        "| scene | method | rot median deg (rotation-aware) | centre-only | identity start "
        "| max | focal err % | placed | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scene, rows in results.items():
        for r in rows:
            if "failed" in r:
                lines.append(f"| {scene} | {r['method']} | failed: {r['failed'][:60]} |||||||")
                continue
            lines.append(
                f"| {scene} | {r['method']} | {r['rot_deg']:.3f} | {r['rot_deg_centre_only']:.3f} "
                f"| {r['identity_rot_deg']:.2f} | {r['rot_max_deg']:.2f} "
                f"| {r['focal_error_percent']:.2f} "
                f"| {r['registered']} | {r['seconds']:.0f} |"
            )
    return "\n".join(lines)


BEGIN, END = "<!-- bench/cameras.py: begin -->", "<!-- bench/cameras.py: end -->"


def write_section(
    path: Path, command: str, results: dict, m: dict | None = None, note: str = ""
) -> None:
    """Replace the cameras section of the markdown file `path` (created when missing); m: the
    machine the results came from (default this one, as now); note: a line on how they ran.
    Scenes of the section that `results` leaves out keep their rows and their command line when
    the section's machine line is this one's (a run of a few scenes updates those), and go
    otherwise (numbers from two machines never share a table)."""
    m = machine() if m is None else m
    machine_line = (
        f"Machine: {m['cpu']} (AVX512-BF16 {'yes' if m.get('avx512_bf16') else 'no'}, AMX "
        f"{'yes' if m.get('amx_bf16') else 'no'}), {m['cpu_count']} cores, torch {m['torch']}."
    )
    text = path.read_text() if path.is_file() else "# Results\n"
    old_rows, old_commands = {}, []
    if BEGIN in text and END in text:
        old = text.split(BEGIN, 1)[1].split(END, 1)[0].splitlines()
        if machine_line in old:
            for line in old:
                scene = line.split("|")[1].strip() if line.startswith("| ") else None
                if scene in SCENES and scene not in results:
                    old_rows.setdefault(scene, []).append(line)
                if line.startswith("Command (for ") and line.endswith("`"):
                    head, tail = line[len("Command (for ") :].split("): ", 1)
                    names = [s for s in head.split(", ") if s in SCENES]
                    extra = [s for s in head.split(", ") if s not in SCENES]  # the threads
                    still = [s for s in names if s not in results]
                    if still:  # the scenes this command's rows are still shown for
                        old_commands.append(f"Command (for {', '.join(still + extra)}): {tail}")
    scenes = ", ".join(results)
    rows = table(results).splitlines()
    by_scene = {s: [r for r in rows[2:] if r.split("|")[1].strip() == s] for s in results}
    ordered = [line for s in SCENES for line in old_rows.get(s, by_scene.get(s, []))]
    section = "\n".join(
        [
            BEGIN,
            "## Cameras from the photos",
            "",
            "Median (and max) rotation error in degrees against the scene's own cameras over the "
            "views each method placed, after the rotation-aware similarity alignment (centre-only "
            "beside it); the identity start's error for scale; wall seconds from nothing, SIFT "
            "included (the first COLMAP mapper's time includes the feature database).",
            "",
            machine_line,
            *old_commands,
            f"Command (for {scenes}, {m['threads']} torch thread(s)): `{command}`",
            *([note] if note else []),
            "",
            *rows[:2],
            *ordered,
            END,
        ]
    )
    replace_section(path, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python bench/cameras.py", *argv])
    scenes, json_path = list(SCENES), None
    markdown = None
    for flag in ("--scenes", "--json", "--markdown"):
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
            elif flag == "--markdown":
                markdown = Path(values[0])
            else:
                json_path = Path(values[0])
    overrides = parse_overrides(argv)
    if overrides.get("num_threads"):
        torch.set_num_threads(int(overrides["num_threads"]))
    results = {}
    unknown = sorted(set(scenes) - set(SCENES))
    if unknown:
        print(f"unknown scene(s) {', '.join(unknown)}; choose from {', '.join(SCENES)}")
        return 2
    for name in scenes:
        config, folder, own = SCENES[name]
        if not (DATA / folder).is_dir():
            print(f"skipping {name}: {DATA / folder} is absent")
            continue
        cfg = load_config(
            config,
            {**own, **overrides, "data:data_dir": str(DATA / folder), "tracks:cache_dir": None},
        )
        scene = load_scene(cfg.data)
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            rows = colmap_alone(cfg, scene, Path(a))
            rows.append(ours(cfg, scene, Path(b)))
            alone = own_alone(cfg, scene, Path(b))
            if alone is not None:
                rows.append(alone)
        results[name] = rows
        print(table({name: rows}), flush=True)
    print(f"\n{machine()}")
    print(table(results))
    if markdown is not None:
        write_section(markdown, command, results)
    if json_path is not None:
        write_json(json_path, command, results)
    return 0


def write_json(path: Path, command: str, results: dict, host: dict | None = None) -> None:
    """The results as JSON, per scene with the command that measured it: the scenes of an
    earlier file from the same machine stay unless measured again (as write_section)."""
    host = machine() if host is None else host
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = old.get("results", {}) if old.get("machine") == host else {}
    commands = old.get("commands", {}) if kept else {}
    merged = {name: kept[name] for name in kept if name not in results} | results
    commands = {name: commands.get(name, old.get("command")) for name in kept} | {
        name: command for name in results
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"machine": host, "commands": commands, "results": merged}, indent=1)
    )


if __name__ == "__main__":
    sys.exit(main())
