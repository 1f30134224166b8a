"""Per-sample rows of the training artifacts, read one sample at a time from float16 .npy stores.

A `StoreRows` never holds an N-row copy: it keeps the .npy path (read row by row, opened lazily in each process,
so DataLoader workers and DDP ranks share the file through the page cache) and, for stores with several rows per
sample, an int32 N x n map from sample to store row (-1 where a row is missing). Random choices (which
description, which cached teacher view) are a function of (seed, epoch, sample index, salt) only, so they do not
depend on the global RNG, the worker count, the rank count or a resume point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmkd.errors import ConfigError
from vlmkd.teachers.replay import VIEW_SALT, view_choice
from vlmkd.utils.rowread import RowReader, open_rows

COMBINE = ("one", "pick", "average", "mean")


def pick(seed: int, epoch: int, index: int, salt: int, n: int) -> int:
    """A reproducible integer in [0, n) for one sample at one epoch."""
    return int(np.random.default_rng([seed, epoch, index, salt]).integers(n))


class StoreRows:
    """Row i of a sample: `store[i]` (N x D or N x K x D store) or `store[index[i]]` (2-D store + N x n map).

    With several rows per sample, `combine` says how one row is made: `pick` one valid row at random (seeded as
    above), `average` the L2-normalised valid rows (renormalised), or take their plain `mean`. All-zero rows and
    -1 entries count as missing; a sample with no valid row gives zeros.
    """

    def __init__(
        self,
        path: str | Path,
        index: np.ndarray | str | Path | None = None,
        combine: str = "one",
        seed: int = 0,
        salt: int = 0,
    ):
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        self.path, self.combine, self.seed, self.salt = str(path), combine, int(seed), int(salt)
        self.index_path = str(index) if isinstance(index, (str, Path)) else None
        self._index = None if self.index_path else index
        self._array: RowReader | None = None
        if self._index is not None and self._index.ndim == 1:
            self._index = self._index[:, None]

    def __getstate__(self):  # a memory map pickles as a full copy: send the paths, reopen in the worker
        state = dict(self.__dict__)
        state["_array"] = None
        if self.index_path:
            state["_index"] = None
        return state

    @property
    def array(self) -> RowReader:
        if self._array is None:  # rows read by offset, not mapped: see vlmkd.utils.rowread
            self._array = open_rows(self.path)
        return self._array

    @property
    def index(self) -> np.ndarray | RowReader | None:
        if self._index is None and self.index_path:
            self._index = open_rows(self.index_path)
        return self._index

    @property
    def dim(self) -> int:
        return int(self.array.shape[-1])

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.row(i, 0)

    def block(self, i: int) -> np.ndarray:
        """The sample's valid stored rows, K x D float32 (K may be 0)."""
        if self.index is None:
            rows = np.asarray(self.array[i], dtype=np.float32)
            rows = rows[None] if rows.ndim == 1 else rows
            return rows[np.abs(rows).sum(-1) > 0] if len(rows) > 1 else rows
        idx = np.asarray(self.index[i])
        idx = idx[idx >= 0]
        return np.asarray(self.array[idx], dtype=np.float32)

    def row(self, i: int, epoch: int = 0) -> np.ndarray:
        rows = self.block(i)
        if len(rows) == 0:
            return np.zeros(self.dim, np.float32)
        if len(rows) == 1 or self.combine == "one":
            return rows[0]
        if self.combine == "pick":
            return rows[pick(self.seed, epoch, i, self.salt, len(rows))]
        if self.combine == "mean":
            return rows.mean(0)
        unit = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
        m = unit.mean(0)
        return m / max(float(np.linalg.norm(m)), 1e-12)

    def missing(self) -> int:
        """Samples with no valid row (index map only: a full scan of a feature store would read it all)."""
        if self.index is None:
            return 0
        return int((np.asarray(self.index).max(1) < 0).sum())


