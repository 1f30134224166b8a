"""`vlmkd data stats CONFIG`: class counts and the Many/Medium/Few split of every split."""

from __future__ import annotations

import argparse
import json

from vlmkd.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets: class counts, long-tail buckets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("stats", help="print class counts and the Many/Medium/Few split")
    add_config_args(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=stats)


def stats(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.data.longtail import bucket_of_counts

    cfg = load_config(args.config, args.overrides)
    ms = build_manifests(cfg.data)
    train = ms["train"]
    counts = train.class_counts()
    buckets = bucket_of_counts(counts, cfg.data.many_threshold, cfg.data.few_threshold)
    info = {
        "format": cfg.data.format,
        "splits": {k: len(v) for k, v in ms.items()},
        "imbalance_factor": round(float(counts.max() / max(counts.min(), 1)), 2),
        "classes": [
            {"id": c, "name": n, "train": int(counts[c]), "bucket": buckets[c]}
            for c, n in enumerate(train.class_names)
        ],
        "buckets": {b: buckets.count(b) for b in ("many", "medium", "few")},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"format {info['format']}: " + ", ".join(f"{k}={v}" for k, v in info["splits"].items()))
    print(f"imbalance (max/min train count): {info['imbalance_factor']}")
    print(
        f"buckets (many > {cfg.data.many_threshold} >= medium >= {cfg.data.few_threshold} > few): "
        + ", ".join(f"{k}={v}" for k, v in info["buckets"].items())
    )
    width = max(len(c["name"]) for c in info["classes"])
    for c in info["classes"]:
        print(f"{c['id']:>5}  {c['name']:<{width}}  {c['train']:>7}  {c['bucket']}")
    return 0
