"""Generalized zero-shot: base and novel images each scored among ALL class names, raw and calibrated.

Scored among base + novel names together, a distilled student sends most novel images to a base class (it was
trained on those: the seen-class bias). Calibrated stacking (Chao et al., ECCV 2016) subtracts one constant gamma
from the score (cosine similarity, or standardized: see "Scores" below) of every seen (base) class before the
argmax. Gamma is one scalar chosen on a grid (0 to 2 in cosine units, step 0.001) by one of two rules
(`eval.calibration`); neither sees a test image:

- "support" (the default when the run has novel-class training images): the gamma that maximises the harmonic mean
  of base accuracy on held-out base images (the `val` split, else the base training images) and novel accuracy on
  the K-shot support (K training images per novel class, drawn exactly as the K-shot evaluation draws them, same
  seed), among the gammas whose held-out base accuracy stays within `eval.calibration_max_base_drop` (0.05) of
  the raw cosine scores (gamma = 0). It uses the labels of those K x N novel training images, the data few-shot
  adaptation is given anyway.
  Without the cap (`calibration_max_base_drop=null`) H alone decides, and on the demo's students it gave up 9-30
  base points with a 25-image support: too noisy to be a default.
- "base_tolerance" (pure zero-shot: no novel-class label at all): the largest gamma for which the held-out base
  images' accuracy among all names stays within `eval.calibration_tolerance` of the raw cosine scores, for every
  smaller gamma too. In words: remove as much seen-class bias as the base classes can afford. Conservative by design.

Scores (`eval.calibration_scores`). One constant cannot undo a bias that differs by class: a trained class's cosine
is high on every image that resembles it, a novel name's is low on everything. "standardized" scores first put
every class on one scale: each class's cosine minus its mean over held-out images, divided by its standard
deviation there (Z-normalisation), times one scalar `scale` (the mean of those deviations) so that scores, gamma
and the softmax temperature stay in cosine units. The held-out images are those gamma is chosen on: the base
images of the calibration split and, with the support rule, the K-shot support of the novel classes, every class
weighing the same. Statistics over base images alone would themselves be lopsided: each base class's column would
include its own images, no novel column would. They live in image space (the class-balanced mean unit embedding m
and covariance S: class text w has mean w.m and variance w'Sw), so a class named after training, at export or in
`predict --classes`, is standardised exactly like the rest. Gamma then runs over a signed grid (-1 to 1):
standardising can overcorrect, and a negative gamma gives the trained classes back some of their score. "auto"
(the default) calibrates both forms with the support rule and keeps the one with the higher held-out objective
(ties: cosine); with base_tolerance, which has no novel-class label to compare them with, auto means cosine. Base
accuracy is always capped against the raw cosine scores at gamma = 0.

    spec = CalibrationSpec.from_config(cfg.eval, shots=5, seed=0)
    res = student_generalized(student, manifests, class_text, cfg.data, "cpu", spec)
    res["base"], res["novel"], res["harmonic"], res["gamma"], res["calibrated"]["harmonic"], res["calibration"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ConfigError
from vlmkd.eval.calibration import (
    GAMMA_GRID,
    GRID_TEXTS,
    GRIDS,
    MAX_CALIBRATION_IMAGES,
    RULES,
    SCORE_FORMS,
    SCORE_NORM_FILE,
    SIGNED_GRID,
    SUPPORT_NOTE,
    CalibrationSpec,
    ScoreNorm,
    SeenCalibration,
    accuracy_curve,
    calibrated_predictions,
    choose_gamma,
    choose_gamma_support,
    cosine,
    harmonic,
    mean_per_class,
    rule_text,
)
from vlmkd.eval.fewshot import draw_support, without_support
from vlmkd.eval.generalized_report import format_generalized, generalized_table_lines, mean_generalized
from vlmkd.eval.predict import sharded_outputs
from vlmkd.utils.io import write_json

__all__ = [
    "CalibrationSpec",
    "GAMMA_GRID",
    "GRIDS",
    "GRID_TEXTS",
    "MAX_CALIBRATION_IMAGES",
    "RULES",
    "SCORE_FORMS",
    "SCORE_NORM_FILE",
    "SIGNED_GRID",
    "SUPPORT_NOTE",
    "ScoreNorm",
    "SeenCalibration",
    "accuracy_curve",
    "calibrated_predictions",
    "calibration_manifest",
    "choose_gamma",
    "choose_gamma_support",
    "cosine",
    "features_generalized",
    "format_generalized",
    "generalized_table_lines",
    "generalized_zero_shot",
    "harmonic",
    "mean_generalized",
    "mean_per_class",
    "rule_text",
    "save_calibration",
    "student_generalized",
    "support_manifest",
]


def _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen: int, gamma: float) -> dict[str, Any]:
    base = mean_per_class(calibrated_predictions(base_cos, n_seen, gamma), base_labels)
    novel = mean_per_class(calibrated_predictions(novel_cos, n_seen, gamma), novel_labels + n_seen)
    return {"base": base, "novel": novel, "harmonic": harmonic(base, novel)}


def _calibrate(form, calib, support, n_seen: int, spec: CalibrationSpec, reference: float):
    """(gamma, objective or None) of one score form; `calib` / `support`: (scores, labels) or None."""
    grid = GRIDS[form]
    if support is not None:
        return choose_gamma_support(*calib, *support, n_seen, spec.max_base_drop, grid, reference)
    return choose_gamma(*calib, n_seen, spec.tolerance, grid, reference), None


def generalized_zero_shot(
    base_cos: np.ndarray,
    base_labels: np.ndarray,
    novel_cos: np.ndarray,
    novel_labels: np.ndarray,
    n_seen: int,
    calib_cos: np.ndarray,
    calib_labels: np.ndarray,
    spec: CalibrationSpec | None = None,
    calib_split: str = "val",
    support_cos: np.ndarray | None = None,
    support_labels: np.ndarray | None = None,
    fallback: str | None = None,
    standardize: Any = None,
) -> dict[str, Any]:
    """Mean per-class accuracy of base images (labels 0..n_seen-1) and novel images (labels 0..N-1, columns
    n_seen.. of the cosine matrices) among all n_seen + N classes, raw and with the gamma `spec` chooses (the
    support rule needs support_cos/labels; without them it falls back to base_tolerance, saying why).
    `standardize` (cosine matrix -> standardized scores, e.g. `ScoreNorm.apply`) enables that score form."""
    spec = spec or CalibrationSpec()
    cal: dict[str, Any] = {"rule": spec.rule, "split": calib_split, "images": len(calib_labels)}
    use_support = spec.rule == "support" and support_cos is not None and len(calib_labels)
    if not use_support:
        if spec.rule == "support":
            cal["fallback"] = fallback or "no K-shot support or held-out base images were given"
        cal["rule"], cal["tolerance"] = "base_tolerance", spec.tolerance
    forms = (
        [spec.scores] if spec.scores != "auto" else ["cosine", "standardized"] if use_support else ["cosine"]
    )
    if standardize is None:
        if spec.scores == "standardized":
            raise ConfigError(
                "eval.calibration_scores=standardized needs 2 or more held-out image embeddings to standardise "
                "with; use eval.calibration_scores=auto or cosine"
            )
        forms = ["cosine"]
    calib_labels = np.asarray(calib_labels)
    reference = (
        accuracy_curve(calib_cos, calib_labels, n_seen, GAMMA_GRID[:1])[0] if len(calib_labels) else 0.0
    )
    best: tuple | None = None
    compared: dict[str, float] = {}
    for form in forms:

        def scored(x, form=form):
            return x if form == "cosine" or x is None else standardize(x)

        support = (scored(support_cos), support_labels) if use_support else None
        gamma, objective = _calibrate(
            form, (scored(calib_cos), calib_labels), support, n_seen, spec, reference
        )
        if objective is not None:
            compared[form] = objective["harmonic"]
        if best is None or (objective is not None and objective["harmonic"] > best[2]["harmonic"] + 1e-12):
            best = (form, gamma, objective, scored)
    form, gamma, objective, scored = best
    if use_support:
        cal["objective"], cal["max_base_drop"] = objective, spec.max_base_drop
        cal["support"] = {
            "split": "ood",
            "shots": spec.shots,
            "seed": spec.seed,
            "images": len(support_labels),
        }
    cal["scores"] = form
    if len(compared) > 1:
        cal["forms_compared"] = compared
    cal["grid"], cal["description"] = GRID_TEXTS[form], rule_text(cal)
    raw = _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen, 0.0)
    return {
        **raw,
        "gamma": gamma,
        "scores": form,
        "calibrated": _scores(scored(base_cos), base_labels, scored(novel_cos), novel_labels, n_seen, gamma),
        "classes_scored_among": int(base_cos.shape[1]),
        "novel_images": len(novel_labels),
        "calibration": cal,
    }


def calibration_manifest(manifests: dict[str, Any], seed: int = 0):
    """(split name, manifest) of held-out base images for choosing gamma: val, else the base training images."""
    name = "val" if "val" in manifests and len(manifests["val"]) else "train"
    m = manifests[name]
    if len(m) > MAX_CALIBRATION_IMAGES:
        idx = np.random.default_rng(seed).choice(len(m), MAX_CALIBRATION_IMAGES, replace=False)
        m = m.subset(np.sort(idx))
    return name, m


def support_manifest(manifests: dict[str, Any], spec: CalibrationSpec):
    """(support, None): the K-shot support of the novel classes drawn exactly as the K-shot evaluation draws it
    (`vlmkd.eval.fewshot.draw_support`, same shots and seed), or (None, why) when it cannot be drawn."""

    pool = manifests.get("ood")
    if pool is None or not len(pool):
        return None, "the run has no novel-class training images (split ood) to draw a support from"
    fewest = int(np.bincount(pool.labels, minlength=pool.num_classes).min())
    if fewest < spec.shots:
        return None, f"a novel class has {fewest} training images, fewer than {spec.shots} shots"
    return draw_support(pool, spec.shots, spec.seed), None


def features_generalized(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    base_text: np.ndarray,
    novel_text: np.ndarray,
    calib_split: str,
    spec: CalibrationSpec | None = None,
    fallback: str | None = None,
) -> dict[str, Any]:
    """Generalized zero-shot from image embeddings of "id" (base), "ood_test" (novel), `calib_split` (held-out
    base images) and, for the support rule, "support", and the base / novel class-text rows; the student and
    the CLIP teacher both go through here."""
    both = np.concatenate([base_text, novel_text])
    # standardisation statistics over held-out images of every class there is: the base ones, and the novel
    # ones of the support when there is one (each class weighing the same)
    imgs, ys = [feats[calib_split]], [np.asarray(labels[calib_split])]
    if "support" in feats:
        imgs.append(feats["support"])
        ys.append(np.asarray(labels["support"]) + len(base_text))
    norm = ScoreNorm.fit(np.concatenate(imgs), both, np.concatenate(ys)) if len(imgs[0]) > 1 else None

    def split(name):
        return cosine(feats[name], both), np.asarray(labels[name])

    support = split("support") if "support" in feats else (None, None)
    res = generalized_zero_shot(
        *split("id"),
        *split("ood_test"),
        len(base_text),
        *split(calib_split),
        spec,
        calib_split,
        *support,
        fallback,
        None if norm is None else lambda cos: norm.apply(cos, both),
    )
    if res["scores"] == "standardized":  # what export and predict need to score any class name the same way
        res["score_norm"] = norm
    return res


def save_calibration(run_dir: str | Path, gen: dict[str, Any]) -> None:
    """calibration.json (gamma, score form, the rule) and, for standardized scores, score_norm.safetensors in a
    run folder: what `vlmkd export` and `vlmkd predict RUN` apply. Pops the in-memory ScoreNorm from `gen`."""

    run_dir = Path(run_dir)
    norm = gen.pop("score_norm", None)
    rec = {"gamma": gen["gamma"], "scores": gen.get("scores", "cosine"), "calibration": gen["calibration"]}
    # what it measured: the exported model's card quotes it
    keys = ("base", "novel", "harmonic", "calibrated", "classes_scored_among")
    rec["result"] = {k: gen[k] for k in keys if k in gen}
    if norm is not None:
        norm.save(run_dir / SCORE_NORM_FILE)
        rec["scale"] = norm.scale
    else:
        (run_dir / SCORE_NORM_FILE).unlink(missing_ok=True)  # an earlier standardized calibration's
    write_json(run_dir / "calibration.json", rec)


def student_generalized(
    student: Any,
    manifests: dict[str, Any],
    class_text: dict[str, np.ndarray],
    data_cfg: Any,
    device: Any = "cpu",
    spec: CalibrationSpec | None = None,
    shard: bool = False,
) -> dict[str, Any] | None:
    """Generalized zero-shot of an embedding student over X_id (base) and X_ood (`ood_test`, novel minus any
    support image), gamma chosen by `spec`. None when the run has no novel classes with class texts. The demo
    calls this too. With `shard` (every rank of a process group calls it), the embeddings are computed over the
    ranks and gathered on rank 0, which chooses gamma on the same rows as one process does; the other ranks
    return None."""

    if not {"train", "ood_test"} <= set(class_text) or not {"id", "ood_test"} <= set(manifests):
        return None
    spec = spec or CalibrationSpec()
    calib_split, calib = calibration_manifest(manifests)
    parts = {"id": manifests["id"], "ood_test": manifests["ood_test"], calib_split: calib}
    support, why = support_manifest(manifests, spec) if spec.rule == "support" else (None, None)
    if support is not None:  # never score an image gamma was chosen on (X_ood lists share train and test)
        parts["ood_test"], parts["support"] = without_support(parts["ood_test"], support), support
    feats, labels = {}, {}
    for name, m in parts.items():
        out = sharded_outputs(student, m, data_cfg, device, f"eval {name} (generalized)", shard)
        if out is None:  # rank 0 holds the gathered rows and scores them
            continue
        feats[name], labels[name] = out["embedding"], out["labels"]
    if not feats:
        return None
    return features_generalized(
        feats, labels, class_text["train"], class_text["ood_test"], calib_split, spec, why
    )
