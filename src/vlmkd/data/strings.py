"""A compact sequence of strings for per-sample columns (manifest ids and paths) at 1M+ rows.

A Python list of 1M short strings costs ~70 MB (an object per item); `StrArray` keeps one UTF-8 buffer and int64
offsets (~1 byte per character + 8 per item), and reads like a list of str: indexing, slicing (a list),
iteration, `in`, `==` against lists, `len`. It also encodes itself to JSON in bounded chunks, so that hashing or
saving a manifest never builds the whole column as Python objects.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from json.decoder import scanstring
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 65536  # items per encoded/decoded block: a few MB at most, whatever the length of the column
_UTF8 = ("utf-8", "surrogatepass")  # round-trips every str, also file names decoded with surrogateescape


class StrArray(Sequence):
    """Strings in one UTF-8 buffer + offsets. Item assignment works but rebuilds the buffer (O(n)): columns are
    written once and read many times."""

    __slots__ = ("_buf", "_off", "version")

    def __init__(self, items: Iterable[str] = ()):
        if isinstance(items, StrArray):  # shares the (immutable) buffers: a new object, not a view
            self._set(items._buf, items._off)
            return
        items = items if isinstance(items, list | tuple) else list(items)
        items = [s if isinstance(s, str) else _as_str(s) for s in items]
        text = "".join(items)
        if text.isascii():  # the usual case: byte length == character count, no per-item encoding
            lens = np.fromiter(map(len, items), np.int64, len(items))
            buf = text.encode("ascii")
        else:
            parts = [s.encode(*_UTF8) for s in items]
            lens = np.fromiter(map(len, parts), np.int64, len(parts))
            buf = b"".join(parts)
        self._set(buf, _offsets(lens))

    def _set(self, buf: bytes, off: np.ndarray) -> None:
        off.flags.writeable = False
        self._buf, self._off = buf, off
        self.version = getattr(self, "version", -1) + 1  # bumped by every in-place change (cache validation)

    @classmethod
    def _from_parts(cls, buf: bytes, off: np.ndarray) -> StrArray:
        out = cls.__new__(cls)
        out._set(buf, np.asarray(off, dtype=np.int64))
        return out

    @classmethod
    def concat(cls, parts: Sequence[StrArray]) -> StrArray:
        bases = np.cumsum([0] + [int(p._off[-1]) for p in parts])
        tails = [p._off[1:] + b for p, b in zip(parts, bases)]
        return cls._from_parts(b"".join(p._buf for p in parts), np.concatenate([[0], *tails]))

    def __reduce__(self):
        return StrArray._from_parts, (self._buf, np.array(self._off))

    @property
    def nbytes(self) -> int:
        return len(self._buf) + self._off.nbytes

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]  # a list, as slicing a list gave
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("StrArray index out of range")
        return self._buf[self._off[i] : self._off[i + 1]].decode(*_UTF8)

    def __setitem__(self, i: int, value: str) -> None:
        items = list(self)
        items[i] = value
        fresh = StrArray(items)
        self._set(fresh._buf, fresh._off)

    def chunks(self) -> Iterator[list[str]]:
        """The items as lists of at most CHUNK strings."""
        for lo in range(0, len(self), CHUNK):
            off, buf = self._off[lo : lo + CHUNK + 1].tolist(), self._buf
            yield [buf[a:b].decode(*_UTF8) for a, b in zip(off, off[1:])]

    def __iter__(self) -> Iterator[str]:
        for block in self.chunks():
            yield from block

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value.encode(*_UTF8) not in self._buf:  # one C-speed scan rules out most misses
            return False
        return any(s == value for s in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StrArray):
            return self._buf == other._buf and np.array_equal(self._off, other._off)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable, like the list it replaces

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StrArray([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    def take(self, idx: np.ndarray | Sequence[int]) -> StrArray:
        """The items at `idx` (any order, repeats allowed), without decoding them."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError("StrArray index out of range")
        idx = np.where(idx < 0, idx + len(self), idx)
        starts, ends = self._off[idx], self._off[idx + 1]
        view, parts = memoryview(self._buf), []
        for lo in range(0, len(idx), CHUNK):
            parts.append(
                b"".join(
                    view[a:b]
                    for a, b in zip(starts[lo : lo + CHUNK].tolist(), ends[lo : lo + CHUNK].tolist())
                )
            )
        return StrArray._from_parts(b"".join(parts), _offsets(ends - starts))

    def json_chunks(self, sep: str) -> Iterator[str]:
        """This column as a JSON array, in pieces: `json.dumps(list(self), separators=(sep, ...))` joined."""
        yield "["
        for lo in range(0, len(self), CHUNK):
            yield sep * (lo > 0) + self._json_block(lo, min(lo + CHUNK, len(self)), sep)
        yield "]"

    def _json_block(self, lo: int, hi: int, sep: str) -> str:
        """Items lo..hi as JSON strings joined by sep. Printable ASCII without quote or backslash (ids and paths,
        as a rule) is its own JSON: quote the bytes and put the separators at the offsets, no object per item."""
        off = self._off[lo : hi + 1]
        block = np.frombuffer(self._buf, np.uint8, int(off[-1] - off[0]), int(off[0]))
        if ((block < 0x20) | (block > 0x7E) | (block == 0x22) | (block == 0x5C)).any():
            return json.dumps(self[lo:hi], separators=(sep, ":"))[1:-1]  # escapes needed: json does them
        # a NUL (cannot occur in such a block) marks each boundary, then becomes the closing/opening quotes
        marked = np.insert(block, off[1:-1] - off[0], 0).tobytes()
        return '"' + marked.decode("ascii").replace("\0", '"' + sep + '"') + '"'

    def __arrow_array__(self, type: Any = None):
        """pyarrow's conversion protocol: `pa.array(ids)` reads the buffers instead of a million objects."""
        import pyarrow as pa

        if self._off[-1] < 2**31 - 1:
            arr = pa.StringArray.from_buffers(
                len(self), pa.py_buffer(self._off.astype(np.int32)), pa.py_buffer(self._buf)
            )
        else:
            arr = pa.LargeStringArray.from_buffers(
                len(self), pa.py_buffer(np.array(self._off)), pa.py_buffer(self._buf)
            )
        arr.validate(full=True)  # invalid UTF-8 (surrogates) fails here, as converting the list did
        return arr if type is None else arr.cast(type)


