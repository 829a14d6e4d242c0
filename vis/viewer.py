"""The browser viewer of an experiment: a viser server with the cameras, the track points, the
metrics and a progressive render of the field from each browser's camera (view.py serves it).

Rendering runs in one background thread per connected browser, on the model's own render path
(SceneModel.render_image, as render.py does): while the camera moves a preview (vis/videos.py's
preview_of: a quarter of the pixels of the full size, half the samples per ray) at most every
MIN_INTERVAL_S, and once it has rested for REST_S the full size (the panel's full height).
Clicking a frustum moves the browser's camera to that view and shows the photo and the render
from it side by side in the panel.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import viser

from geometry.rays import pixel_centers
from utils.errors import ConfigError
from vis.videos import image_size, preview_of, to_uint8
from vis.viewer_scene import (
    GT_COLOUR,
    MARK_COLOURS,
    ViewerScene,
    c2w_to_viser,
    fov_of,
    intrinsics_from_fov,
    viser_to_c2w,
)

REST_S = 0.3
MIN_INTERVAL_S = 0.1


def check_port_free(host: str, port: int) -> None:
    """One sentence when (host, port) cannot be bound (viser would silently take the next)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({err.strerror}); choose another with --port."
            ) from None


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
        self, view: ViewerScene, model, host="127.0.0.1", port=8080, chunk=4096, log=print
    ):
        check_port_free(host, port)
        self.view, self.model, self.chunk, self.log = view, model, chunk, log
        self.lock = threading.Lock()  # one render at a time: the model swaps its image size
        self.stats = {"clients": 0, "cameras": 0, "frames": 0, "previews": 0, "frame_s": []}
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        if port and self.server.get_port() != port:
            self.server.stop()
            raise ConfigError(f"port {port} on {host} is taken; choose another with --port.")
        self.host, self.port = host, self.server.get_port()
        self.stopping = threading.Event()
        self.frustums = []
        self._add_scene()
        self._add_gui()
        self.server.on_client_connect(self._connect)

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

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
        self.stats["cameras"] = v.n
        position, look_at = initial_view(v)
        initial = self.server.initial_camera
        initial.fov = fov
        initial.up = tuple(float(x) for x in v.up)
        initial.position = tuple(float(x) for x in position)
        initial.look_at = tuple(float(x) for x in look_at)

    def _add_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Run"):
            gui.add_markdown(metrics_lines(self.view.metrics, self.view.marks))
        with gui.add_folder("Render"):
            self.render_on = gui.add_checkbox("Render the field", True)
            self.full_height = gui.add_slider(
                "Full height (px)",
                min=32,
                max=max(64, 2 * self.view.H),
                step=2,
                initial_value=self.view.H,
            )
            self.status = gui.add_markdown("no frame yet")
        with gui.add_folder("Selected view"):
            self.selected = gui.add_markdown("click a camera")
            blank = np.zeros((8, 16, 3), np.uint8)
            self.side_by_side = gui.add_image(blank, label="photo | render")

    # ------------------------------------------------------------------------------ clients
    def _connect(self, client: viser.ClientHandle) -> None:
        self.stats["clients"] += 1
        self.log(f"viewer: client {client.client_id} connected ({self.stats['cameras']} cameras)")
        state = {"moved": time.time(), "done": None}
        client.camera.on_update(lambda _: state.update(moved=time.time()))
        thread = threading.Thread(target=self._render_loop, args=(client, state), daemon=True)
        thread.start()

    def _go_to(self, client: viser.ClientHandle | None, k: int) -> None:
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

    # ---------------------------------------------------------------------------- rendering
    def render(
        self, c2w, K, H: int, W: int, abort=None, preview: bool = False
    ) -> np.ndarray | None:
        """(H, W, 3) uint8 render of the field from an OpenCV c2w with intrinsics K, by the
        steps of SceneModel.render_image (chunks of rays); None when abort() turns true between
        chunks (the camera moved on: a full frame gives way to the next preview). preview: the
        preview of that view instead (preview_of; its own, smaller size)."""
        model = self.model
        dev = model.cam_param.t.device
        c2w = torch.as_tensor(c2w, dtype=torch.float32, device=dev)
        K = torch.as_tensor(K, dtype=torch.float32, device=dev)
        n_samples = n_importance = None
        if preview:
            p = preview_of(model, K, H, W)
            K, H, W, n_samples, n_importance = p.K, p.H, p.W, p.n_samples, p.n_importance
        with self.lock, torch.no_grad(), image_size(model, H, W):
            uv = pixel_centers(H, W, dev).reshape(-1, 2)
            ids = torch.zeros(uv.shape[0], dtype=torch.long, device=dev)
            appearance, rgbs = model.appearance_code(), []
            for start in range(0, uv.shape[0], self.chunk):
                if abort is not None and abort():
                    return None
                sl = slice(start, start + self.chunk)
                o, d, v = model.rays(ids[sl], uv[sl], c2w[None], K[None])
                out = model.render_rays(
                    o, d, v, None, False, appearance, None, n_samples, n_importance
                )
                rgbs.append(out["rgb"].cpu())
        return to_uint8(torch.cat(rgbs).reshape(H, W, 3))

    def _client_pose(self, client):
        cam = client.camera
        return viser_to_c2w(cam.wxyz, cam.position), float(cam.fov), float(cam.aspect)

    def _render_loop(self, client: viser.ClientHandle, state: dict) -> None:
        """Preview while the camera moves, full size once it rests, nothing while unchanged."""
        last = 0.0
        while not self.stopping.is_set() and client.client_id in self.server.get_clients():
            moved = state["moved"]
            resting = time.time() - moved >= REST_S
            height = int(self.full_height.value)
            key = (moved, height, resting)
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
                rgb = self.render(
                    c2w, K, H, W, abort=lambda m=moved: state["moved"] != m, preview=not resting
                )
                seconds = time.perf_counter() - t0
                if rgb is None:
                    continue
                H, W = rgb.shape[:2]
                with warnings.catch_warnings():  # a tab closed mid-frame: nothing to tell
                    warnings.simplefilter("ignore", UserWarning)
                    client.scene.set_background_image(rgb, format="jpeg", jpeg_quality=90)
            except Exception as err:  # noqa: BLE001 - a closed tab mid-frame ends its loop
                if client.client_id in self.server.get_clients() and not self.stopping.is_set():
                    self.log(f"viewer: render failed ({type(err).__name__}: {err})")
                return
            last = time.time()
            state["done"] = key
            kind = "frame" if resting else "preview"
            self.stats["frames" if resting else "previews"] += 1
            if resting:
                self.stats["frame_s"].append(seconds)
            self.status.content = f"{kind} {W}x{H} in {seconds:.2f} s"
            self.log(f"viewer: {kind} {W}x{H} in {seconds:.2f} s to client {client.client_id}")

    def export(self, path: Path) -> Path:
        """The scene (cameras, points; not the panel or renders) as a .viser recording."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.server.get_scene_serializer().serialize())
        return path

    def stop(self) -> None:
        self.stopping.set()
        self.server.stop()
