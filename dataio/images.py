"""Reading photos into float32 RGB arrays: orientation, channels, bit depth, resizing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Two sizes share an aspect ratio when they differ by at most this fraction or one pixel of
# rounding (downscaled LLFF folders round odd sizes).
ASPECT_TOLERANCE = 0.01

_EXIF_ORIENTATION_TAG = 0x0112


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder` (any case of the extension, hidden files skipped),
    sorted by file name. Returns [] for a folder with none; raises DataError if it is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; check data.data_dir / image_dir.")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def apply_exif_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an (H, W, ...) array so it displays upright, given the EXIF orientation tag
    (1-8). Same mapping as PIL.ImageOps.exif_transpose."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return np.swapaxes(img, 0, 1)
    if orientation == 6:
        return np.rot90(img, k=-1)
    if orientation == 7:
        return np.swapaxes(img[::-1, ::-1], 0, 1)
    if orientation == 8:
        return np.rot90(img, k=1)
    return img


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk, or None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, 1|2|3|4) float in [0, 1], RGB channel order -> (H, W, 3), alpha
    composited on white (the usual background for photos with transparency)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels in (2, 4):
        color, alpha = arr[..., :-1], arr[..., -1:]
        arr = color * alpha + (1.0 - alpha)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def _decode_16bit_png(path: Path) -> np.ndarray:
    # Pillow truncates 16-bit RGB PNGs to 8 bits, so these go through OpenCV.
    raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"cannot decode image {path}; re-export it as an 8- or 16-bit PNG or JPEG.")
    arr = raw.astype(np.float32) / (65535.0 if raw.dtype == np.uint16 else 255.0)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=2)  # BGR(A) -> RGB(A)
    return arr


def _decode_pil(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(im, dtype=np.float32) / 255.0
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "RGBa", "La"):
        return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str | Path) -> np.ndarray:
    """One photo as (H, W, 3) float32 in [0, 1], upright (EXIF orientation applied).

    Grayscale becomes 3 channels, alpha is composited on white, 16-bit files are scaled by
    65535. Raises DataError naming the file when it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
            if _png_bit_depth(path) == 16:
                arr = _decode_16bit_png(path)
            else:
                im.load()
                arr = _decode_pil(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the data folder.") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(
            f"cannot read image {path} ({e}); remove the file or replace it with a valid image."
        ) from None
    arr = _to_rgb(apply_exif_orientation(arr, orientation))
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) or (H, W) float image resized to (height, width): area averaging when
    shrinking (no aliasing), bicubic when enlarging."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    interp = cv2.INTER_AREA if width <= w and height <= h else cv2.INTER_CUBIC
    out = cv2.resize(img, (int(width), int(height)), interpolation=interp)  # cv2 takes (w, h)
    if img.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def same_aspect(size_a: tuple[int, int], size_b: tuple[int, int]) -> bool:
    """True when two (height, width) sizes have one aspect ratio, allowing 1% or one pixel of
    rounding in either side."""
    (ha, wa), (hb, wb) = size_a, size_b
    # Height b would have at a's aspect ratio, compared in pixels and in relative terms.
    hb_expected = wb * ha / wa
    return abs(hb_expected - hb) <= 1.0 or abs(hb_expected - hb) <= ASPECT_TOLERANCE * hb


def scaled_size(height: int, width: int, target_width: int | None, downscale: float) -> tuple:
    """Output (height, width) for a source size: `target_width` wins over `downscale`; the
    height keeps the aspect ratio, both rounded to whole pixels (at least 1)."""
    if target_width is not None:
        if target_width <= 0:
            raise DataError(f"data.target_width must be a positive integer, got {target_width}.")
        out_w = int(target_width)
        out_h = round(height * out_w / width)
    else:
        if downscale is None or downscale <= 0:
            raise DataError(f"data.downscale must be a positive number, got {downscale}.")
        out_w, out_h = round(width / downscale), round(height / downscale)
    return max(out_h, 1), max(out_w, 1)


def load_images(
    paths: list[Path],
    size: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
) -> np.ndarray:
    """Read photos into one (N, H, W, 3) float32 array at `size` = (height, width), or
    size(first_height, first_width) when callable, or the first image's size when None.
    Every image must share the first image's aspect ratio, else DataError naming both files
    and their sizes."""
    if not paths:
        raise DataError("no images to load; check data.data_dir and data.image_dir.")
    first = read_image(paths[0])
    first_size = first.shape[:2]
    if size is None:
        size = first_size
    elif callable(size):
        size = size(*first_size)
    height, width = size
    out = np.empty((len(paths), height, width, 3), dtype=np.float32)
    out[0] = resize_image(first, height, width)
    for i, path in enumerate(paths[1:], start=1):
        img = read_image(path)
        img_size = img.shape[:2]
        if not same_aspect(first_size, img_size):
            raise DataError(
                f"images differ in aspect ratio: {paths[0]} is {first_size[1]}x{first_size[0]} "
                f"but {path} is {img_size[1]}x{img_size[0]}; crop or remove the odd ones out."
            )
        out[i] = resize_image(img, height, width)
    return out
