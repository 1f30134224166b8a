"""`vlmkd predict MODEL IMAGES...`: top-k classes of image files, folders or @list files."""

from __future__ import annotations

import argparse
import sys


def add_class_args(p: argparse.ArgumentParser, help_text: str) -> None:
    """--classes NAME... and --classes-file FILE (one name per line); shared by predict and export."""
    p.add_argument("--classes", nargs="+", metavar="NAME", help=help_text)
    p.add_argument("--classes-file", metavar="FILE", help="class names, one per line (instead of --classes)")


def classes_from_args(args: argparse.Namespace) -> list[str] | None:
    from vlmkd.errors import ConfigError
    from vlmkd.export.texts import read_classes_file

    if args.classes and args.classes_file:
        raise ConfigError("give --classes or --classes-file, not both")
    return read_classes_file(args.classes_file) if args.classes_file else args.classes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify images with a run folder, student.safetensors or export folder"
    )
    p.add_argument("model", help="run folder, student.safetensors, or a folder written by `vlmkd export`")
    p.add_argument(
        "images", nargs="+", help="image files, folders (recursive) or @list.txt (one path per line)"
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--format", default="table", choices=["table", "json", "csv"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch and TorchScript models)")
    p.add_argument("--out", help="write the predictions to this file instead of stdout")
    add_class_args(p, "zero-shot among these class names (the run's own class texts where it has them)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.errors import ConfigError
    from vlmkd.predict import format_records, load_model, predict

    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be at least 1")
    model = load_model(args.model, args.device, classes_from_args(args))
    records = predict(model, args.images, args.top_k, args.batch_size, args.workers)
    text = format_records(records, args.format)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    bad = [r for r in records if r["error"]]
    if bad:
        print(
            f"vlmkd predict: {len(bad)} of {len(records)} files could not be read and were not predicted "
            f"(e.g. {bad[0]['path']}: {bad[0]['error']}); see their error field",
            file=sys.stderr,
        )
    return 0
