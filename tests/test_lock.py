"""One writer per experiment (engine/lock.py): a live process's lock is named and respected by
--training:overwrite, --load_dir and eval.py; render.py reads beside it; the lock is released
however a run ends, and a killed process's lock is taken over. The other side is always a real
second process: a small Python process that takes the lock through the API, or train.py."""

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, demo_args

import engine.objective
import engine.session
import eval as eval_cli
import render
import train
from engine.checkpoint import load_checkpoint
from engine.experiment import check_new_exp_dir, create_exp_dir, unfinished_set_up
from engine.lock import LOCK_FILE, ExperimentLock, Holder, LockHeld, lock_holder
from utils.errors import ConfigError

HOLD = """
import sys, time
from engine.lock import ExperimentLock
ExperimentLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(300)
"""


@contextmanager
def held_elsewhere(exp_dir: Path, program: str = "train.py"):
    """A second Python process holding exp_dir's lock as `program` until the block ends (or the
    test kills it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(exp_dir), program],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_free(exp_dir: Path) -> None:
    """Nobody holds the lock, this process included, and its file is gone."""
    assert not (exp_dir / LOCK_FILE).exists()
    assert lock_holder(exp_dir) is None
    lock = ExperimentLock(exp_dir, "test")
    lock.acquire()  # raises LockHeld while any lock object of this process still holds it
    lock.release()


def files(exp_dir: Path) -> dict:
    return {
        p.relative_to(exp_dir): p.read_bytes()
        for p in sorted(exp_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def one_sentence(err: str) -> bool:
    return "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: ")


# ----------------------------------------------------------------------------- the lock
def test_a_live_holder_is_named_and_a_killed_ones_lock_is_taken_over_with_one_line(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    with held_elsewhere(exp, "eval.py") as other:
        assert lock_holder(exp) == Holder(other.pid, "eval.py")
        with pytest.raises(LockHeld) as held:
            ExperimentLock(exp, "train.py").acquire()
        assert held.value.holder == Holder(other.pid, "eval.py")
        kill(other)  # SIGKILL: no clean-up runs, the file stays and names the dead process
        assert (exp / LOCK_FILE).read_text().split() == [str(other.pid), "eval.py"]
        assert lock_holder(exp) is None
        said = []
        lock = ExperimentLock(exp, "train.py")
        lock.acquire(log=said.append)
    assert len(said) == 1 and f"process {other.pid} (eval.py) ended without releasing" in said[0]
    assert lock_holder(exp) is None  # this process's own lock is no other writer
    probe = subprocess.run(
        [sys.executable, "-c", HOLD.replace("time.sleep(300)", ""), str(exp), "eval.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "LockHeld" in probe.stderr  # held across processes
    lock.release()
    assert_free(exp)


# ------------------------------------------------------------- the entry points respect it
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(experiment, train.py arguments): a tiny demo run of 3 steps."""
    root = tmp_path_factory.mktemp("lock")
    args = demo_args(root, "--training:num_iters", 3, "--expname", "demo")
    assert train.main(args) == 0
    return root / "logs" / "demo", args


def test_overwrite_resume_and_eval_refuse_an_experiment_another_process_holds(trained, capsys):
    exp, args = trained
    before = files(exp)
    with held_elsewhere(exp) as other:
        capsys.readouterr()
        cases = [
            (args + ["--training:overwrite", "true"], train, "--training:overwrite will not"),
            (args, train, "choose another --expname"),
            (["--load_dir", str(exp), "--training:num_iters", "6"], train, "resume once it ends"),
            (["--load_dir", str(exp)], eval_cli, "eval.py writes into the experiment"),
            (["--load_dir", str(exp), "--register", str(exp)], eval_cli, "eval.py writes"),
        ]
        for argv, cli, advice in cases:
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"process {other.pid} (train.py) is training {exp}" in err, argv
            assert advice in err and one_sentence(err), err
            assert files(exp) == before  # nothing removed, added or rewritten
        assert lock_holder(exp) == Holder(other.pid, "train.py")  # and its lock is left alone
        kill(other)
    # the killed process's lock is stale: the next run takes it over and trains
    assert train.main(["--load_dir", str(exp), "--training:num_iters", "4"]) == 0
    assert "ended without releasing its lock; taking it over" in capsys.readouterr().out
    assert load_checkpoint(exp / "ckpts" / "final.pt")["step"] == 4
    assert_free(exp)


