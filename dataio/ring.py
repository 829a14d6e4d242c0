"""Synthetic captures around an object, with exact cameras, for tests of the camera start.

A few textured boxes stand on a textured floor inside a textured room (every ray meets a
surface); cameras walk a full ring (360 degrees) or a half ring around them, at two heights,
each looking at the object's centre with a small seeded wobble. Rendered with the demo scene's
exact ray-plane renderer (dataio/demo.py) and written as an instant-ngp / nerfstudio folder
(images/NNN.png and transforms.json with OpenGL c2w), so it loads like any capture with
`data.type: transforms`. Seeded: the same arguments give the same images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dataio.demo import Plane, _rotation, _texture, render_demo

HFOV_DEG = 50.0
RADIUS = 4.0  # camera distance to the object's centre
ROOM_HALF = 9.0  # the room's walls, floor and ceiling
LAYOUTS = ("ring", "half")


def _box(rng, centre, half, yaw: float) -> list[Plane]:
    """The six textured faces of a box (half sizes (3,)) turned by yaw about the vertical."""
    R = _rotation(np.array([0.0, yaw, 0.0]))
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for sign in (-1.0, 1.0):
            faces.append(
                Plane(
                    centre=np.asarray(centre) + sign * half[axis] * R[:, axis],
                    axis_u=R[:, u],
                    axis_v=R[:, v],
                    half_u=half[u],
                    half_v=half[v],
                    texture=_texture(rng),
                )
            )
    return faces


def ring_planes(seed: int = 0) -> list[Plane]:
    """The object (three boxes on the floor, world y down as OpenCV's) and the room."""
    rng = np.random.default_rng(seed)
    planes = [
        *_box(rng, (0.0, 0.2, 0.0), np.array([0.8, 0.8, 0.6]), 0.3),
        *_box(rng, (0.1, -0.9, 0.1), np.array([0.45, 0.3, 0.4]), -0.5),
        *_box(rng, (-0.9, 0.6, 0.8), np.array([0.3, 0.4, 0.3]), 0.9),
    ]
    for axis in range(3):  # the room: infinite planes, the nearest one ahead is hit
        u, v = [a for a in range(3) if a != axis]
        for sign in (-1.0, 1.0):
            centre = np.zeros(3)
            centre[axis] = sign * (1.0 if axis == 1 and sign > 0 else ROOM_HALF)  # floor at 1
            planes.append(
                Plane(
                    centre=centre,
                    axis_u=np.eye(3)[u],
                    axis_v=np.eye(3)[v],
                    half_u=np.inf,
                    half_v=np.inf,
                    texture=_texture(rng),
                    tex_half=2 * ROOM_HALF,  # one texture tile across the room: no repeats
                )
            )
    return planes


def ring_cameras(n_views: int, layout: str = "ring", seed: int = 0) -> np.ndarray:
    """(n_views, 4, 4) float64 OpenCV c2w on a ring (or half ring) of RADIUS around the object,
    alternately 0.6 and 1.4 above its centre, looking at it, turned by a wobble of a few
    degrees (seeded)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    rng = np.random.default_rng(seed + 1)
    span = 2 * np.pi if layout == "ring" else np.pi
    step = span / n_views if layout == "ring" else span / (n_views - 1)
    c2w = np.tile(np.eye(4), (n_views, 1, 1))
    for k in range(n_views):
        a = k * step + rng.uniform(-0.1, 0.1) * step
        height = -0.6 if k % 2 == 0 else -1.4  # y down: above the object
        centre = np.array([RADIUS * np.sin(a), height, RADIUS * np.cos(a)])
        forward = -centre / np.linalg.norm(centre)
        right = np.cross([0.0, 1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        wobble = _rotation(np.radians(rng.uniform(-2.0, 2.0, 3)))
        c2w[k, :3, :3] = np.stack([right, down, forward], axis=1) @ wobble
        c2w[k, :3, 3] = centre
    return c2w


def write_ring_scene(
    folder: Path,
    n_views: int = 16,
    layout: str = "ring",
    seed: int = 0,
    width: int = 160,
    height: int = 120,
) -> Path:
    """Render the capture into `folder` (created): images/NNN.png and transforms.json (OpenGL
    c2w, fl_x / fl_y / cx / cy). Returns the folder."""
    folder = Path(folder)
    focal = 0.5 * width / np.tan(np.radians(HFOV_DEG) / 2)
    c2w = ring_cameras(n_views, layout, seed)
    colours, _ = render_demo(c2w, focal, height, width, ring_planes(seed))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for k, colour in enumerate(colours):
        name = f"images/{k:03d}.png"
        Image.fromarray(np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8)).save(folder / name)
        opengl = c2w[k] @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV -> OpenGL camera axes
        frames.append({"file_path": name, "transform_matrix": opengl.tolist()})
    meta = {
        "fl_x": focal,
        "fl_y": focal,
        "cx": width / 2,
        "cy": height / 2,
        "w": width,
        "h": height,
        "frames": frames,
    }
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder
