"""Opening image files: the one function every stage uses (data stats, training, describe, teach, predict).

`load_image(path)` checks the declared size before any pixel is decoded (a decompression bomb is refused from
its header), decodes at a reduced scale where the format allows (JPEG `draft`), applies the EXIF orientation,
and converts every Pillow mode to "RGB" or "L" without losing the dynamic range of 16-bit and float images.
Every failure is a `DataError` whose one-line message names the file.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmkd.errors import DataError

# Pillow's own default (about 89.5 megapixels); data.max_image_pixels overrides it.
DEFAULT_MAX_PIXELS = 89_478_485
# Transparent pixels are composited over white: what a viewer shows, and what a VLM would be shown.
BACKGROUND = 255
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# Our own check below replaces Pillow's warning; its hard error still ends as a DataError naming the file.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def load_image(
    path: str | Path,
    *,
    mode: str | None = None,
    max_side: int | None = None,
    shorter_side: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """The image at `path`, decoded, upright (EXIF orientation applied) and in `mode`.

    mode: "RGB", "L", or None for "L" when the file is grayscale (1, L, LA, I, I;16*, F) and "RGB" otherwise.
    max_side: downscale (never upscale) so the longer side is at most this, e.g. a VLM's input size.
    shorter_side: shrink large images towards this shorter side, never below it (what a training crop needs):
        JPEG decodes at the 1/2 .. 1/8 scale that stays above it; any image still over twice it is resized to it.
    max_pixels: refuse files whose header declares more pixels (None: no limit).
    """
    return _decode(Path(path), None, mode, max_side, shorter_side, max_pixels)


def load_image_bytes(
    data: bytes,
    name: str,
    *,
    mode: str | None = None,
    max_side: int | None = None,
    shorter_side: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """`load_image` for an image held in memory (a tar member, a Parquet cell); `name` (e.g. "shard.tar:key")
    is what an error message names."""
    return _decode(name, data, mode, max_side, shorter_side, max_pixels)


def _decode(p: Path | str, data: bytes | None, mode, max_side, shorter_side, max_pixels) -> Image.Image:
    if mode not in (None, "RGB", "L"):
        raise ValueError(f"mode must be 'RGB', 'L' or None, got {mode!r}")
    try:
        with open_checked(p, max_pixels, data) as im:
            target = _target_size(im.size, max_side, shorter_side)
            if target != im.size and im.format == "JPEG":
                im.draft(im.mode, target)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale, still >= target
            im.load()
            out = to_rgb_or_l(_upright(im), mode)
    except DataError:
        raise
    except Exception as e:  # any decoder failure (OSError, SyntaxError, struct.error, ...) is a bad file
        raise DataError(describe_failure(p, e, data)) from None
    # shorter_side is a floor to shrink towards: a JPEG decoded at reduced scale is close enough (the transform
    # resizes anyway, and a second resize would cost as much as the decode saved); others shrink when 2x larger
    if shorter_side and min(out.size) <= 2 * shorter_side:
        shorter_side = None
    target = _target_size(out.size, max_side, shorter_side)
    return out.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0) if target != out.size else out


def _upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; a malformed EXIF block leaves it as stored (the pixels
    themselves are fine, so the file is not a bad image)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im.copy()


def open_checked(
    path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> Image.Image:
    """Open `path` (or the in-memory `data`, named `path`) reading its header only, refusing a declared size
    above `max_pixels` (nothing decoded yet)."""
    if max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's hard stop is 2x its limit; ours is the one to apply
    try:
        im = Image.open(path if data is None else io.BytesIO(data))
    except Exception as e:
        raise DataError(describe_failure(path, e, data)) from None
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        im.close()
        limit = f"{w} x {h} = {w * h:,} pixels, above data.max_image_pixels={max_pixels:,}"
        raise DataError(_too_big(repr(str(path)), limit))
    return im


def check_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: bool = False) -> None:
    """Raise DataError if `path` is not a readable image: header only by default (cheap), or a full decode at
    reduced scale when `decode` (also finds truncated pixel data behind an intact header)."""
    if decode:
        load_image(path, max_side=64, max_pixels=max_pixels)
        return
    with open_checked(Path(path), max_pixels):
        pass


def describe_failure(path: Path | str, e: BaseException, data: bytes | None = None) -> str:
    """One line naming the file (or the in-memory image's name) and what is wrong with it."""
    where = repr(str(path))
    if isinstance(e, FileNotFoundError):
        return f"image {where} does not exist; fix the list file or the dataset root"
    if isinstance(e, IsADirectoryError):
        return f"image {where} is a folder, not an image file"
    if isinstance(e, Image.DecompressionBombError):  # Pillow's own hard stop (2x its limit) came first
        n = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(n.group(1)):,} pixels" if n else "more pixels than Pillow allows"
        return _too_big(where, declared)
    hint = "remove it or set data.on_bad_image=skip"
    if (len(data) == 0) if data is not None else (Path(path).is_file() and Path(path).stat().st_size == 0):
        return f"image {where} is empty (0 bytes); {hint}"
    if isinstance(e, UnidentifiedImageError):
        return f"image {where} is corrupt or truncated, or not an image (Pillow cannot identify it); {hint}"
    return f"image {where} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]}); {hint}"


