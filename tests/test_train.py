"""End-to-end training on the demo scene: the loop learns poses, resumes exactly, refines from a
checkpoint as the README says, and handles bad input, non-finite losses and Ctrl-C."""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine.objective
import engine.session
import engine.trainer
import train
from engine.checkpoint import load_checkpoint
from engine.experiment import load_experiment
from evaluation.heldout import evaluate_novel_views
from utils.config import load_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]


def run_train(args):
    return train.main([str(a) for a in args])


def final_state(exp_dir):
    return load_checkpoint(exp_dir / "ckpts" / "final.pt")["model"]


def assert_states_equal(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k


def test_demo_config_recovers_cameras_and_focal_from_identity(tmp_path):
    """configs/demo.yaml as shipped (the main command), field trained for 2 steps: SIFT tracks and
    the bundle adjustment take every camera from identity (4.4 degrees) to a fraction of a
    degree and find the focal, and the cameras stay there (fixed after the adjustment)."""
    args = ["--config", REPO / "configs" / "demo.yaml", "--log_root", tmp_path / "logs"]
    args += ["--data:data_dir", tmp_path / "demo_scene", "--training:num_iters", "2"]
    args += ["--training:progress_bar", "false", "--training:image_every", "0"]
    args += ["--training:eval_at_end", "false", "--device", "cpu"]
    assert run_train(args) == 0
    metrics = json.loads((tmp_path / "logs" / "demo" / "metrics.json").read_text())
    r = metrics["rotation-aware"]
    assert r["identity_start"]["rot_median_deg"] > 4.0
    assert r["rot_median_deg"] < 0.1
    assert abs(metrics["focal_error_percent"]) < 5.0
    assert "eval" not in metrics and not (tmp_path / "logs" / "demo" / "eval").exists()


@pytest.mark.parametrize("framework", ["NeRF", "SirenNeRF"])
def test_demo_run_reduces_pose_error(tiny_args, tmp_path, framework, capsys):
    # Start from ground truth composed with se(3) noise (the BARF/SPARF protocol, smaller sigma):
    # the basin is known, so the test measures that the loop pulls the poses in.
    extra = [
        "--model:framework",
        framework,
        "--training:num_iters",
        "300",
        "--expname",
        framework,
        "--cameras:init",
        "noisy_gt",
        "--cameras:noise_sigma",
        "0.05",
        "--cameras:focal_init",
        "gt",
        "--cameras:lr_pose",
        "1e-3",
    ]
    if framework == "SirenNeRF":
        extra += ["--model:net_width", "64", "--training:lr_field", "1e-4"]
    assert run_train(tiny_args + extra) == 0
    metrics = json.loads((tmp_path / "logs" / framework / "metrics.json").read_text())
    r = metrics["rotation-aware"]
    assert r["rot_median_deg"] < 0.8 * r["start"]["rot_median_deg"]
    assert r["trans_median"] < r["start"]["trans_median"]
    assert "final camera errors" in capsys.readouterr().out
    exp = tmp_path / "logs" / framework
    for path in (
        "config.yaml",
        "ckpts/latest.pt",
        "ckpts/final.pt",
        "poses/transforms.json",
        "poses/poses_bounds.npy",
        "poses/colmap/images.txt",
    ):
        assert (exp / path).is_file(), path
    assert any((exp / "events").iterdir())


@pytest.mark.parametrize(
    "stop_at, appearance_dim, mining", [(4, 0, 0), (10, 0, 0), (10, 3, 0), (10, 0, 0.75)]
)
def test_resume_gives_the_same_result_as_never_stopping(
    tiny_args, tmp_path, monkeypatch, stop_at, appearance_dim, mining
):
    # The pre-train stage resets the field at step 6, so stopping at 4 resumes before the reset
    # and stopping at 10 resumes with the fresh field optimiser. Per-image appearance codes
    # (model.appearance_dim) are trained with the field and resume with it; so is
    # training.ray_mining's error map, which decides where the next rays are drawn.
    common = tiny_args + [
        "--training:ray_mining",
        str(mining),
        "--training:num_iters",
        "16",
        "--training:pretrain_iters",
        "6",
        "--training:ckpt_every",
        "3",
        "--model:appearance_dim",
        str(appearance_dim),
    ]
    assert run_train(common + ["--expname", "straight"]) == 0

    original = engine.trainer.Trainer.train_step

    def stop_after(self):
        values = original(self)
        if self.step + 1 == stop_at:
            self.stop_requested = True  # what the Ctrl-C handler does
        return values

    monkeypatch.setattr(engine.trainer.Trainer, "train_step", stop_after)
    exp = tmp_path / "logs" / "stopped"
    assert run_train(common + ["--expname", "stopped"]) == 130
    assert load_checkpoint(exp / "ckpts" / "latest.pt")["step"] == stop_at
    monkeypatch.setattr(engine.trainer.Trainer, "train_step", original)
    assert run_train(["--load_dir", exp]) == 0
    assert_states_equal(final_state(tmp_path / "logs" / "straight"), final_state(exp))
    if appearance_dim:  # the codes were trained after the reset, and saved
        codes = final_state(exp)["appearance"]
        assert codes.shape == (6, appearance_dim) and codes.abs().min() > 0


def readme_refine_command():
    for line in (REPO / "README.md").read_text().splitlines():
        if "ckpt_only_use_keys" in line and "train.py" in line:
            return shlex.split(line.strip().strip("`"))
    raise AssertionError("README has no refine recipe with ckpt_only_use_keys")


def test_readme_refine_recipe_keeps_cameras_and_resets_field(tiny_args, tmp_path):
    assert run_train(tiny_args + ["--training:num_iters", "30", "--expname", "pre"]) == 0
    pre = final_state(tmp_path / "logs" / "pre")
    cmd = readme_refine_command()
    args = cmd[cmd.index("train.py") + 1 :]
    # The README recipe with its placeholders filled in: our tiny settings, 0 new steps.
    args = [a.replace("logs/<exp>", str(tmp_path / "logs" / "pre")) for a in args]
    args = [a for a in args if a not in ("--config",) and not a.endswith(".yaml")]
    assert run_train(tiny_args + args + ["--training:num_iters", "0", "--expname", "refined"]) == 0
    refined = final_state(tmp_path / "logs" / "refined")
    cams = [k for k in pre if k.startswith("cam_param.")]
    assert cams and all(torch.equal(pre[k], refined[k]) for k in cams)
    moved = [k for k in cams if k in ("cam_param.r", "cam_param.t")]
    assert all(pre[k].abs().sum() > 0 for k in moved)  # the pre-trained cameras did move
    field = [k for k in pre if k.startswith("field.")]
    assert not any(torch.equal(pre[k], refined[k]) for k in field if k.endswith("weight"))


@pytest.mark.parametrize("representation", ["quaternion", "rotation6D"])
def test_other_rotation_representations_train(tiny_args, tmp_path, representation):
    args = tiny_args + [
        "--cameras:so3_representation",
        representation,
        "--training:num_iters",
        "150",
        "--expname",
        representation,
    ]
    assert run_train(args) == 0
    exp = tmp_path / "logs" / representation
    r = json.loads((exp / "metrics.json").read_text())["rotation-aware"]
    width = {"quaternion": 4, "rotation6D": 6}[representation]
    assert final_state(exp)["cam_param.r"].shape[-1] == width
    assert r["rot_median_deg"] < r["start"]["rot_median_deg"]


def test_bf16_autocast_runs_the_mlp_in_bfloat16(tiny_args, tmp_path, monkeypatch):
    dtypes = set()
    real = torch.nn.functional.linear

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    assert run_train(tiny_args + ["--training:autocast", "bf16", "--training:num_iters", "3"]) == 0
    assert dtypes == {torch.bfloat16}
    dtypes.clear()
    args = tiny_args + ["--training:num_iters", "3", "--expname", "fp32"]
    assert run_train(args + ["--training:autocast", "none"]) == 0
    assert dtypes == {torch.float32}


def test_autocast_auto_picks_bf16_only_where_it_is_native(monkeypatch):
    """Known answers for made-up machines: what the CPU flags and CUDA report is patched."""
    from engine.experiment import bf16_is_fast, resolve_autocast

    real_read_text = Path.read_text
    cpuinfo = {"text": ""}

    def read_text(self, *args, **kwargs):
        if str(self) != "/proc/cpuinfo":
            return real_read_text(self, *args, **kwargs)
        if cpuinfo["text"] is None:
            raise PermissionError("/proc/cpuinfo")
        return cpuinfo["text"]

    monkeypatch.setattr(Path, "read_text", read_text)
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    machines = {
        "flags\t\t: fpu sse4_2 avx2 avx512f avx512bw avx512_vnni\n": "none",  # no bf16 units
        "flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n": "bf16",  # Cooper Lake
        "flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n": "bf16",  # Sapphire Rapids
        "flags\t\t: fp asimd bf16\n": "none",  # an Arm name for another instruction set
        None: "none",  # unreadable cpuinfo: assume emulated
    }
    for text, expected in machines.items():
        cpuinfo["text"] = text
        assert bf16_is_fast(cpu) == (expected == "bf16"), text
        assert resolve_autocast("auto", cpu) == expected, text
        assert resolve_autocast("none", cpu) == "none" and resolve_autocast("bf16", cpu) == "bf16"
        # the grid field gains nothing from bf16 on a CPU (measured: slower), only the MLP
        assert resolve_autocast("auto", cpu, "grid") == "none", text
        assert resolve_autocast("bf16", cpu, "grid") == "bf16"
    cpuinfo["text"] = "flags\t\t: fpu amx_bf16\n"  # a CUDA device ignores the host CPU
    for supported, expected in ((True, "bf16"), (False, "none")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        assert bf16_is_fast(cuda) is supported
        assert resolve_autocast("auto", cuda) == expected
        assert resolve_autocast("auto", cuda, "grid") == expected
    assert resolve_autocast("auto", mps) == "none" and not bf16_is_fast(mps)


def test_a_model_is_built_with_the_autocast_its_encoding_gets(monkeypatch, tmp_path):
    """build_model hands the field's encoding to the rule: on a host with AVX512-BF16 the
    frequency MLP gets bf16 and the grid field float32."""
    from dataio.loaders import load_scene
    from engine.experiment import build_model

    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            return "flags\t\t: fpu avx512f avx512_bf16\n"
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    base = ["--data:data_dir", str(tmp_path / "demo_scene"), "--training:autocast", "auto"]
    base += ["--data:demo_size", "[48, 36]", "--data:demo_views", "4"]
    for encoding, expected in (("frequency", "bf16"), ("grid", "none")):
        cfg = load_config(
            REPO / "configs" / "demo.yaml", parse_overrides(base + ["--model:encoding", encoding])
        )
        model = build_model(cfg, load_scene(cfg.data), torch.device("cpu"))
        assert model.autocast == expected, encoding


def test_existing_experiment_is_refused_and_kept(tiny_args, tmp_path, capsys):
    assert run_train(tiny_args + ["--training:num_iters", "3"]) == 0
    ckpt = tmp_path / "logs" / "demo" / "ckpts" / "final.pt"
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert run_train(tiny_args + ["--training:num_iters", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    assert run_train(tiny_args + ["--training:num_iters", "3", "--training:overwrite", "true"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--training:num_iter", "3"], "Did you mean training:num_iters"),
        (["--model:n_samples", "many"], "model:n_samples must be a int"),
        (["--config", "configs/nope.yaml"], "does not exist"),
        (
            ["--data:data_dir", "/nonexistent/photos", "--data:type", "folder"],
            "/nonexistent/photos",
        ),
        (["--training:ckpt_file", "/nonexistent/ckpt.pt"], "does not exist"),
        (["--data:test_every", "1"], "data.test_every 1 holds out every view"),
        (["--expname", "a" * 300], "--expname has a folder name of 300 bytes"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tiny_args, tmp_path, capsys, extra, message):
    args = list(tiny_args)
    if "--config" in extra:
        i = args.index("--config")
        del args[i : i + 2]
    assert run_train(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


def test_a_load_dir_too_long_for_the_filesystem_is_one_sentence(tmp_path, capsys):
    import eval as eval_cli
    import render

    for cli in (train, eval_cli, render):
        assert cli.main(["--load_dir", str(tmp_path / ("a" * 300))]) == 2
        err = capsys.readouterr().err
        assert "--load_dir has a folder name of 300 bytes" in err and "Traceback" not in err


def test_corrupt_checkpoint_on_resume(tiny_args, tmp_path, capsys):
    assert run_train(tiny_args + ["--training:num_iters", "3"]) == 0
    latest = tmp_path / "logs" / "demo" / "ckpts" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    assert run_train(["--load_dir", tmp_path / "logs" / "demo"]) == 2
    assert "corrupt" in capsys.readouterr().err
    latest.unlink()
    assert run_train(["--load_dir", tmp_path / "logs" / "demo"]) == 2


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_args, tmp_path, monkeypatch, capsys):
    real = engine.objective.photometric_loss
    calls = {"n": 0}

    def poisoned(render, target, weight=None):
        calls["n"] += 1
        terms = real(render, target, weight)
        if calls["n"] == 5:
            terms["rgb"] = terms["rgb"] * float("nan")
        return terms

    monkeypatch.setattr(engine.objective, "photometric_loss", poisoned)
    assert run_train(tiny_args + ["--training:num_iters", "10", "--training:ckpt_every", "2"]) == 2
    err = capsys.readouterr().err
    assert "rgb loss became non-finite at step 5" in err
    ckpt = load_checkpoint(tmp_path / "logs" / "demo" / "ckpts" / "latest.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def poison_gradients(monkeypatch, at_calls):
    """Make the averaged gradients of the given train steps (1-based) NaN, as one degenerate
    ray would (the loss stays finite)."""
    real = engine.trainer.distributed.all_reduce_grads
    calls = {"n": 0}

    def poisoned(params):
        params = list(params)
        real(params)
        calls["n"] += 1
        if calls["n"] in at_calls:
            next(p for p in params if p.grad is not None).grad.view(-1)[0] = float("nan")

    monkeypatch.setattr(engine.trainer.distributed, "all_reduce_grads", poisoned)


def test_a_step_with_a_non_finite_gradient_is_skipped(tiny_args, tmp_path, monkeypatch, capsys):
    poison_gradients(monkeypatch, {3})
    assert run_train(tiny_args + ["--training:num_iters", "6"]) == 0
    assert "step 3: a gradient is not finite" in capsys.readouterr().out
    state = final_state(tmp_path / "logs" / "demo")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_gradients_non_finite_step_after_step_stop_the_run(
    tiny_args, tmp_path, monkeypatch, capsys
):
    poison_gradients(monkeypatch, set(range(2, 100)))
    assert (
        run_train(tiny_args + ["--training:num_iters", "30", "--training:ckpt_every", "100"]) == 2
    )
    err = capsys.readouterr().err
    assert f"non-finite for {engine.trainer.MAX_SKIPPED_IN_A_ROW} steps in a row" in err
    assert "(step 0) is kept" in err


def test_non_finite_loss_before_any_periodic_checkpoint_leaves_a_resumable_run(
    tiny_args, tmp_path, monkeypatch, capsys
):
    real = engine.objective.photometric_loss

    def poisoned(render, target, weight=None):
        terms = real(render, target, weight)
        terms["rgb"] = terms["rgb"] * float("nan")
        return terms

    monkeypatch.setattr(engine.objective, "photometric_loss", poisoned)
    args = tiny_args + ["--training:num_iters", "6", "--training:ckpt_every", "100"]
    assert run_train(args) == 2
    err = capsys.readouterr().err
    exp = tmp_path / "logs" / "demo"
    # What the message says is true: the step-0 checkpoint (the camera start) is there.
    assert "non-finite at step 1" in err and "(step 0) is kept" in err
    assert f"--load_dir {exp}" in err
    assert load_checkpoint(exp / "ckpts" / "latest.pt")["step"] == 0
    monkeypatch.setattr(engine.objective, "photometric_loss", real)
    assert run_train(["--load_dir", exp]) == 0
    assert load_checkpoint(exp / "ckpts" / "final.pt")["step"] == 6


def test_ctrl_c_saves_and_exits_without_traceback(tiny_args, tmp_path):
    args = tiny_args + ["--training:num_iters", "100000", "--training:ckpt_every", "5"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    latest = tmp_path / "logs" / "demo" / "ckpts" / "latest.pt"

    def training():  # a periodic checkpoint: the loop runs (step 0's is written before it)
        return latest.exists() and load_checkpoint(latest)["step"] > 0

    deadline = time.time() + 120
    while not training() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert training(), proc.communicate()[1] if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    step = load_checkpoint(latest)["step"]
    assert 0 < step < 100000
    # and it resumes from there
    assert (
        run_train(["--load_dir", tmp_path / "logs" / "demo", "--training:num_iters", str(step + 2)])
        == 0
    )
    assert load_checkpoint(latest)["step"] == step + 2


def test_ctrl_c_during_set_up_exits_130_without_traceback(capsys):
    from utils.cli import run_cli

    def setting_up(argv):  # e.g. SIFT on large photos, before the loop's handler exists
        raise KeyboardInterrupt

    assert run_cli(setting_up, [], interrupted=(train.Interrupted, "the loop saved")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "the loop saved" not in err and "Traceback" not in err


def test_a_set_up_interrupted_before_its_first_checkpoint_reruns_with_the_same_command(
    tiny_args, tmp_path, monkeypatch, capsys
):
    args = tiny_args + ["--training:num_iters", "2", "--expname", "cut"]
    exp = tmp_path / "logs" / "cut"
    original = engine.session.prepare_depth_prior

    def interrupted(*a, **k):  # Ctrl-C in the last set-up step before step 0's checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.session, "prepare_depth_prior", interrupted)
    assert train.main(args) == 130
    assert (exp / "config.yaml").is_file() and not (exp / "ckpts" / "latest.pt").exists()
    assert train.main(["--load_dir", str(exp)]) == 2
    assert "set-up was interrupted before training began" in capsys.readouterr().err
    import eval as eval_cli

    assert eval_cli.main(["--load_dir", str(exp)]) == 2  # render.py and plots load the same way
    assert "set-up was interrupted before training began" in capsys.readouterr().err
    monkeypatch.setattr(engine.session, "prepare_depth_prior", original)
    assert train.main(args) == 0  # the same command: no --training:overwrite needed
    assert "starting it again" in capsys.readouterr().out
    assert (exp / "ckpts" / "final.pt").is_file() and not (exp / "lock.pid").exists()
    assert train.main(args) == 2  # now it holds a checkpoint: refused as before


def test_load_experiment_rebuilds_the_trained_model(tiny_args, tmp_path):
    from engine.experiment import load_experiment

    assert run_train(tiny_args + ["--training:num_iters", "12", "--expname", "done"]) == 0
    cfg, scene, model, step = load_experiment(tmp_path / "logs" / "done", device="cpu")
    saved = final_state(tmp_path / "logs" / "done")
    assert step == 12 and cfg.training.num_iters == 12 and not model.training
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert model.cam_param.n == len(scene.train_ids)


def test_training_ends_with_the_held_out_evaluation(tiny_args, tmp_path):
    args = tiny_args + ["--training:num_iters", "6", "--expname", "ev", "--eval:tto_iters", "3"]
    assert run_train(args + ["--training:eval_at_end", "true"]) == 0
    exp = tmp_path / "logs" / "ev"
    metrics = json.loads((exp / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["step"] == 6 and "rotation-aware" in metrics
    block = metrics["eval"]
    assert block["step"] == 6 and block["protocol"]["tto"]["iterations"] == 3
    # The numbers are those of the final model's held-out views: evaluating final.pt on its
    # own gives them again, every held-out view has its renders, and the refinement ran.
    cfg, scene, model, step = load_experiment(exp, "final.pt", device="cpu")
    again = evaluate_novel_views(cfg, scene, model, "cpu", tmp_path / "again", 1.0, log=print)
    views = block["novel_views"]["per_view"]
    assert [v["id"] for v in views] == list(scene.test_ids) and views
    for stage in ("before_tto", "after_tto"):
        for key in ("psnr", "ssim"):
            assert block["novel_views"]["mean"][stage][key] == pytest.approx(
                again["mean"][stage][key], abs=1e-4
            )
    for v in views:
        assert v["after_tto"]["psnr"] != v["before_tto"]["psnr"]
        stem = f"{v['id']:03d}_{Path(v['name']).stem}"
        for suffix in ("render_before_tto", "render", "render_vs_gt"):
            assert (exp / "eval" / f"{stem}_{suffix}.png").is_file()


def test_the_end_of_a_run_is_callbacks_after_the_last_checkpoints(tiny_args, tmp_path):
    """The last checkpoints, the camera export and the final report are the default list's last
    callbacks: one added after them (a benchmark's) finds them done."""
    from engine.callbacks import Callback, default_callbacks

    seen = {}

    class After(Callback):
        def on_train_end(self, trainer):
            exp = trainer.exp_dir
            seen["final"] = final_state(exp)["cam_param.t"].shape[0] == trainer.model.cam_param.n
            seen["poses"] = (exp / "poses" / "transforms.json").is_file()
            seen["metrics_step"] = json.loads((exp / "metrics.json").read_text())["step"]

    args = [str(a) for a in tiny_args + ["--training:num_iters", "2", "--expname", "end"]]
    assert train.main(args, callbacks=[After()]) == 0
    assert seen == {"final": True, "poses": True, "metrics_step": 2}
    names = [type(c).__name__ for c in default_callbacks(load_config(None).training)]
    assert names[-4:] == ["Checkpoint", "CameraExport", "FinalReport", "HeldOutEvaluation"]


def test_tensorboard_gets_a_rendered_held_out_view(tiny_args, tmp_path):
    args = tiny_args + ["--training:num_iters", "4", "--expname", "tb"]
    assert run_train(args + ["--training:image_every", "4"]) == 0
    events = b"".join(f.read_bytes() for f in (tmp_path / "logs" / "tb" / "events").iterdir())
    assert b"render/test_view_rgb_vs_gt" in events and b"render/test_view_depth" in events
