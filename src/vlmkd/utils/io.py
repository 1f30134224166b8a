"""Atomic writes, artifact keys and small JSON helpers shared by every stage."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def artifact_key(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`: the identity of an artifact's inputs."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 24 * 3600  # a temp file of a live writer on another host is younger than this


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide: a set-and-restore races with threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open a directory for reading; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # dots separate the fields of a temp name


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Remove temporary files a killed writer of `path` left behind; returns how many.

    A temp file is stale when its writer's process (named in it) is gone from this host, or it is older than a
    day (a writer on another host of a shared filesystem). Concurrent live writers' files are kept.
    """
    path, host, removed = Path(path), _host(), 0
    prefix = _tmp_prefix(path)
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*{TMP_SUFFIX}"):
        parts = tmp.name[len(prefix) : -len(TMP_SUFFIX)].split(".")
        try:
            same_host, pid = parts[0] == host, int(parts[1])
            age = time.time() - tmp.stat().st_mtime
        except (IndexError, ValueError, OSError):
            continue  # not one of ours
        if (same_host and not _pid_alive(pid)) or age > STALE_TMP_SECONDS:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A process killed mid-write leaves either the old file or nothing, never a half file: the data is fsynced before
    the rename and the folder after it. The temp name is unique per writer (host, pid, random), so ranks writing
    the same file never clash, and the temp files of killed writers are removed by the next write of that file.
    The result is readable as the umask allows (mkstemp alone would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    prefix = f"{_tmp_prefix(path)}{_host()}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # again: some writers (safetensors) replace the file, owner-only
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, default=_json_default)
    atomic_write(path, lambda p: p.write_text(text + "\n", encoding="utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    def _w(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, array)

    atomic_write(path, _w)


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Memory-mapped by default: big feature arrays are never loaded whole unless asked."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


# ---------------------------------------------------------------------------------------- fingerprints

_FP_MEMO: dict[tuple[str, int, int, int], str] = {}


def _fingerprint_cache_file() -> Path:
    root = (
        os.environ.get("VLMKD_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlmkd"
    )
    return Path(root) / "fingerprints.json"


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime, ctime): an unchanged file is hashed once, also
    across processes (a small JSON cache under VLMKD_CACHE_DIR or ~/.cache/vlmkd); a touched one is hashed again
    (same result). ctime is in the memo because a rewrite cannot fake it, even when the old mtime is restored."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo in _FP_MEMO:
        return _FP_MEMO[memo]
    cache_file = _fingerprint_cache_file()
    try:
        disk = read_json(cache_file)
    except (OSError, ValueError):
        disk = {}
    entry = disk.get(memo[0])
    if entry and entry[:3] == list(memo[1:]):
        _FP_MEMO[memo] = entry[3]
        return entry[3]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = _FP_MEMO[memo] = h.hexdigest()
    disk[memo[0]] = [*memo[1:], digest]
    with contextlib.suppress(OSError):  # a read-only home only costs a rehash next time
        write_json(cache_file, disk, indent=None)
    return digest


def path_fingerprint(path: str | os.PathLike, patterns: tuple[str, ...] = ("**/*",)) -> str | None:
    """Content fingerprint (sha256 hex) of a local file or folder (the files matching `patterns`, by relative
    path and bytes); None when `path` is not local (a hub id). Mtimes never enter it: touching changes nothing."""
    p = Path(path)
    if p.is_file():
        return file_fingerprint(p)
    if not p.is_dir():
        return None
    files = sorted({f for pat in patterns for f in p.glob(pat) if f.is_file() and ".cache" not in f.parts})
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(p).as_posix()}\0{file_fingerprint(f)}\n".encode())
    return h.hexdigest()


POINTER = "LATEST"  # a parent folder's pointer to the newest keyed store under it


def resolve_store(path: str | Path, marker: str = "meta.json") -> Path:
    """A keyed store folder, or a parent holding a LATEST pointer (followed), or a folder with `embeddings/`."""
    p = Path(path)
    for _ in range(4):
        if (p / marker).is_file():
            return p
        if (p / POINTER).is_file():
            p = p / read_json(p / POINTER)["folder"]
        elif (p / "embeddings").is_dir():
            p = p / "embeddings"
        else:
            break
    raise ArtifactError(f"{str(path)!r} is not a vlmkd store (no {marker} or LATEST); run the stage first")
