"""view.py, the browser viewer: pose conventions, the page's content for a tiny experiment, the
one-sentence errors, the .viser export, and (slow) the page in a real headless Chromium."""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import viser.transforms as vtf
from conftest import REPO, TINY

import train
import view
from engine.experiment import load_experiment
from vis.videos import to_uint8
from vis.viewer import Viewer, initial_view
from vis.viewer_scene import (
    GOOD_DEG,
    build_viewer_scene,
    c2w_to_viser,
    error_colour,
    fov_of,
    gt_in_learned_world,
    intrinsics_from_fov,
    viser_to_c2w,
)


def random_c2w(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    c2w = np.repeat(np.eye(4)[None], n, axis=0)
    for k in range(n):
        c2w[k, :3, :3] = vtf.SO3(q[k].numpy()).as_matrix()
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64).numpy()
    return c2w


def test_a_pose_round_trips_through_viser_and_keeps_opencv_axes():
    for c2w in random_c2w(20):
        wxyz, position = c2w_to_viser(c2w)
        assert np.allclose(viser_to_c2w(wxyz, position), c2w, atol=1e-12)
    # a camera 2 units up the world y axis looking along world +x: viser's camera (OpenCV, as
    # its docs say) looks along the rotation's third column, its up is minus the second
    c2w = np.eye(4)
    # columns: the camera's x (right) is world -y, its y (down) world -z, its z (forward) +x
    c2w[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float).T
    c2w[:3, 3] = [0, 2, 0]
    wxyz, position = c2w_to_viser(c2w)
    R = vtf.SO3(wxyz).as_matrix()
    assert np.allclose(R[:, 2], [1, 0, 0]) and np.allclose(-R[:, 1], [0, 0, 1])
    assert np.allclose(position, [0, 2, 0])


def test_field_of_view_and_intrinsics_agree():
    K, H, W = intrinsics_from_fov(math.radians(50), 4 / 3, 378)
    assert (H, W) == (378, 504) and K[0, 2] == 252 and K[1, 2] == 189
    assert fov_of(K, H) == pytest.approx(math.radians(50))


def test_ground_truth_maps_back_into_the_learned_world():
    ours = random_c2w(5, seed=1)
    R = vtf.SO3.from_x_radians(0.3).multiply(vtf.SO3.from_z_radians(-1.1)).as_matrix()
    s, t = 2.5, np.array([0.3, -1.0, 4.0])
    gt = ours.copy()
    gt[:, :3, :3] = R @ ours[:, :3, :3]
    gt[:, :3, 3] = s * ours[:, :3, 3] @ R.T + t
    back = gt_in_learned_world(gt, {"scale": s, "R": R.tolist(), "t": t.tolist()})
    assert np.allclose(back, ours, atol=1e-12)


def test_error_colours_run_from_green_to_red():
    reds = [error_colour(e)[0] for e in (0.0, GOOD_DEG, 0.5, 2.0, 90.0)]
    greens = [error_colour(e)[1] for e in (0.0, GOOD_DEG, 0.5, 2.0, 90.0)]
    assert reds == sorted(reds) and greens == sorted(greens, reverse=True)
    assert error_colour(0.0)[0] == 0 and error_colour(90.0)[1] == 0


@pytest.fixture(scope="module")
def tiny_exp(tmp_path_factory):
    """A 6-step tiny demo run (8 views, 6 for training, ground truth known)."""
    root = tmp_path_factory.mktemp("viewer")
    args = ["--config", REPO / "configs" / "demo.yaml", "--log_root", root / "logs"]
    args += ["--data:data_dir", root / "demo_scene", *TINY, "--training:num_iters", "6"]
    args += ["--expname", "tiny"]
    assert train.main([str(a) for a in args]) == 0
    return root / "logs" / "tiny"


