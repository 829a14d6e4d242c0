"""The browser viewer of an experiment: a viser server with the cameras, the track points, the
metrics and a progressive render of the field from each browser's camera (view.py serves it).

Rendering runs in one background thread per connected browser, on the model's own render path
(SceneModel.render_image, as render.py does): while the camera moves a small preview
(PREVIEW_HEIGHT rows) at most every MIN_INTERVAL_S, and once it has rested for REST_S the full
training size; a newer field (set_model, while training) is rendered again. Clicking a
frustum moves the browser's camera to that view and shows the photo and the render from it side
by side in the panel. train.py --viewer serves the same page while it trains
(vis/viewer_live.py): it moves the frustums, rewrites the panel and hands the render a copy of
the field, and `gate` lets the render's chunks run only between training steps.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import viser

from geometry.rays import pixel_centers
from vis.videos import image_size, to_uint8
from vis.viewer_scene import (
    GT_COLOUR,
    MARK_COLOURS,
    ViewerScene,
    c2w_to_viser,
    error_colour,
    fov_of,
    intrinsics_from_fov,
    viser_to_c2w,
)
from vis.viewer_server import page_url, start_server

PREVIEW_HEIGHT = 64
PATH_COLOUR = (60, 60, 255)
REST_S = 0.3
MIN_INTERVAL_S = 0.1
STATS_KEPT = 256  # frames whose seconds and model version stats keeps


def metrics_lines(metrics: dict, marks: dict[str, str]) -> str:
    """The run's headline numbers as markdown for the panel."""
    lines = []
    if "step" in metrics:
        lines.append(f"**step** {metrics['step']}")
    headline = metrics.get("headline_alignment")
    block = metrics.get(headline) if headline else None
    if isinstance(block, dict):
        lines.append(
            f"**rotation** median {block.get('rot_median_deg', float('nan')):.3f} deg, max "
            f"{block.get('rot_max_deg', float('nan')):.3f} ({headline})"
        )
        if "trans_median" in block:
            lines.append(f"**translation** median {block['trans_median']:.4f} (unit scale)")
    if "focal_error_percent" in metrics:
        lines.append(f"**focal error** {metrics['focal_error_percent']:.2f} %")
    for key in ("psnr", "ssim", "psnr_tto", "ssim_tto"):
        if isinstance(metrics.get(key), (int, float)):
            lines.append(f"**{key}** {metrics[key]:.3f}")
    start = metrics.get("camera_start")
    if isinstance(start, dict) and start.get("kept"):
        lines.append(f"**camera start** {start['kept']}")
    for mark in ("dropped", "re-registered", "weak"):
        named = [n for n, m in marks.items() if m == mark]
        if named:
            lines.append(f"**{mark}** {', '.join(named)}")
    return "  \n".join(lines) or "no metrics.json yet"


def initial_view(v: ViewerScene) -> tuple[np.ndarray, np.ndarray]:
    """(position, look_at) of a browser's first camera: behind the camera nearest the cameras'
    centroid, pulled back along its axis by twice the cameras' spread, looking along that axis
    at the median depth of the track points (else one spread ahead)."""
    centres = v.c2w[:, :3, 3]
    k = int(np.argmin(np.linalg.norm(centres - centres.mean(0), axis=-1)))
    centre, forward = centres[k], v.c2w[k, :3, 2]
    spread = max(
        float(np.sqrt(((centres - centres.mean(0)) ** 2).sum(-1).mean())), 4 * v.frustum_scale
    )
    ahead = spread
    if len(v.points):
        depth = (v.points - centre) @ forward
        if (depth > 0).any():
            ahead = float(np.median(depth[depth > 0]))
    return centre - 2 * spread * forward, centre + ahead * forward


