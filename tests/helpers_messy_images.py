"""Image files a new user's folder really holds: every Pillow mode, EXIF-rotated JPEGs, broken files.

`save_in_mode(gray, mode, stem)` writes a uint8 grayscale pattern in the given Pillow mode, in a file format that
keeps that mode, scaling 16-bit / 32-bit / float values to their full range, so a correct loader returns the same
pattern (and a loader that clips or saturates loses it).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# mode -> file suffix that stores it (HSV has no file format: it is tested in memory only)
FILE_MODES = {
    "1": ".png",
    "L": ".png",
    "LA": ".png",
    "P": ".png",
    "PA": ".tif",
    "RGBA": ".png",
    "CMYK": ".jpg",
    "YCbCr": ".tif",
    "LAB": ".tif",
    "I": ".tif",
    "I;16": ".png",
    "I;16B": ".tif",
    "F": ".tif",
}


def in_mode(gray: np.ndarray, mode: str) -> Image.Image:
    """The uint8 pattern `gray` as an image of `mode` holding the same picture."""
    g = gray.astype(np.float64)
    if mode.startswith("I;16"):
        # the full 16-bit range; built from bytes (Pillow's I;16 -> I;16B conversion clips to 255)
        order = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, gray.shape[::-1], (g * 257).astype(order).tobytes())
    if mode == "I":
        return Image.fromarray((g * 257).astype(np.int32))  # 16-bit values held in a 32-bit image
    if mode == "F":
        return Image.fromarray((g / 255).astype(np.float32))  # floats in 0..1
    rgb = Image.fromarray(gray).convert("RGB")
    if mode in ("LA", "RGBA", "PA"):
        alpha = Image.new("L", rgb.size, 255)
        base = rgb.convert("L" if mode == "LA" else "RGB")
        out = base.copy()
        out.putalpha(alpha)
        return out.convert(mode) if mode == "PA" else out
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


def save_in_mode(gray: np.ndarray, mode: str, stem: Path) -> Path:
    path = stem.with_suffix(FILE_MODES[mode])
    im = in_mode(gray, mode)
    im.save(path, quality=95) if path.suffix == ".jpg" else im.save(path)
    return path


def exif_rotated_jpeg(gray: np.ndarray, path: Path) -> Path:
    """A JPEG whose pixels are stored rotated, with EXIF orientation 6 saying how to turn them upright."""
    stored = Image.fromarray(gray).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": undoes the ROTATE_90 (counter-clockwise) above
    stored.save(path, quality=95, exif=exif.tobytes())
    return path


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A small PNG whose header declares width x height pixels (10 gigapixels by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def broken_files(folder: Path) -> dict[str, Path]:
    """A zero-byte, a truncated and a not-an-image file, and a decompression bomb, all with image suffixes."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    good.unlink()
    out = {
        "empty": folder / "empty.jpg",
        "truncated": folder / "truncated.png",
        "not_image": folder / "notes.png",
        "bomb": bomb_png(folder / "bomb.png"),
    }
    out["empty"].write_bytes(b"")
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["not_image"].write_text("these are my notes, saved with the wrong suffix\n")
    return out
