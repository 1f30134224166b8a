"""`vlmkd prepare DATASET --root PATH`: manifests for ImageNet-LT, Places-LT, iNaturalist-2018, CIFAR-LT."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from vlmkd.data.prepare import BENCHMARKS

    p = sub.add_parser(
        "prepare", help="build benchmark manifests from original files and published split lists"
    )
    p.add_argument("dataset", choices=sorted(BENCHMARKS))
    p.add_argument("--root", required=True, help="folder with the original images (or CIFAR python batches)")
    p.add_argument("--lists", help="folder with the split lists / annotation json (default: --root)")
    p.add_argument("--out", help="output folder (default: artifacts/manifests/DATASET)")
    p.add_argument(
        "--no-check", action="store_true", help="do not compare split sizes with the published counts"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.data.prepare import prepare

    ms = prepare(args.dataset, args.root, args.lists, check=not args.no_check)
    out = Path(args.out or f"artifacts/manifests/{args.dataset}")
    for split, m in ms.items():
        m.save(out / f"{split}.json")
        print(f"{split:>6}: {len(m):>7} images, {m.num_classes} classes -> {out / (split + '.json')}")
    print(
        f"use it with: data.format=manifest data.train_list={out}/train.json "
        + " ".join(f"data.{s}_list={out}/{s}.json" for s in ("val", "test") if s in ms)
    )
    return 0