class LabelRows:
    """Row i = a per-class matrix's row for sample i's label (class-template text instead of descriptions)."""

    def __init__(self, per_class: np.ndarray, labels: np.ndarray):
        self.per_class = np.asarray(per_class, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.per_class[self.labels[i]]

    def row(self, i: int, epoch: int = 0) -> np.ndarray:
        return self[i]


class ReplayRows(StoreRows):
    """Replayed views (`clip.view=replay`): an N x K x D store and its N x K x P view parameters.

    At epoch e, sample i replays view v = view_choice(seed, e, i, K): `view(i, e)` gives (v, its parameters),
    which the dataset applies to the student's image, and `row(i, e)` the teacher's output for that same view.
    Every replayed store uses that one choice, so features and logits of one sample always name the same view.
    """

    def __init__(self, path: str | Path, params_path: str | Path, seed: int = 0):
        super().__init__(path, None, "pick", seed, VIEW_SALT)
        self.params_path = str(params_path)
        self._params: RowReader | None = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_params"] = None
        return state

    @property
    def params(self) -> RowReader:
        if self._params is None:
            self._params = open_rows(self.params_path)
        return self._params

    @property
    def num_views(self) -> int:
        return int(self.array.shape[1])

    def choice(self, i: int, epoch: int) -> int:
        return view_choice(self.seed, epoch, i, self.num_views)

    def view(self, i: int, epoch: int = 0) -> tuple[int, np.ndarray]:
        v = self.choice(i, epoch)
        return v, np.asarray(self.params[i, v])

    def row(self, i: int, epoch: int = 0) -> np.ndarray:
        return np.asarray(self.array[i, self.choice(i, epoch)], dtype=np.float32)


class SparseRows:
    """Top-k teacher probabilities (`vlmkd.teachers.replay.sparsify_topk`): values N (x K) x k float16 and class
    indices N (x K) x k int32. Row i is [values, indices] as one float32 vector of 2k (indices are exact in float32
    below 2^24 classes), of the same view `ReplayRows` replays (K views) or of the clean view; the task splits and
    densifies it per batch (`vlmkd.losses.kd.densify_topk`)."""

    def __init__(self, values_path: str | Path, indices_path: str | Path, seed: int = 0):
        self.values_path, self.indices_path, self.seed = str(values_path), str(indices_path), int(seed)
        self._values: RowReader | None = None
        self._indices: RowReader | None = None

    def __getstate__(self):
        return {**self.__dict__, "_values": None, "_indices": None}

    def _open(self) -> tuple[RowReader, RowReader]:
        if self._values is None or self._indices is None:
            self._values = open_rows(self.values_path)
            self._indices = open_rows(self.indices_path)
        return self._values, self._indices

    def __len__(self) -> int:
        return len(self._open()[0])

    @property
    def k(self) -> int:
        return int(self._open()[0].shape[-1])

    def row(self, i: int, epoch: int = 0) -> np.ndarray:
        values, indices = self._open()
        if values.ndim == 3:
            i = (i, view_choice(self.seed, epoch, i, values.shape[1]))
        return np.concatenate([np.asarray(values[i], np.float32), np.asarray(indices[i], np.float32)])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.row(i, 0)


class ReplaySparseRows(SparseRows):
    """Top-k rows of replayed views with their N x K x P parameters: serves `view(i, epoch)` like ReplayRows, so a
    run whose only replayed store is a vision teacher's logits still replays the views the teacher saw."""

    def __init__(
        self, values_path: str | Path, indices_path: str | Path, params_path: str | Path, seed: int = 0
    ):
        super().__init__(values_path, indices_path, seed)
        self.params_path = str(params_path)
        self._params: RowReader | None = None

    def __getstate__(self):
        return {**super().__getstate__(), "_params": None}

    def view(self, i: int, epoch: int = 0) -> tuple[int, np.ndarray]:
        if self._params is None:
            self._params = open_rows(self.params_path)
        v = view_choice(self.seed, epoch, i, self._params.shape[1])
        return v, np.asarray(self._params[i, v])
