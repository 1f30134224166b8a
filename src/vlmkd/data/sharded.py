"""Map-style access to images kept inside containers (WebDataset tar shards, Parquet files, Arrow files).

A manifest over such a container is an ordinary manifest: ids, labels, class names and `paths` (each sample's
stable key: the original relative path when the container was packed from files by `vlmkd data pack`, else the
container's own key). Only its `root` differs: "<scheme>:<spec>", e.g. "wds:/data/train-{000..009}.tar". The root
is where the content lives, and `Manifest.key()` leaves it out, so a manifest read back from shards packed from a
folder has the folder's manifest key, and every artifact keyed by it (descriptions, teacher features, embeddings)
stays valid.

Reading one sample looks its key up in a per-process index (a sorted array of 64-bit key hashes, no Python object
per sample) and reads only that sample's bytes: a tar member by offset, or a Parquet row group / Arrow row. So the
existing samplers (DDP-aware, class-balanced), seeded per-sample augmentation and mid-epoch resume apply unchanged:
an epoch over shards is a permutation of the manifest, like webdataset's own indexed `wids`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlmkd.errors import DataError

SCHEMES = ("wds", "parquet", "hf")
_READERS: dict[str, Callable[[str], Any]] = {}  # scheme -> factory(spec) of a reader with read(path)
# root -> reader. A forked loader worker inherits the parent's reader (its index, memory-mapped tables) copy-on-
# write; what must not cross a fork, open file descriptors, is reopened per process (`ByteReader`).
_OPEN: dict[str, Any] = {}
_LOCK = threading.Lock()
HINT = "set data.on_bad_image=skip to skip it"


def register_reader(scheme: str, factory: Callable[[str], Any]) -> None:
    _READERS[scheme] = factory


def container_root(scheme: str, spec: str) -> str:
    return f"{scheme}:{spec}"


def scheme_of(root: str | None) -> str | None:
    """The container scheme of a manifest root ("wds", "parquet", "hf"), or None for a folder of files."""
    head = str(root or "").split(":", 1)[0]
    return head if head in SCHEMES and ":" in str(root) else None


def reader(root: str) -> Any:
    """The reader of the container `root`, built once per process (and inherited by forked loader workers)."""
    key = root
    with _LOCK:
        if key not in _OPEN:
            scheme, spec = root.split(":", 1)
            if scheme not in _READERS:
                raise DataError(f"no reader for {scheme!r} containers; is vlmkd.data.images imported?")
            _OPEN[key] = _READERS[scheme](spec)
        return _OPEN[key]


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """64-bit hashes of sample keys (the lookup index; collisions are refused when the index is built)."""
    out = np.empty(len(keys), dtype=np.uint64)
    for i, k in enumerate(keys):
        out[i] = int.from_bytes(hashlib.blake2b(str(k).encode("utf-8"), digest_size=8).digest(), "little")
    return out


class KeyIndex:
    """key -> position in the container's sample order, over sorted hashes (16 bytes a sample)."""

    def __init__(self, keys: Sequence[str], where: str):
        h = key_hashes(keys)
        self.order = np.argsort(h, kind="stable")
        self.sorted = h[self.order]
        dup = np.nonzero(self.sorted[1:] == self.sorted[:-1])[0]
        if len(dup):
            first = keys[int(self.order[dup[0]])]
            raise DataError(
                f"{where}: sample key {first!r} occurs twice; every sample needs its own key (__key__ or id)"
            )

    def position(self, key: str) -> int:
        h = key_hashes([key])[0]
        j = int(np.searchsorted(self.sorted, h))
        if j >= len(self.sorted) or self.sorted[j] != h:
            return -1
        return int(self.order[j])


# ------------------------------------------------------------------------------------------ shard lists


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar; `{x,y}` alternatives; nested and repeated braces.
    The same rules as the `braceexpand` package that webdataset uses, for the cases shard lists need."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        padded = any(len(x) > 1 and x.startswith("0") for x in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand_braces(head + item + tail)]


