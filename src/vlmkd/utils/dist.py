"""torch.distributed helpers. Works unchanged for a single process (no env vars) and under torchrun."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vlmkd.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEFAULT_TIMEOUT_MIN = 60.0


def init_distributed(device: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Initialise the process group when launched by torchrun (NCCL on GPU, gloo on CPU).

    `timeout_min` bounds every collective (train.dist_timeout_min): long enough for a rank that waits while
    another builds an artifact or writes a checkpoint, short enough that a dead rank fails the job."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=float(timeout_min))
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def reseed_per_rank(seed: int, rank: int) -> None:
    """After the model is built (identical on every rank): a different stream per rank, so dropout masks differ
    across GPUs as they do across the samples of one process (timm and open_clip reseed with seed + rank).
    Augmentation does not draw from these streams: it is seeded per sample (vlmkd.data.dataset)."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def get_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def is_main() -> bool:
    return get_info().is_main


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "I/N" -> (I, N); None -> torch.distributed RANK/WORLD_SIZE from the environment, else (0, 1)."""

    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} must look like I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


@dataclass(frozen=True)
class WorkSplit:
    """Which shards of a stage this process builds: shard s is ours when s % world == rank. `collective`: the
    ranks share a process group (torchrun), so they meet at barriers and rank 0 merges; otherwise (job arrays,
    `--shard I/N`) whoever finds every shard written merges."""

    rank: int = 0
    world: int = 1
    collective: bool = False

    def mine(self, num_shards: int) -> list[int]:
        return [s for s in range(num_shards) if s % self.world == self.rank]

    def barrier(self) -> None:
        if self.collective:
            barrier()


def work_split(shard: str | tuple[int, int] | None = None) -> WorkSplit:
    """`--shard I/N` (or a tuple) when given, else the process group when one is initialised, else RANK/WORLD_SIZE."""
    if isinstance(shard, tuple):
        return WorkSplit(*shard)
    if shard is None and dist.is_available() and dist.is_initialized():
        return WorkSplit(dist.get_rank(), dist.get_world_size(), dist.get_world_size() > 1)
    return WorkSplit(*parse_shard(shard))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank (rank order)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (ranks may hold different row counts); the backward pass sums every rank's
    gradient for this rank's rows, so a loss computed on the gathered rows trains the rows' producers exactly
    as one process computing it would (times the world size, which DDP's gradient averaging then divides out)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        rank, longest = dist.get_rank(), max(sizes)
        pad = torch.zeros((longest - len(t), *t.shape[1:]), dtype=t.dtype, device=t.device)
        parts = [torch.empty((longest, *t.shape[1:]), dtype=t.dtype, device=t.device) for _ in sizes]
        dist.all_gather(parts, torch.cat([t, pad]).contiguous())
        ctx.rank, ctx.sizes = rank, sizes
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        lo = sum(ctx.sizes[: ctx.rank])
        return grad[lo : lo + ctx.sizes[ctx.rank]], None


def row_counts(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's row count (rank order); [n] in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [n]
    local = torch.tensor([n], dtype=torch.int64, device=device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return [int(p) for p in parts]


def gather_rows(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows (rank order, `sizes` from `row_counts`), keeping gradients to this rank's
    rows (the open_clip gather_with_grad pattern, with a reduce that gloo supports)."""
    if len(sizes) == 1:
        return t
    return _GatherRows.apply(t, sizes)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def build_once(split: WorkSplit | None, is_done: Callable[[], bool], build: Callable[[], None]) -> bool:
    """Build an artifact on one process only: every rank looks first and waits (so no rank sees a half-made
    artifact as missing and another as done), rank 0 builds, the others wait until it is written. Returns
    whether this process built it."""
    split = split or work_split()
    done = is_done()
    split.barrier()
    built = False
    if not done and (split.rank == 0 or not split.collective):
        build()
        built = True
    split.barrier()
    return built


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; [obj] in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj` (picklable), in rank order, on rank `dst` only (None on the others), so what is gathered
    is held once, not once per rank; [obj] in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal rank `src`'s (e.g. after rank 0 restored the best epoch
    from a file the other nodes may not see)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src)
