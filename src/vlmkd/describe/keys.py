"""Content keys of images (sha256 of the bytes) and the per-image sampling seed.

A description is stored under the content key of its image, not its manifest row, so adding, removing or
renaming files re-describes only what changed. File hashes are cached per dataset root in small Parquet parts
(`<describe.output>/image_hashes/<root key>/*.parquet`, keyed by relative path, size and mtime), so a rerun over a
million files costs one `stat` per file, not one read. Array-backed datasets hash each row's bytes (cheap).

Keys are held as a numpy `S32` array (raw digests): no Python object per image.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vlmkd.data.images import array_source, confined_path, sample_digests
from vlmkd.data.manifest import Manifest
from vlmkd.data.sharded import scheme_of
from vlmkd.utils.io import artifact_key, atomic_path

MISSING = b"\0" * 32  # the key of a file that cannot be read at all (recorded as skipped, never described)
_PARTS_BEFORE_COMPACT = 16


def sample_seed(seed: int, image_key: bytes, k: int) -> int:
    """The seed of description k of one image: a function of (seed, content, k), never of batching or order."""
    h = hashlib.sha256(
        int(seed).to_bytes(8, "little", signed=True) + bytes(image_key) + int(k).to_bytes(4, "little")
    )
    return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


def hex_key(key: bytes) -> str:
    return bytes(key).hex()


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _array_keys(manifest: Manifest, idx: np.ndarray) -> np.ndarray:
    src = array_source(manifest)
    out = np.empty(len(idx), dtype="S32")
    for j, i in enumerate(idx):
        row = np.ascontiguousarray(src[int(manifest.indices[i])])
        out[j] = hashlib.sha256(repr(row.shape).encode() + row.tobytes()).digest()
    return out


class HashCache:
    """(relative path, size, mtime_ns) -> sha256, for one dataset root; appended in parts, read vectorised."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def lookup(self, paths: list[str], stats: np.ndarray) -> np.ndarray:
        """Cached digests for `paths` whose size and mtime still match `stats` (N x 2 int64); MISSING elsewhere."""
        import pyarrow as pa
        import pyarrow.compute as pc

        out = np.full(len(paths), MISSING, dtype="S32")
        table = self._read()
        if table is None or not len(paths):
            return out
        pos = pc.fill_null(pc.index_in(pa.array(paths, pa.string()), table["path"]), -1).to_numpy()
        hit = pos >= 0
        rows = np.where(hit, pos, 0).astype(np.int64)
        size = table["size"].to_numpy()[rows]
        mtime = table["mtime_ns"].to_numpy()[rows]
        digests = _fixed(table["digest"])[rows]
        hit &= (size == stats[:, 0]) & (mtime == stats[:, 1])
        out[hit] = digests[hit]
        return out

    def add(self, paths: list[str], stats: np.ndarray, digests: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.folder is None or not len(paths):
            return
        t = pa.table(
            {
                "path": pa.array(paths, pa.string()),
                "size": pa.array(stats[:, 0]),
                "mtime_ns": pa.array(stats[:, 1]),
                "digest": _arrow_keys(digests),
            }
        )
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(self.folder / name) as tmp:
            pq.write_table(t, tmp)
        self._compact()

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("*.parquet")) if self.folder and self.folder.is_dir() else []

    def _read(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for p in self._parts():
            try:
                tables.append(pq.read_table(p))
            except (
                FileNotFoundError,
                OSError,
                pa.ArrowInvalid,
            ):  # compacted away or half-written: a cache miss
                continue
        if not tables:
            return None
        t = pa.concat_tables(tables)
        # the newest entry of a path wins: keep the last occurrence
        rev = t.take(pa.array(np.arange(len(t))[::-1]))
        first = _first_occurrence(rev["path"])
        return rev.take(pa.array(first))

    def _compact(self) -> None:
        import pyarrow.parquet as pq

        parts = self._parts()
        if len(parts) <= _PARTS_BEFORE_COMPACT:
            return
        table = self._read()
        with atomic_path(self.folder / f"{time.time_ns():020d}-compact.parquet") as tmp:
            pq.write_table(table, tmp)
        for p in parts:  # every row of these parts is in the compacted file
            p.unlink(missing_ok=True)


def _first_occurrence(col) -> np.ndarray:
    import pyarrow.compute as pc

    codes = pc.dictionary_encode(col).combine_chunks().indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    return np.sort(first)


def _fixed(col) -> np.ndarray:
    """An Arrow binary(32) column as a numpy S32 array, without a Python object per row."""
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if len(arr) == 0:
        return np.empty(0, dtype="S32")
    buf = arr.buffers()[1]
    return np.frombuffer(buf, dtype="S32", count=len(arr) + arr.offset)[arr.offset :].copy()


def _arrow_keys(keys: np.ndarray):
    import pyarrow as pa

    keys = np.ascontiguousarray(keys, dtype="S32")
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(32), len(keys), [None, pa.py_buffer(keys.tobytes())]
    )


def cache_folder(output: str | Path, manifest: Manifest) -> Path:
    root = str(Path(manifest.root).resolve()) if manifest.root else ""
    return Path(output) / "image_hashes" / artifact_key({"root": root})[:16]


def image_keys(
    manifest: Manifest, idx: np.ndarray | list[int] | None = None, cache: Path | None = None, workers: int = 8
) -> np.ndarray:
    """Content keys (S32) of the manifest rows `idx` (default: all); MISSING where the file cannot be read."""
    idx = np.arange(len(manifest)) if idx is None else np.asarray(idx, dtype=np.int64)
    if manifest.indices is not None:
        return _array_keys(manifest, idx)
    if scheme_of(manifest.root):  # inside shards / Parquet: the member's bytes, the same key as the file's
        return sample_digests(manifest, idx, workers)

    paths = [manifest.paths[i] for i in idx]
    full = [confined_path(manifest.root, p) for p in paths]
    stats = np.zeros((len(idx), 2), dtype=np.int64)
    for j, p in enumerate(full):
        try:
            st = p.stat()
            stats[j] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stats[j] = (-1, -1)
    hc = HashCache(cache)
    keys = hc.lookup(paths, stats)
    todo = np.nonzero((keys == MISSING) & (stats[:, 0] >= 0))[0]

    def one(j: int) -> bytes:
        try:
            return _file_digest(full[j])
        except OSError:
            return MISSING

    with ThreadPoolExecutor(workers) as pool:
        for j, d in zip(todo, pool.map(one, todo)):
            keys[j] = d
    fresh = todo[keys[todo] != MISSING]
    hc.add([paths[j] for j in fresh], stats[fresh], keys[fresh])
    return keys
