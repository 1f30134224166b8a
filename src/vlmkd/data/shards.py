"""WebDataset tar shards as a map-style dataset (`data.format=wds`), like webdataset's indexed `wids`.

Each shard is scanned once for its member headers (name, data offset, size; the small label and metadata
members are read on the way) and the index is cached under `index_cache_dir()`, keyed by the shard's URL, size
and modification time. An image is then read by offset: one `pread` locally, one ranged GET on object storage
(any fsspec URL). Samples follow webdataset's conventions: members sharing a `__key__` (the name up to the first
dot of its basename) form a sample; the image is the first member with an image extension; the label comes from
`.cls` (an integer) or `.json` ("label"); `.json` may also carry "id", "path" and "class" (what `vlmkd data pack`
writes, so a packed sample keeps its original id, relative path and class name).

A truncated shard, a sample without an image and an undecodable image follow data.on_bad_image like files: a
one-line error naming the shard and the sample's key, or a counted, named skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import IMAGE_EXTENSIONS, read_class_names
from vlmkd.data.sharded import (
    HINT,
    ByteReader,
    KeyIndex,
    absolute_spec,
    container_root,
    expand_spec,
    file_fingerprint,
    fsspec_fs,
    index_cache_dir,
    is_remote,
    local_path,
    reader,
    register_reader,
)
from vlmkd.data.strings import StrArray
from vlmkd.errors import DataError, StorageError
from vlmkd.utils.io import artifact_key, atomic_path

log = logging.getLogger(__name__)
INDEX_VERSION = 1
NO_DIGEST = b"\0" * 32  # the digest of an unreadable sample (describe's MISSING)
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_SMALL_FIELDS = ("cls", "json")
_MAX_SMALL = 1 << 20  # label and metadata members larger than this are not metadata
SCAN_THREADS = 16  # shards indexed at once (remote scans wait on the network, not the CPU)


def split_member(name: str) -> tuple[str | None, str]:
    """webdataset's `base_plus_ext`: ("dir/key", "ext") split at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None, ""
    stem, ext = base.split(".", 1)
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _open(url: str):
    if is_remote(url):
        fs, path = fsspec_fs(url)
        return fs.open(path, "rb")
    return open(local_path(url), "rb")


def scan_shard(url: str) -> dict[str, Any]:
    """The member index of one shard: per sample key, id, path, label, class, image offset and size, problem."""
    size = file_fingerprint(url)["size"]
    groups: dict[str, dict[str, Any]] = {}
    truncated = None
    with _open(url) as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 (closed with `f` by the `with` above)
        except tarfile.TarError as e:
            raise DataError(f"shard {url!r} is not a readable tar file ({e}); {HINT}") from None
        try:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_member(m.name)
                if key is None:
                    continue
                g = groups.setdefault(key, {})
                if m.offset_data + m.size > size:
                    g["problem"] = f"truncated: the shard ends inside member {m.name!r}"
                    truncated = key
                    break
                if ext in IMAGE_EXTS and "offset" not in g:
                    g.update(ext=ext, offset=m.offset_data, size=m.size)
                elif ext in _SMALL_FIELDS and m.size <= _MAX_SMALL:
                    f.seek(m.offset_data)
                    g[ext] = f.read(m.size)
            end = tf.offset
        except tarfile.TarError as e:
            raise DataError(f"shard {url!r} is damaged ({e}); {HINT}") from None
        if truncated is None:
            f.seek(end)
            tail = f.read(512)
            if len(tail) < 512 or any(tail):  # no end-of-archive block: cut at a member boundary
                truncated = next(reversed(groups), "") if groups else ""
    return {
        "version": INDEX_VERSION,
        "truncated": truncated,
        "samples": [_sample_record(url, key, g) for key, g in groups.items()],
    }


