"""The dataset manifest: the one list every stage agrees on (sample id, path or array index, label, class names).

A manifest is cheap to rebuild from the config, and its `key()` identifies its content, so artifacts computed
for it (descriptions, embeddings, teacher features) are never reused for a different list.

At 1M+ rows it stays lean: ids and paths are `StrArray`s (one buffer, no object per row), and `key()` / `save()`
stream the same JSON the list-based version built whole, so keys of existing artifacts do not change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data.strings import StrArray, int_json_chunks, load_json_columns
from vlmkd.errors import DataError
from vlmkd.utils.io import _json_default, atomic_path, canonical_json

_STR_FIELDS = ("ids", "paths")
_INT_FIELDS = ("labels", "indices")
_DICT_ORDER = ("split", "root", "source", "class_names", "ids", "labels", "paths", "indices")  # to_dict, save


@dataclass
class Manifest:
    ids: Sequence[str]  # a StrArray once set
    labels: np.ndarray  # int64, one per sample
    class_names: list[str]
    root: str = ""
    paths: Sequence[str] | None = None  # relative to root (file-backed formats)
    indices: np.ndarray | None = None  # row in the array source (array-backed formats)
    # how to reopen an array source, e.g. {"format": ...}
    source: dict[str, Any] = field(default_factory=dict)
    split: str = "train"

    def __setattr__(self, name: str, value: Any) -> None:
        # every assignment (the constructor's too) stores the compact form and drops the cached key
        if value is not None and name in _STR_FIELDS:
            value = StrArray(value)  # a new object even for a StrArray: in-place edits never leak to another
        elif value is not None and name in _INT_FIELDS:
            value = np.ascontiguousarray(value, dtype=np.int64)
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_key_cache", None)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.labels) != n:
            raise DataError(f"manifest: {n} ids but {len(self.labels)} labels")
        if self.paths is None and self.indices is None:
            raise DataError("manifest: each sample needs a path or an array index")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            bad = int(self.labels[(self.labels < 0) | (self.labels >= len(self.class_names))][0])
            raise DataError(
                f"label {bad} is out of range for {len(self.class_names)} classes; "
                "check the list file or the class names file"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, idx: np.ndarray | list[int], split: str | None = None) -> Manifest:
        idx = np.asarray(idx, dtype=np.int64)
        return Manifest(
            ids=self.ids.take(idx),
            labels=self.labels[idx],
            class_names=list(self.class_names),
            root=self.root,
            paths=self.paths.take(idx) if self.paths is not None else None,
            indices=self.indices[idx] if self.indices is not None else None,
            source=dict(self.source),
            split=split or self.split,
        )

    def relabel(self, classes: list[int], split: str | None = None) -> Manifest:
        """Keep only samples of `classes` and renumber labels 0..len(classes)-1 in that order."""
        classes = [int(c) for c in classes]
        lut = np.full(self.num_classes, -1, dtype=np.int64)
        lut[classes] = np.arange(len(classes))
        keep = np.nonzero(lut[self.labels] >= 0)[0]
        sub = self.subset(keep, split)
        sub.labels = lut[sub.labels]
        sub.class_names = [self.class_names[c] for c in classes]
        return sub

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (a Python object per row: for small manifests; key() and save() stream instead)."""
        d = {name: getattr(self, name) for name in _DICT_ORDER}
        for name in ("class_names", *_STR_FIELDS, *_INT_FIELDS):
            if d[name] is not None:
                d[name] = d[name].tolist() if name in _INT_FIELDS else list(d[name])
        return d

    def key(self) -> str:
        """Content key: changes whenever a sample, label, path or class name changes.

        sha256 of the canonical JSON of `to_dict()` without `root` (moving the dataset folder does not change the
        content), streamed in chunks; remembered until a field is reassigned or its content changes in place."""
        state = self._state()
        if self._key_cache is None or self._key_cache[0] != state:
            h = hashlib.sha256()
            for piece in self._json(canonical=True):
                h.update(piece.encode("utf-8"))
            object.__setattr__(self, "_key_cache", (state, h.hexdigest()))
        return self._key_cache[1]

    def _state(self) -> tuple:
        """What in-place edits can change (item assignment, labels[i] = c), cheap to compare: StrArray versions,
        digests of the int arrays, the small fields."""

        def digest(a: np.ndarray | None) -> bytes | None:
            return None if a is None else hashlib.blake2b(a.data, digest_size=16).digest()

        versions = tuple(getattr(getattr(self, f), "version", None) for f in _STR_FIELDS)
        ints = tuple(digest(getattr(self, f)) for f in _INT_FIELDS)
        return versions, ints, tuple(self.class_names), canonical_json(self.source), self.split

    def _json(self, canonical: bool, extra: dict[str, Any] | None = None) -> Iterator[str]:
        """to_dict() (+ extra) as JSON text in pieces: canonical (sorted keys, no root, compact) for the key, or
        exactly what `json.dumps(d)` gave for save()."""
        sep, kv = (",", ":") if canonical else (", ", ": ")
        small = canonical_json if canonical else (lambda v: json.dumps(v, default=_json_default))
        order = sorted(n for n in _DICT_ORDER if n != "root") if canonical else _DICT_ORDER
        yield "{"
        for k, name in enumerate(order):
            yield sep * (k > 0) + json.dumps(name) + kv
            yield from self._json_value(name, small, sep)
        for name, v in (extra or {}).items():
            yield sep + json.dumps(name) + kv + small(v)
        yield "}"

    def _json_value(self, name: str, small, sep: str) -> Iterator[str]:
        v = getattr(self, name)
        if v is None or name not in _STR_FIELDS + _INT_FIELDS:
            yield small(list(v) if name == "class_names" else v)
        elif name in _STR_FIELDS:
            yield from v.json_chunks(sep)
        else:
            yield from int_json_chunks(v, sep)

    def save(self, path: str | Path) -> None:
        """One JSON file (readable by any JSON reader, same bytes as before), written in pieces, atomically."""
        key = self.key()
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for piece in self._json(canonical=False, extra={"key": key}):
                f.write(piece)
            f.write("\n")

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        d = load_json_columns(path, _STR_FIELDS, _INT_FIELDS)
        d.pop("key", None)
        return cls(**d)
