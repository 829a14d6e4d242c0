"""Free-viewpoint rendering: camera paths and the videos rendered along them.

The path maths lives in geometry.paths (camera-to-world tensors, OpenCV axes: x right, y down,
z forward); this module chooses a path from the learned cameras and renders it:
- spiral: around the average learned pose, looking at a focus point in front of it (the path of
  LLFF/NeRF's render_path_spiral, written in OpenCV axes);
- orbit: a circle around the cameras' focus point, looking at it (captures around an object);
- interpolate: through the learned poses in a given order (rotation slerp, translation
  Catmull-Rom spline), passing through every key pose exactly;
- path: a JSON list of 4x4 c2w matrices in the learned world frame.
Videos: RGB, colour-mapped depth and the two side by side, as mp4 (imageio-ffmpeg) and optionally
gif, rendered frame by frame in chunks of rays so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from geometry.paths import (
    focus_depth_from_bounds,
    interpolate_path,
    orbit_path,
    spiral_path,
    spiral_radii,
)
from geometry.poses import average_pose
from utils.errors import DataError
from utils.io import temporary_beside

RENDER_TYPES = ("spiral", "orbit", "interpolate", "path")
VIDEO_KINDS = ("rgb", "depth", "rgb_depth")
# A preview (the viewer's moving camera, render.py --preview): half the rows and columns, so a
# quarter of the pixels, and half the samples per ray; about an eighth of a full frame's work,
# so that a camera can move at a few frames a second on a CPU.
PREVIEW_SCALE = 0.5
PREVIEW_SAMPLES = 0.5


def parse_order(order, n_cameras: int) -> list[int]:
    """Camera order for interpolation: None (0..n-1), a list of ints or text like "3,1,2".
    Raises DataError unless it names >= 2 cameras, each in [0, n_cameras)."""
    if order is None:
        return list(range(n_cameras))
    items = order.replace(" ", "").split(",") if isinstance(order, str) else list(order)
    try:
        ids = [int(i) for i in items]
    except (TypeError, ValueError):
        raise DataError(
            f"--order {order} is not a comma-separated list of camera indices, e.g. 3,1,2."
        ) from None
    if len(ids) < 2 or any(not 0 <= i < n_cameras for i in ids):
        raise DataError(
            f"--order {order} must name at least 2 of the {n_cameras} learned cameras, each "
            f"index from 0 to {n_cameras - 1}."
        )
    return ids


def load_path_json(path: str | Path) -> torch.Tensor:
    """A JSON list of 4x4 (or 3x4) camera-to-world matrices (OpenCV axes, learned world frame)
    -> (F, 4, 4) float64. Raises DataError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"path file {path} does not exist; pass a JSON list of 4x4 c2w matrices.")
    try:
        mats = np.asarray(json.loads(path.read_text()), dtype=np.float64)
    except (json.JSONDecodeError, ValueError, TypeError):
        raise DataError(
            f"{path} is not a JSON list of 4x4 c2w matrices (numbers only, same shape each)."
        ) from None
    if mats.ndim != 3 or mats.shape[1:] not in ((4, 4), (3, 4)) or len(mats) == 0:
        raise DataError(f"{path} holds an array of shape {mats.shape}; expected (F, 4, 4).")
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(mats), 1, 1)
    c2w[:, :3] = torch.from_numpy(mats[:, :3])
    R = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64)
    bad = ((R.transpose(1, 2) @ R - eye).abs().amax(dim=(1, 2)) > 1e-3) | (torch.det(R) < 0)
    if not torch.isfinite(c2w).all() or bad.any():
        first = int(torch.nonzero(bad)[0]) if bad.any() else 0
        raise DataError(f"matrix {first} in {path} has no rotation in its top-left 3x3 block.")
    return c2w


def scale_intrinsics(K: torch.Tensor, H: int, W: int, scale: float):
    """Intrinsics K (3, 3) of an (H, W) image for an image scaled by `scale`, with the new size
    rounded to even numbers (H.264 needs them). Pixel centres are at +0.5, so scaling the first
    two rows of K by the per-axis size ratio is exact. Returns (K_scaled, H_scaled, W_scaled)."""
    W_s = max(2, 2 * round(W * scale / 2))
    H_s = max(2, 2 * round(H * scale / 2))
    K_s = K.clone()
    K_s[0] = K[0] * (W_s / W)
    K_s[1] = K[1] * (H_s / H)
    return K_s, H_s, W_s


