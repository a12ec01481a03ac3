"""Digit images from files (PNG, JPEG, PGM, ...) prepared as MNIST was: 28x28, white on black."""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from trainer.errors import DataError

MAX_PIXELS = 4096 * 4096  # far beyond any digit drawing; refused before the pixels are decoded
BOX_FRACTION = 20 / 28  # MNIST fits each digit's bounding box in 20x20 of the 28x28 field
# Ink is what rises above this fraction of the peak: MNIST's own boxes do not change up to ~5%
# (12 of 255), and JPEG ringing around strokes stays below it.
INK_FRACTION = 0.05
MIN_CONTRAST = 8.0  # gray levels: less than this above the background is noise, not a stroke
# No MNIST training image has more than 40% of its 28x28 pixels over 127 (99.9% have under
# 30%), and 99.9% have under 16% inside solid blocks (ink with ink all round): more is a blob;
# and ink under 32 gray levels from the paper is a faint photo.
MAX_INK_COVER = 0.40
MAX_SOLID = 0.16
LOW_CONTRAST = 32.0
# Background flattening (photos): a border whose levels spread over more than this is unevenly
# lit; the closing that estimates the paper is this share of the image's longer side (strokes
# of a digit that fills a photo are under a tenth of it), measured on a copy ANALYSIS px wide.
UNEVEN_LEVELS = 24.0  # over the border of a 32x32 average of the image (noise averaged out)
MIN_PHOTO = 64
CLOSING_FRACTION = 0.15
ANALYSIS = 128
NOISE_SPREADS = 4.0  # what rises less than this many (robust) deviations above it is noise
PHOTO_INK = 0.25
# What Pillow and its format plugins raise for missing, unreadable, corrupt or truncated files.
_READ_ERRORS = (
    OSError,  # includes UnidentifiedImageError, FileNotFoundError, "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)


def load_digit(path: str | Path, size: int = 28, notes: list[str] | None = None) -> np.ndarray:
    """One image file as a uint8 (size, size) digit, white on black, centred as in MNIST.

    Any image Pillow reads works (PNG, JPEG, PGM/PPM, ...), of any size up to MAX_PIXELS, dark
    ink on a light background or light on dark. Raises DataError naming the file when it is
    missing, not an image, too large, or blank. `notes`: as prepare_digit's.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read, a device too
        raise DataError(f"{path}: not a regular file (a folder, pipe, socket or device); "
                        f"give an image file")
    return prepare_digit(_read_gray(path, str(path)), size, source=str(path), notes=notes)


def decode_digit(data: bytes, source: str = "image", size: int = 28,
                 notes: list[str] | None = None) -> np.ndarray:
    """An image file's bytes (an upload) prepared as `load_digit` prepares a file; `source`
    names it in errors."""
    return prepare_digit(_read_gray(io.BytesIO(data), source), size, source=source, notes=notes)


# what `image_files` takes from a folder (Pillow reads more, but a folder holds other files too)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".gif", ".tif",
                  ".tiff", ".webp")


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The paths, each folder replaced by its image files (by suffix), sorted by name."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: a folder with no image files "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(path)
    return files


def load_digits(paths: Iterable[str | Path], size: int = 28) -> np.ndarray:
    """Several image files as one uint8 (N, size, size) array, in order."""
    return stack_digits([load_digit(p, size) for p in paths], size)


def stack_digits(digits: list[np.ndarray], size: int = 28) -> np.ndarray:
    """Prepared digits as one uint8 (N, size, size) array; (0, size, size) for none."""
    return np.stack(digits) if digits else np.zeros((0, size, size), np.uint8)


def prepare_digit(gray: np.ndarray, size: int = 28, source: str = "image",
                  notes: list[str] | None = None) -> np.ndarray:
    """A grayscale array (0..255, any size) as MNIST prepared its digits.

    Background from the border, inverted if the ink is darker, cropped to the ink's bounding
    box, scaled so its longer side is 20/28 of `size`, pasted so the centre of mass is at the
    centre. `source` names the image in the error raised when it is blank; `notes`, if given,
    gets `unlike_training`'s reasons.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    ink = _ink(flatten_background(np.asarray(gray, dtype=np.float64)))
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise DataError(f"{source}: no digit found: the image is blank")
    mask = ink > INK_FRACTION * peak
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    scale = round(size * BOX_FRACTION) / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = _fit_box(crop * (255.0 / peak), scale)
    if not digit.any():  # e.g. two specks far apart: each shrinks to less than one gray level
        raise DataError(f"{source}: no digit found: the marks vanish when scaled to {size} px")
    digit = _centre(digit, size)
    if notes is not None:
        notes += unlike_training(digit, peak, source)
    return digit


def unlike_training(digit: np.ndarray, contrast: float, source: str) -> list[str]:
    """Why a prepared digit is unlike MNIST's (the answer for it then says little), if it is:
    ink covering most of the frame, or a very low contrast (`contrast`: the ink's peak, in
    gray levels above the background, before it was stretched to 255)."""
    found = []
    ink = digit > 127
    inside = np.pad(ink, 1)  # ink whose 8 neighbours are all ink: inside a block, not a stroke
    solid = np.logical_and.reduce([inside[dy:dy + ink.shape[0], dx:dx + ink.shape[1]]
                                   for dy in range(3) for dx in range(3)])
    if ink.mean() > MAX_INK_COVER or solid.mean() > MAX_SOLID:
        found.append(f"{source}: the ink covers {ink.mean():.0%} of the {digit.shape[0]}x"
                     f"{digit.shape[1]} image the network sees, {solid.mean():.0%} of it in "
                     f"solid blocks (MNIST's strokes: at most {MAX_INK_COVER:.0%} and "
                     f"{MAX_SOLID:.0%}): a blob, not a digit; crop the image to the digit on a "
                     f"plain background")
    if contrast < LOW_CONTRAST:
        found.append(f"{source}: very low contrast: the ink stands {contrast:.0f} gray levels "
                     f"out from the background (MNIST's: 255), and the noise is magnified "
                     f"with it")
    return found


def _read_gray(path: Path | BinaryIO, name: str) -> np.ndarray:
    """The image as float64 gray levels 0..255, transparency flattened onto its background."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata it skips (EXIF, TIFF tags): the pixels are
            # what we need; and about huge sizes, which our own smaller limit refuses below.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _decode(image, name)
    except UnidentifiedImageError as e:
        raise DataError(f"{name}: cannot read image: not an image format Pillow knows") from e
    except _READ_ERRORS as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{name}: cannot read image: {reason or type(e).__name__}") from e


def _decode(image: Image.Image, path: str) -> np.ndarray:
    width, height = image.size
    if width * height > MAX_PIXELS:  # known from the header, before the pixels are decoded
        raise DataError(
            f"{path}: image too large: {width}x{height} pixels, at most {MAX_PIXELS} "
            "(4096x4096) are read"
        )
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float64)
        return _flatten_alpha(gray, np.asarray(rgba.getchannel("A"), dtype=np.float64))
    if image.mode == "F":  # floating-point (a TIFF, say): its own range, whatever it is
        return _by_range(np.asarray(image, dtype=np.float64), path)
    if image.mode.startswith("I"):  # 16-bit PNG/PGM: Pillow's convert("L") would clip
        pixels = np.asarray(image, dtype=np.float64)
        return pixels / 257.0 if pixels.min() >= 0 and pixels.max() <= 65535 else (
            _by_range(pixels, path))
    return np.asarray(image.convert("L"), dtype=np.float64)


def _by_range(pixels: np.ndarray, path: str) -> np.ndarray:
    """Pixels of any range as 0..255 gray levels, the lowest black and the highest white."""
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: cannot read image: pixel values that are not finite numbers")
    low, high = float(pixels.min()), float(pixels.max())
    return (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)


def _ring(a: np.ndarray) -> np.ndarray:
    """The outer ring of pixels (first and last row and column), flattened."""
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite on the image's background: the border's colour where the border is opaque,
    else (a drawing on a transparent sheet) the colour farthest from the ink's."""
    a = alpha / 255.0
    ring_a, ring_g = _ring(a), _ring(gray)
    opaque = ring_a >= 0.5
    if opaque.mean() >= 0.5:
        background = float(np.median(ring_g[opaque]))
    else:
        ink = float((gray * a).sum() / max(float(a.sum()), 1e-12))
        background = 255.0 if ink < 127.5 else 0.0
    return gray * a + background * (1.0 - a)


def _ink(gray: np.ndarray) -> np.ndarray:
    """How far each pixel stands out from the background (the border's median), >= 0.

    Inverted when the background is light, i.e. nearer the image's lightest level than its
    darkest: then black on white and white on black give the same ink.
    """
    background = float(np.median(_ring(gray)))
    lo, hi = float(gray.min()), float(gray.max())
    ink = background - gray if background - lo > hi - background else gray - background
    return np.maximum(ink, 0.0)


def flatten_background(gray: np.ndarray) -> np.ndarray:
    """Uneven lighting taken out: a photo of a digit on paper, lit from one side and shadowed,
    as if the paper were evenly lit. The paper's own level at each pixel is estimated by a
    morphological closing (opening, for light ink on dark) wider than any stroke, on a copy at
    most ANALYSIS px wide, blurred and scaled back up; each pixel's difference from it is the
    ink. An image the size of a drawing (under MIN_PHOTO px a side) or whose border is evenly
    lit, noise averaged out (a drawing, a scan), is returned as it is."""
    height, width = gray.shape
    if min(height, width) < MIN_PHOTO:
        return gray
    image = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8))
    coarse = _ring(np.asarray(image.resize((32, 32), Image.Resampling.BOX), dtype=np.float64))
    if np.percentile(coarse, 95) - np.percentile(coarse, 5) < UNEVEN_LEVELS:
        return gray
    shrink = min(1.0, ANALYSIS / max(height, width))
    small = image.resize(
        (max(1, round(width * shrink)), max(1, round(height * shrink))), Image.Resampling.BOX)
    k = max(3, round(CLOSING_FRACTION * max(small.size)) | 1)  # odd, wider than a stroke
    light = _ink_is_dark(np.asarray(small, dtype=np.float64))
    first, then = (ImageFilter.MaxFilter, ImageFilter.MinFilter) if light else (
        ImageFilter.MinFilter, ImageFilter.MaxFilter)
    paper = small.filter(first(k)).filter(then(k)).filter(ImageFilter.GaussianBlur(1))
    paper_level = np.asarray(paper.resize((width, height), Image.Resampling.BILINEAR),
                             dtype=np.float64)
    ink = np.maximum(paper_level - gray if light else gray - paper_level, 0.0)
    # the paper's grain and the camera's noise: what most pixels show, and its spread
    median = float(np.median(ink))
    floor = median + NOISE_SPREADS * 1.4826 * float(np.median(np.abs(ink - median)))
    ink = np.maximum(ink - floor, 0.0)
    # what the lighting's estimate leaves where it bends fastest (a shadow's edge at the
    # border) is faint next to a stroke: below PHOTO_INK of the strongest ink, it goes too
    ink = np.maximum(ink - PHOTO_INK * float(ink.max()), 0.0)
    return 255.0 - ink if light else ink


