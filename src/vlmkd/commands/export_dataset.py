"""`vlmkd export-dataset CONFIG OUT`: the recipe's distillation targets as a reinforced WebDataset."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-dataset",
        help="write a reinforced dataset: WebDataset shards with each training image's K replayed views, the "
        "teacher's outputs per view and the description embeddings, plus a dataset card",
        description="Needs clip.view=replay (`vlmkd teach` caches the views; missing caches are computed). "
        "Train from OUT with no teacher, VLM or text encoder: vlmkd train CONFIG data.format=wds data.root=OUT "
        "data.val_fraction=0.",
    )
    p.add_argument("config", help="YAML recipe (clip.view=replay)")
    p.add_argument("out", help="an empty folder for the shards and the card")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. clip.num_views=10")
    p.add_argument("--shard-size", default="256MB", help="target shard size (default 256MB)")
    p.add_argument("--device", default=None, help="device for a teacher whose outputs are not cached yet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.data.pack import parse_size
    from vlmkd.export.reinforced import export_dataset

    cfg = load_config(args.config, args.overrides)
    card = export_dataset(cfg, args.out, parse_size(args.shard_size), args.device or cfg.train.device)
    splits = ", ".join(f"{s} {v['samples']}" for s, v in card["splits"].items())
    print(
        f"reinforced dataset -> {args.out} ({splits} samples; {card['num_views']} views; card reinforced.json)"
    )
    return 0
