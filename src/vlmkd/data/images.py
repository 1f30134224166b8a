"""Opening one sample's image, whatever the manifest's backing (files under a root, or an array source)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmkd.data.manifest import Manifest
from vlmkd.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def confined_path(root: str | Path, rel: str) -> Path:
    """Resolve `rel` under `root`, refusing paths that escape it (absolute paths, `..`, symlinked escapes)."""
    root_r = Path(root).resolve()
    p = (root_r / rel).resolve()
    if p != root_r and root_r not in p.parents:
        raise DataError(
            f"path {rel!r} escapes the dataset root {str(root)!r}; list files must name files under the root"
        )
    return p


@functools.lru_cache(maxsize=8)
def _array_source(fmt: str, root: str, split: str) -> np.ndarray:
    from vlmkd.data.formats import load_array_source

    return load_array_source(fmt, root, split)


def array_source(manifest: Manifest) -> np.ndarray:
    s = manifest.source
    return _array_source(s["format"], s.get("root", manifest.root), s.get("array_split", manifest.split))


def open_image(manifest: Manifest, i: int, as_array: bool = False) -> Image.Image | np.ndarray:
    """The i-th sample as a PIL image (RGB or L). Corrupt or missing files raise DataError naming the file.

    as_array: array-backed datasets (CIFAR, Fashion-MNIST) return their uint8 H x W (x 3) row as it is, which
    transforms that accept arrays use to skip a PIL round trip.
    """
    if manifest.indices is not None:
        arr = np.ascontiguousarray(array_source(manifest)[int(manifest.indices[i])])
        return arr if as_array else Image.fromarray(arr)
    path = confined_path(manifest.root, manifest.paths[i])
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
    except FileNotFoundError:
        raise DataError(
            f"image {str(path)!r} does not exist; fix the list file or the dataset root"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"image {str(path)!r} is corrupt or truncated ({type(e).__name__}); "
            "remove it or set data.on_bad_image=skip"
        ) from None


def is_image_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)
