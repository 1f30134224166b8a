"""Diagnostic: how far calibrated stacking can go on trained OOD students, with cosine and standardized scores.

For each run folder (an embedding student with novel classes, e.g. the demo's `runs/ood-*`), scores X_id and X_ood
among all class names and prints, for cosine scores and for standardized ones (each class's cosine Z-scored over
the held-out images, `vlmkd.eval.generalized.ScoreNorm`):
  raw         base / novel / harmonic mean of the cosine scores at gamma = 0 (the same for both rows)
  calibrated  the same at the gamma `vlmkd eval` chooses with that score form (the run's eval.calibration rule:
              val + 5-shot support)
  bound5      the best harmonic mean over gammas keeping test base accuracy within 5 points of raw, gamma picked
              on the TEST labels: an upper bound for any single-gamma rule, never a way to choose gamma

    python scripts/generalized_bounds.py /tmp/demo/runs/ood-vl_cls+im_cst+vlprox-s{0,1,2}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.engine.checkpoint import load_student
from vlmkd.eval.fewshot import without_support
from vlmkd.eval.generalized import (
    GAMMA_GRID,
    GRIDS,
    CalibrationSpec,
    ScoreNorm,
    accuracy_curve,
    choose_gamma_support,
    cosine,
    support_manifest,
)
from vlmkd.eval.predict import student_outputs
from vlmkd.tasks.sources import load_class_text


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embeddings(run: Path, seed: int) -> tuple[dict, dict, np.ndarray, int]:
    cfg = load_config(run / "config.yaml", [])
    student, _ = load_student(run)
    m = build_manifests(cfg.data)
    _, texts = load_class_text(cfg, m)
    support, why = support_manifest(m, CalibrationSpec.from_config(cfg.eval, shots=5, seed=seed))
    if support is None:
        raise SystemExit(f"{run}: {why}")
    parts = {
        "id": m["id"],
        "ood_test": without_support(m["ood_test"], support),
        "val": m["val"],
        "support": support,
    }
    feats, labels = {}, {}
    for name, part in parts.items():
        out = student_outputs(student, part, cfg.data, "cpu", desc=name)
        feats[name], labels[name] = unit(out["embedding"]), out["labels"]
    return feats, labels, np.concatenate([texts["train"], texts["ood_test"]]), len(texts["train"])


def scores(feats, labels, text, n_seen, form: str, max_base_drop: float = 0.05) -> dict[str, list[float]]:
    # as vlmkd eval fits it: val base images and the support's novel ones, each class weighing the same
    norm = ScoreNorm.fit(
        np.concatenate([feats["val"], feats["support"]]),
        text,
        np.concatenate([labels["val"], labels["support"] + n_seen]),
    )
    cos = {k: cosine(feats[k], text) for k in ("id", "ood_test", "val", "support")}
    raw_val = accuracy_curve(cos["val"], labels["val"], n_seen, GAMMA_GRID[:1])[0]
    raw_base = accuracy_curve(cos["id"], labels["id"], n_seen, GAMMA_GRID[:1])[0]
    raw_novel = accuracy_curve(cos["ood_test"], labels["ood_test"] + n_seen, n_seen, GAMMA_GRID[:1])[0]
    if form == "standardized":
        cos = {k: norm.apply(v, text) for k, v in cos.items()}
    grid = GRIDS[form]
    base = accuracy_curve(cos["id"], labels["id"], n_seen, grid)
    novel = accuracy_curve(cos["ood_test"], labels["ood_test"] + n_seen, n_seen, grid)
    h = np.where(base + novel > 0, 2 * base * novel / np.maximum(base + novel, 1e-12), 0.0)
    gamma, _ = choose_gamma_support(
        cos["val"], labels["val"], cos["support"], labels["support"], n_seen, max_base_drop, grid, raw_val
    )
    i = int(np.argmin(np.abs(grid - gamma)))
    j = int(np.argmax(np.where(base >= raw_base - max_base_drop, h, -1.0)))
    raw_h = 2 * raw_base * raw_novel / max(raw_base + raw_novel, 1e-12)
    out = {"raw": [round(100 * float(x), 1) for x in (raw_base, raw_novel, raw_h)]}
    for name, k in (("calibrated", i), ("bound5", j)):
        out[name] = [round(100 * float(x[k]), 1) for x in (base, novel, h)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "runs", nargs="+", type=Path, help="run folders named ...-s<seed> (the seed picks the support)"
    )
    args = ap.parse_args()
    for run in args.runs:
        seed = int(run.name.rsplit("-s", 1)[1]) if "-s" in run.name else 0
        feats, labels, text, n_seen = embeddings(run, seed)
        for form in ("cosine", "standardized"):
            res = scores(feats, labels, text, n_seen, form)
            print(json.dumps({"run": run.name, "scores": form, "[base, novel, H]": res}), flush=True)


if __name__ == "__main__":
    main()