# ---------------------------------------------------------------------------------- display
def depth_range(depth: torch.Tensor, percentiles=(2, 98)) -> tuple[float, float]:
    """Robust (low, high) of a depth map: the given percentiles, so far-away background (depth
    at infinity in NDC scenes) does not flatten the colour scale."""
    d = depth.flatten().double()
    lo, hi = torch.quantile(d, torch.tensor([p / 100.0 for p in percentiles], dtype=d.dtype))
    return float(lo), max(float(hi), float(lo) + 1e-6)


def colorize_depth(depth: torch.Tensor, lo: float, hi: float, cmap: str = "turbo_r") -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 through a matplotlib colormap over [lo, hi] (clipped)."""
    x = ((depth.double() - lo) / (hi - lo)).clamp(0, 1).numpy()
    return (matplotlib.colormaps[cmap](x)[..., :3] * 255 + 0.5).astype(np.uint8)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float colours in [0, 1] -> uint8."""
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


# -------------------------------------------------------------------------------- rendering
@contextlib.contextmanager
def image_size(model, H: int, W: int):
    """Render at (H, W) instead of the training size: SceneModel.render_image and its NDC rays
    read the size from the cameras, so it is swapped for the duration and restored after."""
    cams = model.cam_param
    old = cams.H, cams.W
    cams.H, cams.W = int(H), int(W)
    try:
        yield
    finally:
        cams.H, cams.W = old


@dataclass(frozen=True)
class Preview:
    """How a preview of an (H, W) view with intrinsics K renders: at (H, W) here with these K
    (the pixel grid of the view scaled by PREVIEW_SCALE) and these samples per ray."""

    K: torch.Tensor
    H: int
    W: int
    n_samples: int
    n_importance: int


def preview_samples(model) -> tuple[int, int]:
    """(n_samples, n_importance) of a preview: PREVIEW_SAMPLES of the model's."""
    return (
        max(2, round(model.cfg.n_samples * PREVIEW_SAMPLES)),
        round(model.cfg.n_importance * PREVIEW_SAMPLES),
    )


def preview_of(model, K: torch.Tensor, H: int, W: int) -> Preview:
    """The preview of an (H, W) view with intrinsics K (3, 3): PREVIEW_SCALE of its rows and
    columns (the same field of view; pixel centres at +0.5, so scaling K's first two rows by
    the size ratio is exact) and preview_samples."""
    H_p, W_p = max(1, round(H * PREVIEW_SCALE)), max(1, round(W * PREVIEW_SCALE))
    K_p = torch.as_tensor(K).clone()
    K_p[0] = K_p[0] * (W_p / W)
    K_p[1] = K_p[1] * (H_p / H)
    return Preview(K_p, H_p, W_p, *preview_samples(model))