def _ink_is_dark(levels: np.ndarray) -> bool:
    """Dark ink on light paper (or light on dark), under uneven light: with the lighting's
    plane (a + b x + c y, least squares) taken out, the ink is the longer tail."""
    yy, xx = np.mgrid[0:levels.shape[0], 0:levels.shape[1]]
    basis = np.stack([np.ones(levels.size), xx.ravel(), yy.ravel()], axis=1)
    plane = basis @ np.linalg.lstsq(basis, levels.ravel(), rcond=None)[0]
    rest = levels.ravel() - plane
    return -float(np.percentile(rest, 0.5)) > float(np.percentile(rest, 99.5))


def _fit_box(crop: np.ndarray, scale: float) -> np.ndarray:
    """The crop scaled by `scale` (anti-aliased, aspect kept), as uint8 levels."""
    height, width = crop.shape
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(crop.astype(np.float32)).resize(new_size, Image.Resampling.LANCZOS)
    # quantise before centring, so the centre of mass measured is the one of the result
    return np.clip(np.rint(np.asarray(resized, dtype=np.float64)), 0, 255).astype(np.uint8)


def _centre(digit: np.ndarray, size: int) -> np.ndarray:
    """`digit` pasted in a black size x size canvas, shifted by the rounded centre-of-mass
    offset so the centre of mass is within half a pixel of (size/2, size/2), as in MNIST.

    As in MNIST, a very lopsided digit may be pushed partly off the canvas.
    """
    weights = digit.astype(np.float64)
    total = float(weights.sum())
    cy = float(weights.sum(axis=1) @ np.arange(digit.shape[0])) / total
    cx = float(weights.sum(axis=0) @ np.arange(digit.shape[1])) / total
    top, left = math.floor(size / 2 - cy + 0.5), math.floor(size / 2 - cx + 0.5)
    canvas = np.zeros((size, size), np.uint8)
    y0, y1 = max(top, 0), min(top + digit.shape[0], size)
    x0, x1 = max(left, 0), min(left + digit.shape[1], size)
    canvas[y0:y1, x0:x1] = digit[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas
