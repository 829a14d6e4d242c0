"""Camera pose plots: learned cameras as frustums in 3D, aligned to ground truth when known.

python vis/plot_camera_pose.py --load_dir logs/<exp> [--ckpt latest.pt] [--gif] [--show]

Writes <exp_dir>/plots/poses.png and, with --gif, <exp_dir>/plots/pose_history.gif from the
pose history recorded during training (vis/pose_history.py). Headless (Agg) unless --show.
`plot_cameras` and `figure_to_array` need no experiment directory: the training loop uses them
to log the plot to tensorboard.

Axes: the world is drawn as (x, z, -y) so that a camera's up (-y in OpenCV axes) points up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Entry point: the repository root goes on the path, so it runs without set_env.sh.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.pose_history import PoseHistory
from geometry.alignment import align, apply_similarity
from utils.cli import run_cli
from utils.errors import ConfigError

LEARNED_COLOUR, GT_COLOUR, MATCH_COLOUR = "tab:blue", "tab:orange", "0.5"
INDEX_CMAP = "viridis"


def _as_4x4_float64_cpu(c2w) -> torch.Tensor:
    """(N, 3|4, 4) tensor or array -> (N, 4, 4) float64 tensor on the CPU."""
    c2w = torch.as_tensor(np.asarray(c2w.detach().cpu() if torch.is_tensor(c2w) else c2w))
    out = torch.eye(4, dtype=torch.float64).repeat(len(c2w), 1, 1)
    out[:, :3] = c2w[:, :3].double()
    return out


def align_to_gt(c2w, c2w_gt, alignment: str = "rotation-aware") -> torch.Tensor:
    """Learned cameras c2w (N, 3|4, 4) moved into the ground-truth frame by the similarity of
    geometry.alignment (rotation-aware by default). Returns (N, 4, 4) float64."""
    c2w, c2w_gt = _as_4x4_float64_cpu(c2w), _as_4x4_float64_cpu(c2w_gt)
    s, R, t = align(c2w[:, :3], c2w_gt[:, :3], alignment)
    return apply_similarity(c2w, s, R, t)


def _plot_coords(points: np.ndarray) -> np.ndarray:
    """(..., 3) world (x, y, z) -> plot (x, z, -y): OpenCV's y is down."""
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)


def frustum_segments(c2w: torch.Tensor, size: float, shape=(1.0, 0.75)) -> np.ndarray:
    """Line segments of camera frustums: c2w (N, 4, 4), depth `size`, image shape as
    (W / fx, H / fy). Returns (N, 9, 2, 3) world points: 4 edges from the centre, the 4 sides of
    the image rectangle at depth `size`, and a tick on its top side (the camera's up)."""
    hw, hh = size * shape[0] / 2, size * shape[1] / 2
    corners = torch.tensor(
        [[-hw, -hh, size], [hw, -hh, size], [hw, hh, size], [-hw, hh, size]], dtype=torch.float64
    )
    tick = torch.tensor([[0.0, -hh, size], [0.0, -hh * 1.4, size]], dtype=torch.float64)
    local = torch.cat([torch.zeros(1, 3, dtype=torch.float64), corners, tick])  # (7, 3)
    world = (local @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]).numpy()  # (N, 7, 3)
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1), (5, 6)]
    return np.stack([world[:, [a, b]] for a, b in pairs], axis=1)


def default_frustum_size(*centre_sets: np.ndarray) -> float:
    """A frustum depth from the camera spread: a tenth of the largest bounding-box side of all
    centres, or 0.1 when they coincide (the identity start)."""
    pts = np.concatenate([c.reshape(-1, 3) for c in centre_sets])
    extent = float((pts.max(0) - pts.min(0)).max())
    return 0.1 * extent if extent > 1e-9 else 0.1


