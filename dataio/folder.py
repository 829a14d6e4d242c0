"""Photos without poses: a folder of pictures, or frames cut from a video file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dataio.images import list_images, load_images, resize_image, scaled_size
from dataio.scene import SceneData
from utils.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")

# Depth bounds for NDC rays when nothing is known about the scene.
DEFAULT_NEAR, DEFAULT_FAR = 1.0, 100.0

# Video frames: a window of data.video_stride frames whose sharpest frame has under this
# fraction of the clip's median sharpness (variance of the Laplacian) is dropped as blurred.
# A hand-held clip's motion-blurred frames score a small fraction of its median; 0 keeps every
# stride-th frame.
BLUR_MARGIN = 0.5
# ... but never this many windows in a row, so a blurred stretch leaves no gap wider than
# (this + 2) x the stride between kept frames.
MAX_BLURRED_WINDOWS_IN_A_ROW = 1


def evenly_spaced(n: int, keep: int | None) -> list[int]:
    """Indices of `keep` items spread evenly over n (first and last included); all when None."""
    if keep is None or keep >= n:
        return list(range(n))
    if keep <= 0:
        raise DataError(f"data.max_images must be positive, got {keep}.")
    if keep == 1:
        return [0]
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, keep)})


def _reason(err: Exception) -> str:
    """The cause of a video error in a few words: ffmpeg's last line, without its banner."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.rsplit(": ", 1)[-1].rstrip(".")


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of a frame's grey levels (H, W, 3) uint8: high for a sharp
    frame, low for one blurred by motion or focus (Pech-Pacheco et al. 2000)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pick_sharp_windows(scores: list[float], stride: int, margin: float) -> tuple[list[int], int]:
    """Which frames of a clip to keep, given every frame's sharpness: the sharpest frame of each
    window of `stride` consecutive frames, except windows whose sharpest is still blurred (under
    margin x the clip's median sharpness). At most MAX_BLURRED_WINDOWS_IN_A_ROW windows in a row
    are dropped, so kept frames stay under (MAX_BLURRED_WINDOWS_IN_A_ROW + 2) x stride frames
    apart. Returns (kept frame indices, number of windows dropped)."""
    threshold = margin * float(np.median(scores)) if scores else 0.0
    keep, dropped, in_a_row = [], 0, 0
    for start in range(0, len(scores), stride):
        window = scores[start : start + stride]
        best = start + int(np.argmax(window))  # ties: the earliest, the stride's own frame first
        if scores[best] < threshold and in_a_row < MAX_BLURRED_WINDOWS_IN_A_ROW:
            dropped, in_a_row = dropped + 1, in_a_row + 1
            continue
        keep.append(best)
        in_a_row = 0
    return keep, dropped