def test_a_training_run_holds_the_lock_until_it_ends(tiny_args, tmp_path, capsys):
    args = tiny_args + ["--training:num_iters", "100000", "--training:ckpt_every", "5"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    exp = tmp_path / "logs" / "demo"
    latest = exp / "ckpts" / "latest.pt"

    def training():  # past the set-up (step 0's checkpoint): the loop runs
        return latest.exists() and load_checkpoint(latest)["step"] > 0

    try:
        deadline = time.time() + 120
        while not training() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert training(), proc.communicate()[1] if proc.poll() is not None else "no checkpoint"
        assert lock_holder(exp) == Holder(proc.pid, "train.py")
        config = (exp / "config.yaml").read_bytes()
        capsys.readouterr()
        for argv, cli in [
            (tiny_args + ["--training:overwrite", "true", "--training:num_iters", "1"], train),
            (["--load_dir", exp, "--training:num_iters", "1"], train),
            (["--load_dir", exp, "--eval:tto_iters", "0"], eval_cli),
        ]:
            assert cli.main([str(a) for a in argv]) == 2
            err = capsys.readouterr().err
            assert f"process {proc.pid} (train.py) is training" in err and one_sentence(err)
        assert (exp / "config.yaml").read_bytes() == config and latest.exists()
        # render.py reads beside it (latest.pt is written atomically) and writes its own files
        argv = ["--load_dir", exp, "--n_frames", "1", "--scale", "0.25", "--videos", "rgb"]
        assert render.main([str(a) for a in argv + ["--no-progress_bar"]]) == 0
        assert lock_holder(exp) == Holder(proc.pid, "train.py")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert_free(exp)  # released on the way out, the file removed


def test_the_lock_is_released_however_a_run_ends(tiny_args, tmp_path, monkeypatch, capsys):
    # In-process: a lock that is not released stays held by this very process (its open file
    # and its record), so assert_free fails unless every way out released it.
    args = tiny_args + ["--training:num_iters", "4", "--training:ckpt_every", "100"]
    exp = tmp_path / "logs" / "demo"
    depth_prior = engine.session.prepare_depth_prior

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.session, "prepare_depth_prior", ctrl_c)  # Ctrl-C during the set-up
    assert train.main(args) == 130
    assert (exp / "config.yaml").is_file()
    assert_free(exp)
    monkeypatch.setattr(engine.session, "prepare_depth_prior", depth_prior)
    real = engine.objective.photometric_loss

    def nan(render, target, weight=None):
        terms = real(render, target, weight)
        terms["rgb"] = terms["rgb"] * float("nan")
        return terms

    monkeypatch.setattr(engine.objective, "photometric_loss", nan)
    assert train.main(args) == 2  # restarts the unfinished set-up, then stops on a NaN loss
    assert "non-finite" in capsys.readouterr().err
    assert_free(exp)
    monkeypatch.setattr(engine.objective, "photometric_loss", real)
    assert train.main(["--load_dir", str(exp), "--model:net_width", "8"]) == 2  # a user error
    assert_free(exp)
    assert train.main(["--load_dir", str(exp)]) == 0  # and a normal end
    assert_free(exp)
    assert eval_cli.main(["--load_dir", str(exp), "--eval:tto_iters", "0"]) == 0
    assert_free(exp)


# ------------------------------------------------------------------- unfinished set-ups
def test_a_set_up_a_live_process_runs_is_left_alone_and_restarted_once_it_is_gone(tmp_path):
    exp = tmp_path / "logs" / "run"
    (exp / "tracks").mkdir(parents=True)
    (exp / "config.yaml").write_text("expname: run\n")
    (exp / "tracks" / "features-1.db").write_bytes(b"sift")
    (exp / "sfm").mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # an earlier version's set-up marker naming a live process means nothing now
        (exp / "setting_up.pid").write_text(str(sleeper.pid))
        with held_elsewhere(exp) as other:
            assert not unfinished_set_up(exp)
            for overwrite in (False, True):
                with pytest.raises(
                    ConfigError, match=f"process {other.pid} \\(train.py\\) is setting up"
                ):
                    check_new_exp_dir(exp, overwrite)
            kill(other)
            assert unfinished_set_up(exp)  # that process is gone: its set-up starts again
            check_new_exp_dir(exp, overwrite=False)
            create_exp_dir(exp, overwrite=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in exp.iterdir()) == ["tracks"]  # the feature cache stays
    assert_free(exp)
