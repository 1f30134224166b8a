"""`vlmkd train CONFIG [overrides]` (also under torchrun: `torchrun --nproc_per_node N -m vlmkd train ...`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlmkd.commands._args import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a student (any method: losses are chosen by the config)")
    add_config_args(p, required=False)
    p.add_argument(
        "--like",
        metavar="RUN",
        help="retrain on exactly the artifacts RUN used (its artifacts.json; CONFIG defaults to RUN's config.yaml)",
    )
    p.add_argument(
        "--run-dir", help="run folder (default: train.output_dir/train.name or a timestamped name)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run folder from checkpoints/last.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.compose.train import make_run_dir, train
    from vlmkd.utils.dist import cleanup
    from vlmkd.utils.provenance import expect, warn_if_moved

    cfg, stem = _config(args)
    run_dir = Path(args.run_dir) if args.run_dir else make_run_dir(cfg, stem)
    if not args.resume and os.environ.get("RANK", "0") == "0":
        warn_if_moved(cfg.text, run_dir, stem)
    try:
        summary = train(cfg, run_dir, resume=args.resume)
    finally:
        expect({})
        cleanup()
    if summary:
        print(f"run folder: {run_dir}")
        for split, m in summary.get("splits", {}).items():
            for k in ("overall", "mean_per_class", "many", "medium", "few", "tail"):
                if m.get(k) is not None:
                    print(f"  {split:<8} {k:<15} {100 * m[k]:6.2f}")
    return 0


def _config(args: argparse.Namespace):
    """(config, run-name stem); with --like RUN: RUN's config (unless CONFIG is given) pinned to RUN's artifacts."""
    from vlmkd.config import load_config
    from vlmkd.errors import ConfigError
    from vlmkd.utils.provenance import pin_overrides

    if not args.like:
        if not args.config:
            raise ConfigError("vlmkd train needs CONFIG (a YAML recipe) or --like RUN")
        return load_config(args.config, args.overrides), Path(args.config).stem
    like = Path(args.like)
    pins = pin_overrides(like)  # one-line error when an artifact RUN used is gone
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config:  # `vlmkd train --like RUN key=value`: no CONFIG, only overrides
        config, overrides = None, [config, *overrides]
    config = config or like / "config.yaml"
    return load_config(config, [*overrides, *pins]), Path(like).name