class Viewer:
    """A viser server over one loaded experiment. `stats` counts what was sent (for tests and
    the log): clients, cameras, frames (with the last frame's size and seconds)."""

    def __init__(
        self,
        view: ViewerScene,
        model,
        host="127.0.0.1",
        port=8080,
        chunk=4096,
        log=print,
        gate=contextlib.nullcontext,
        full_height: int | None = None,
        preview_height: int = PREVIEW_HEIGHT,
        server: viser.ViserServer | None = None,
    ):
        """gate: a context manager factory each chunk of rays renders under (train.py --viewer:
        only between steps); full_height: the resting frame's rows (default the photos');
        preview_height: the moving camera's; server: one already serving (view.py starts it
        before the experiment loads; its connected browsers are taken over)."""
        self.view, self.chunk, self.log, self.gate = view, chunk, log, gate
        self.model, self.progress, self.version = model, None, 0
        self.full_height_initial = view.H if full_height is None else int(full_height)
        self.preview_height = int(preview_height)
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()  # one render at a time: the model swaps its image size
        self.clients: dict[int, viser.ClientHandle] = {}
        # what was sent (tests, the log, the benches): the last STATS_KEPT frames' seconds and
        # model versions (set_model), bounded for a viewer open through a long training
        self.stats = {"clients": 0, "cameras": 0, "frames": 0, "previews": 0}
        self.stats["frame_s"] = collections.deque(maxlen=STATS_KEPT)
        self.stats["versions"] = collections.deque(maxlen=STATS_KEPT)
        self.server = start_server(host, port) if server is None else server
        self.host, self.port = host, self.server.get_port()
        self.stopping = threading.Event()
        self.frustums, self.gt_frustums = [], []
        self._add_scene()
        self._add_gui()
        self.server.on_client_disconnect(lambda client: self.clients.pop(client.client_id, None))
        self.server.on_client_connect(self._connect)
        for client in list(self.server.get_clients().values()):  # came while it loaded
            self._look(client)
            self._connect(client)

    @property
    def url(self) -> str:
        return page_url(self.host, self.port)

    def _look(self, client) -> None:
        """A browser that connected before the scene existed gets the initial view."""
        initial = self.server.initial_camera
        with client.atomic():
            client.camera.fov = initial.fov
            client.camera.up_direction = initial.up
            client.camera.position = initial.position
            client.camera.look_at = initial.look_at

    # ------------------------------------------------------------------------------ scene
    def _add_scene(self) -> None:
        v, scene = self.view, self.server.scene
        scene.set_up_direction(tuple(float(x) for x in v.up))
        fov, aspect = fov_of(v.K[0], v.H), v.W / v.H
        for k, name in enumerate(v.names):
            wxyz, pos = c2w_to_viser(v.c2w[k])
            frustum = scene.add_camera_frustum(
                f"/cameras/{k:03d}",
                fov=fov_of(v.K[k], v.H),
                aspect=aspect,
                scale=v.frustum_scale,
                thickness=0.03 * v.frustum_scale,
                color=v.colours[k],
                image=v.thumbnails[k],
                wxyz=wxyz,
                position=pos,
            )
            frustum.on_click(lambda event, k=k: self._go_to(event.client, k))
            self.frustums.append(frustum)
            mark = v.marks.get(name)
            if mark:
                scene.add_label(f"/cameras/{k:03d}/mark", f"{name}: {mark}")
        if v.gt_c2w is not None:
            for k in range(v.n):
                wxyz, pos = c2w_to_viser(v.gt_c2w[k])
                self.gt_frustums.append(
                    scene.add_camera_frustum(
                        f"/ground_truth/{k:03d}",
                        fov=fov,
                        aspect=aspect,
                        scale=v.frustum_scale,
                        thickness=0.015 * v.frustum_scale,
                        color=GT_COLOUR,
                        wxyz=wxyz,
                        position=pos,
                    )
                )
        for name, c2w in v.dropped_gt.items():
            wxyz, pos = c2w_to_viser(c2w)
            node = f"/dropped/{len(name)}_{abs(hash(name)) % 10**8}"
            scene.add_camera_frustum(
                node,
                fov=fov,
                aspect=aspect,
                scale=v.frustum_scale,
                color=MARK_COLOURS["dropped"],
                wxyz=wxyz,
                position=pos,
            )
            scene.add_label(f"{node}/mark", f"{name}: dropped (ground truth)")
        if len(v.points):
            scene.add_point_cloud(
                "/tracks",
                points=v.points.astype(np.float32),
                colors=v.point_colours,
                point_size=0.1 * v.frustum_scale,
            )
        self._draw_path()
        self.stats["cameras"] = v.n
        position, look_at = initial_view(v)
        initial = self.server.initial_camera
        initial.fov = fov
        initial.up = tuple(float(x) for x in v.up)
        initial.position = tuple(float(x) for x in position)
        initial.look_at = tuple(float(x) for x in look_at)

    def _draw_path(self) -> None:
        """The render path as line segments (replacing the last drawing of it)."""
        v = self.view
        if v.path is not None and len(v.path) > 1:
            centres = v.path[:, :3, 3]
            segments = np.stack([centres[:-1], centres[1:]], axis=1).astype(np.float32)
            self.server.scene.add_line_segments(
                "/render_path", segments, PATH_COLOUR, thickness=0.2 * v.frustum_scale
            )

    def _add_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Run"):
            self.metrics = gui.add_markdown(metrics_lines(self.view.metrics, self.view.marks))
        with gui.add_folder("Render"):
            self.render_on = gui.add_checkbox("Render the field", True)
            self.full_height = gui.add_slider(
                "Full height (px)",
                min=32,
                max=max(64, 2 * self.view.H),
                step=2,
                initial_value=min(self.full_height_initial, max(64, 2 * self.view.H)),
            )
            self.status = gui.add_markdown("no frame yet")
            if self.view.path is not None:
                fly = gui.add_button(f"Fly the {self.view.path_type} path")
                fly.on_click(lambda event: self.fly_path(event.client))
        with gui.add_folder("Selected view"):
            self.selected = gui.add_markdown("click a camera")
            blank = np.zeros((8, 16, 3), np.uint8)
            self.side_by_side = gui.add_image(blank, label="photo | render")

    # ------------------------------------------------------------------------------ clients
    def _connect(self, client: viser.ClientHandle) -> None:
        self.clients[client.client_id] = client
        self.stats["clients"] += 1
        self.log(f"viewer: client {client.client_id} connected ({self.stats['cameras']} cameras)")
        state = {"moved": time.time(), "done": None}
        client.camera.on_update(lambda _: state.update(moved=time.time()))
        thread = threading.Thread(target=self._render_loop, args=(client, state), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _go_to(self, client: viser.ClientHandle | None, k: int) -> None:
        """A frustum's click: the browser's camera flies to view k, and the panel shows its
        photo beside the field's render from the same camera."""
        if client is None:
            return
        v = self.view
        wxyz, pos = c2w_to_viser(v.c2w[k])
        with client.atomic():
            client.camera.fov = fov_of(v.K[k], v.H)
            client.camera.wxyz = wxyz
            client.camera.position = pos
        err = "" if v.errors_deg is None else f", rotation error {v.errors_deg[k]:.3f} deg"
        mark = f" ({v.marks[v.names[k]]})" if v.names[k] in v.marks else ""
        self.selected.content = f"**{v.names[k]}**{mark}{err}"
        rgb = self.render(v.c2w[k], v.K[k], v.H, v.W)
        self.side_by_side.image = np.concatenate([v.photos[k], rgb], axis=1)

    def fly_path(self, client: viser.ClientHandle | None, fps: float = 10.0) -> None:
        """The browser's camera along the render path (previews render as it goes)."""
        if client is None or self.view.path is None:
            return
        client.camera.fov = fov_of(self.view.K.mean(0), self.view.H)
        for c2w in self.view.path:
            if self.stopping.is_set() or client.client_id not in self.clients:
                return
            wxyz, pos = c2w_to_viser(c2w)
            with client.atomic():
                client.camera.wxyz = wxyz
                client.camera.position = pos
            time.sleep(1.0 / fps)

    # ------------------------------------------------------------------------ live updates
    def set_model(self, model, progress: float | None = None) -> None:
        """Render `model` from now on (a newer copy of the field while training): frames in
        flight finish on the old one, resting cameras are rendered again."""
        self.model, self.progress = model, progress
        self.version += 1

    def update_cameras(self, c2w, errors_deg=None, gt_c2w=None, path=None) -> None:
        """Move the frustums to the cameras c2w (n, 4, 4) (a click flies to the new pose),
        recoloured by `errors_deg` and with the aligned ground truth `gt_c2w` when given; the
        render path (F, 4, 4) redrawn (and flown) from `path` when given."""
        v = self.view
        c2w = np.asarray(c2w, dtype=np.float64)
        moved = np.abs(c2w - v.c2w).reshape(len(c2w), -1).max(axis=1) > 0
        v.c2w = c2w
        if errors_deg is not None:
            v.errors_deg = np.asarray(errors_deg, dtype=np.float64)
            v.colours = [error_colour(e) for e in v.errors_deg]
        with self.server.atomic():
            for k, frustum in enumerate(self.frustums):
                if moved[k]:
                    frustum.wxyz, frustum.position = c2w_to_viser(c2w[k])
                if errors_deg is not None and tuple(frustum.color) != tuple(v.colours[k]):
                    frustum.color = v.colours[k]
            if gt_c2w is not None and self.gt_frustums:
                v.gt_c2w = np.asarray(gt_c2w, dtype=np.float64)
                for k, frustum in enumerate(self.gt_frustums):
                    frustum.wxyz, frustum.position = c2w_to_viser(v.gt_c2w[k])
            if path is not None:
                v.path = np.asarray(path, dtype=np.float64)
                self._draw_path()

    def set_metrics(self, text: str) -> None:
        """The Run panel's markdown (the live loss and errors while training)."""
        self.metrics.content = text

    # ---------------------------------------------------------------------------- rendering
    def render(self, c2w, K, H: int, W: int, abort=None) -> np.ndarray | None:
        """(H, W, 3) uint8 render of the field from an OpenCV c2w with intrinsics K, by the
        steps of SceneModel.render_image (chunks of rays, each under the gate); None when
        abort() turns true between chunks (the camera moved on: a full frame gives way to the
        next preview)."""
        with self.lock:
            # one field for the whole frame
            model, progress, version = self.model, self.progress, self.version
            dev = model.cam_param.t.device
            c2w = torch.as_tensor(c2w, dtype=torch.float32, device=dev)
            K = torch.as_tensor(K, dtype=torch.float32, device=dev)
            with torch.no_grad(), image_size(model, H, W):
                uv = pixel_centers(H, W, dev).reshape(-1, 2)
                ids = torch.zeros(uv.shape[0], dtype=torch.long, device=dev)
                appearance, rgbs = model.appearance_code(), []
                for start in range(0, uv.shape[0], self.chunk):
                    if self.stopping.is_set() or (abort is not None and abort()):
                        return None
                    sl = slice(start, start + self.chunk)
                    with self.gate():
                        if self.stopping.is_set():  # the gate opened to let it go
                            return None
                        o, d, v = model.rays(ids[sl], uv[sl], c2w[None], K[None])
                        out = model.render_rays(
                            o, d, v, progress, perturb=False, appearance=appearance
                        )
                    rgbs.append(out["rgb"].cpu())
        self.stats["versions"].append(version)
        return to_uint8(torch.cat(rgbs).reshape(H, W, 3))

    def _client_pose(self, client):
        cam = client.camera
        return viser_to_c2w(cam.wxyz, cam.position), float(cam.fov), float(cam.aspect)

    def _render_loop(self, client: viser.ClientHandle, state: dict) -> None:
        """Preview while the camera moves, full size once it rests, nothing while neither the
        camera nor the field changed."""
        last = 0.0
        while not self.stopping.is_set() and client.client_id in self.clients:
            moved, version = state["moved"], self.version
            resting = time.time() - moved >= REST_S
            height = int(self.full_height.value) if resting else self.preview_height
            key = (moved, height, version)
            if (
                not self.render_on.value
                or key == state["done"]
                or time.time() - last < MIN_INTERVAL_S
                or client.camera._state.update_timestamp == 0.0
            ):
                time.sleep(0.02)
                continue
            if not resting and state["done"] is not None and state["done"][0] == moved:
                time.sleep(0.02)
                continue
            try:
                c2w, fov, aspect = self._client_pose(client)
                K, H, W = intrinsics_from_fov(fov, aspect, height)
                t0 = time.perf_counter()
                # a full frame gives way to the next preview; a preview finishes (while
                # training it may take several steps' share, and an old view beats none)
                abort = (lambda m=moved: state["moved"] != m) if resting else None
                rgb = self.render(c2w, K, H, W, abort=abort)
                seconds = time.perf_counter() - t0
                if rgb is None:
                    continue
                with warnings.catch_warnings():  # a tab closed mid-frame: nothing to tell
                    warnings.simplefilter("ignore", UserWarning)
                    client.scene.set_background_image(rgb, format="jpeg", jpeg_quality=90)
            except Exception as err:  # noqa: BLE001 - a closed tab mid-frame ends its loop
                if client.client_id in self.clients and not self.stopping.is_set():
                    self.log(f"viewer: render failed ({type(err).__name__}: {err})")
                return
            last = time.time()
            state["done"] = key
            kind = "frame" if resting else "preview"
            self.stats["frames" if resting else "previews"] += 1
            if resting:
                self.stats["frame_s"].append(seconds)
            if self.stopping.is_set():
                return
            self.status.content = f"{kind} {W}x{H} in {seconds:.2f} s"
            self.log(f"viewer: {kind} {W}x{H} in {seconds:.2f} s to client {client.client_id}")

    def export(self, path: Path) -> Path:
        """The scene (cameras, points, render path) as a .viser recording, with the Run panel's
        lines as a label above the cameras: viser records scene nodes, not its panel."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        v = self.view
        above = v.c2w[:, :3, 3].mean(0) + 4 * v.frustum_scale * np.asarray(v.up)
        label = self.server.scene.add_label(
            "/metrics",
            self.metrics.content.replace("**", "").replace("  \n", "\n"),
            position=tuple(float(x) for x in above),
        )
        try:
            path.write_bytes(self.server.get_scene_serializer().serialize())
        finally:
            label.remove()
        return path

    def stop(self) -> None:
        """Stop serving, and wait for the render threads (a daemon thread inside torch when
        the interpreter exits aborts the process)."""
        self.stopping.set()
        self.server.stop()
        for thread in self.threads:
            thread.join(timeout=30)
