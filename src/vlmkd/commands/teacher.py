"""`vlmkd teacher train CONFIG`: train the domain teacher (a CLIP-style image tower in a frozen text encoder's
space) where no pretrained CLIP fits the domain; `vlmkd teacher eval PATH CONFIG`: its zero-shot accuracy."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlmkd.commands._args import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="train or evaluate the in-house domain teacher (LiT-style)")
    tsub = p.add_subparsers(dest="teacher_cmd", required=True, metavar="{train,eval}")
    t = tsub.add_parser("train", help="train an image tower contrastively into the frozen `embed` text space")
    add_config_args(t)
    t.add_argument("--device", default=None, help="default: train.device (auto: cuda when available)")
    t.set_defaults(func=run_train)
    e = tsub.add_parser("eval", help="zero-shot accuracy of a domain teacher, plain vs enriched class texts")
    e.add_argument("teacher_dir", help="a folder written by `vlmkd teacher train`")
    add_config_args(e)
    e.add_argument("--split", default="test", help="manifest split to evaluate on (default: test)")
    e.set_defaults(func=run_eval)


def _device(cfg: Any, flag: str | None) -> str:
    from vlmkd.utils.device import resolve_device

    return str(resolve_device(flag or cfg.train.device))


def _class_texts(cfg: Any, names: list[str], encoder: Any, enriched: bool) -> list[list[str]]:
    from vlmkd.errors import ConfigError
    from vlmkd.text.classtext import build_class_texts, load_class_texts

    ct = replace(cfg.classtext, enriched=enriched)
    if enriched and not (ct.sentences_file or ct.sentences_backend):
        raise ConfigError(
            "domain.texts=enriched needs class sentences: set classtext.sentences_file (JSON or text) or "
            "classtext.sentences_backend, or use domain.texts=templates"
        )
    return load_class_texts(build_class_texts(names, ct, encoder=encoder))["texts"]


def _setup(args: argparse.Namespace, split: str):
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.errors import ConfigError
    from vlmkd.text.encoders import build_text_encoder

    cfg = load_config(args.config, args.overrides)
    manifests = build_manifests(cfg.data)
    if split not in manifests:
        raise ConfigError(f"split {split!r} does not exist here; choose one of: {', '.join(manifests)}")
    encoder = build_text_encoder(cfg.embed.encoder, cfg.embed.model, cfg.embed.revision, cfg.embed.device)
    return cfg, manifests, encoder


def _report(out: dict[str, Any], folder: Path, split: str) -> None:
    from vlmkd.utils.io import write_json

    write_json(folder / f"zero_shot_{split}.json", out)
    for kind, m in out.items():
        print(
            f"zero-shot on {split} ({kind} class texts): top-1 {100 * m['overall']:.2f}  "
            f"mean per class {100 * m['mean_per_class']:.2f}"
        )


def run_train(args: argparse.Namespace) -> int:
    import os

    from vlmkd.teachers.domain import fit_domain_teacher, settings_from_config, zero_shot_eval
    from vlmkd.utils.logging import MetricsLogger

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would train the same tower into one folder
        from vlmkd.errors import ConfigError

        raise ConfigError(
            "vlmkd teacher train runs in one process; run it without torchrun (one GPU trains the small tower), "
            "then give its folder to the distributed stages as clip.name=domain:DIR"
        )
    cfg, manifests, encoder = _setup(args, "train")
    split = cfg.domain.split if cfg.domain.split in manifests else None
    if split is None:
        from vlmkd.errors import ConfigError

        raise ConfigError(
            f"domain.split={cfg.domain.split!r} does not exist; choose one of: {', '.join(manifests)} "
            "(the pool split exists when data.longtail.pool_per_class > 0)"
        )
    if cfg.domain.texts not in ("enriched", "templates"):
        from vlmkd.errors import ConfigError

        raise ConfigError(f"domain.texts must be enriched or templates, got {cfg.domain.texts!r}")
    pool, device = manifests[split], _device(cfg, args.device)
    texts = _class_texts(cfg, pool.class_names, encoder, cfg.domain.texts == "enriched")
    info = {"name": cfg.embed.encoder, "model": cfg.embed.model, "encoder_id": encoder.encoder_id}
    Path(cfg.domain.output).mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(cfg.domain.output, tensorboard=False)  # domain.output/metrics.jsonl
    teacher, folder = fit_domain_teacher(
        pool,
        texts,
        encoder,
        info,
        cfg.data,
        settings_from_config(cfg.domain),
        cfg.domain.output,
        device,
        log=logger.log,
    )
    size = teacher.preprocess_config()["image_size"]
    print(f"domain teacher ({len(pool)} {split} images, {pool.num_classes} classes, {size} px) -> {folder}")
    print(f"use it with: clip.name=domain:{folder}")
    if "test" in manifests:
        plain = _class_texts(cfg, manifests["test"].class_names, encoder, enriched=False)
        sets = {"plain": plain}
        if cfg.domain.texts == "enriched":
            sets["enriched"] = _class_texts(cfg, manifests["test"].class_names, encoder, enriched=True)
        _report(zero_shot_eval(teacher, manifests["test"], sets, device), folder, "test")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from vlmkd.teachers.domain import load_domain_teacher, zero_shot_eval

    cfg, manifests, encoder = _setup(args, args.split)
    device = _device(cfg, None)
    teacher = load_domain_teacher(args.teacher_dir, device, text_encoder=encoder)
    names = manifests[args.split].class_names
    sets = {"plain": _class_texts(cfg, names, encoder, enriched=False)}
    if cfg.classtext.sentences_file or cfg.classtext.sentences_backend:
        sets["enriched"] = _class_texts(cfg, names, encoder, enriched=True)
    _report(zero_shot_eval(teacher, manifests[args.split], sets, device), Path(args.teacher_dir), args.split)
    return 0
