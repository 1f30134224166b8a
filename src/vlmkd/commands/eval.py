"""`vlmkd eval RUN_OR_CHECKPOINT`: re-evaluate a saved student on its run's splits."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="re-evaluate a saved student (run folder, student.safetensors or checkpoint .pt)"
    )
    p.add_argument("target", help="run folder, its student.safetensors, or checkpoints/last.pt")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides of the run's config, e.g. data.root=/new/place"
    )
    p.add_argument("--out", help="write the summary JSON here (default: print only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.engine.checkpoint import load_student
    from vlmkd.errors import ArtifactError
    from vlmkd.eval.evaluate import evaluate_run
    from vlmkd.tasks.build import EvalSpec
    from vlmkd.utils.io import write_json

    target = Path(args.target)
    run_dir = target if target.is_dir() else target.parent.parent if target.suffix == ".pt" else target.parent
    if not (run_dir / "config.yaml").is_file():
        raise ArtifactError(f"{str(run_dir)!r} is not a vlmkd run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    student, meta = load_student(target if target.suffix == ".pt" else run_dir)
    manifests = build_manifests(cfg.data)
    spec = EvalSpec()
    if meta.get("eval", {}).get("mode") == "cosine":
        from vlmkd.tasks.sources import load_class_text

        _, per_split = load_class_text(cfg, manifests)
        spec = EvalSpec("cosine", meta["eval"].get("temperature", 0.07), per_split)
    summary = evaluate_run(student, manifests, cfg, spec)
    if args.out:
        write_json(args.out, summary)
    for split, m in summary["splits"].items():
        parts = [
            f"{k}={100 * m[k]:.2f}"
            for k in ("overall", "mean_per_class", "many", "medium", "few", "tail")
            if m.get(k) is not None
        ]
        print(f"{split}: " + " ".join(parts))
    if not args.out:
        print(json.dumps({k: v for k, v in summary.items() if k in ("overall", "mean_per_class", "few")}))
    return 0
