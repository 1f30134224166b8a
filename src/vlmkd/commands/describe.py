"""`vlmkd describe CONFIG`: descriptions of every image of a split, from the configured describer backend."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vlmkd.commands._args import add_config_args

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
    from vlmkd.utils.device import resolve_device

    if not cfg.clip.name:
        raise ConfigError(
            "the interrogate describer needs clip.name (e.g. domain:artifacts/domain_teacher/<id>)"
        )
    return build_clip_teacher(cfg.clip, str(resolve_device(cfg.describe.device)))


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config, save_config
    from vlmkd.data import build_manifests
    from vlmkd.describe import build_describer, describe_manifest, estimate_cost, merge_view
    from vlmkd.errors import ArtifactError, BackendError, ConfigError

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
        if est["failure_rate"] >= 1.0:
            raise BackendError(f"dry run: every request failed: {(est['failure_reasons'] or ['?'])[0]}")
        return 0
    if args.merge:
        stats = merge_view(manifest, dc, describer.identity(), int(dc.n_descriptions))
        if stats is None:
            raise ArtifactError(
                "descriptions are still missing; run the remaining `vlmkd describe` processes"
            )
        print(f"merged {stats.get('num_rows')} descriptions ({stats.get('failed')} failed)")
        return 0
    folder = describe_manifest(manifest, dc, describer, shard=args.shard, on_bad_image=cfg.data.on_bad_image)
    if (folder / "meta.json").is_file():
        save_config(cfg, folder / "config.yaml")
        _print_done(folder)
    else:
        print(f"rows written -> {dc.output} (merge when all processes finish: vlmkd describe CONFIG --merge)")
    return 0


def _print_done(folder) -> None:
    from vlmkd.utils.io import read_json

    meta = read_json(folder / "meta.json")
    print(f"{meta['ok']} descriptions ok, {meta['failed']} failed, {meta['skipped']} skipped -> {folder}")
    for name in meta.get("skipped_files", [])[:5]:
        print(f"  skipped {name}")