def _sample_record(url: str, key: str, g: dict[str, Any]) -> list[Any]:
    """[key, id, path, label, class name, image ext, offset, size, problem] of one sample."""
    meta, label, problem = {}, -1, g.get("problem")
    try:
        if "json" in g:
            meta = json.loads(g["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                meta = {}
            label = int(meta.get("label", meta.get("cls", -1)))
        if "cls" in g:
            label = int(g["cls"].decode("utf-8").strip())
    except (ValueError, TypeError, UnicodeDecodeError):
        problem = problem or "its .cls / .json label is not an integer"
    sid = str(meta.get("id") or meta.get("path") or key)
    path = str(meta.get("path") or sid)
    if problem is None and "offset" not in g:
        fields = ", ".join(sorted(k for k in g if k not in ("ext", "offset", "size"))) or "none"
        problem = f"has no image member (fields: {fields})"
    cls = str(meta.get("class", meta.get("class_name", "")) or "")
    return [key, sid, path, label, cls, g.get("ext", ""), g.get("offset", -1), g.get("size", -1), problem]


def _cache_stem(url: str) -> str:
    """The cache name of a shard's index and digests: changes with its URL, size or modification time."""
    return artifact_key({"v": INDEX_VERSION, **file_fingerprint(url)})[:32]


def _cached_index(cache: Path) -> dict[str, Any] | None:
    try:
        return json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _scan_lock(cache: Path):
    """An exclusive lock on `<cache>.lock` while a shard is scanned: the processes (and threads) sharing the
    cache, such as the ranks of a node, scan each shard once between them, the others waiting and then reading the
    index it wrote. Without a writable cache, no lock (each scans for itself, as without a cache)."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{cache}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def shard_index(url: str) -> dict[str, Any]:
    """`scan_shard`, cached per (URL, size, mtime): a rerun or a loader worker reads one small JSON file."""
    found = _index_or_cache(url)
    return found if isinstance(found, dict) else _cached_index(found) or scan_shard(url)


def _index_or_cache(url: str) -> Path | dict[str, Any]:
    """The path of the shard's cached index, made if missing; the index itself if it cannot be cached."""
    cache = Path(index_cache_dir()) / f"{_cache_stem(url)}.json"
    if cache.is_file():
        return cache
    with _scan_lock(cache):
        if cache.is_file():  # written by whoever held the lock before us
            return cache
        idx = scan_shard(url)
        try:
            with atomic_path(cache) as tmp:
                Path(tmp).write_text(json.dumps(idx), encoding="utf-8")
        except OSError as e:  # a read-only cache costs a rescan next time, nothing else
            log.warning("cannot cache the index of %s (%s)", url, e)
            return idx
    return cache


def shard_indexes(urls: list[str]) -> Iterator[dict[str, Any]]:
    """`shard_index` of every shard, in order, one at a time in memory. Missing indexes are made first in
    `SCAN_THREADS` threads: on object storage each shard's size check and scan wait on the network, so a list of
    thousands is indexed in parallel, not one shard after another. Under torchrun the ranks of a node start at
    different shards (by LOCAL_RANK), so with the lock in `_index_or_cache` they share the scanning."""
    local, per_node = int(os.environ.get("LOCAL_RANK", 0)), max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    start = (local % per_node) * len(urls) // per_node
    order = [(start + k) % len(urls) for k in range(len(urls))]
    found: list[Path | dict[str, Any] | None] = [None] * len(urls)
    with ThreadPoolExecutor(max(1, min(SCAN_THREADS, len(urls)))) as pool:
        for k, f in zip(order, pool.map(lambda k: _index_or_cache(urls[k]), order)):
            found[k] = f
    for url, f in zip(urls, found):
        yield f if isinstance(f, dict) else _cached_index(f) or scan_shard(url)


class WdsReader:
    """Random access to the samples of a shard list by sample path (the manifest's `paths`)."""

    def __init__(self, spec: str):
        self.urls = expand_spec(spec)
        shard, keys, paths, off, size, problems = [], [], [], [], [], {}
        for s, idx in enumerate(shard_indexes(self.urls)):
            for rec in idx["samples"]:
                if rec[8]:
                    problems[len(paths)] = rec[8]
                shard.append(s)
                keys.append(rec[0])
                paths.append(rec[2])
                off.append(rec[6])
                size.append(rec[7])
        # keys that restart in every shard (some writers do that) are qualified by the shard's name
        if len(set(paths)) < len(paths):
            paths = [f"{self.urls[s].rsplit('/', 1)[-1]}/{p}" for s, p in zip(shard, paths)]
        self.shard = np.asarray(shard, dtype=np.int32)
        self.offset, self.size = np.asarray(off, dtype=np.int64), np.asarray(size, dtype=np.int64)
        self.keys, self.paths, self.problems = StrArray(keys), StrArray(paths), problems
        self.index = KeyIndex(self.paths, f"shards {spec!r}")
        # shard s holds positions first[s] .. first[s + 1] - 1
        self.first = np.searchsorted(self.shard, np.arange(len(self.urls) + 1))
        self.bytes = ByteReader()

    def where(self, path: str) -> str:
        j = self._position(path)
        return f"{self.urls[int(self.shard[j])]}:{self.keys[j]}"

    def _position(self, path: str) -> int:
        j = self.index.position(path)
        if j < 0:
            raise DataError(f"sample {path!r} is not in the shards; rebuild the manifest from the shard list")
        return j

    def read(self, path: str) -> tuple[bytes, str]:
        """(image bytes, "shard:key" for messages); DataError naming the shard and key if it cannot be read."""
        j = self._position(path)
        self._check(j)
        try:
            data = self.bytes.read(self.urls[int(self.shard[j])], int(self.offset[j]), int(self.size[j]))
        except DataError:
            raise
        except Exception as e:
            raise self._failed(j, e) from e
        return self._checked(j, data)

    def read_many(self, paths: list[str]) -> list[tuple[bytes, str] | BaseException]:
        """`read` of each path, a failure in its place; on object storage all in flight at once (`ByteReader`)."""
        out: list[tuple[bytes, str] | BaseException | None] = [None] * len(paths)
        todo: list[tuple[int, int]] = []  # (position in paths, sample)
        for k, path in enumerate(paths):
            try:
                j = self._position(path)
                self._check(j)
                todo.append((k, j))
            except DataError as e:
                out[k] = e
        ranges = [(self.urls[int(self.shard[j])], int(self.offset[j]), int(self.size[j])) for _, j in todo]
        for (k, j), data in zip(todo, self.bytes.read_many(ranges)):
            try:
                if isinstance(data, DataError):
                    out[k] = data
                elif isinstance(data, BaseException):
                    out[k] = self._failed(j, data)
                else:
                    out[k] = self._checked(j, data)
            except DataError as e:
                out[k] = e
        return out  # type: ignore[return-value]

    def _failed(self, j: int, e: BaseException) -> BaseException:
        """A failed read of remote storage as one line naming shard and key; local failures stay as they are."""
        url, key = self.urls[int(self.shard[j])], self.keys[j]
        if not is_remote(url):
            return e
        first = (str(e).splitlines() or [""])[0]  # one line: some client errors span several
        return StorageError(
            f"reading sample {key!r} from shard {url!r} failed ({type(e).__name__}: {first}); "
            "check that the storage is reachable and the shard still exists, then rerun"
        )

    def _check(self, j: int) -> None:
        if j in self.problems:
            url, key = self.urls[int(self.shard[j])], self.keys[j]
            raise DataError(f"sample {key!r} in shard {url!r} {self.problems[j]}; {HINT}")

    def _checked(self, j: int, data: bytes) -> tuple[bytes, str]:
        url, key = self.urls[int(self.shard[j])], self.keys[j]
        if len(data) < int(self.size[j]):
            raise DataError(
                f"sample {key!r} in shard {url!r} is truncated ({len(data)} of {int(self.size[j])} bytes); {HINT}"
            )
        return data, f"{url}:{key}"

    def digests(self, paths) -> np.ndarray:
        """sha256 (S32) of each sample's image bytes, zeros where unreadable: the content keys of `describe`.
        Computed a whole shard at a time in one sequential read (one GET on object storage, not one per image)
        and cached next to the shard's index, so a rerun over a million samples reads no image at all."""
        pos = np.array([self.index.position(p) for p in paths], dtype=np.int64)
        out = np.full(len(pos), NO_DIGEST, dtype="S32")
        found = pos >= 0
        for s in np.unique(self.shard[pos[found]]):
            sel = found & (self.shard[np.maximum(pos, 0)] == s)
            out[sel] = self._shard_digests(int(s))[pos[sel] - self.first[s]]
        return out

    def _shard_digests(self, s: int) -> np.ndarray:
        url, lo, hi = self.urls[s], int(self.first[s]), int(self.first[s + 1])
        cache = Path(index_cache_dir()) / f"{_cache_stem(url)}.sha256.npy"
        try:
            d = np.load(cache, allow_pickle=False)
            if len(d) == hi - lo:
                return d
        except (OSError, ValueError):
            pass
        d = np.full(hi - lo, NO_DIGEST, dtype="S32")
        with _open(url) as f:
            for j in range(lo, hi):
                if j in self.problems:
                    continue
                f.seek(int(self.offset[j]))
                data = f.read(int(self.size[j]))
                if len(data) == int(self.size[j]):
                    d[j - lo] = hashlib.sha256(data).digest()
        try:
            with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
                np.save(fh, d)
        except OSError as e:
            log.warning("cannot cache the image digests of %s (%s)", url, e)
        return d


register_reader("wds", WdsReader)


# ------------------------------------------------------------------------------------------ the format


def _split_specs(cfg) -> dict[str, str]:
    specs = {
        s: v for s, v in (("train", cfg.train_list), ("val", cfg.val_list), ("test", cfg.test_list)) if v
    }
    if not specs and cfg.root and os.path.isdir(os.path.expanduser(cfg.root)):
        root = Path(cfg.root).expanduser()
        for split in ("train", "val", "test"):  # what `vlmkd data pack` writes
            found = sorted(root.glob(f"{split}-*.tar"))
            if found:
                specs[split] = _as_pattern(root.resolve(), split, [p.name for p in found])
    if "train" not in specs:
        raise DataError(
            "data.train_list must name the training shards for format wds, e.g. "
            "'shards/train-{000000..000009}.tar' (or data.root a folder of train-*.tar)"
        )
    return {s: absolute_spec(v, cfg.root if cfg.train_list else None) for s, v in specs.items()}


def _as_pattern(folder: Path, split: str, names: list[str]) -> str:
    """`split-{000000..000041}.tar` when the names are consecutive (what pack writes), else a "::" list."""
    width = len(names[0]) - len(split) - 5
    expected = [f"{split}-{i:0{width}d}.tar" for i in range(len(names))]
    if width > 0 and names == expected:
        return str(folder / f"{split}-{{{0:0{width}d}..{len(names) - 1:0{width}d}}}.tar")
    return "::".join(str(folder / n) for n in names)


def _class_names_near(url: str) -> list[str] | None:
    """`classes.txt` next to the first shard (written by `vlmkd data pack`), if there is one."""
    folder = url.rsplit("/", 1)[0] if "/" in url else "."
    name = f"{folder}/classes.txt"
    try:
        if is_remote(url):
            fs, path = fsspec_fs(name)
            text = fs.cat_file(path).decode("utf-8")
        else:
            text = Path(local_path(name)).read_text(encoding="utf-8")
    except (OSError, FileNotFoundError, UnicodeDecodeError):
        return None
    return [ln.strip() for ln in text.splitlines() if ln.strip()] or None


def shard_manifest(spec: str, split: str, class_names: list[str] | None, on_bad: str) -> Manifest:
    """The manifest of a shard list; samples in shard order, then in their order inside the shard."""
    root = container_root("wds", spec)
    r = reader(root)  # the sample index, built here once: forked loader workers inherit it
    ids, paths, labels, names, j = [], [], [], {}, 0
    for url, idx in zip(r.urls, shard_indexes(r.urls)):
        if idx["truncated"] is not None:
            msg = f"shard {url!r} is truncated after sample {idx['truncated']!r} (later samples are lost)"
            if on_bad != "skip":
                raise DataError(f"{msg}; re-copy the shard or {HINT}")
            log.warning("%s; reading the samples before the cut (data.on_bad_image=skip)", msg)
        for key, sid, _, label, cls, *_, problem in idx["samples"]:
            j += 1
            if label < 0:
                msg = f"sample {key!r} in shard {url!r} has no label (.cls or .json 'label')"
                if on_bad != "skip":
                    raise DataError(f"{msg}; {problem + '; ' if problem else ''}{HINT}")
                log.warning("skipping it (data.on_bad_image=skip): %s", msg)
                continue
            path = r.paths[j - 1]
            ids.append(sid if sid != key else path)  # a bare __key__ id is the (maybe shard-qualified) path
            paths.append(path)
            labels.append(label)
            if cls:
                names.setdefault(label, cls)
    if class_names is None:
        n = max(labels, default=-1) + 1
        class_names = [names.get(c, f"class_{c}") for c in range(n)]
    return Manifest(ids=ids, labels=labels, class_names=class_names, root=root, paths=paths, split=split)


def wds(cfg) -> dict[str, Manifest]:
    """`data.format=wds`: data.train_list / val_list / test_list are shard lists (brace patterns, "::"-joined,
    local paths or fsspec URLs); class names from data.class_names_file, else a classes.txt next to the shards,
    else the samples' .json "class", else class_<i>."""
    specs = _split_specs(cfg)
    names = read_class_names(cfg.class_names_file, None) if cfg.class_names_file else None
    names = names or _class_names_near(expand_spec(specs["train"])[0])
    out = {"train": shard_manifest(specs["train"], "train", names, cfg.on_bad_image)}
    names = names or out["train"].class_names
    for split in ("val", "test"):
        if split in specs:
            out[split] = shard_manifest(specs[split], split, names, cfg.on_bad_image)
    return out
