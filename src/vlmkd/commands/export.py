"""`vlmkd export RUN --format onnx|torchscript|safetensors`: a student ready for other runtimes, with a model card."""

from __future__ import annotations

import argparse

from vlmkd.commands.predict import add_class_args, classes_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained student (ONNX, TorchScript, safetensors) with preprocess.json "
        "and MODEL_CARD.md",
    )
    p.add_argument("run", help="run folder (or its student.safetensors)")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"])
    p.add_argument("--out", help="export folder (default: RUN/export-FORMAT[-zero_shot])")
    p.add_argument(
        "--head",
        choices=["classifier", "zero_shot"],
        help="classifier: the classifier head's logits; zero_shot: the embedding head + class-text "
        "embeddings (add classes later with `vlmkd classes add`). Default: the head `vlmkd eval` scores "
        "(zero_shot for a cosine-scored run such as an OOD or combined student, else classifier)",
    )
    add_class_args(
        p, "zero_shot: class names (default: the run's); the run's class texts are used where it has them"
    )
    p.add_argument(
        "--gamma",
        type=float,
        help="zero_shot: calibrated-stacking penalty on the trained classes' scores (default: the one "
        "`vlmkd eval RUN eval.generalized=true` recorded, with its score form, else 0)",
    )
    p.add_argument(
        "--template",
        action="append",
        metavar="TEXT",
        help="zero_shot: class prompt with {name}, repeatable; replaces the run's class texts for every name "
        "(default: the run's texts, else its templates)",
    )
    p.add_argument(
        "--text-encoder", help="zero_shot: text encoder name (default: the run's embed.encoder, or MiniLM)"
    )
    p.add_argument("--text-model", help="zero_shot: text encoder model id or path")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    p.add_argument(
        "--no-latency", action="store_true", help="skip the CPU latency measurement of the model card"
    )
    p.add_argument(
        "--no-accuracy",
        action="store_true",
        help="zero_shot: skip measuring the class list's accuracy on the run's test images for the model card",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.errors import ConfigError
    from vlmkd.export import export_model, read_export

    if args.opset < 17:
        raise ConfigError(f"--opset must be 17 or newer, got {args.opset}")
    out = export_model(
        args.run,
        args.format,
        args.out,
        args.head,
        class_names=classes_from_args(args),
        templates=args.template,
        encoder_name=args.text_encoder,
        encoder_model=args.text_model,
        measure_latency=not args.no_latency,
        measure_accuracy=not args.no_accuracy,
        opset=args.opset,
        gamma=args.gamma,
    )
    rec = read_export(out)
    print(
        f"exported {rec['format']} ({rec['head']} head, outputs {', '.join(rec['outputs'])}) to {out}; "
        f"max |diff| vs PyTorch {rec['max_abs_diff_vs_torch']:.2e}; see {out / 'MODEL_CARD.md'}"
    )
    return 0
