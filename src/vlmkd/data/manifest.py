"""The dataset manifest: the one list every stage agrees on (sample id, path or array index, label, class names).

A manifest is cheap to rebuild from the config, and its `key()` identifies its content, so artifacts computed
for it (descriptions, embeddings, teacher features) are never reused for a different list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import DataError
from vlmkd.utils.io import artifact_key, read_json, write_json


@dataclass
class Manifest:
    ids: list[str]
    labels: np.ndarray  # int64, one per sample
    class_names: list[str]
    root: str = ""
    paths: list[str] | None = None  # relative to root (file-backed formats)
    indices: np.ndarray | None = None  # row in the array source (array-backed formats)
    source: dict[str, Any] = field(
        default_factory=dict
    )  # how to reopen an array source, e.g. {"format": ...}
    split: str = "train"

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.indices is not None:
            self.indices = np.asarray(self.indices, dtype=np.int64)
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
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            root=self.root,
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
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
        return {
            "split": self.split,
            "root": self.root,
            "source": self.source,
            "class_names": list(self.class_names),
            "ids": list(self.ids),
            "labels": self.labels.tolist(),
            "paths": list(self.paths) if self.paths is not None else None,
            "indices": self.indices.tolist() if self.indices is not None else None,
        }

    def key(self) -> str:
        """Content key: changes whenever a sample, label, path or class name changes."""
        d = self.to_dict()
        d.pop("root")  # moving the dataset folder does not change the content
        return artifact_key(d)

    def save(self, path: str | Path) -> None:
        write_json(path, {**self.to_dict(), "key": self.key()}, indent=None)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        d = read_json(path)
        d.pop("key", None)
        return cls(**d)
