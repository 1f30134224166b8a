"""`vlmkd teach CONFIG [--splits train,...]`: cache the CLIP teacher's image features (clip.*) per split."""

from __future__ import annotations

import argparse

from vlmkd.commands._args import add_config_args
from vlmkd.commands._shards import MERGE_HINT, add_shard_args, start_workers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "teach",
        help="cache the CLIP teacher's image features (clean, K augmented views, or K replayed views of the "
        "student's own augmentation with their parameters); resumable, content-keyed",
    )
    add_config_args(p)
    p.add_argument("--splits", default="train", help="comma-separated manifest splits (default: train)")
    p.add_argument("--device", default=None, help="device for the teacher (default: train.device)")
    add_shard_args(p, "teach")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.errors import ConfigError
    from vlmkd.teachers import build_clip_teacher
    from vlmkd.teachers.features import cache_folder, teacher_features

    cfg = load_config(args.config, args.overrides)
    if not cfg.clip.name:
        raise ConfigError("vlmkd teach needs clip.name (e.g. open_clip:ViT-L-14/openai or hf:DIR)")
    if cfg.clip.view == "consistent":
        raise ConfigError("clip.view=consistent runs the teacher live during training; nothing to cache")
    manifests = build_manifests(cfg.data)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in manifests]
    if unknown or not splits:
        raise ConfigError(
            f"split {(unknown or [''])[0]!r} does not exist; choose from: {', '.join(manifests)}"
        )
    device, split = start_workers(args, args.device or cfg.train.device)
    teacher = build_clip_teacher(cfg.clip, device)
    merge = "only" if args.merge else "auto"
    for name in splits:
        feats = teacher_features(
            teacher, manifests[name], cfg.clip, device, cfg.data, shard=args.shard, merge=merge
        )
        folder = cache_folder(teacher, manifests[name], cfg.clip, cfg.data)
        if feats is None:
            print(
                f"{name}: shards of process {split.rank}/{split.world} written -> {folder} (merge: {MERGE_HINT})"
            )
        elif split.rank == 0 or not split.collective:
            shape = " x ".join(str(d) for d in feats.shape)
            print(f"{name}: {shape} {cfg.clip.view} features of {teacher.teacher_id} -> {folder}")
    return 0
