"""Building one row-array artifact (teacher features, teacher logits, text embeddings) with many processes.

The rows are cut into shards of contiguous spans; shard s is computed by process `s % world` (the rule `describe`
uses, `vlmkd.utils.dist.work_split`). Each shard is written atomically as `<parts>/shard_NNNNN.npy`, so a killed run
resumes from its finished shards. Then one process merges:
- under torchrun (a process group): every rank waits at a barrier, rank 0 merges, the others wait at a second
  barrier and only then read the merged file; rank 0 removes the shards after that barrier, when no rank can still
  be reading them;
- as a job array (`--shard I/N`, no process group): the process that finds every shard written merges (the last
  finisher, or an explicit `--merge` run). It keeps the shards (another job may be merging the same moment), unless
  it is the only process (1/1) or the explicit merge step.

`vlmkd.utils.dist.build_once` is the same protocol for an artifact that one process builds whole: every rank looks, waits, rank 0
builds, the others wait again, then all read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vlmkd.errors import ArtifactError
from vlmkd.utils.dist import WorkSplit
from vlmkd.utils.io import atomic_path, load_npy, save_npy

log = logging.getLogger("vlmkd")


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of at most `size` rows covering n rows (one empty span for n = 0)."""
    size = max(1, int(size))
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)] or [(0, 0)]


class ShardedRows:
    """The shards of one artifact under `parts`; `compute(lo, hi)` returns rows [lo, hi) as an array."""

    def __init__(
        self,
        parts: Path,
        row_spans: list[tuple[int, int]],
        row_shape: tuple[int, ...],
        split: WorkSplit,
        label: str,
    ):
        self.parts, self.spans, self.row_shape = Path(parts), row_spans, tuple(row_shape)
        self.split, self.label = split, label

    def path(self, s: int) -> Path:
        return self.parts / f"shard_{s:05d}.npy"

    def done(self, s: int) -> bool:
        lo, hi = self.spans[s]
        try:
            return load_npy(self.path(s)).shape == (hi - lo, *self.row_shape)
        except (ValueError, OSError):
            return False  # absent, or unreadable (writes are atomic, so a foreign file): compute it

    def todo(self) -> list[int]:
        return [s for s in self.split.mine(len(self.spans)) if not self.done(s)]

    def compute(self, compute: Callable[[int, int], np.ndarray], todo: list[int] | None = None) -> int:
        """Compute and write this process's missing shards, then (torchrun) wait for every rank's; returns how many
        shards this process computed."""
        todo = self.todo() if todo is None else todo
        for s in todo:
            lo, hi = self.spans[s]
            save_npy(self.path(s), np.ascontiguousarray(compute(lo, hi)))
            log.info(
                "%s: shard %d/%d (rows %d-%d) computed by process %d/%d",
                self.label,
                s + 1,
                len(self.spans),
                lo,
                hi,
                self.split.rank,
                self.split.world,
            )
        self.split.barrier()
        return len(todo)

    def missing(self) -> list[int]:
        return [s for s in range(len(self.spans)) if not self.path(s).is_file()]

    @property
    def merger(self) -> bool:
        """Whether this process merges: rank 0 under torchrun; else any process that finds every shard."""
        if self.split.collective and self.split.rank != 0:
            return False
        return not self.missing()

    def concatenate(self, out: Path, dtype=np.float16) -> None:
        """Shards -> `out` (n x row_shape) through a memory map: never the whole array in RAM."""
        n = self.spans[-1][1]
        shape = (n, *self.row_shape)
        if n == 0:
            save_npy(out, np.zeros(shape, dtype))
            return
        with atomic_path(out) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            for s, (lo, hi) in enumerate(self.spans):
                arr[lo:hi] = self.read(s)
            arr.flush()
            del arr

    def read(self, s: int) -> np.ndarray:
        try:
            return load_npy(self.path(s))
        except FileNotFoundError:
            raise ArtifactError(
                f"{self.label}: shard {str(self.path(s))!r} vanished during the merge (another process merged "
                "and removed it?); rerun the same command"
            ) from None

    def finish(self, explicit_merge: bool = False) -> None:
        """After the merge: (torchrun) wait until every rank is past it, then remove the shards where no other
        process can still read them."""
        self.split.barrier()
        only_process = self.split.world == 1
        if (self.split.collective and self.split.rank == 0) or only_process or explicit_merge:
            for s in range(len(self.spans)):
                self.path(s).unlink(missing_ok=True)
            if self.parts.is_dir() and not any(self.parts.iterdir()) and self.parts.name == "shards":
                self.parts.rmdir()

    @staticmethod
    def remove_leftovers(parts: Path) -> None:
        """The shards a job array kept after its merge; removed by the explicit merge step."""
        for path in Path(parts).glob("shard_*.npy"):
            path.unlink(missing_ok=True)

    def waiting_message(self, command: str) -> str:
        return (
            f"{self.label}: {len(self.missing())} of {len(self.spans)} shards still missing (other processes); "
            f"the last one to finish merges, or run `{command} --merge` when all are done"
        )
