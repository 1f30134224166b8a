"""Design check for standardized calibration scores, on validation images only (never a test image).

Compares the two ways of fitting the standardisation statistics (`vlmkd.eval.generalized.ScoreNorm`):
  base      each class's cosine over the held-out base images (the val split) alone
  balanced  over the val split's base images and the 5-shot support's novel ones, every class weighing the same
            (what `vlmkd eval` does)
Gamma is chosen exactly as `vlmkd eval` chooses it (the support rule on val + the support). Both are then scored
among all class names on images that neither training, calibration nor the test set use: --per-class base-class
images of --base-split (the demo's teacher pool, which the students never see) and --per-class novel-class training
images outside the support (split ood). Prints raw H, each variant's H and its base-accuracy change, per run and
the mean.

    python scripts/calibration_validation.py /tmp/demo/runs/ood-vl_cls+im_cst+vlprox-s{0,1,2}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.engine.checkpoint import load_student
from vlmkd.eval.generalized import (
    GAMMA_GRID,
    SIGNED_GRID,
    CalibrationSpec,
    ScoreNorm,
    accuracy_curve,
    choose_gamma_support,
    cosine,
    harmonic,
    support_manifest,
)
from vlmkd.eval.predict import student_outputs
from vlmkd.tasks.sources import load_class_text


def per_class_subset(manifest, names: list[str], per_class: int, exclude: set[str], seed: int):
    """(subset, labels as indices into `names`): `per_class` images of each class in `names`, none in `exclude`."""
    rng = np.random.default_rng(seed)
    picks, labels = [], []
    for i, name in enumerate(names):
        c = manifest.class_names.index(name)
        idx = [j for j in np.flatnonzero(manifest.labels == c) if manifest.ids[j] not in exclude]
        if len(idx) < per_class:
            raise SystemExit(f"class {name!r} has {len(idx)} images for validation, fewer than {per_class}")
        picks.append(rng.choice(idx, per_class, replace=False))
        labels.append(np.full(per_class, i))
    order = np.argsort(np.concatenate(picks))
    return manifest.subset(np.concatenate(picks)[order]), np.concatenate(labels)[order]


def run_check(run: Path, seed: int, base_split: str, per_class: int) -> dict[str, float]:
    cfg = load_config(run / "config.yaml", [])
    student, _ = load_student(run)
    m = build_manifests(cfg.data)
    _, texts = load_class_text(cfg, m)
    text = np.concatenate([texts["train"], texts["ood_test"]])
    n_seen = len(texts["train"])
    support, why = support_manifest(m, CalibrationSpec.from_config(cfg.eval, shots=5, seed=seed))
    if support is None or base_split not in m:
        raise SystemExit(f"{run}: {why or f'no split {base_split!r}'}")
    vb, vb_y = per_class_subset(m[base_split], m["train"].class_names, per_class, set(), 123)
    vn, vn_y = per_class_subset(m["ood"], m["ood"].class_names, per_class, set(support.ids), 123)
    parts = {"val": m["val"], "support": support, "vb": vb, "vn": vn}
    outs = {k: student_outputs(student, p, cfg.data, "cpu", desc=k) for k, p in parts.items()}
    feats = {k: o["embedding"] for k, o in outs.items()}
    labels = {k: outs[k]["labels"] for k in ("val", "support")}
    labels.update(vb=vb_y[outs["vb"]["index"]], vn=vn_y[outs["vn"]["index"]])
    cos = {k: cosine(v, text) for k, v in feats.items()}
    raw_val = accuracy_curve(cos["val"], labels["val"], n_seen, GAMMA_GRID[:1])[0]
    raw_b = accuracy_curve(cos["vb"], labels["vb"], n_seen, GAMMA_GRID[:1])[0]
    raw_n = accuracy_curve(cos["vn"], labels["vn"] + n_seen, n_seen, GAMMA_GRID[:1])[0]
    out = {"raw_H": harmonic(raw_b, raw_n)}
    fits = {
        "base": ScoreNorm.fit(feats["val"], text),
        "balanced": ScoreNorm.fit(
            np.concatenate([feats["val"], feats["support"]]),
            text,
            np.concatenate([labels["val"], labels["support"] + n_seen]),
        ),
    }
    for name, norm in fits.items():
        z = {k: norm.apply(v, text) for k, v in cos.items()}
        gamma, _ = choose_gamma_support(
            z["val"], labels["val"], z["support"], labels["support"], n_seen, 0.05, SIGNED_GRID, raw_val
        )
        grid = np.array([gamma])
        b = accuracy_curve(z["vb"], labels["vb"], n_seen, grid)[0]
        n = accuracy_curve(z["vn"], labels["vn"] + n_seen, n_seen, grid)[0]
        out[f"{name}_H"], out[f"{name}_base_change"] = harmonic(b, n), b - raw_b
    return {k: round(100 * float(v), 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "runs", nargs="+", type=Path, help="run folders named ...-s<seed> (the seed picks the support)"
    )
    ap.add_argument("--base-split", default="pool", help="split with base-class images nothing else uses")
    ap.add_argument("--per-class", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        seed = int(run.name.rsplit("-s", 1)[1]) if "-s" in run.name else 0
        rows.append(run_check(run, seed, args.base_split, args.per_class))
        print(json.dumps({"run": run.name, **rows[-1]}), flush=True)
    print(json.dumps({"mean": {k: round(float(np.mean([r[k] for r in rows])), 1) for k in rows[0]}}))


if __name__ == "__main__":
    main()