def test_the_page_shows_every_training_camera_coloured_by_its_error(tiny_exp):
    cfg, scene, model, step = load_experiment(tiny_exp)
    v = build_viewer_scene(tiny_exp, cfg, scene, model)
    assert v.n == len(scene.train_ids) == 6 and v.c2w.shape == (6, 4, 4)
    assert v.thumbnails.shape[0] == 6 and v.photos.shape == (6, scene.H, scene.W, 3)
    assert v.errors_deg is not None and v.gt_c2w.shape == (6, 4, 4)
    assert v.colours == [error_colour(e) for e in v.errors_deg]
    order = np.argsort(v.errors_deg)  # worse cameras are redder
    assert [v.colours[k][0] for k in order] == sorted(v.colours[k][0] for k in order)
    assert v.metrics["step"] == step and len(v.points) == 0  # no tracks in this run
    position, look_at = initial_view(v)
    assert np.isfinite(position).all() and np.linalg.norm(look_at - position) > 0
    viewer = Viewer(v, model, port=0, chunk=cfg.model.chunk, log=lambda s: None)
    try:
        assert len(viewer.frustums) == 6 and viewer.stats["cameras"] == 6
        frame = viewer.render(v.c2w[0], v.K[0], v.H, v.W)
        assert frame.shape == (v.H, v.W, 3) and frame.dtype == np.uint8
        # the model's own render path (render.py's), and a frame gives way when told to
        with torch.no_grad():
            ref = model.render_image(
                torch.tensor(v.c2w[0]).float(),
                torch.tensor(v.K[0]).float(),
                None,
                cfg.model.chunk,
                model.appearance_code(),
            )
        assert np.abs(frame.astype(int) - to_uint8(ref["rgb"]).astype(int)).max() <= 1
        assert viewer.render(v.c2w[0], v.K[0], v.H, v.W, abort=lambda: True) is None
        # the moving camera's preview: a quarter of the pixels (vis/videos.py's preview_of)
        preview = viewer.render(v.c2w[0], v.K[0], v.H, v.W, preview=True)
        assert preview.shape == (round(v.H / 2), round(v.W / 2), 3)
    finally:
        viewer.stop()


def test_export_writes_a_viser_recording(tiny_exp, tmp_path, capsys):
    out = tmp_path / "scene.viser"
    assert view.main(["--load_dir", tiny_exp, "--export", out]) == 0
    assert out.stat().st_size > 1000 and "playbackPath" in capsys.readouterr().out


def test_errors_are_one_sentence(tiny_exp, tmp_path, capsys):
    assert view.main(["--load_dir", tmp_path / "nothing"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bare = tmp_path / "bare"
    (bare / "ckpts").mkdir(parents=True)
    shutil.copy(tiny_exp / "config.yaml", bare / "config.yaml")
    assert view.main(["--load_dir", bare]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert view.main(["--load_dir", tiny_exp, "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_page_in_headless_chromium(tiny_exp, tmp_path):
    """view.py on the tiny run, opened by headless Chromium: the server sees the client
    connect, sends it the cameras and at least one full rendered frame, the screenshot is not
    blank, and Ctrl-C stops the server cleanly."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does).")
    from PIL import Image

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "view.py"), "--load_dir", str(tiny_exp), "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        started = time.time()
        url = None
        while url is None and time.time() - started < 120:
            line = proc.stdout.readline()
            assert line, "view.py ended early:\n" + "".join(lines)
            lines.append(line)
            match = re.search(r"at (http://\S+) in", line)
            url = match and match.group(1)
        assert url, "".join(lines)
        shot = tmp_path / "page.png"
        browser = subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-unsafe-swiftshader",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                "--window-size=1000,700",
                "--virtual-time-budget=15000",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
        assert shot.is_file(), browser.stderr.decode()[-2000:]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        lines.append(out)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines)
    assert proc.returncode == 0 and "viewer stopped" in log, log
    assert re.search(r"client \d+ connected \(6 cameras\)", log), log
    assert re.search(r"viewer: frame \d+x\d+ in", log), log
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 5, "the screenshot is blank"
    json.dumps(log)  # the log is text