def _offsets(lens: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    return off


def _as_str(s: Any) -> str:
    if isinstance(s, os.PathLike):
        return os.fspath(s)  # what the old JSON encoding wrote for a Path
    raise TypeError(f"expected a str, got {type(s).__name__}: {s!r}")


def int_json_chunks(arr: np.ndarray, sep: str) -> Iterator[str]:
    """An int array as a JSON array, in pieces (no Python int per element beyond one chunk)."""
    yield "["
    for lo in range(0, len(arr), CHUNK):
        yield sep * (lo > 0) + json.dumps(arr[lo : lo + CHUNK].tolist(), separators=(sep, ":"))[1:-1]
    yield "]"


# ----------------------------------------------------------------------------------- reading columns from JSON

_WS = re.compile(r"[ \t\n\r]*")


def load_json_columns(
    path: str | Path, str_keys: Collection[str], int_keys: Collection[str]
) -> dict[str, Any]:
    """`json.load` of a top-level object, except that the arrays under str_keys / int_keys come back as a StrArray
    / an int64 array, parsed a chunk at a time: a 1M-row manifest never exists as a million Python objects (which
    cost ~200 MB at peak, and left part of it resident). Any other layout goes to the json module."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return _parse_object(text, str_keys, int_keys)
    except (ValueError, IndexError, TypeError):  # not this layout (or not JSON): json parses it or says why
        return json.loads(text)


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _parse_object(text: str, str_keys: Collection[str], int_keys: Collection[str]) -> dict[str, Any]:
    dec, out = json.JSONDecoder(), {}
    pos = _skip(text, 0)
    if text[pos] != "{":
        raise ValueError("not an object")
    pos = _skip(text, pos + 1)
    while text[pos] != "}":
        if text[pos] != '"':
            raise ValueError("expected a key")
        key, pos = scanstring(text, pos + 1)
        pos = _skip(text, pos)
        if text[pos] != ":":
            raise ValueError("expected ':'")
        pos = _skip(text, pos + 1)
        if text[pos] == "[" and key in str_keys:
            out[key], pos = _str_array(text, pos)
        elif text[pos] == "[" and key in int_keys:
            out[key], pos = _int_array(text, pos)
        else:
            out[key], pos = dec.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
        elif text[pos] != "}":
            raise ValueError("expected ',' or '}'")
    if _skip(text, pos + 1) != len(text):
        raise ValueError("extra data")
    return out


def _str_array(text: str, pos: int) -> tuple[StrArray, int]:
    parts, block = [], []
    pos = _skip(text, pos + 1)
    while text[pos] != "]":
        if text[pos] != '"':
            raise ValueError("not a string")
        item, pos = scanstring(text, pos + 1)
        block.append(item)
        if len(block) == CHUNK:
            parts.append(StrArray(block))
            block = []
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
        elif text[pos] != "]":
            raise ValueError("expected ',' or ']'")
    parts.append(StrArray(block))
    return StrArray.concat(parts), pos + 1


def _int_array(text: str, pos: int) -> tuple[np.ndarray, int]:
    end = text.index("]", pos)
    body = text[pos + 1 : end]
    if not body.strip():
        return np.zeros(0, dtype=np.int64), end + 1
    arr = np.fromstring(body, dtype=np.int64, sep=",")  # text mode; raises on anything but integers
    if len(arr) != body.count(",") + 1:  # "1,,2" or a trailing comma: invalid JSON, let json say so
        raise ValueError("not a list of integers")
    return arr, end + 1