def read_video_frames(
    path: Path,
    stride: int,
    max_images: int | None,
    target_width: int | None,
    downscale: float,
    blur_margin: float = BLUR_MARGIN,
    log=print,
) -> tuple[np.ndarray, list[str]]:
    """One frame per window of `stride` consecutive frames of a video, resized as they are read
    (so long videos stay small in memory), then at most `max_images` of them evenly spaced.
    Returns (N, H, W, 3) float32 and frame names (frame_<index in the video>).

    blur_margin 0: every `stride`-th frame. Above 0: each window's sharpest frame (variance of
    the Laplacian at the video's resolution), and windows whose sharpest frame is under
    blur_margin x the clip's median sharpness are dropped (see pick_sharp_windows)."""
    import imageio.v2 as imageio

    if stride is None or stride < 1:
        raise DataError(f"data.video_stride must be a positive integer, got {stride}.")
    if not 0 <= blur_margin < 1:
        raise DataError(f"data.video_blur_margin must be in [0, 1), got {blur_margin}.")
    # window start -> (index, resized frame) of its sharpest frame so far; scores of every frame
    best: dict[int, tuple[int, np.ndarray]] = {}
    scores: list[float] = []
    size = None
    try:
        reader = imageio.get_reader(path, format="ffmpeg")
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(
            f"cannot open video {path} ({_reason(e)}); check that it is a video that plays, or "
            "extract its frames into a folder."
        ) from None
    try:
        # imageio reports an infinite length for videos: iterate, never list() the reader.
        for index, frame in enumerate(reader):
            start = index - index % stride
            if blur_margin > 0:
                scores.append(sharpness(frame))
                if start in best and scores[best[start][0]] >= scores[index]:
                    continue
            elif index != start:
                continue
            img = np.asarray(frame, dtype=np.float32)[..., :3] / 255.0
            if size is None:
                size = scaled_size(img.shape[0], img.shape[1], target_width, downscale)
            best[start] = (index, resize_image(img, *size))
    except (OSError, RuntimeError, ValueError) as e:
        if not best:
            raise DataError(
                f"cannot decode video {path} ({_reason(e)}); re-encode it (e.g. H.264)."
            ) from None
    finally:
        reader.close()
    if not best:
        return np.zeros((0, 1, 1, 3), np.float32), []
    frames = [best[start] for start in sorted(best)]
    if blur_margin > 0:
        kept, dropped = pick_sharp_windows(scores, stride, blur_margin)
        moved = sum(index % stride != 0 for index in kept)
        kept = set(kept)
        frames = [f for f in frames if f[0] in kept]
        log(
            f"video {path.name}: {len(frames)} frames kept of {len(scores)} (one per "
            f"{stride}); dropped {dropped} blurred frames (windows whose sharpest frame is under "
            f"{blur_margin} x the median sharpness {np.median(scores):.1f}); a sharper neighbour "
            f"replaced the stride frame in {moved} windows"
        )
    keep = evenly_spaced(len(frames), max_images)
    return np.stack([frames[i][1] for i in keep]), [f"frame_{frames[i][0]:06d}" for i in keep]


def load_folder(
    data_dir: str | Path,
    image_dir: str | None = None,
    downscale: float = 8,
    target_width: int | None = None,
    max_images: int | None = None,
    video_stride: int = 10,
    name: str | None = None,
    video_blur_margin: float = BLUR_MARGIN,
    log=print,
) -> SceneData:
    """Photos with no poses: every image of a folder (sorted by name), or frames of a video.

    All come out at one size: the first image's size divided by `downscale`, or `target_width`
    wide. No ground truth, so no test views; near / far are placeholders for NDC rays."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"{data_dir} does not exist; set data.data_dir to a photo folder or video.")
    if data_dir.is_file():
        if data_dir.suffix.lower() not in VIDEO_EXTENSIONS:
            raise DataError(
                f"{data_dir} is a file but not a video ({', '.join(VIDEO_EXTENSIONS)}); "
                "point data.data_dir at a folder of photos or a video."
            )
        images, names = read_video_frames(
            data_dir, video_stride, max_images, target_width, downscale, video_blur_margin, log
        )
        if len(names) < 2:
            raise DataError(
                f"video {data_dir} gave {len(names)} frame(s) at data.video_stride "
                f"{video_stride}; lower the stride or use a longer video (2 needed)."
            )
        source = data_dir
        feature_images = []
    else:
        source = data_dir / image_dir if image_dir else data_dir
        paths = list_images(source)
        if not paths:
            subdirs = sorted(p.name for p in source.iterdir() if p.is_dir())
            hint = f"; set data.image_dir to one of {subdirs}" if subdirs else ""
            raise DataError(f"no images (.jpg, .png, ...) in {source}{hint}.")
        paths = [paths[i] for i in evenly_spaced(len(paths), max_images)]
        images = load_images(paths, lambda h, w: scaled_size(h, w, target_width, downscale))
        names = [p.name for p in paths]
        feature_images = [str(p) for p in paths]

    n = len(names)
    if n < 2:
        raise DataError(f"{source} has {n} image; pose optimisation needs at least 2.")
    return SceneData(
        name=name or data_dir.stem,
        images=torch.from_numpy(images),
        image_names=names,
        train_ids=list(range(n)),
        test_ids=[],
        c2w_gt=None,
        K_gt=None,
        near=DEFAULT_NEAR,
        far=DEFAULT_FAR,
        forward_facing=True,
        # feature_images: the original photos (feature tracks extract SIFT there); video frames
        # have no file, so tracks use the training images.
        extras={
            "source": str(source),
            **({"feature_images": feature_images} if feature_images else {}),
        },
    )
