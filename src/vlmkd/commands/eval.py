"""`vlmkd eval RUN_OR_CHECKPOINT`: re-evaluate a saved student on its run's splits."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vlmkd.commands.predict import add_class_args, classes_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="re-evaluate a saved student (run folder, student.safetensors or checkpoint .pt)"
    )
    p.add_argument("target", help="run folder, its student.safetensors, or checkpoints/last.pt")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides of the run's config, e.g. data.root=/new/place"
    )
    p.add_argument("--out", help="write the summary JSON here (default: print only)")
    p.add_argument(
        "--teacher",
        action="store_true",
        help="evaluate the run's CLIP teacher (clip.name) zero-shot instead, on the same splits and label sets",
    )
    p.add_argument(
        "--few-shot",
        type=int,
        default=0,
        metavar="K",
        help="also adapt to the novel classes from K images each and score them (OOD runs)",
    )
    p.add_argument(
        "--few-shot-method",
        choices=["finetune", "tip_adapter"],
        default="finetune",
        help="fine-tuning with the balanced few-shot sampler (the paper) or training-free retrieval",
    )
    p.add_argument("--few-shot-steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0, help="support-set sampling and fine-tuning seed")
    p.add_argument(
        "--representation",
        action="store_true",
        help="also compare the student's embedding space with the CLIP teacher's: M_rel, M_neigh(3,5,10), "
        "M_vlalign(2,3,5) per split",
    )
    add_class_args(
        p,
        "also score the embedding head among these class names on the run's test images of the listed classes, "
        "as a zero-shot export or `predict --classes` with these names scores them (its model card's figure)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.errors import ArtifactError
    from vlmkd.eval.evaluate import evaluate_run
    from vlmkd.students.io import load_student
    from vlmkd.tasks.build import EvalSpec
    from vlmkd.utils.io import write_json

    target = Path(args.target)
    if not target.exists():  # name what was given, not its parent folder
        raise ArtifactError(
            f"{str(target)!r} does not exist; give a run folder (runs/NAME), its student.safetensors "
            "or a checkpoint .pt"
        )
    run_dir = target if target.is_dir() else target.parent.parent if target.suffix == ".pt" else target.parent
    if not (run_dir / "config.yaml").is_file():
        raise ArtifactError(f"{str(run_dir)!r} is not a vlmkd run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    # the "support" calibration rule chooses gamma on the very support the K-shot score uses
    if args.few_shot:
        cfg.eval.calibration_shots, cfg.eval.calibration_seed = args.few_shot, args.seed
    if args.teacher:
        return _eval_teacher(cfg, args.out)
    student, meta = load_student(target if target.suffix == ".pt" else run_dir)
    manifests = build_manifests(cfg.data)
    spec = EvalSpec()
    if meta.get("eval", {}).get("mode") == "cosine":
        from vlmkd.tasks.sources import load_class_text

        _, per_split = load_class_text(cfg, manifests)
        spec = EvalSpec("cosine", meta["eval"].get("temperature", 0.07), per_split)
    class_names = classes_from_args(args)
    # --few-shot / --classes add to the evaluation the run already has (summary.json of this very student)
    summary = _reusable_summary(run_dir, target, args, cfg) if args.few_shot or class_names else None
    if summary is None:
        summary = evaluate_run(student, manifests, cfg, spec)
        fresh = summary.get("generalized")
    else:
        fresh = _reuse_generalized(summary, run_dir, cfg, student, manifests, spec)
    if cfg.eval.generalized and "generalized" not in summary:
        _why_not_generalized(spec, manifests)
    if fresh:  # `vlmkd export --head zero_shot` and `predict RUN` apply this calibration
        from vlmkd.eval.generalized import save_calibration

        save_calibration(run_dir, fresh)
    if args.few_shot:
        from vlmkd.eval.fewshot import few_shot_eval
        from vlmkd.utils.device import resolve_device

        summary["splits"][f"ood_test_{args.few_shot}shot"] = few_shot_eval(
            student,
            manifests,
            spec.class_text,
            cfg.data,
            args.few_shot,
            args.few_shot_method,
            args.few_shot_steps,
            args.seed,
            spec.temperature,
            str(resolve_device(cfg.train.device)),
        )
    if class_names:
        summary["class_list"] = _class_list(student, meta, run_dir, cfg, manifests, class_names)
    if args.representation:
        summary["representation"] = _representation(student, cfg, manifests)
        for split, r in summary["representation"].items():
            print(f"{split}: " + " ".join(f"{k}={v:.4f}" for k, v in r.items()))
    if args.out:
        write_json(args.out, summary)
    _print_splits(summary)
    if not args.out:
        print(json.dumps({k: v for k, v in summary.items() if k in ("overall", "mean_per_class", "few")}))
    return 0


def _reusable_summary(run_dir: Path, target: Path, args, cfg) -> dict | None:
    """The run's summary.json when it scored this very student under this config (no overrides, not a
    checkpoint, written after student.safetensors), so that --few-shot / --classes do not evaluate it again."""
    from vlmkd.utils.io import read_json

    path, weights = run_dir / "summary.json", run_dir / "student.safetensors"
    if args.overrides or target.suffix == ".pt" or not path.is_file() or not weights.is_file():
        return None
    if path.stat().st_mtime < weights.stat().st_mtime:
        return None
    summary = read_json(path)
    if not summary.get("splits"):
        return None
    print(f"reusing the evaluation in {path} (the splits' metrics of this student)")
    summary["splits"] = {k: v for k, v in summary["splits"].items() if not k.endswith("_generalized")}
    summary.pop("history", None)
    return summary


def _reuse_generalized(summary: dict, run_dir: Path, cfg, student, manifests, spec) -> dict | None:
    """The generalized result for a reused summary: the run's calibration.json when it was chosen as now asked
    (its support's shots and seed: those of --few-shot), else a new one (returned, to be saved)."""
    from vlmkd.eval.evaluate import evaluate_generalized, generalized_split_entries
    from vlmkd.utils.io import read_json

    summary.pop("generalized", None)
    if not cfg.eval.generalized:
        return None
    fresh, path = None, run_dir / "calibration.json"
    rec = read_json(path) if path.is_file() else {}
    support = (rec.get("calibration") or {}).get("support")
    wanted = (cfg.eval.calibration_shots, cfg.eval.calibration_seed)
    if rec.get("result") and (support is None or (support.get("shots"), support.get("seed")) == wanted):
        gen = {
            **rec["result"],
            "gamma": rec["gamma"],
            "scores": rec["scores"],
            "calibration": rec["calibration"],
        }
    else:
        gen = fresh = evaluate_generalized(student, manifests, cfg, spec)
    if gen:
        summary["generalized"] = gen
        summary["splits"].update(generalized_split_entries(gen))
    return fresh


def _class_list(student, meta: dict, run_dir: Path, cfg, manifests, names: list[str]) -> dict:
    """The student's accuracy among `names` on the run's test images of the listed classes, with the class-text
    rows, trained flags and calibration a zero-shot export of these names gets (`vlmkd.eval.class_list`)."""
    from vlmkd.errors import ConfigError
    from vlmkd.eval.class_list import class_list_accuracy, format_class_list
    from vlmkd.eval.generalized import SeenCalibration
    from vlmkd.export.texts import resolve_classes, run_library, seen_mask
    from vlmkd.utils.device import resolve_device

    if student.proj is None:
        raise ConfigError("--classes needs a student with an embedding head (model.head=both or embedding)")
    lib = run_library(run_dir, meta)
    _, rows, _ = resolve_classes(list(names), lib)
    cal = SeenCalibration.of_run(run_dir)
    device = str(resolve_device(cfg.train.device))
    res = class_list_accuracy(
        student, manifests, list(names), rows, seen_mask(names, lib.seen), cal, cfg.data, device
    )
    print(format_class_list(res))
    return res


def _why_not_generalized(spec, manifests) -> None:
    """eval.generalized was asked for but cannot be scored: say why instead of omitting it silently."""
    from vlmkd.errors import ConfigError

    if spec.mode != "cosine":
        why = "the student predicts with a classifier head (closed set); train it with model.head=both/embedding"
    elif "ood_test" not in manifests:
        why = "the run has no novel classes (set data.split.novel_classes or data.split.num_novel)"
    else:
        why = "the novel classes have no class texts; rerun `vlmkd classtext` (it covers every class)"
    raise ConfigError(f"eval.generalized=true cannot be scored: {why}")


def _print_splits(summary: dict) -> None:
    from vlmkd.eval.generalized import format_generalized

    if summary.get("generalized"):
        print(format_generalized(summary["generalized"]))
    for split, m in summary["splits"].items():
        parts = [
            f"{k}={100 * m[k]:.2f}"
            for k in ("overall", "mean_per_class", "many", "medium", "few", "tail")
            if m.get(k) is not None
        ]
        print(f"{split}: " + " ".join(parts))


def _teacher_splits(cfg, manifests, splits, min_size: int = 1):
    """(teacher, device, iterator of (split, manifest, clean-view teacher features, class-text rows)) over the
    splits whose classes all have class texts. The rows are the stored text.class_embeddings that zero-shot KD
    scores against (checked to be the teacher's own text space), so eval reports the teacher KD used."""
    import dataclasses

    import torch

    from vlmkd.errors import ConfigError
    from vlmkd.tasks.sources import check_teacher_texts, class_text_matrix
    from vlmkd.teachers import build_clip_teacher
    from vlmkd.teachers.features import teacher_features
    from vlmkd.utils.device import resolve_device

    if not cfg.clip.name:
        raise ConfigError(
            "this needs the run's CLIP teacher: set clip.name (in the config or as an override)"
        )
    matrix, names, _ = class_text_matrix(cfg)
    row = {n: i for i, n in enumerate(names)}
    device = str(resolve_device(cfg.train.device))
    teacher = build_clip_teacher(cfg.clip, device)
    clean = dataclasses.replace(cfg.clip, view="clean", num_views=1)  # the cached, un-augmented view

    def items():
        for split in splits:
            m = manifests.get(split)
            if m is None or len(m) < min_size or any(n not in row for n in m.class_names):
                continue
            feats = np.asarray(teacher_features(teacher, m, clean, device, cfg.data), dtype=np.float32)
            rows = matrix[[row[n] for n in m.class_names]].astype(np.float32)
            check_teacher_texts(teacher, cfg, m.class_names, rows)
            yield split, m, feats, torch.from_numpy(rows)

    return teacher, device, items()


def _eval_teacher(cfg, out: str | None) -> int:
    """Zero-shot accuracy of the CLIP teacher, each split scored among its own classes (the student's label sets:
    id among the base classes, ood_test among the novel ones), against the class-text rows zero-shot KD uses."""
    import json

    from vlmkd.data import build_manifests
    from vlmkd.errors import ConfigError
    from vlmkd.teachers.features import zero_shot_accuracy
    from vlmkd.utils.io import write_json

    manifests = build_manifests(cfg.data)
    splits = ["test", "val", "id", "ood_test"]
    if cfg.eval.generalized and "val" not in manifests:
        splits.append("train")  # held-out base images to choose gamma on
    spec, why = _teacher_support(cfg, manifests, splits)
    teacher, _, items = _teacher_splits(cfg, manifests, splits)
    summary: dict = {"teacher": teacher.teacher_id, "splits": {}}
    feats, texts = {}, {}
    for split, m, f, w in items:
        metrics = zero_shot_accuracy(f, w, m.labels)
        feats[split], texts[split] = f, w
        if split not in ("train", "support"):
            summary["splits"][split] = {k: v for k, v in metrics.items() if k != "confusion"}
    if cfg.eval.generalized:
        summary["generalized"] = _teacher_generalized(manifests, feats, texts, spec, why)
        summary["generalized"].pop("score_norm", None)  # the teacher is never exported
    if not summary["splits"]:
        raise ConfigError(
            "no split has class texts for all its classes; rerun `vlmkd classtext` over all classes"
        )
    if out:
        write_json(out, summary)
    _print_splits(summary)
    if not out:
        head = summary["splits"].get("test") or next(iter(summary["splits"].values()))
        print(
            json.dumps({"teacher": teacher.teacher_id, **{k: head[k] for k in ("overall", "mean_per_class")}})
        )
    return 0


def _teacher_support(cfg, manifests: dict, splits: list[str]):
    """(calibration spec, why no support) for the teacher's generalized scores; with the support rule, the
    K-shot support joins `manifests` and `splits` (in place) so that its teacher features are computed too."""
    from vlmkd.eval.generalized import CalibrationSpec, support_manifest

    if not cfg.eval.generalized:
        return None, None
    spec = CalibrationSpec.from_config(cfg.eval)
    support, why = support_manifest(manifests, spec) if spec.rule == "support" else (None, None)
    if support is not None:
        manifests["support"] = support
        splits.append("support")
    return spec, why


def _teacher_generalized(manifests, feats: dict, texts: dict, spec, why: str | None) -> dict:
    """The teacher's generalized zero-shot (see vlmkd.eval.generalized), from its clean-view features."""
    from vlmkd.errors import ConfigError
    from vlmkd.eval.generalized import features_generalized

    calib = "val" if "val" in feats else "train"
    if not {"id", "ood_test", calib} <= set(feats):
        raise ConfigError(
            "eval.generalized=true needs novel classes (data.split.novel_classes) with class texts for every "
            "class; rerun `vlmkd classtext` (it covers every class)"
        )
    labels = {k: np.asarray(manifests[k].labels) for k in feats}
    if "support" in feats:  # never score an image gamma was chosen on (X_ood lists share train and test)
        held = set(manifests["support"].ids)
        keep = np.array([sid not in held for sid in manifests["ood_test"].ids], dtype=bool)
        feats = {**feats, "ood_test": feats["ood_test"][keep]}
        labels["ood_test"] = labels["ood_test"][keep]
    return features_generalized(feats, labels, texts["id"], texts["ood_test"], calib, spec, why)


def _representation(student, cfg, manifests) -> dict:
    """The paper's representation metrics between the student's and the teacher's image features (clean view)."""
    from vlmkd.errors import ConfigError
    from vlmkd.eval.predict import student_outputs
    from vlmkd.eval.representation import m_neigh, m_rel, m_vlalign

    _, device, items = _teacher_splits(cfg, manifests, ("id", "ood_test", "test"), min_size=2)
    out: dict = {}
    for split, m, t, w in items:
        s = student_outputs(student, m, cfg.data, device, desc=f"student {split}").get("embedding")
        if s is None:
            raise ConfigError(
                "--representation needs a student with an embedding head (model.head=embedding/both)"
            )
        if s.shape[1] != t.shape[1]:
            raise ConfigError(
                f"student embedding ({s.shape[1]}-d) and teacher features ({t.shape[1]}-d) differ"
            )
        res = {"m_rel": m_rel(s, t)}
        res.update({f"m_neigh@{k}": m_neigh(s, t, k) for k in (3, 5, 10) if k < len(m)})
        res.update({f"m_vlalign@{k}": m_vlalign(s, t, w, k) for k in (2, 3, 5) if k <= len(w)})
        out[split] = res
    return out