def _too_big(where: str, declared: str) -> str:
    return (
        f"image {where} declares {declared} (a decompression bomb or a huge scan); raise "
        "data.max_image_pixels if it is real, or set data.on_bad_image=skip"
    )


def _target_size(size: tuple[int, int], max_side: int | None, shorter_side: int | None) -> tuple[int, int]:
    w, h = size
    scale = 1.0
    if max_side:
        scale = min(scale, max_side / max(w, h))
    if shorter_side:
        scale = min(scale, shorter_side / min(w, h))
    if scale >= 1.0:
        return size
    return max(1, round(w * scale)), max(1, round(h * scale))


# ------------------------------------------------------------------------------------------ mode conversion


def to_rgb_or_l(im: Image.Image, mode: str | None = None) -> Image.Image:
    """Convert any Pillow mode to "RGB" or "L" (mode None: "L" for grayscale modes, else "RGB").

    16-bit and 32-bit integer and float images are rescaled to 0..255 from their range (below), never clipped;
    alpha is composited over a white background; palette, CMYK, YCbCr, LAB and HSV go through Pillow's
    conversions.
    """
    target = mode or ("L" if im.mode in GRAY_MODES else "RGB")
    if im.mode == target:
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _wide_to_8bit(im).convert(target)
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (im.mode == "P" and "transparency" in im.info):
        return _flatten_alpha(im).convert(target)
    if im.mode in ("LAB", "HSV") and target == "L":
        return im.convert("RGB").convert("L")
    return im.convert(target)


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")  # premultiplied (RGBa / La) and palette alpha are undone by the conversion
    background = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def wide_range(mode: str, lo: float, hi: float) -> tuple[float, float]:
    """The value range mapped to 0..255 for a 16-bit, 32-bit integer or float image with values in [lo, hi].

    16-bit modes: 0..65535, what a 16-bit sample means (PNG, TIFF). "I" (32-bit): 0..255 if the values fit
    (8-bit data held in an int image), else 0..65535 if they fit (how 16-bit files used to open), else the
    image's own min..max. "F": 0..1 if the values fit (the usual float convention), else 0..255 if they fit,
    else the image's own min..max.
    """
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    spans = ((0.0, 1.0), (0.0, 255.0)) if mode == "F" else ((0.0, 255.0), (0.0, 65535.0))
    for a, b in spans:
        if lo >= a and hi <= b:
            return a, b
    return lo, hi if hi > lo else lo + 1.0


def _wide_to_8bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    a, b = wide_range(im.mode, lo, hi)
    scaled = (np.nan_to_num(arr, nan=a, posinf=b, neginf=a) - a) * (255.0 / (b - a))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
