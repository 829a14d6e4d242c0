"""view.py, the browser viewer: pose conventions, the page's content for a tiny experiment, the
one-sentence errors, the .viser export, a click on a frustum, the render path, train.py
--viewer (the page while training), and (slow) the page in a real headless Chromium."""

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import viser.transforms as vtf
from conftest import REPO, TINY

import train
import view
import vis.viewer
import vis.viewer_live
from engine.callbacks import Callback
from engine.experiment import load_experiment
from vis.videos import path_from_options, to_uint8
from vis.viewer import Viewer, initial_view
from vis.viewer_live import BetweenSteps, LiveViewer
from vis.viewer_scene import (
    GOOD_DEG,
    build_viewer_scene,
    c2w_to_viser,
    error_colour,
    fov_of,
    gt_in_learned_world,
    intrinsics_from_fov,
    render_path,
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
    finally:
        viewer.stop()


def test_export_writes_a_viser_recording(tiny_exp, tmp_path, capsys):
    out = tmp_path / "scene.viser"
    assert view.main(["--load_dir", tiny_exp, "--export", out]) == 0
    assert out.stat().st_size > 1000 and "playbackPath" in capsys.readouterr().out
    import zstandard  # viser's own (its recordings are zstd-compressed msgpack)

    data = out.read_bytes()
    inner = zstandard.ZstdDecompressor().decompress(
        data[8:], max_output_size=int.from_bytes(data[:8], "little")
    )
    # the cameras, render.py's path and the Run panel's lines as a label
    assert b"/cameras/005" in inner and b"/render_path" in inner
    assert b"/metrics" in inner and b"rotation median" in inner


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


class FakeClient:
    """What the viewer uses of a connected browser (viser.ClientHandle): its camera, which the
    viewer reads and moves, and its background image, which receives the rendered frames."""

    def __init__(self, c2w, fov, aspect, client_id=1000):
        wxyz, position = c2w_to_viser(c2w)
        self.client_id = client_id
        self.camera = SimpleNamespace(
            wxyz=wxyz,
            position=position,
            fov=fov,
            aspect=aspect,
            on_update=lambda fn: None,
            _state=SimpleNamespace(update_timestamp=1.0),  # the browser has sent its camera
        )
        self.frames = []
        self.scene = SimpleNamespace(set_background_image=lambda rgb, **kw: self.frames.append(rgb))

    def atomic(self):
        return contextlib.nullcontext()


def test_clicking_a_frustum_flies_there_and_shows_photo_beside_render(tiny_exp):
    cfg, scene, model, step = load_experiment(tiny_exp)
    v = build_viewer_scene(tiny_exp, cfg, scene, model)
    viewer = Viewer(v, model, port=0, chunk=cfg.model.chunk, log=lambda s: None)
    viewer.render_on.value = False  # the click's own render only
    try:
        client = FakeClient(np.eye(4), 1.0, 2.0)
        k = 3
        # the callback the frustum registered with viser, as a browser's click calls it
        (entry,) = viewer.frustums[k]._impl.click_cb
        entry.callback(SimpleNamespace(client=client, target=viewer.frustums[k]))
        assert np.allclose(viser_to_c2w(client.camera.wxyz, client.camera.position), v.c2w[k])
        assert client.camera.fov == pytest.approx(fov_of(v.K[k], v.H))
        pair = viewer.side_by_side.image
        assert pair.shape == (v.H, 2 * v.W, 3)
        assert np.array_equal(pair[:, : v.W], v.photos[k])
        render = viewer.render(v.c2w[k], v.K[k], v.H, v.W)
        assert np.array_equal(pair[:, v.W :], render) and render.std() > 0
        assert v.names[k] in viewer.selected.content
    finally:
        viewer.stop()


def test_the_page_draws_render_pys_path_and_flies_it(tiny_exp):
    cfg, scene, model, step = load_experiment(tiny_exp)
    v = build_viewer_scene(tiny_exp, cfg, scene, model)
    with torch.no_grad():
        c2w = model.cam_param.c2w().cpu()
    kind, path = path_from_options(dict(cfg.render), c2w, model, scene)
    assert v.path_type == kind == "spiral"  # the demo faces forward
    assert np.allclose(v.path, path.numpy()) and len(v.path) == cfg.render.n_frames
    viewer = Viewer(v, model, port=0, chunk=cfg.model.chunk, log=lambda s: None)
    viewer.render_on.value = False
    try:
        client = FakeClient(np.eye(4), 1.0, 4 / 3)
        viewer.clients[client.client_id] = client
        viewer.fly_path(client, fps=1e6)
        assert np.allclose(viser_to_c2w(client.camera.wxyz, client.camera.position), v.path[-1])
    finally:
        viewer.stop()


def test_render_chunks_pass_only_between_training_steps():
    gate = BetweenSteps(share=1.0, slice_s=1.0)
    ran = []

    def render():
        for k in range(3):
            with gate.chunk():
                ran.append(k)

    thread = threading.Thread(target=render, daemon=True)
    thread.start()
    time.sleep(0.2)
    assert ran == []  # no step ended: the render waits
    gate.between_steps()  # the training thread waits while the chunks run
    thread.join(timeout=5)
    assert ran == [0, 1, 2] and gate.waited > 0
    # over budget: the training thread does not wait, the render does
    gate = BetweenSteps(share=0.0)
    thread = threading.Thread(target=lambda: gate.chunk().__enter__(), daemon=True)
    thread.start()
    time.sleep(0.05)
    gate.between_steps()
    assert gate.waiting == 1 and gate.waited == 0
    gate.close()
    thread.join(timeout=5)
    assert gate.waiting == 0


def test_train_with_viewer_moves_the_cameras_updates_the_panel_and_renders_the_newest_field(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(vis.viewer_live, "UPDATE_S", 0.0)
    monkeypatch.setattr(vis.viewer_live, "SNAPSHOT_S", 0.0)
    monkeypatch.setattr(vis.viewer_live, "SHARE", 1.0)
    monkeypatch.setattr(vis.viewer, "REST_S", 0.0)
    seen = {}

    class Probe(Callback):  # after the viewer in the list of callbacks
        def on_step_end(self, trainer, values):
            (live,) = [c for c in trainer.callbacks if isinstance(c, LiveViewer)]
            viewer = live.viewer
            if trainer.step == 1:
                seen["viewer"], seen["c2w0"] = viewer, viewer.view.c2w.copy()
                v = viewer.view
                client = FakeClient(v.c2w[0], fov_of(v.K[0], v.H), v.W / v.H)
                seen["client"] = client
                viewer._connect(client)
            with torch.no_grad():
                c2w = trainer.model.cam_param.c2w().double().numpy()
            assert np.allclose(viewer.view.c2w, c2w)  # the frustums follow the cameras
            assert np.allclose(viewer.frustums[2].position, c2w[2, :3, 3])
            # and so does the render path, drawn from them as render.py would
            path = render_path(trainer.cfg, trainer.scene, trainer.model, c2w)[1]
            assert np.allclose(viewer.view.path, path)
            assert f"**step** {trainer.step} / " in viewer.metrics.content
            seen["steps"] = trainer.step

    args = ["--config", REPO / "configs" / "demo.yaml", "--log_root", tmp_path / "logs"]
    args += ["--data:data_dir", tmp_path / "demo_scene", *TINY, "--training:num_iters", "40"]
    args += ["--expname", "live", "--viewer", "--port", "0"]
    assert train.main([str(a) for a in args], callbacks=[Probe()]) == 0
    viewer, client = seen["viewer"], seen["client"]
    assert seen["steps"] == 40 and viewer.stopping.is_set()  # closed with the run
    assert not np.allclose(viewer.view.c2w, seen["c2w0"])  # the cameras learned
    assert client.frames and viewer.stats["frames"] >= 1
    # frames came from copies of the field taken during training, not only the first one
    assert max(viewer.stats["versions"]) >= 2
    assert client.frames[-1].shape[0] == min(viewer.view.H, vis.viewer_live.LIVE_HEIGHT)


def test_train_viewer_flags_fail_in_one_sentence(tmp_path, capsys):
    base = ["--config", str(REPO / "configs" / "demo.yaml"), "--log_root", str(tmp_path)]
    assert train.main([*base, "--port", "8081"]) == 2
    assert "add --viewer" in capsys.readouterr().err
    assert train.main([*base, "--viewer", "--port", "x"]) == 2
    assert "not a port number" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert train.main([*base, "--viewer", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before the experiment was made


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


def test_view_py_renders_from_a_copy_with_the_finer_occupancy_grid_once_it_is_built(tmp_path):
    args = ["--config", REPO / "configs" / "demo.yaml", "--log_root", tmp_path / "logs"]
    args += ["--data:data_dir", tmp_path / "demo_scene", *TINY, "--training:num_iters", "6"]
    args += ["--expname", "occupied", "--model:occupancy", "true"]
    assert train.main([str(a) for a in args]) == 0
    cfg, scene, model, step = load_experiment(tmp_path / "logs" / "occupied", render_grid=False)
    coarse = model.occupancy.resolution
    assert coarse == cfg.model.occupancy_resolution != cfg.model.occupancy_render_resolution
    handed = []
    viewer = SimpleNamespace(stopping=threading.Event(), set_model=handed.append)
    view.finer_grid(viewer, model, cfg)
    (finer,) = handed
    assert finer is not model and model.occupancy.resolution == coarse  # the page's is untouched
    assert finer.occupancy.resolution == cfg.model.occupancy_render_resolution
    torch.testing.assert_close(finer.occupancy.extent, model.occupancy.extent)
    with torch.no_grad():  # the same field: the copy renders the same image
        c2w, K = model.cam_param.c2w(), model.cam_param.K()
        a, b = model.render_image(c2w[0], K[0])["rgb"], finer.render_image(c2w[0], K[0])["rgb"]
    assert float(-10 * torch.log10(((a - b) ** 2).mean() + 1e-12)) > 40
    viewer.stopping.set()  # a viewer closing meanwhile gets no model
    view.finer_grid(viewer, model, cfg)
    assert len(handed) == 1
