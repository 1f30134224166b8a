"""`vlmkd data stats CONFIG`: class counts and the Many/Medium/Few split of every split, counting readable images
only; unreadable files are listed by name. `vlmkd data pack CONFIG OUT`: the dataset as WebDataset shards."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from vlmkd.commands._args import add_config_args

if TYPE_CHECKING:  # the CLI imports every command at start-up: data modules load only when one runs
    import numpy as np

    from vlmkd.data.manifest import Manifest


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets: class counts, long-tail buckets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("stats", help="print class counts and the Many/Medium/Few split")
    add_config_args(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument(
        "--decode",
        action="store_true",
        help="decode every image to find truncated files too (default: a cheap header check of every file)",
    )
    s.set_defaults(func=stats)
    k = dsub.add_parser(
        "pack",
        help="write the dataset as size-targeted WebDataset shards (+ a manifest per split)",
        description="Every split of the configured dataset (before long-tail subsampling) as tar shards "
        "OUT/<split>-000000.tar ..., with OUT/classes.txt, OUT/<split>.json (a manifest over the shards) and "
        "OUT/pack.json. Train from them with data.format=wds data.root=OUT.",
    )
    k.add_argument("config", help="YAML recipe whose data section names the input")
    k.add_argument("out", help="an empty folder for the shards")
    k.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/images")
    k.add_argument("--shard-size", default="256MB", help="target shard size (default 256MB)")
    k.set_defaults(func=pack)


def stats(args: argparse.Namespace) -> int:
    import numpy as np

    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.data.images import unreadable_files
    from vlmkd.data.longtail import bucket_of_counts

    cfg = load_config(args.config, args.overrides)
    ms = build_manifests(cfg.data, every_class_trained=False)  # reports a class without images; train refuses
    bad = unreadable_files(ms, cfg.data.max_image_pixels or None, decode=args.decode)
    train = ms["train"]
    counts = np.bincount(train.labels[_readable(train, bad)], minlength=train.num_classes)
    buckets = bucket_of_counts(counts, cfg.data.many_threshold, cfg.data.few_threshold)
    if (counts == 0).any():
        from vlmkd.utils.logging import log

        empty = [train.class_names[c] for c in np.nonzero(counts == 0)[0]]
        log.warning(
            "data stats: %d classes have no readable training image (%s); train refuses a class without "
            "images: add images, remove the class, or hold it out as novel (data.split.novel_classes)",
            len(empty),
            ", ".join(map(repr, empty[:5])),
        )
    info = {
        "format": cfg.data.format,
        "splits": {k: int(_readable(v, bad).sum()) for k, v in ms.items()},
        "unreadable": {"count": len(bad), "files": bad},
        "imbalance_factor": round(float(counts.max() / max(counts.min(), 1)), 2),
        "classes": [
            {"id": c, "name": n, "train": int(counts[c]), "bucket": buckets[c]}
            for c, n in enumerate(train.class_names)
        ],
        "buckets": {b: buckets.count(b) for b in ("many", "medium", "few")},
    }
    if "ood" in ms:  # open-vocabulary split: name the classes (dataset ids follow sorted folder names)
        src = train.source
        novel, base = ms["ood"].class_names, train.class_names
        info["base_classes"] = dict(zip(src.get("base_classes", range(len(base))), base))
        info["novel_classes"] = dict(zip(src.get("novel_classes", range(len(novel))), novel))
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    _print_unreadable(bad, args.decode)
    print(f"format {info['format']}: " + ", ".join(f"{k}={v}" for k, v in info["splits"].items()))
    print(f"imbalance (max/min train count): {info['imbalance_factor']}")
    print(
        f"buckets (many > {cfg.data.many_threshold} >= medium >= {cfg.data.few_threshold} > few): "
        + ", ".join(f"{k}={v}" for k, v in info["buckets"].items())
    )
    width = max(len(c["name"]) for c in info["classes"])
    for c in info["classes"]:
        print(f"{c['id']:>5}  {c['name']:<{width}}  {c['train']:>7}  {c['bucket']}")
    for kind in ("base", "novel"):
        if f"{kind}_classes" in info:
            named = ", ".join(f"{n} (id {i})" for i, n in info[f"{kind}_classes"].items())
            print(f"{kind} classes: {named}")
    return 0


def pack(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.data.formats import FORMATS
    from vlmkd.data.pack import pack as pack_shards
    from vlmkd.data.pack import parse_size

    cfg = load_config(args.config, args.overrides)
    size = parse_size(args.shard_size)
    info = pack_shards(FORMATS.build(cfg.data.format, cfg=cfg.data), args.out, size, cfg.data.on_bad_image)
    for split, s in info["splits"].items():
        skipped = f", {len(s['skipped'])} unreadable skipped" if s["skipped"] else ""
        print(f"{split}: {s['samples']} samples in {len(s['shards'])} shards{skipped} -> {s['spec']}")
    print(
        f"train from them: data.format=wds data.root={args.out}  (or data.format=manifest with <split>.json)"
    )
    return 0


def _readable(m: Manifest, bad: dict[str, str]) -> np.ndarray:
    import numpy as np

    if not bad or m.paths is None:
        return np.ones(len(m), dtype=bool)
    return np.array([p not in bad for p in m.paths], dtype=bool)


def _print_unreadable(bad: dict[str, str], decoded: bool) -> None:
    if not bad:
        return
    print(f"unreadable: {len(bad)} files, not counted below (data.on_bad_image=skip skips them):")
    for reason in bad.values():
        print(f"  {reason}")
    if not decoded:
        print("  (header check only; --decode also finds truncated pixel data)")
