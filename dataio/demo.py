"""A small synthetic forward-facing scene with exact poses, written as an LLFF folder.

Textured planes at depths 2-8 in front of a ring of cameras that look a few degrees inwards
(like a hand-held LLFF capture), rendered by exact ray-plane intersection with 2x2 supersampling.
Everything is seeded and computed in float64 numpy, so a generation is byte-identical to the
last one on the same machine. The world frame is OpenCV-like: x right, y down, z forward.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataio.llff import opencv_to_llff
from utils.errors import DataError

# Bump when the generated scene changes, so cached copies are regenerated.
DEMO_VERSION = 4
DEMO_SEED = 20240601
HFOV_DEG = 55.0
TEXTURE_SIZE = 256

META_NAME = "demo_meta.json"


@dataclass
class Plane:
    """A textured planar patch: points centre + s * axis_u + t * axis_v with |s| <= half_u,
    |t| <= half_v (elliptic when `ellipse`); infinite when half sizes are inf (texture then
    repeats with period 2 * tex_half)."""

    centre: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    half_u: float
    half_v: float
    texture: np.ndarray  # (T, T, 3) float64 in [0, 1]
    ellipse: bool = False
    tex_half: float = 0.0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.axis_u, self.axis_v)


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: (3,) axis-angle vector -> (3, 3) rotation."""
    angle = np.linalg.norm(axis_angle)
    if angle < 1e-12:
        return np.eye(3)
    k = axis_angle / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * kx @ kx


def _value_noise(rng: np.random.Generator, cells: int, size: int, channels: int) -> np.ndarray:
    """Smooth random field (size, size, channels) in [0, 1]: random values on a (cells + 1)^2
    lattice blended with smoothstep weights."""
    lattice = rng.random((cells + 1, cells + 1, channels))
    x = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(x.astype(int), cells - 1)
    f = x - i
    f = f * f * (3.0 - 2.0 * f)
    rows = lattice[i] * (1 - f)[:, None, None] + lattice[i + 1] * f[:, None, None]
    return rows[:, i] * (1 - f)[None, :, None] + rows[:, i + 1] * f[None, :, None]


def _texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Colourful multi-scale texture: octave noise, hard-edged colour regions, soft blobs and a
    faint stripe pattern, so every image patch has photometric gradient."""
    base = rng.random(3) * 0.6 + 0.2
    tex = np.zeros((size, size, 3)) + base
    for octave, cells in enumerate((2, 4, 8, 16, 32)):
        tex += (_value_noise(rng, cells, size, 3) - 0.5) * 0.6 / (1.0 + 0.6 * octave)
    regions = _value_noise(rng, 5, size, 1)[..., 0]
    for level in (0.35, 0.65):
        colour = rng.random(3)
        inside = (regions > level).astype(np.float64)[..., None]
        tex = tex * (1 - 0.45 * inside) + 0.45 * inside * colour
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(8):
        cy, cx = rng.random(2)
        radius = rng.uniform(0.03, 0.12)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None]
        tex = tex * (1 - 0.6 * blob) + 0.6 * blob * rng.random(3)
    angle = rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * 4 * (xx * np.cos(angle) + yy * np.sin(angle)))
    tex += 0.05 * np.sign(stripes)[..., None]
    return np.clip(tex, 0.0, 1.0)


def demo_planes(seed: int = DEMO_SEED) -> list[Plane]:
    """The scene: a tilted background plane (fills every view) and four patches in front."""
    rng = np.random.default_rng(seed)
    # (centre, rotation axis-angle of the patch, half sizes, ellipse)
    layout = [
        ((0.0, 0.0, 7.2), (0.08, -0.12, 0.0), (np.inf, np.inf), False),
        ((-0.55, 0.35, 2.6), (0.0, 0.35, 0.0), (0.55, 0.45), False),
        ((0.75, -0.1, 3.6), (0.2, -0.25, 0.3), (0.6, 0.75), True),
        ((-0.5, -0.85, 4.8), (-0.5, 0.1, 0.2), (1.2, 0.6), False),
        ((1.3, 1.1, 6.0), (0.15, 0.6, 0.0), (1.4, 1.0), True),
    ]
    planes = []
    for centre, axis_angle, (half_u, half_v), ellipse in layout:
        rot = _rotation(np.array(axis_angle))
        planes.append(
            Plane(
                centre=np.array(centre, dtype=np.float64),
                axis_u=rot[:, 0],
                axis_v=rot[:, 1],
                half_u=half_u,
                half_v=half_v,
                texture=_texture(rng),
                ellipse=ellipse,
                tex_half=6.0 if np.isinf(half_u) else 0.0,
            )
        )
    return planes


def demo_focal(width: int) -> float:
    """Focal in pixels for the demo's horizontal field of view."""
    return 0.5 * width / np.tan(np.radians(HFOV_DEG) / 2)