def expand_spec(spec: str) -> list[str]:
    """A shard spec -> shard URLs: brace patterns, several joined by "::" (open_clip's separator)."""
    urls = [u for part in spec.split("::") if part.strip() for u in expand_braces(part.strip())]
    if not urls:
        raise DataError(f"shard list {spec!r} names no shards; give e.g. 'train-{{000000..000009}}.tar'")
    return urls


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def absolute_spec(spec: str, base: str | None) -> str:
    """Relative local shard patterns made absolute (so loader workers and later runs started elsewhere find the same
    shards): against the working directory when the first shard is there (as split lists are found), else `base`
    (data.root)."""
    parts = []
    for part in spec.split("::"):
        part = part.strip()
        if part and not is_remote(part) and not os.path.isabs(local_path(part)):
            rel = local_path(part)
            here = os.path.exists(expand_braces(rel)[0]) or not base
            part = os.path.abspath(rel if here else os.path.join(os.path.expanduser(base), rel))
        parts.append(part)
    return "::".join(p for p in parts if p)


def fsspec_fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise DataError(
            f"reading {url!r} needs fsspec and its protocol's package; "
            "pip install 'vlmkd[remote]' s3fs (or gcsfs, adlfs)"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:  # the protocol's own package (s3fs, gcsfs, adlfs, aiohttp for http)
        raise DataError(
            f"reading {url!r}: {e}; pip install it (http(s) URLs: pip install 'vlmkd[remote]')"
        ) from None
    return fs, path


def file_fingerprint(url: str) -> dict[str, Any]:
    """(size, modification time or ETag) of a shard: what its cached index is keyed by."""
    if not is_remote(url):
        try:
            st = os.stat(local_path(url))
        except OSError:
            raise DataError(f"shard {url!r} does not exist; check the shard list") from None
        return {"url": os.path.abspath(local_path(url)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fs, path = fsspec_fs(url)
    try:
        info = fs.info(path)
    except (OSError, FileNotFoundError):
        raise DataError(f"shard {url!r} does not exist or cannot be reached; check the shard list") from None
    stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag") or ""
    return {"url": url, "size": int(info.get("size") or 0), "mtime_ns": str(stamp)}


def index_cache_dir() -> str:
    """Where shard indexes are cached: $VLMKD_INDEX_CACHE, else ~/.cache/vlmkd/shard_index."""
    env = os.environ.get("VLMKD_INDEX_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlmkd", "shard_index")


class ByteReader:
    """Thread-safe reads of byte ranges: os.pread on one descriptor per file locally, ranged reads remotely."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def read(self, url: str, offset: int, size: int) -> bytes:
        if is_remote(url):
            fs, path = fsspec_fs(url)
            return bytes(fs.cat_file(path, start=offset, end=offset + size))
        with self._lock:
            if self._pid != os.getpid():  # a forked worker: the parent's descriptors stay the parent's
                self._fds, self._pid = {}, os.getpid()
            fd = self._fds.get(url)
            if fd is None:
                try:
                    fd = self._fds[url] = os.open(local_path(url), os.O_RDONLY)
                except OSError as e:
                    raise DataError(
                        f"shard {url!r} cannot be opened ({e.strerror}); check the shard list"
                    ) from None
        return os.pread(fd, size, offset)

    def read_many(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes | BaseException]:
        """`read` of each (url, offset, size), a failure returned in its place. Remote ranges go out all at once
        (fsspec's `cat_ranges`: concurrent requests on async filesystems, http(s), s3, gcs), so a batch on object
        storage waits about one round trip instead of one per image; local ranges are read one by one."""
        out: list[bytes | BaseException | None] = [None] * len(ranges)
        remote: dict[int, tuple[Any, list[int], list[str]]] = {}  # filesystem -> (fs, positions, its paths)
        for k, (url, offset, size) in enumerate(ranges):
            if not is_remote(url):
                try:
                    out[k] = self.read(url, offset, size)
                except DataError as e:
                    out[k] = e
                continue
            fs, path = fsspec_fs(url)
            group = remote.setdefault(id(fs), (fs, [], []))
            group[1].append(k)
            group[2].append(path)
        for fs, ks, paths in remote.values():
            starts = [ranges[k][1] for k in ks]
            ends = [ranges[k][1] + ranges[k][2] for k in ks]
            for k, data in zip(ks, fs.cat_ranges(paths, starts, ends, on_error="return")):
                out[k] = data if isinstance(data, BaseException) else bytes(data)
        return out  # type: ignore[return-value]

    def __del__(self) -> None:
        if self._pid != os.getpid():
            return
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
