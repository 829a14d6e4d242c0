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


def read_video_frames(
    path: Path,
    stride: int,
    max_images: int | None,
    target_width: int | None,
    downscale: float,
) -> tuple[np.ndarray, list[str]]:
    """Every `stride`-th frame of a video, resized as they are read (so long videos stay small
    in memory), then at most `max_images` of them evenly spaced. Returns (N, H, W, 3) float32
    and frame names."""
    import imageio.v2 as imageio

    if stride is None or stride < 1:
        raise DataError(f"data.video_stride must be a positive integer, got {stride}.")
    frames, names, size = [], [], None
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
            if index % stride:
                continue
            img = np.asarray(frame, dtype=np.float32)[..., :3] / 255.0
            if size is None:
                size = scaled_size(img.shape[0], img.shape[1], target_width, downscale)
            frames.append(resize_image(img, *size))
            names.append(f"frame_{index:06d}")
    except (OSError, RuntimeError, ValueError) as e:
        if not frames:
            raise DataError(
                f"cannot decode video {path} ({_reason(e)}); re-encode it (e.g. H.264)."
            ) from None
    finally:
        reader.close()
    if not frames:
        return np.zeros((0, 1, 1, 3), np.float32), []
    keep = evenly_spaced(len(frames), max_images)
    return np.stack([frames[i] for i in keep]), [names[i] for i in keep]


def load_folder(
    data_dir: str | Path,
    image_dir: str | None = None,
    downscale: float = 8,
    target_width: int | None = None,
    max_images: int | None = None,
    video_stride: int = 10,
    name: str | None = None,
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
            data_dir, video_stride, max_images, target_width, downscale
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
