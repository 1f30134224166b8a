"""`vlmkd train CONFIG [overrides]` (also under torchrun: `torchrun --nproc_per_node N -m vlmkd train ...`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmkd.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a student (any method: losses are chosen by the config)")
    add_config_args(p)
    p.add_argument(
        "--run-dir", help="run folder (default: train.output_dir/train.name or a timestamped name)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run folder from checkpoints/last.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.engine.trainer import make_run_dir, train
    from vlmkd.utils.dist import cleanup

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else make_run_dir(cfg, Path(args.config).stem)
    try:
        summary = train(cfg, run_dir, resume=args.resume)
    finally:
        cleanup()
    if summary:
        print(f"run folder: {run_dir}")
        for split, m in summary.get("splits", {}).items():
            for k in ("overall", "mean_per_class", "many", "medium", "few", "tail"):
                if m.get(k) is not None:
                    print(f"  {split:<8} {k:<15} {100 * m[k]:6.2f}")
    return 0
