"""Random row reads from a .npy row store (text embeddings, teacher features and logits, index maps).

Training reads a few rows per sample at random positions of multi-GB stores. `open_rows(path)` reads exactly those
rows' bytes with `os.preadv` at their file offsets, instead of memory-mapping the file. Why not a memory map, even
with `madvise(MADV_RANDOM)`: measured on the Linux 6.18 machine this was written on (ext4 family, `read_ahead_kb` 8192),
one random 768-byte row of a memory map made RssFile grow by 1.29 MB when the file was in the page cache (the
fault maps the whole large folio the page cache holds, MADV_RANDOM or not), and read 2.1 MB from disk per row when
it was not (8 MB read-around); with MADV_RANDOM the cold read fell to about one page, but the hot mapping stayed 1.29 MB.
`preadv` brings in the row's pages only (one or two 4 KB pages cold; none from a warm page cache), copies the row
into the caller's buffer and maps nothing, so the process's memory does not grow with the store. `POSIX_FADV_RANDOM`
on the descriptor tells the kernel not to read ahead around these small reads.

Bulk sequential reads (merging shards, whole-matrix loads) keep `vlmkd.utils.io.load_npy` (a memory map), where
readahead is what one wants.
"""

from __future__ import annotations

import operator
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError

_PREADV = getattr(os, "preadv", None)  # Linux, BSDs, macOS 11+: reads straight into the result array
_HAS_PREAD = hasattr(os, "pread")  # not on Windows: there a locked seek + read stands in


def open_rows(path: str | os.PathLike) -> RowReader:
    """A row reader over a C-ordered .npy file (what vlmkd's stores are)."""
    return RowReader(path)


class RowReader:
    """Numpy-style read access to a .npy file's rows, each read by offset: `r[i]`, `r[lo:hi]`, `r[int_array]`,
    `r[i, ...]`, `len(r)`, `r.shape`, `r.dtype`, `np.asarray(r)` (reads it all). Results are fresh arrays.

    It pickles as its path and reopens the file in the receiving process (DataLoader workers, DDP ranks), so a
    worker never receives a copy of the data. A forked worker may share the parent's descriptor: `pread` takes
    the offset as an argument, so processes sharing it cannot move each other's file position.
    """

    def __init__(self, path: str | os.PathLike):
        self.filename = str(path)
        self.shape, self.dtype, self.offset = _npy_layout(Path(path))
        self.row_shape = self.shape[1:]
        self.row_bytes = int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))
        self._open()

    def _open(self) -> None:
        self._fd = os.open(
            self.filename, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        )
        self._lock = None if _HAS_PREAD else threading.Lock()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def close(self, _close=os.close) -> None:  # bound early: __del__ may run when `os` is gone at exit
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            _close(fd)

    def __del__(self) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- array facts
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowReader({self.filename!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(0, len(self))
        return out if dtype is None else out.astype(dtype, copy=False)

    # ------------------------------------------------------------------------------------------- indexing
    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return np.asarray(self)
            first, rest = key[0], key[1:]
            if first is Ellipsis:
                return np.asarray(self)[key]
            out = self[first]
            if not rest:
                return out
            return out[rest] if _is_int(first) else out[(slice(None), *rest)]
        if _is_int(key):
            i, n = operator.index(key), self.shape[0]
            if not -n <= i < n:
                raise IndexError(f"row {i} out of range for {n} rows of {self.filename!r}")
            i %= n
            return self.read(i, i + 1)[0]
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            return self.read(lo, max(lo, hi)) if step == 1 else self.take(np.arange(lo, hi, step))
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"rows are indexed by integers, slices or booleans, not {idx.dtype}")
        return self.take(idx)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (any shape of integers): each run of consecutive rows is one read, each row read once."""
        idx = np.asarray(idx, dtype=np.int64)
        n, shape = self.shape[0], (*idx.shape, *self.row_shape)
        if idx.size <= 64:  # a sample's few rows: plain Python beats numpy's fixed costs (np.unique ~50 us)
            wanted = idx.ravel().tolist()
            if any(j < -n or j >= n for j in wanted):
                raise IndexError(f"row index out of range for {n} rows of {self.filename!r}")
            wanted = [j % n for j in wanted]
            uniq = sorted(set(wanted))
            starts = [k for k in range(len(uniq)) if k == 0 or uniq[k] != uniq[k - 1] + 1]
            got = self._read_runs(uniq, starts)
            if uniq == wanted:
                return got.reshape(shape)
            where = {j: k for k, j in enumerate(uniq)}
            return got[[where[j] for j in wanted]].reshape(shape)
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"row index out of range for {n} rows of {self.filename!r}")
        uniq, inverse = np.unique(idx.ravel() % n, return_inverse=True)
        # where runs of consecutive rows begin
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1).tolist()
        return self._read_runs(uniq, starts)[inverse.ravel()].reshape(shape)

    def _read_runs(self, uniq: Any, starts: list[int]) -> np.ndarray:
        got = np.empty((len(uniq), *self.row_shape), self.dtype)
        for a, b in zip(starts, [*starts[1:], len(uniq)]):
            self._read_into(got[a:b], int(uniq[a]))
        return got

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) in one read."""
        out = np.empty((hi - lo, *self.row_shape), self.dtype)
        self._read_into(out, lo)
        return out

    def _read_into(self, out: np.ndarray, row: int) -> None:
        if self._fd is None:
            raise ValueError(f"read from a closed RowReader ({self.filename!r})")
        pos, size = self.offset + row * self.row_bytes, out.nbytes
        done = _PREADV(self._fd, [out], pos) if _PREADV else 0  # the common case: one call, no views
        if done == size:
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        while done < size:  # a read may return fewer bytes than asked (large reads, signals)
            n = self._pread(view[done:], pos + done)
            if n <= 0:
                raise ArtifactError(f"{self.filename!r} is shorter than its header says; rebuild the store")
            done += n

    def _pread(self, buf: memoryview, pos: int) -> int:
        if _PREADV:
            return _PREADV(self._fd, [buf], pos)
        if _HAS_PREAD:
            data = os.pread(self._fd, len(buf), pos)
        else:
            with self._lock:
                os.lseek(self._fd, pos, os.SEEK_SET)
                data = os.read(self._fd, len(buf))
        buf[: len(data)] = data
        return len(data)


def _is_int(key: Any) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header; refuses what cannot be read row by row."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except ValueError as e:
        raise ArtifactError(f"{str(path)!r} is not a readable .npy file ({e}); rebuild the store") from None
    if dtype.hasobject or not shape or (fortran and len(shape) > 1):
        why = "holds objects" if dtype.hasobject else "is 0-d" if not shape else "is Fortran-ordered"
        raise ArtifactError(f"{str(path)!r} {why}, so it cannot be read row by row; re-save it with np.save")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < need:
        raise ArtifactError(
            f"{str(path)!r} is truncated ({path.stat().st_size} of {need} bytes); rebuild the store"
        )
    return tuple(int(s) for s in shape), dtype, offset