def demo_cameras(n_views: int, seed: int = DEMO_SEED) -> np.ndarray:
    """(n_views, 4, 4) float64 OpenCV c2w: centres on a ring of radius 0.3-0.4 in the x/y plane
    (depth jitter 0.1), each looking at a point 4.5 ahead of the ring's centre, then turned by a
    random 1-degree-scale wobble, so each camera is 2-6 degrees away from the mean."""
    rng = np.random.default_rng(seed + 1)
    c2w = np.tile(np.eye(4), (n_views, 1, 1))
    target = np.array([0.0, 0.0, 4.5])
    for k in range(n_views):
        theta = 2 * np.pi * k / n_views + rng.uniform(-0.2, 0.2)
        radius = 0.4 * rng.uniform(0.75, 1.0)
        centre = np.array([radius * np.cos(theta), radius * np.sin(theta), rng.uniform(-0.1, 0.1)])
        forward = (target - centre) / np.linalg.norm(target - centre)
        right = np.cross([0.0, 1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        look_at = np.stack([right, down, forward], axis=1)
        wobble = _rotation(np.radians(rng.uniform(-1.0, 1.0, 3)))
        c2w[k, :3, :3] = look_at @ wobble
        c2w[k, :3, 3] = centre
    return c2w


def _sample_bilinear(tex: np.ndarray, s: np.ndarray, t: np.ndarray, wrap: bool) -> np.ndarray:
    """Texture (T, T, 3) at continuous coords s, t (texture spans [0, 1], texel centres at +0.5),
    repeating when `wrap`, else clamped to the border texels."""
    size = tex.shape[0]
    x = (np.mod(s, 1.0) if wrap else s) * size - 0.5
    y = (np.mod(t, 1.0) if wrap else t) * size - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(int), y0.astype(int)
    if wrap:
        x0, y0 = x0 % size, y0 % size
        x1, y1 = (x0 + 1) % size, (y0 + 1) % size
    else:
        x1, y1 = np.clip(x0 + 1, 0, size - 1), np.clip(y0 + 1, 0, size - 1)
        x0, y0 = np.clip(x0, 0, size - 1), np.clip(y0, 0, size - 1)
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_demo(
    c2w: np.ndarray, focal: float, height: int, width: int, planes: list[Plane]
) -> tuple[np.ndarray, np.ndarray]:
    """Render views of the planes: (N, H, W, 3) float64 colours and (N, H, W) z-depth (mean
    over the 2x2 subsamples). Pixel centres at +0.5 (docs/conventions.md)."""
    sub = np.array([0.25, 0.75])
    u = (np.arange(width)[:, None] + sub[None, :]).reshape(-1)
    v = (np.arange(height)[:, None] + sub[None, :]).reshape(-1)
    uu, vv = np.meshgrid(u, v)  # (2H, 2W)
    dirs_cam = np.stack([(uu - width / 2) / focal, (vv - height / 2) / focal, np.ones_like(uu)], -1)
    colours = np.empty((len(c2w), height, width, 3))
    depths = np.empty((len(c2w), height, width))
    for k, pose in enumerate(c2w):
        origin = pose[:3, 3]
        dirs = dirs_cam @ pose[:3, :3].T  # unit z-component in camera space: t is z-depth
        best_t = np.full(uu.shape, np.inf)
        colour = np.zeros((*uu.shape, 3))
        for plane in planes:
            denom = dirs @ plane.normal
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (plane.centre - origin) @ plane.normal / denom
            hit = origin + t[..., None] * dirs - plane.centre
            s, r = hit @ plane.axis_u, hit @ plane.axis_v
            infinite = bool(np.isinf(plane.half_u))
            if infinite:
                inside = np.ones_like(t, dtype=bool)
                tex_s, tex_t = s / (2 * plane.tex_half), r / (2 * plane.tex_half)
            else:
                su, rv = s / plane.half_u, r / plane.half_v
                if plane.ellipse:
                    inside = su**2 + rv**2 <= 1.0
                else:
                    inside = (np.abs(su) <= 1.0) & (np.abs(rv) <= 1.0)
                tex_s, tex_t = 0.5 * (su + 1.0), 0.5 * (rv + 1.0)
            closer = inside & (t > 1e-6) & (t < best_t)
            best_t = np.where(closer, t, best_t)
            colour[closer] = _sample_bilinear(
                plane.texture, tex_s[closer], tex_t[closer], wrap=infinite
            )
        if not np.isfinite(best_t).all():
            raise RuntimeError("demo scene: a ray missed every surface; the layout is broken")
        colours[k] = colour.reshape(height, 2, width, 2, 3).mean(axis=(1, 3))
        depths[k] = best_t.reshape(height, 2, width, 2).mean(axis=(1, 3))
    return colours, depths


def _meta(n_views: int, height: int, width: int) -> dict:
    return {
        "generator": "posefree.dataio.demo",
        "version": DEMO_VERSION,
        "seed": DEMO_SEED,
        "n_views": int(n_views),
        "width": int(width),
        "height": int(height),
        "hfov_deg": HFOV_DEG,
    }


def _is_current(folder: Path, meta: dict) -> bool:
    try:
        found = json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    n_images = len(list((folder / "images").glob("*.png")))
    return found == meta and n_images == meta["n_views"] and (folder / "poses_bounds.npy").is_file()


def _is_demo_folder(folder: Path) -> bool:
    """An empty folder, or one this generator wrote (any version): safe to replace."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        found = json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found.get("generator") == "posefree.dataio.demo"


def write_demo_scene(folder: Path, n_views: int, height: int, width: int) -> None:
    """Render the demo scene into `folder` (which must exist): images/NNN.png, poses_bounds.npy
    (LLFF axes, hwf at the generated size, bounds from the rendered depths), demo_meta.json."""
    focal = demo_focal(width)
    c2w = demo_cameras(n_views)
    colours, depths = render_demo(c2w, focal, height, width, demo_planes())
    (folder / "images").mkdir()
    for k, colour in enumerate(colours):
        pixels = np.round(np.clip(colour, 0.0, 1.0) * 255.0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{k:03d}.png")
    poses = opencv_to_llff(c2w)
    hwf = np.broadcast_to(
        np.array([height, width, focal], dtype=np.float64)[None, :, None], (n_views, 3, 1)
    )
    bounds = np.stack([depths.min(axis=(1, 2)) * 0.9, depths.max(axis=(1, 2)) * 1.1], axis=1)
    rows = np.concatenate([np.concatenate([poses, hwf], axis=2).reshape(n_views, 15), bounds], 1)
    np.save(folder / "poses_bounds.npy", rows)
    # Written last: its presence marks a complete scene.
    (folder / META_NAME).write_text(json.dumps(_meta(n_views, height, width), indent=1) + "\n")


def ensure_demo_scene(
    folder: str | Path, n_views: int = 12, height: int = 72, width: int = 96
) -> Path:
    """Make sure `folder` holds the demo scene for these parameters, generating it when missing or
    made by another version / parameters. Written into a temporary sibling folder and renamed
    into place, so a half-written scene is never read. Returns the folder."""
    folder = Path(folder)
    if n_views < 2 or width < 8 or height < 8:
        raise DataError(
            f"demo scene needs data.demo_views >= 2 and data.demo_size >= [8, 8], got {n_views} "
            f"views at {width}x{height}."
        )
    meta = _meta(n_views, height, width)
    if _is_current(folder, meta):
        return folder
    if folder.exists() and not _is_demo_folder(folder):
        raise DataError(
            f"{folder} exists and is not a demo scene; set data.data_dir to a new or empty folder "
            "for the demo (it would be overwritten)."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        write_demo_scene(tmp, n_views, height, width)
        if _is_current(folder, meta):  # another process (e.g. a second rank) finished first
            return folder
        if folder.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, stale / folder.name)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process (e.g. a second rank) put its copy in place first.
            if not _is_current(folder, meta):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in folder.parent.glob(f".{folder.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return folder
