"""The `--shard I/N` / `--merge` options and the process-group start shared by teach, embed and classtext."""

from __future__ import annotations

import argparse
import os

MERGE_HINT = "the last process to finish merges, or rerun the command with --merge once all are done"


def add_shard_args(p: argparse.ArgumentParser, stage: str) -> None:
    """`--shard I/N` and `--merge`: the same split of work as `vlmkd describe` (under torchrun: RANK/WORLD_SIZE)."""
    p.add_argument(
        "--shard",
        default=None,
        help=f"run shard I of N of {stage} (job arrays; under torchrun the ranks split the work by themselves)",
    )
    p.add_argument(
        "--merge", action="store_true", help="compute nothing: merge the finished shards of a --shard I/N run"
    )


def start_workers(args: argparse.Namespace, device: str):
    """(device, WorkSplit): joins the process group under torchrun (gloo on CPU), so ranks share the work."""
    from vlmkd.errors import ConfigError
    from vlmkd.utils.device import resolve_device
    from vlmkd.utils.dist import init_distributed, work_split

    if args.shard and "WORLD_SIZE" in os.environ:
        raise ConfigError("--shard is for job arrays; under torchrun the ranks split the work by themselves")
    info = init_distributed(device)
    return str(resolve_device(device, info.local_rank)), work_split(args.shard)
