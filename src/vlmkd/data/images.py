"""Opening one sample's image, whatever the manifest's backing (files under a root, or an array source).

Files go through `vlmkd.data.decode.load_image` (the one image-file loader: size cap, EXIF orientation, every
Pillow mode, downscale); arrays come from `vlmkd.data.arrays`; images inside containers (WebDataset shards,
Parquet, `datasets` folders: a manifest root "wds:...", "parquet:...", "hf:...") are read by
`vlmkd.data.sharded.reader` and decoded by the same loader from their bytes. Path helpers are re-exported from
`vlmkd.data.paths` for the modules that import them from here.
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from vlmkd.data import parquet as _parquet  # noqa: F401  (registers the parquet and hf readers)
from vlmkd.data import shards as _shards  # noqa: F401  (registers the wds reader)
from vlmkd.data.arrays import load_array_source
from vlmkd.data.decode import DEFAULT_MAX_PIXELS, check_image, load_image, load_image_bytes, open_checked
from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import IMAGE_EXTENSIONS, confined_path, is_image_file
from vlmkd.data.sharded import reader, scheme_of
from vlmkd.errors import DataError
from vlmkd.utils.progress import progress

__all__ = [
    "IMAGE_EXTENSIONS",
    "array_source",
    "check_image",
    "confined_path",
    "fetch_bytes",
    "is_image_file",
    "load_image",
    "open_image",
    "sample_bytes",
    "sample_digests",
    "sample_path",
    "unreadable_files",
]


@functools.lru_cache(maxsize=8)
def _array_source(fmt: str, root: str, split: str) -> np.ndarray:
    return load_array_source(fmt, root, split)


def array_source(manifest: Manifest) -> np.ndarray:
    s = manifest.source
    return _array_source(s["format"], s.get("root", manifest.root), s.get("array_split", manifest.split))


def open_image(
    manifest: Manifest,
    i: int,
    as_array: bool = False,
    *,
    mode: str | None = None,
    max_side: int | None = None,
    shorter_side: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fetched: tuple[bytes, str] | BaseException | None = None,
) -> Image.Image | np.ndarray:
    """The i-th sample as a PIL image (RGB or L). Unreadable files raise DataError naming the file.

    as_array: array-backed datasets (CIFAR, Fashion-MNIST) return their uint8 H x W (x 3) row as it is, which
    transforms that accept arrays use to skip a PIL round trip. mode: "RGB", "L" or None (keep gray as "L").
    max_side / shorter_side / max_pixels: see `load_image` (files only; array rows are small and decoded).
    fetched: this sample's entry of `fetch_bytes` (its bytes, or the failure to raise), read beforehand.
    """
    if manifest.indices is not None:
        arr = np.ascontiguousarray(array_source(manifest)[int(manifest.indices[i])])
        if as_array:
            return arr
        im = Image.fromarray(arr)
        return im.convert(mode) if mode and im.mode != mode else im
    opts = {"mode": mode, "max_side": max_side, "shorter_side": shorter_side, "max_pixels": max_pixels}
    if scheme_of(manifest.root):
        if isinstance(fetched, BaseException):
            raise fetched
        return load_image_bytes(*(fetched or sample_bytes(manifest, i)), **opts)
    return load_image(confined_path(manifest.root, manifest.paths[i]), **opts)


def sample_bytes(manifest: Manifest, i: int) -> tuple[bytes, str]:
    """(encoded image bytes, a name for messages) of sample i of a container-backed manifest (shards, Parquet)."""
    return reader(manifest.root).read(manifest.paths[i])


def fetch_bytes(manifest: Manifest, idx: list[int]) -> dict[int, tuple[bytes, str] | BaseException]:
    """sample -> (bytes, name) or its failure, for samples `idx` of a container whose reader reads many at once
    (shards: on object storage one round trip for them all, not one per image); {} for any other manifest, whose
    samples `open_image` reads one by one."""
    if manifest.indices is not None or not scheme_of(manifest.root):
        return {}
    r = reader(manifest.root)
    if not hasattr(r, "read_many"):
        return {}
    return dict(zip(idx, r.read_many([manifest.paths[i] for i in idx])))


def sample_digests(manifest: Manifest, idx: np.ndarray, workers: int = 8) -> np.ndarray:
    """sha256 (S32) of the image bytes of rows `idx` of a container-backed manifest, zeros where unreadable: the
    same content keys the files had. Shards hash a whole shard per sequential read, cached; others in threads."""
    r = reader(manifest.root)
    if hasattr(r, "digests"):
        return r.digests([manifest.paths[int(i)] for i in idx])

    def one(i: int) -> bytes:
        try:
            return hashlib.sha256(sample_bytes(manifest, int(i))[0]).digest()
        except DataError:
            return b"\0" * 32

    with ThreadPoolExecutor(workers) as pool:
        return np.array(list(pool.map(one, idx)), dtype="S32").reshape(len(idx))


def sample_path(manifest: Manifest, i: int) -> str:
    """How a report names sample i: its file path under the root, else its id. Samples inside shards or Parquet
    are named by their key (the original relative path of packed files), as the bad-image lists key them."""
    return manifest.paths[i] if manifest.paths is not None else str(manifest.ids[i])


def unreadable_files(
    manifests: dict[str, Manifest], max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: bool = False
) -> dict[str, str]:
    """{path relative to the root: one-line reason} for every file of the manifests that is not a readable image.

    Header-level check by default (cheap: size cap, format identified); `decode` decodes every file too (at
    reduced scale where the format allows), which also finds truncated pixel data. Files are checked in threads:
    on network storage the time is spent waiting for reads.
    """

    todo = {}
    for m in manifests.values():
        for rel in m.paths or ():
            todo.setdefault(rel, m.root)

    def reason(item: tuple[str, str]) -> str | None:
        try:
            if scheme_of(item[1]):  # inside a container: the same two levels of check on the member's bytes
                data, name = reader(item[1]).read(item[0])
                if decode:
                    load_image_bytes(data, name, max_side=64, max_pixels=max_pixels)
                else:
                    open_checked(name, max_pixels, data).close()
            else:
                check_image(confined_path(item[1], item[0]), max_pixels, decode=decode)
        except DataError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(8) as pool:
        found = progress(pool.map(reason, todo.items()), total=len(todo), desc="checking images", unit="file")
        return {rel: r for rel, r in zip(todo, found) if r is not None}
