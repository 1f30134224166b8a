"""`vlmkd demo [--quick] [--seeds N] [--out DIR]`: the offline end-to-end demo on Fashion-MNIST."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="offline demo: VLM-KD + OOD distillation on Fashion-MNIST (in-house teacher)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a smaller, faster run (under 3 minutes on 2 CPU cores)"
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="student seeds per method (mean and std are reported)"
    )
    p.add_argument("--out", default="demo_out", help="output folder (summary.json, report.md, plots, runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--only", choices=["longtail", "ood"], help="run one part only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.demo import run_demo
    from vlmkd.errors import ConfigError

    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    parts = (args.only,) if args.only else ("longtail", "ood")
    run_demo(
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        device=args.device,
        data_root=args.data_root,
        parts=parts,
    )
    return 0