def render_frames(
    model,
    c2w_path: torch.Tensor,
    K: torch.Tensor,
    H: int,
    W: int,
    progress: float | None = None,
    chunk: int = 4096,
    show_progress: bool = True,
    appearance: torch.Tensor | None = None,
    n_samples: int | None = None,
    n_importance: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Render every camera of c2w_path (F, 4, 4) with intrinsics K (3, 3) at (H, W), one frame
    at a time (rays in chunks), with the (A,) appearance code given (None: the mean of the
    training codes) and n_samples / n_importance samples per ray (None: the model's). Yields
    rgb (H, W, 3) and metric depth (H, W) on the CPU."""
    device = model.cam_param.t.device
    K = K.float().to(device)
    with image_size(model, H, W):
        for c2w in tqdm(c2w_path, desc="render", unit="frame", disable=not show_progress):
            out = model.render_image(
                c2w.float().to(device), K, progress, chunk, appearance, n_samples, n_importance
            )
            yield {"rgb": out["rgb"], "depth": model.depth_from_t(out["t"])}


def check_video_kinds(kinds) -> None:
    unknown = [k for k in kinds if k not in VIDEO_KINDS]
    if unknown or not kinds:
        raise DataError(
            f"videos {list(kinds)} must be a non-empty list of {', '.join(VIDEO_KINDS)}."
        )


class VideoWriters:
    """The requested videos of one path (rgb, depth, rgb_depth), written as frames arrive.

    Each video is written under a temporary name beside it and renamed when complete (close),
    or removed when rendering fails or is interrupted (discard): two renders of the same path,
    one while the experiment trains, never write into one file, and a video of that name from
    before is never replaced by a partial one."""

    def __init__(
        self,
        out_dir: Path,
        stem: str,
        kinds=VIDEO_KINDS,
        fps: float = 30,
        gif: bool = False,
        depth_cmap: str = "turbo_r",
        depth_percentiles=(2, 98),
    ):
        check_video_kinds(kinds)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.depth_cmap, self.depth_percentiles = depth_cmap, depth_percentiles
        self.depth_lo_hi = None
        self.paths, self.temporary, self.writers = {}, {}, {}
        for kind in kinds:
            for ext in ("mp4", "gif") if gif else ("mp4",):
                path = out_dir / f"{stem}_{kind}.{ext}"
                tmp = temporary_beside(path)
                if ext == "mp4":
                    # macro_block_size 1: keep the rendered size (it is already even).
                    writer = imageio.get_writer(
                        tmp,
                        fps=fps,
                        codec="libx264",
                        quality=8,
                        macro_block_size=1,
                        ffmpeg_log_level="error",
                    )
                else:
                    writer = imageio.get_writer(tmp, mode="I", duration=1000 / fps, loop=0)
                self.paths[(kind, ext)], self.writers[(kind, ext)] = path, writer
                self.temporary[(kind, ext)] = tmp

    def write(self, rgb: torch.Tensor, depth: torch.Tensor) -> None:
        """Add one frame: rgb (H, W, 3) in [0, 1], metric depth (H, W). The depth colour scale
        is fixed from the first frame so that colours mean the same depth in every frame."""
        if self.depth_lo_hi is None:
            self.depth_lo_hi = depth_range(depth, self.depth_percentiles)
        depth_u8 = colorize_depth(depth, *self.depth_lo_hi, self.depth_cmap)
        images = {"rgb": to_uint8(rgb), "depth": depth_u8}
        images["rgb_depth"] = np.concatenate([images["rgb"], images["depth"]], axis=1)
        for (kind, _), writer in self.writers.items():
            writer.append_data(images[kind])

    def close(self) -> list[Path]:
        """Finish every video and put it in place; returns their paths."""
        for key, writer in self.writers.items():
            writer.close()
            os.replace(self.temporary[key], self.paths[key])
        return list(self.paths.values())

    def discard(self) -> None:
        """Stop writing and remove the unfinished videos (any earlier ones of the name stay)."""
        for key, writer in self.writers.items():
            with contextlib.suppress(Exception):  # the error that stopped rendering matters
                writer.close()
            self.temporary[key].unlink(missing_ok=True)


def camera_path(
    render_type: str,
    c2w: torch.Tensor,
    *,
    near: float,
    far: float,
    n_frames: int = 120,
    n_rots: float = 2,
    z_rate: float = 0.5,
    radius_percentile: float = 90,
    radius_scale: float = 1.0,
    focus_depth: float | None = None,
    frames_per_segment: int = 30,
    order=None,
    path_json: str | Path | None = None,
) -> torch.Tensor:
    """The (F, 4, 4) float64 c2w of a render path from the learned cameras c2w (N, 4, 4).

    near, far: the scene's depth bounds in the learned frame (spiral focus when focus_depth is
    None). Raises DataError for an unknown render type, a bad order or a bad path file."""
    c2w = c2w.detach().double().cpu()
    if render_type not in RENDER_TYPES:
        raise DataError(
            f"unknown render type '{render_type}'; use spiral, orbit, interpolate or path "
            "(with --path_json)."
        )
    if render_type == "path":
        if path_json is None:
            raise DataError("render type path needs --path_json, a JSON list of 4x4 c2w matrices.")
        return load_path_json(path_json)
    if render_type == "interpolate":
        if frames_per_segment < 1:
            raise DataError(f"frames_per_segment must be at least 1, not {frames_per_segment}.")
        return interpolate_path(c2w[parse_order(order, len(c2w))], frames_per_segment)
    if n_frames < 1:
        raise DataError(f"n_frames must be at least 1, not {n_frames}.")
    if render_type == "orbit":
        return orbit_path(c2w, n_frames, radius_scale)
    c2w_avg = average_pose(c2w)
    radii = spiral_radii(c2w, c2w_avg, radius_percentile) * radius_scale
    depth = focus_depth if focus_depth is not None else focus_depth_from_bounds(near, far)
    return spiral_path(c2w_avg, radii, depth, n_frames, n_rots, z_rate)


def path_from_options(opts: dict, c2w: torch.Tensor, model, scene, path_json=None):
    """(render type, (F, 4, 4) float64 c2w) of the render path a `render` section's options
    give (render.py's videos, the viewer's path): auto is a spiral for a forward-facing capture
    and an orbit around an object; type path reads path_json."""
    render_type = opts["render_type"]
    if render_type == "auto":  # the capture's layout (sfm/start.py may have changed it)
        render_type = "spiral" if scene.forward_facing else "orbit"
    near, far = scene_bounds(model, scene)
    path = camera_path(
        render_type,
        c2w,
        near=near,
        far=far,
        n_frames=opts["n_frames"],
        n_rots=opts["n_rots"],
        z_rate=opts["z_rate"],
        radius_percentile=opts["radius_percentile"],
        radius_scale=opts["radius_scale"],
        focus_depth=opts["focus_depth"],
        frames_per_segment=opts["frames_per_segment"],
        order=opts["order"],
        path_json=path_json,
    )
    return render_type, path


def pick_appearance(model, image_names: list[str], choice) -> torch.Tensor | None:
    """The (A,) appearance code to render with (render.appearance): a training image's code,
    by its index (training order) or file name, or the mean of the training codes (None). None
    for a model without codes. Raises DataError for an unknown image."""
    if choice is None:
        return model.appearance_code()
    if not model.has_appearance:
        raise DataError(
            f"render appearance {choice!r} picks an appearance code, but this model has none "
            "(model.appearance_dim 0); drop the option."
        )
    index = image_names.index(choice) if choice in image_names else None
    if index is None and (isinstance(choice, int) or str(choice).isdigit()):
        index = int(choice)
    if index is None or not 0 <= index < len(image_names):
        raise DataError(
            f"render appearance {choice!r} is neither a training image's name nor an index from "
            f"0 to {len(image_names) - 1}."
        )
    with torch.no_grad():
        return model.appearance_code(index)


def scene_bounds(model, scene) -> tuple[float, float]:
    """(near, far) depth bounds of the scene in the model's world: the dataset's bounds for NDC
    scenes (its world near plane is at 1 by construction), the model's sampling range else."""
    return (scene.near, scene.far) if model.use_ndc else (model.near, model.far)


def render_video(
    model,
    c2w_path: torch.Tensor,
    out_dir: Path,
    stem: str,
    *,
    scale: float = 1.0,
    progress: float | None = None,
    chunk: int = 4096,
    fps: float = 30,
    kinds=VIDEO_KINDS,
    gif: bool = False,
    depth_cmap: str = "turbo_r",
    depth_percentiles=(2, 98),
    show_progress: bool = True,
    appearance: torch.Tensor | None = None,
    preview: bool = False,
) -> list[Path]:
    """Render the path c2w_path (F, 4, 4) with the model's learned intrinsics (mean over its
    cameras) at `scale` times the training size, and the (A,) appearance code given (None: the
    mean of the training codes); write <out_dir>/<stem>_<kind>.mp4 (and .gif). preview: a
    quick look, PREVIEW_SCALE of the size and preview_samples per ray. Returns the written
    paths."""
    cams = model.cam_param
    with torch.no_grad():
        K = cams.K().mean(0).cpu()
    K, H, W = scale_intrinsics(K, cams.H, cams.W, scale * (PREVIEW_SCALE if preview else 1))
    samples = preview_samples(model) if preview else (None, None)
    writers = VideoWriters(out_dir, stem, kinds, fps, gif, depth_cmap, depth_percentiles)
    try:
        frames = render_frames(
            model, c2w_path, K, H, W, progress, chunk, show_progress, appearance, *samples
        )
        for frame in frames:
            writers.write(frame["rgb"], frame["depth"])
    except BaseException:  # Ctrl-C included: no partial video under the final name
        writers.discard()
        raise
    return writers.close()
