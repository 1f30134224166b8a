"""`vlmkd classtext CONFIG`: per-class texts (templates, enriched sentences) and their embeddings."""

from __future__ import annotations

import argparse

from vlmkd.commands._args import add_config_args
from vlmkd.commands._shards import add_shard_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classtext", help="class prompts + LLM attribute sentences, embedded with the text encoder"
    )
    add_config_args(p)
    p.add_argument(
        "--split", default=None, help="split whose class names are used (default: classtext.split)"
    )
    p.add_argument("--no-embed", action="store_true", help="write the texts only")
    add_shard_args(p, "the class texts' embedding")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.errors import ConfigError
    from vlmkd.text.classtext import build_class_texts, dataset_class_names, load_class_texts

    cfg = load_config(args.config, args.overrides)
    split = args.split or cfg.classtext.split
    manifests = build_manifests(cfg.data)
    if split not in manifests:
        raise ConfigError(f"split {split!r} does not exist; choose one of: {', '.join(manifests)}")
    names = dataset_class_names(manifests, split)  # base and novel classes: one store for both
    from vlmkd.commands._shards import start_workers

    _, work = start_workers(args, cfg.embed.device)  # torchrun: rank 0 writes texts, all ranks embed
    embed_cfg = None if args.no_embed else cfg.embed
    merge = "only" if args.merge else "auto"
    folder = build_class_texts(names, cfg.classtext, embed_cfg, shard=args.shard, merge=merge)
    data = load_class_texts(folder)
    n = sum(len(t) for t in data["texts"])
    if work.rank == 0 or not work.collective:
        print(f"{len(names)} classes, {n} texts (e.g. {data['texts'][0][0]!r}) -> {folder}")
    return 0
