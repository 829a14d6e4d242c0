"""The benchmark harness on tiny shapes: each row measures the step it names, and its numbers
are the relations the table claims (timings themselves are not asserted)."""

import json
import tempfile
import types
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch

import engine.trainer
from bench import nerfmm_step, quality_at_time, throughput
from engine.experiment import load_experiment
from evaluation.heldout import evaluate_novel_views

TINY = {"depth": 2, "width": 16, "skips": [1], "samples": 8, "rays": 64}


def test_throughput_rows_for_baseline_and_our_step(monkeypatch):
    monkeypatch.setitem(throughput.SHAPES, "tiny", TINY)
    calls, timed, dtypes = {"baseline": 0, "ours": 0}, [], set()

    def counted(name, real):
        def step(self, *args, **kwargs):
            calls[name] += 1
            return real(self, *args, **kwargs)

        return step

    monkeypatch.setattr(
        nerfmm_step.NerfmmStep, "step", counted("baseline", nerfmm_step.NerfmmStep.step)
    )
    monkeypatch.setattr(
        engine.trainer.Trainer, "train_step", counted("ours", engine.trainer.Trainer.train_step)
    )
    real_matmul_seconds, real_linear = throughput.matmul_seconds, torch.nn.functional.linear

    def matmul_seconds(layers, rows, dtype, device, reps):
        timed.append((list(layers), rows, dtype))
        return real_matmul_seconds(layers, rows, dtype, device, reps)

    def linear(*args, **kwargs):
        out = real_linear(*args, **kwargs)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(throughput, "matmul_seconds", matmul_seconds)
    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    rows, ran = [], {}
    for mode in ("nerfmm-fp32", "ours-fp32", "ours-bf16"):
        calls.update(baseline=0, ours=0)
        dtypes.clear()
        rows.append(throughput.run_one("tiny", mode, steps=2, warmup=1, device=torch.device("cpu")))
        ran[mode] = (dict(calls), set(dtypes))

    # Each row times the step it names, warm-up and measured steps: NeRF--'s for the baseline,
    # Trainer.train_step for ours, in the dtype the mode says.
    assert ran["nerfmm-fp32"] == ({"baseline": 3, "ours": 0}, {torch.float32})
    assert ran["ours-fp32"] == ({"baseline": 0, "ours": 3}, {torch.float32})
    assert ran["ours-bf16"][0] == {"baseline": 0, "ours": 3}
    assert torch.bfloat16 in ran["ours-bf16"][1]
    baseline_layers = nerfmm_step.NerfmmStep(torch.rand(2, 8, 8, 3), 2, 16, 8, 64).mlp_layers()
    assert timed[0][0] == baseline_layers and baseline_layers[0] == (3 + 3 * 2 * 10, 16)
    assert [t[2] for t in timed] == [torch.float32, torch.float32, torch.bfloat16]

    samples = TINY["rays"] * TINY["samples"]
    for row, (layers, rows_timed, _) in zip(rows, timed):
        step_s = row["step_ms"] / 1e3
        assert rows_timed == samples  # the matmuls are timed at the step's batch
        assert row["ray_samples_per_s"] == pytest.approx(samples / step_s, rel=1e-9)
        flops = 6 * samples * sum(a * b for a, b in layers)
        assert row["mlp_gflops"] == pytest.approx(flops / step_s / 1e9, rel=1e-9)
        mm_s = flops / (row["matmul_gflops"] * 1e9)
        assert row["matmul_fraction"] == pytest.approx(mm_s / step_s, rel=1e-9)
        assert row["peak_mem_mib"] > 0 and row["warmup_s"] > 0

    # The table's speed-ups divide by the baseline row of the same shape; no nerfmm row: nan.
    lines = throughput.table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    base_rate = rows[0]["ray_samples_per_s"]
    for line, row in zip(lines[2:], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == ["tiny", row["mode"]] and cells[4] == "nan"
        assert float(cells[5]) == pytest.approx(row["ray_samples_per_s"] / base_rate, abs=0.006)
    assert float(lines[2].strip("|").split("|")[5]) == 1.0


def test_nerfmm_baseline_step_learns_a_constant_image():
    from bench.nerfmm_step import NerfmmStep

    torch.manual_seed(0)
    images = torch.full((2, 16, 16, 3), 0.8)
    step = NerfmmStep(images, depth=2, width=16, n_samples=8, n_rays=64)
    first = step.step()
    for _ in range(30):
        last = step.step()
    assert last < 0.5 * first


def test_quality_at_time_records_bundle_adjustment_and_training(tiny_args, tmp_path, monkeypatch):
    ticks = iter(range(1000, 1_000_000))
    clock = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(quality_at_time, "time", clock)
    out = tmp_path / "q.json"
    args = tiny_args + [
        "--data:demo_size",
        "[96, 72]",
        "--cameras:init",
        "noisy_gt",
        "--cameras:noise_sigma",
        "0.05",
        "--tracks:ba_iters",
        "200",
        "--training:num_iters",
        "4",
        "--training:eval_every",
        "2",
        "--json",
        str(out),
    ]
    assert quality_at_time.main(args) == 0
    result = json.loads(out.read_text())
    phases = [p["phase"] for p in result["points"]]
    assert phases[0] == "bundle adjustment" and phases[-2:] == ["training", "training"]
    assert [p["iteration"] for p in result["points"] if p["phase"] == "training"] == [2, 4]
    # Every point reads the clock when its event happens, from one start for the whole command:
    # with a clock at 1000 that ticks once per reading, the points are 1, 2, 3, ... ticks after it.
    walls = [p["wall_s"] for p in result["points"]]
    assert walls == [float(k) for k in range(1, len(walls) + 1)]
    points = result["points"]
    for threshold in ("1.0", "0.5"):
        assert result["first_below_deg"][threshold] == quality_at_time.first_below(
            points, float(threshold)
        )
        assert result["stays_below_deg"][threshold] == quality_at_time.stays_below(
            points, float(threshold)
        )
    assert result["exit_code"] == 0
    exp_copy = tmp_path / "logs" / "demo" / "quality_at_time.json"
    assert json.loads(exp_copy.read_text()) == result


def test_stays_below_ignores_a_transient_dip():
    errors = [5.0, 0.9, 2.8, 1.2, 0.8, 0.4, 0.6, 0.3]
    points = [{"rot_median_deg": e, "wall_s": float(i)} for i, e in enumerate(errors)]
    assert quality_at_time.first_below(points, 1.0)["wall_s"] == 1.0
    assert quality_at_time.stays_below(points, 1.0)["wall_s"] == 4.0
    assert quality_at_time.stays_below(points, 0.5)["wall_s"] == 7.0
    assert quality_at_time.stays_below(points, 0.1) is None


def test_quality_at_time_compares_arms_by_held_out_psnr(tiny_args, tmp_path, capsys):
    out = tmp_path / "arms.json"
    grid = "--model:encoding grid --model:grid_resolution [9,17] --model:grid_upsample_at [0.5]"
    args = tiny_args + ["--cameras:init", "gt", "--training:num_iters", "4"]
    args += ["--eval:tto_iters", "2", "--heldout_every", "2", "--json", str(out)]
    args += ["--arms", "frequency:--model:encoding frequency", f"grid:{grid}"]
    plot, markdown = tmp_path / "docs" / "q_demo.png", tmp_path / "docs" / "results.md"
    markdown.parent.mkdir()
    markdown.write_text("# Results\n\nkept\n")
    args += ["--plot", str(plot), "--markdown", str(markdown)]
    assert quality_at_time.main(args) == 0
    result = json.loads(out.read_text())
    picture = imageio.imread(plot)
    assert picture.shape[:2] == (400, 640) and picture[..., :3].std() > 10
    section = markdown.read_text()
    assert section.startswith("# Results\n\nkept\n")
    assert "## Novel views against time: demo" in section and "](q_demo.png)" in section
    assert quality_at_time.heldout_table(result["arms"]) in section
    assert list(result["arms"]) == ["frequency", "grid"]
    for name, arm in result["arms"].items():
        assert [p["step"] for p in arm["heldout"]] == [2, 4]
        exp = tmp_path / "logs" / f"demo_{name}"
        assert (exp / "quality_at_time.json").is_file()
        # The last point is the held-out evaluation of the final model: the same numbers come
        # from evaluating final.pt on its own, and the refinement moved the poses (after differs
        # from before), so neither column can be the other or a stale value.
        last = arm["heldout"][-1]
        cfg, scene, model, step = load_experiment(exp, "final.pt", device="cpu")
        with tempfile.TemporaryDirectory() as out:
            mean = evaluate_novel_views(cfg, scene, model, "cpu", Path(out), 1.0, log=print)
        mean = mean["mean"]
        assert step == last["step"] == 4
        assert last["psnr_before_tto"] == pytest.approx(mean["before_tto"]["psnr"], abs=1e-4)
        assert last["psnr_after_tto"] == pytest.approx(mean["after_tto"]["psnr"], abs=1e-4)
        for p in arm["heldout"]:
            assert 5 < p["psnr_before_tto"] < 60 and 5 < p["psnr_after_tto"] < 60
            assert p["psnr_after_tto"] != p["psnr_before_tto"]
    table = capsys.readouterr().out
    assert "| grid | 4 |" in table and "| frequency | 2 |" in table
    # --from_json: the two runs' own JSON files, as if from separate commands, in one section
    logs = tmp_path / "logs"
    saved = [f"{n} arm={logs / f'demo_{n}' / 'quality_at_time.json'}" for n in result["arms"]]
    again, replot = tmp_path / "docs" / "again.md", tmp_path / "docs" / "again.png"
    assert (
        quality_at_time.main(
            ["--from_json", *saved, "--markdown", str(again), "--plot", str(replot)]
        )
        == 0
    )
    section = again.read_text()
    renamed = {f"{n} arm": arm for n, arm in result["arms"].items()}
    assert quality_at_time.heldout_table(renamed) in section
    assert section.count(f"Command: `{result['command']}`") == 2  # each run's own line
    assert "## Novel views against time: demo" in section and imageio.imread(replot).std() > 10
    assert quality_at_time.main(["--from_json", f"x={tmp_path / 'missing.json'}"]) == 2
    assert quality_at_time.main(["--from_json", f"x={out}"]) == 2  # an --arms file, not one run


def test_the_held_out_table_has_a_masked_column_only_for_scenes_with_masks():
    point = {"step": 500, "wall_s": 183.0, "psnr_before_tto": 11.16, "psnr_after_tto": 12.19}
    plain = quality_at_time.heldout_table({"grid": {"heldout": [point]}})
    assert (
        "masked" not in plain and plain.splitlines()[-1] == "| grid | 500 | 183 | 11.16 | 12.19 |"
    )
    masked = {**point, "psnr_masked_before_tto": 13.92, "psnr_masked_after_tto": 14.33}
    table = quality_at_time.heldout_table(
        {"dtu": {"heldout": [masked]}, "llff": {"heldout": [point]}}
    )
    lines = table.splitlines()
    assert lines[0].endswith("masked, after |") and lines[1].count("|") == 7
    assert lines[2] == "| dtu | 500 | 183 | 11.16 | 12.19 | 14.33 |"
    assert lines[3] == "| llff | 500 | 183 | 11.16 | 12.19 | |"


def test_a_section_gives_back_its_runs_so_it_can_gain_one_without_their_json(tmp_path):
    """--from_json "name=results.md#scene": the arms of a section written earlier come back
    with their command, machine and rows, and the section rebuilt from them is the same text."""
    machine = {"cpu": "Intel(R) Xeon(R) Processor", "avx512_bf16": True, "cpu_count": 2,
               "torch": "2.13.0+cpu", "threads": 2}  # fmt: skip
    command = "python bench/quality_at_time.py --config configs/demo.yaml --heldout_every 2"
    rows = {
        "ray mining, 7500 steps": [
            {
                "step": 2,
                "wall_s": 183.0,
                "psnr_before_tto": 11.16,
                "psnr_after_tto": 12.19,
                "psnr_masked_after_tto": 14.33,
            },
            {"step": 4, "wall_s": 360.0, "psnr_before_tto": 13.5, "psnr_after_tto": 13.75},
        ],  # fmt: skip
        "uniform": [{"step": 4, "wall_s": 401.0, "psnr_before_tto": 9.0, "psnr_after_tto": 9.5}],
    }
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nkept\n")
    runs = [(name, f"{command} --seed {i}", machine) for i, name in enumerate(rows)]
    arms = {name: {"heldout": r} for name, r in rows.items()}
    quality_at_time.write_section(md, "demo", runs, arms, None)
    first = md.read_text()
    for i, (name, r) in enumerate(rows.items()):
        arm = quality_at_time.arm_from_section(md, "demo", name)
        assert arm["command"] == f"{command} --seed {i}" and arm["machine"] == machine
        assert arm["heldout"] == r
    assert quality_at_time.arm_from_section(md, "demo", "absent") is None
    assert quality_at_time.arm_from_section(md, "fern", "uniform") is None
    again = [f"{name}={md}#demo" for name in rows]
    assert quality_at_time.main(["--from_json", *again, "--markdown", str(md)]) == 0
    assert md.read_text() == first
    assert quality_at_time.main(["--from_json", f"absent={md}#demo"]) == 2


def test_the_cameras_section_updates_the_scenes_rerun_and_keeps_the_rest(tmp_path):
    from bench import cameras

    def row(name, deg):
        return {
            "method": name, "rot_deg": deg, "rot_deg_centre_only": 0.5, "identity_rot_deg": 5.0,
            "rot_max_deg": 1.0, "focal_error_percent": 0.1, "registered": "3/3", "seconds": 9,
        }  # fmt: skip

    md = tmp_path / "results.md"
    md.write_text("# Results\n\nOther section.\n")
    first = {"fern": [row("ours", 0.111)], "fox": [row("ours", 0.222)]}
    cameras.write_section(md, "python bench/cameras.py", first)
    cameras.write_section(md, "python bench/cameras.py --scenes fox", {"fox": [row("ours", 0.333)]})
    text = md.read_text()
    assert "Other section." in text and "0.111" in text and "0.333" in text
    assert "0.222" not in text
    threads = cameras.machine()["threads"]
    assert f"Command (for fern, {threads} torch thread(s)): `python bench/cameras.py`" in text
    assert (
        f"Command (for fox, {threads} torch thread(s)): `python bench/cameras.py --scenes fox`"
        in text
    )
    assert text.index("| fern |") < text.index("| fox |")  # the scenes' order
    other = {**cameras.machine(), "cpu": "another machine"}
    cameras.write_section(
        md, "python bench/cameras.py --scenes fox", {"fox": [row("ours", 0.4)]}, other
    )
    assert "0.111" not in md.read_text()  # numbers from two machines never share a table


def test_the_cameras_json_keeps_the_scenes_not_rerun_with_their_commands(tmp_path):
    import json

    from bench import cameras

    path = tmp_path / "cameras.json"
    cameras.write_json(path, "python bench/cameras.py", {"fern": [1], "fox": [2]})
    cameras.write_json(path, "python bench/cameras.py --scenes fox", {"fox": [3]})
    saved = json.loads(path.read_text())
    assert saved["results"] == {"fern": [1], "fox": [3]}
    assert saved["commands"] == {
        "fern": "python bench/cameras.py",
        "fox": "python bench/cameras.py --scenes fox",
    }
    cameras.write_json(path, "c", {"fox": [4]}, {**cameras.machine(), "cpu": "another"})
    assert json.loads(path.read_text())["results"] == {"fox": [4]}  # never two machines


def test_the_machine_line_tells_cpu_generations_apart():
    """A virtual machine may name its CPU only "AMD EPYC": the family and model go with it."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "cpu family" not in cpuinfo.read_text():
        pytest.skip("no /proc/cpuinfo with a CPU family here")
    first = cpuinfo.read_text().split("\n\n", 1)[0]  # the first processor's block
    fields = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())
    }
    cpu = throughput.machine()["cpu"]
    assert cpu.startswith(fields["model name"])
    assert cpu.endswith(f"(family {fields['cpu family']}, model {fields['model']})")
    assert throughput.cpu_line(throughput.machine()).startswith(cpu + " (AVX512-BF16 ")