def plot_limits(*point_sets: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """(3, 2) world axis ranges (x, y, z), all of one length, holding every point (..., 3)."""
    pts = np.concatenate([p.reshape(-1, 3) for p in point_sets])
    lo, hi = pts.min(0), pts.max(0)
    half = max(float((hi - lo).max()) / 2 * (1 + margin), 1e-3)
    mid = (lo + hi) / 2
    return np.stack([mid - half, mid + half], axis=-1)


def plot_cameras(
    c2w,
    c2w_gt=None,
    *,
    align_gt: bool = True,
    alignment: str = "rotation-aware",
    frustum_size: float | None = None,
    frustum_shape=(1.0, 0.75),
    limits: np.ndarray | None = None,
    title: str | None = None,
    fig: Figure | None = None,
    image_ids=None,
    figsize=(6.0, 6.0),
    dpi: int = 100,
) -> Figure:
    """A 3D plot of camera frustums.

    c2w: (N, 3|4, 4) learned cameras (tensor or array); c2w_gt: (N, 3|4, 4) ground truth or
    None. With ground truth, the learned cameras are aligned to it (align_gt, `alignment` of
    evaluation.pose_metrics) and drawn in blue, ground truth in orange, grey lines join matching
    centres; centres are dots coloured by image index. frustum_size: frustum depth in world
    units (None: from the camera spread); frustum_shape: (W / fx, H / fy); limits: (3, 2)
    world axis ranges (fixed ranges make animation frames comparable); image_ids: (N,) dataset
    image index of each camera, for the colours (None: 0..N-1). Draws into `fig` when
    given (e.g. a pyplot figure to show), else into a new Agg figure (no pyplot state; nothing
    to close). Returns the figure.
    """
    c2w = _as_4x4_float64_cpu(c2w)
    if c2w_gt is not None:
        c2w_gt = _as_4x4_float64_cpu(c2w_gt)
        if c2w_gt.shape != c2w.shape:
            raise ValueError(f"c2w {tuple(c2w.shape)} and c2w_gt {tuple(c2w_gt.shape)} differ")
        if align_gt:
            c2w = align_to_gt(c2w, c2w_gt, alignment)
    centres = c2w[:, :3, 3].numpy()
    sets = [centres] if c2w_gt is None else [centres, c2w_gt[:, :3, 3].numpy()]
    size = frustum_size if frustum_size is not None else default_frustum_size(*sets)
    if fig is None:
        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    cameras = [(c2w, LEARNED_COLOUR, "learned")]
    if c2w_gt is not None:
        cameras.append((c2w_gt, GT_COLOUR, "ground truth"))
    world_segments = []
    for cams, colour, label in cameras:
        segs = frustum_segments(cams, size, frustum_shape)
        world_segments.append(segs)
        for i, seg in enumerate(_plot_coords(segs).reshape(-1, 2, 3)):
            ax.plot(*seg.T, color=colour, lw=0.8, label=label if i == 0 else None)
    if c2w_gt is not None:
        for a, b in zip(_plot_coords(centres), _plot_coords(sets[1])):
            ax.plot(*np.stack([a, b]).T, color=MATCH_COLOUR, lw=0.8, ls="--")
    index = np.arange(len(c2w)) if image_ids is None else np.asarray(image_ids)
    for pts in sets:
        dots = ax.scatter(*_plot_coords(pts).T, c=index, cmap=INDEX_CMAP, s=12, depthshade=False)
    fig.colorbar(dots, ax=ax, shrink=0.6, pad=0.1, label="image index")
    lim = limits if limits is not None else plot_limits(*world_segments)
    ax.set_xlim(*lim[0])
    ax.set_ylim(*lim[2])
    ax.set_zlim(-lim[1, 1], -lim[1, 0])
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("z (forward)")
    ax.set_zlabel("-y (up)")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 RGB image (e.g. for tensorboard)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def history_gif(
    history: PoseHistory,
    path: Path,
    c2w_gt=None,
    fps: float = 5,
    frustum_shape=(1.0, 0.75),
    image_ids=None,
) -> Path:
    """Animate the history's snapshots (aligned to c2w_gt (N, 3|4, 4) when given) with one
    frustum size and fixed axis ranges; one frame per snapshot, titled with its step. Writes
    and returns `path`."""
    snapshots = [_as_4x4_float64_cpu(c) for c in history.c2w]
    if c2w_gt is not None:
        c2w_gt = _as_4x4_float64_cpu(c2w_gt)
        snapshots = [align_to_gt(c, c2w_gt) for c in snapshots]
    cameras = snapshots + ([c2w_gt] if c2w_gt is not None else [])
    size = default_frustum_size(*[c[:, :3, 3].numpy() for c in cameras])
    limits = plot_limits(*[frustum_segments(c, size, frustum_shape) for c in cameras])
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, mode="I", duration=1000 / fps, loop=0) as writer:
        for step, c2w in zip(history.steps, snapshots):
            fig = plot_cameras(
                c2w,
                c2w_gt,
                align_gt=False,
                frustum_size=size,
                frustum_shape=frustum_shape,
                limits=limits,
                title=f"step {int(step)}",
                image_ids=image_ids,
            )
            writer.append_data(figure_to_array(fig))
    return path


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; see python vis/plot_camera_pose.py --help.")


def run(argv: list[str]) -> int:
    from engine.experiment import load_experiment

    p = _Parser(prog="python vis/plot_camera_pose.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--load_dir", required=True, help="experiment directory, logs/<exp>")
    p.add_argument("--ckpt", default="latest.pt", help="checkpoint in <exp>/ckpts")
    p.add_argument("--gif", action="store_true", help="also animate the pose history")
    p.add_argument("--fps", type=float, default=5.0, help="gif frame rate")
    p.add_argument("--show", action="store_true", help="open an interactive window as well")
    args = p.parse_args(argv)
    exp_dir = Path(args.load_dir)
    history = PoseHistory.load(exp_dir) if args.gif else None
    _, scene, model, step = load_experiment(exp_dir, args.ckpt, device="cpu")
    cams = model.cam_param
    with torch.no_grad():
        c2w, K = cams.c2w(), cams.K().mean(0)
    shape = (cams.W / float(K[0, 0]), cams.H / float(K[1, 1]))
    c2w_gt = None if scene.c2w_gt is None else scene.c2w_gt[scene.train_ids]
    title = f"{exp_dir.name}, step {step}"
    title += " (aligned to ground truth)" if c2w_gt is not None else ""
    # Without --show no pyplot is involved: plot_cameras draws on an Agg canvas (headless).
    fig = None
    if args.show:
        from matplotlib import pyplot as plt

        fig = plt.figure(figsize=(6, 6))
    ids = scene.train_ids
    fig = plot_cameras(c2w, c2w_gt, frustum_shape=shape, title=title, fig=fig, image_ids=ids)
    out = exp_dir / "plots" / "poses.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")
    if history is not None:
        gif = exp_dir / "plots" / "pose_history.gif"
        history_gif(history, gif, c2w_gt, args.fps, frustum_shape=shape, image_ids=ids)
        print(f"wrote {gif} ({len(history)} snapshots)")
    if args.show:
        plt.show()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
