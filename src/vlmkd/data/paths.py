"""File-system helpers shared by the dataset formats and the image loader (imports nothing else from vlmkd.data,
so every data module can use them without an import cycle)."""

from __future__ import annotations

import os
from pathlib import Path

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


def is_image_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def require_dir(root: str | None, what: str) -> Path:
    if not root:
        raise DataError(f"data.root is not set; give the folder that holds the {what}")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DataError(f"dataset folder {str(p)!r} does not exist; check data.root")
    return p


def read_class_names(path: str | Path, root: Path | None = None) -> list[str]:
    p = Path(path)
    if not p.is_absolute() and root is not None and not p.is_file():
        p = root / p
    if not p.is_file():
        raise DataError(f"class names file {str(path)!r} not found")
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
