"""`vlmkd describe CONFIG`: descriptions of every image of a split, from the configured describer backend."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vlmkd.cli import add_config_args

log = logging.getLogger("vlmkd")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "describe",
        help="describe every image with a VLM (transformers | openai | interrogate); resumable, shardable",
    )
    add_config_args(p)
    p.add_argument(
        "--split", default=None, help="manifest split to describe (default: describe.split = train)"
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="process shard I of N (default: torch.distributed RANK/WORLD_SIZE, else 0/1)",
    )
    p.add_argument(
        "--merge", action="store_true", help="only merge finished shards (checks gaps and duplicates)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="describe a small sample and estimate time and tokens for the whole split",
    )
    p.add_argument("--sample", type=int, default=16, help="images described by --dry-run")
    p.set_defaults(func=run)


def build_teacher(cfg):
    """The contrastive model the interrogate describer ranks phrases with (cfg.clip.name)."""
    from vlmkd.errors import ConfigError
    from vlmkd.teachers import build_clip_teacher
    from vlmkd.teachers.clip import resolve_device

    if not cfg.clip.name:
        raise ConfigError(
            "the interrogate describer needs clip.name (e.g. domain:artifacts/domain_teacher/<id>)"
        )
    return build_clip_teacher(cfg.clip, resolve_device(cfg.describe.device))


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config, save_config
    from vlmkd.data import build_manifests
    from vlmkd.describe import build_describer, describe_manifest, description_key, estimate_cost
    from vlmkd.describe.run import store_folder
    from vlmkd.describe.store import merge_shards
    from vlmkd.errors import ConfigError
    from vlmkd.utils.io import read_json

    cfg = load_config(args.config, args.overrides)
    dc = cfg.describe
    split = args.split or dc.split
    manifests = build_manifests(cfg.data)
    if split not in manifests:
        raise ConfigError(f"split {split!r} does not exist; choose one of: {', '.join(manifests)}")
    manifest = manifests[split]
    teacher = build_teacher(cfg) if dc.backend == "interrogate" else None
    describer = build_describer(dc, teacher)
    if args.dry_run:
        est = estimate_cost(manifest, dc, describer, sample=args.sample)
        json.dump(est, sys.stdout, indent=2)
        print()
        return 0
    if args.merge:
        folder = store_folder(dc.output, description_key(manifest, describer.identity(), dc.n_descriptions))
        if not (folder / "meta.json").is_file():
            raise ConfigError(f"nothing to merge in {str(folder)!r}; run `vlmkd describe` first")
        stats = merge_shards(folder, manifest.ids, int(read_json(folder / "meta.json")["n_descriptions"]))
        print(f"merged {stats['num_rows']} descriptions ({stats['failed']} failed) -> {folder}")
        return 0
    folder = describe_manifest(manifest, dc, describer, shard=args.shard)
    save_config(cfg, folder / "config.yaml")
    meta = read_json(folder / "meta.json")
    if meta.get("merged"):
        print(f"{meta['ok']} descriptions ok, {meta['failed']} failed -> {folder}")
    else:
        print(f"shards written -> {folder} (merge when all processes finish: vlmkd describe CONFIG --merge)")
    return 0
