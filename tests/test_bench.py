"""The benchmark harness runs end to end on tiny shapes (timings are not asserted)."""

import json

import torch

from bench import quality_at_time, throughput


def test_throughput_rows_for_baseline_and_our_step(monkeypatch):
    monkeypatch.setitem(
        throughput.SHAPES, "tiny", {"depth": 2, "width": 16, "skips": [1], "samples": 8, "rays": 64}
    )
    rows = [
        throughput.run_one("tiny", mode, steps=2, warmup=1, device=torch.device("cpu"))
        for mode in ("nerfmm-fp32", "ours-fp32", "ours-bf16")
    ]
    for row in rows:
        assert row["ray_samples_per_s"] > 0 and row["matmul_fraction"] > 0
        assert row["peak_mem_mib"] > 0
    text = throughput.table(rows)
    assert text.count("\n") == len(rows) + 1 and "| tiny | ours-bf16 |" in text


def test_nerfmm_baseline_step_learns_a_constant_image():
    from bench.nerfmm_step import NerfmmStep

    torch.manual_seed(0)
    images = torch.full((2, 16, 16, 3), 0.8)
    step = NerfmmStep(images, depth=2, width=16, n_samples=8, n_rays=64)
    first = step.step()
    for _ in range(30):
        last = step.step()
    assert last < 0.5 * first


def test_quality_at_time_records_bundle_adjustment_and_training(tiny_args, tmp_path):
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
    walls = [p["wall_s"] for p in result["points"]]
    assert walls == sorted(walls)
    assert set(result["first_below_deg"]) == set(result["stays_below_deg"]) == {"1.0", "0.5"}


def test_stays_below_ignores_a_transient_dip():
    errors = [5.0, 0.9, 2.8, 1.2, 0.8, 0.4, 0.6, 0.3]
    points = [{"rot_median_deg": e, "wall_s": float(i)} for i, e in enumerate(errors)]
    assert quality_at_time.first_below(points, 1.0)["wall_s"] == 1.0
    assert quality_at_time.stays_below(points, 1.0)["wall_s"] == 4.0
    assert quality_at_time.stays_below(points, 0.5)["wall_s"] == 7.0
    assert quality_at_time.stays_below(points, 0.1) is None
