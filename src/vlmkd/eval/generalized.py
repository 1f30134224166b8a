"""Generalized zero-shot: base and novel images each scored among ALL class names, raw and calibrated.

Scored among base + novel names together, a distilled student sends most novel images to a base class (it was
trained on those: the seen-class bias). Calibrated stacking (Chao et al., ECCV 2016) subtracts one constant gamma
from the cosine similarity of every seen (base) class before the argmax. Gamma is one scalar chosen on a grid
(0 to 2 in cosine units, step 0.001) by one of two rules (`eval.calibration`); neither sees a test image:

- "support" (the default when the run has novel-class training images): the gamma that maximises the harmonic mean
  of base accuracy on held-out base images (the `val` split, else the base training images) and novel accuracy on
  the K-shot support (K training images per novel class, drawn exactly as the K-shot evaluation draws them, same
  seed), among the gammas whose held-out base accuracy stays within `eval.calibration_max_base_drop` (0.05) of
  gamma = 0. It uses the labels of those K x N novel training images, the data few-shot adaptation is given anyway.
  Without the cap (`calibration_max_base_drop=null`) H alone decides, and on the demo's students it gave up 9-30
  base points with a 25-image support: too noisy to be a default.
- "base_tolerance" (pure zero-shot: no novel-class label at all): the largest gamma for which the held-out base
  images' accuracy among all names stays within `eval.calibration_tolerance` of gamma = 0, for every smaller gamma
  too. In words: remove as much seen-class bias as the base classes can afford. Conservative by design.

    spec = CalibrationSpec.from_config(cfg.eval, shots=5, seed=0)
    res = student_generalized(student, manifests, class_text, cfg.data, "cpu", spec)
    res["base"], res["novel"], res["harmonic"], res["gamma"], res["calibrated"]["harmonic"], res["calibration"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmkd.errors import ConfigError

GAMMA_GRID = np.round(np.arange(0.0, 2.0 + 1e-9, 0.001), 4)  # cosine gaps span [0, 2]
GRID_TEXT = "grid 0-2, step 0.001"
RULES = ("support", "base_tolerance")
MAX_CALIBRATION_IMAGES = 4000  # enough for a stable accuracy; keeps the train-split fallback cheap


@dataclass(frozen=True)
class CalibrationSpec:
    """How gamma is chosen (see the module docstring): `eval.calibration*` of the config."""

    rule: str = "support"
    tolerance: float = 0.03  # base_tolerance only
    shots: int = 5  # support only: K images per novel class, drawn like the K-shot evaluation (same seed)
    seed: int = 0
    max_base_drop: float | None = 0.05  # support only: held-out base accuracy kept within this of gamma = 0

    @classmethod
    def from_config(cls, eval_cfg: Any, **override: Any) -> CalibrationSpec:
        spec = cls(
            eval_cfg.calibration,
            eval_cfg.calibration_tolerance,
            eval_cfg.calibration_shots,
            eval_cfg.calibration_seed,
            eval_cfg.calibration_max_base_drop,
        )
        spec = cls(**{**spec.__dict__, **{k: v for k, v in override.items() if v is not None}})
        if spec.rule not in RULES:
            raise ConfigError(f"eval.calibration must be one of {', '.join(RULES)}; got {spec.rule!r}")
        if spec.shots < 1:
            raise ConfigError(f"eval.calibration_shots must be >= 1; got {spec.shots}")
        return spec


SUPPORT_NOTE = (
    " The calibrated columns thus use the labels of those support images for one scalar; the raw columns use no "
    "novel-class label."
)


def rule_text(cal: dict[str, Any]) -> str:
    """The rule that chose gamma, in words, from a result's "calibration" record."""
    base = f"{cal['images']} held-out base images (the {cal['split']} split)"
    if cal["rule"] == "support":
        s = cal["support"]
        seed = s["seed"] if isinstance(s["seed"], int) else ", ".join(map(str, s["seed"]))
        return (
            f"gamma maximises the harmonic mean of base accuracy on {base} and novel accuracy on the "
            f"{s['shots']}-shot support ({s['images']} novel-class training images, the ones the {s['shots']}-shot "
            f"adaptation uses, seed {seed}), among all names ({GRID_TEXT})"
            + (
                f", keeping base accuracy within {100 * cal['max_base_drop']:.0f} points of gamma=0"
                if cal.get("max_base_drop") is not None
                else ""
            )
            + "; no test image is used"
        )
    return (
        f"largest gamma whose accuracy on {base} among all names stays within {100 * cal['tolerance']:.0f} points "
        f"of gamma=0 ({GRID_TEXT}); no novel-class label is used"
    )


def cosine(embedding: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    e = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    w = class_text / np.maximum(np.linalg.norm(class_text, axis=1, keepdims=True), 1e-12)
    return (e @ w.T).astype(np.float32)


def calibrated_predictions(cos: np.ndarray, n_seen: int, gamma: float) -> np.ndarray:
    """Argmax after subtracting gamma from the first `n_seen` columns (the seen classes)."""
    shifted = np.array(cos, dtype=np.float32, copy=True)
    shifted[:, :n_seen] -= np.float32(gamma)
    return shifted.argmax(1)


def mean_per_class(pred: np.ndarray, labels: np.ndarray) -> float | None:
    classes = np.unique(labels)
    if not len(classes):
        return None
    return float(np.mean([(pred[labels == c] == c).mean() for c in classes]))


def harmonic(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else float(2 * a * b / (a + b))


def accuracy_curve(cos: np.ndarray, labels: np.ndarray, n_seen: int) -> np.ndarray:
    """Mean per-class accuracy among all names at every gamma of GAMMA_GRID, as `calibrated_predictions` would
    score it: the argmax is the best seen class while (its score - gamma) >= the best unseen score (seen columns
    come first, so ties go to them), else the best unseen class. One comparison per gamma instead of an argmax."""
    cos = np.asarray(cos, np.float32)
    labels = np.asarray(labels)
    seen, unseen = cos[:, :n_seen], cos[:, n_seen:]
    seen_ok = seen.argmax(1) == labels
    unseen_ok = n_seen + unseen.argmax(1) == labels
    picks_seen = seen.max(1)[None, :] - GAMMA_GRID.astype(np.float32)[:, None] >= unseen.max(1)[None, :]
    hit = np.where(picks_seen, seen_ok[None, :], unseen_ok[None, :])
    return np.mean([hit[:, labels == c].mean(1) for c in np.unique(labels)], axis=0)


def choose_gamma(
    calib_cos: np.ndarray, calib_labels: np.ndarray, n_seen: int, tolerance: float = 0.03
) -> float:
    """The base_tolerance rule (calib_labels are base-class ids < n_seen): the largest gamma before the first
    one whose accuracy falls more than `tolerance` below gamma = 0's."""
    if not len(calib_labels):
        return 0.0
    acc = accuracy_curve(calib_cos, calib_labels, n_seen)
    below = np.flatnonzero(acc < acc[0] - tolerance)
    return float(GAMMA_GRID[below[0] - 1] if len(below) else GAMMA_GRID[-1])


def choose_gamma_support(
    calib_cos: np.ndarray,
    calib_labels: np.ndarray,
    support_cos: np.ndarray,
    support_labels: np.ndarray,
    n_seen: int,
    max_base_drop: float | None = None,
) -> tuple[float, dict[str, float]]:
    """The support rule: gamma maximising H(base accuracy of the held-out base images, novel accuracy of the
    support images; support_labels are novel ids 0..N-1), both among all names. Of several maximisers the
    median one: a plateau's middle rather than its edge, where one support image decided. Also returns the
    objective's parts at that gamma."""
    base = accuracy_curve(calib_cos, calib_labels, n_seen)
    novel = accuracy_curve(support_cos, np.asarray(support_labels) + n_seen, n_seen)
    h = np.where(base + novel > 0, 2 * base * novel / np.maximum(base + novel, 1e-12), 0.0)
    if max_base_drop is not None:  # gamma = 0 always qualifies, so the maximum below exists
        h = np.where(base >= base[0] - max_base_drop - 1e-12, h, -1.0)
    best = np.flatnonzero(h >= h.max() - 1e-12)
    i = best[len(best) // 2]
    return float(GAMMA_GRID[i]), {"base": float(base[i]), "novel": float(novel[i]), "harmonic": float(h[i])}


def _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen: int, gamma: float) -> dict[str, Any]:
    base = mean_per_class(calibrated_predictions(base_cos, n_seen, gamma), base_labels)
    novel = mean_per_class(calibrated_predictions(novel_cos, n_seen, gamma), novel_labels + n_seen)
    return {"base": base, "novel": novel, "harmonic": harmonic(base, novel)}


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
) -> dict[str, Any]:
    """Mean per-class accuracy of base images (labels 0..n_seen-1) and novel images (labels 0..N-1, columns
    n_seen.. of the cosine matrices) among all n_seen + N classes, raw and with the gamma `spec` chooses (the
    support rule needs support_cos/labels; without them it falls back to base_tolerance, saying why)."""
    spec = spec or CalibrationSpec()
    cal: dict[str, Any] = {"rule": spec.rule, "split": calib_split, "images": len(calib_labels)}
    if spec.rule == "support" and support_cos is not None and len(calib_labels):
        gamma, cal["objective"] = choose_gamma_support(
            calib_cos, calib_labels, support_cos, support_labels, n_seen, spec.max_base_drop
        )
        cal["max_base_drop"] = spec.max_base_drop
        cal["support"] = {
            "split": "ood",
            "shots": spec.shots,
            "seed": spec.seed,
            "images": len(support_labels),
        }
    else:
        if spec.rule == "support":
            cal["fallback"] = fallback or "no K-shot support or held-out base images were given"
        cal["rule"], cal["tolerance"] = "base_tolerance", spec.tolerance
        gamma = choose_gamma(calib_cos, calib_labels, n_seen, spec.tolerance)
    cal["grid"], cal["description"] = GRID_TEXT, rule_text(cal)
    raw = _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen, 0.0)
    return {
        **raw,
        "gamma": gamma,
        "calibrated": _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen, gamma),
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
    from vlmkd.eval.fewshot import draw_support

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

    def split(name):
        return cosine(feats[name], both), np.asarray(labels[name])

    support = split("support") if "support" in feats else (None, None)
    return generalized_zero_shot(
        *split("id"),
        *split("ood_test"),
        len(base_text),
        *split(calib_split),
        spec,
        calib_split,
        *support,
        fallback,
    )


def student_generalized(
    student: Any,
    manifests: dict[str, Any],
    class_text: dict[str, np.ndarray],
    data_cfg: Any,
    device: Any = "cpu",
    spec: CalibrationSpec | None = None,
) -> dict[str, Any] | None:
    """Generalized zero-shot of an embedding student over X_id (base) and X_ood (`ood_test`, novel minus any
    support image), gamma chosen by `spec`. None when the run has no novel classes with class texts. The demo
    calls this too."""
    from vlmkd.eval.fewshot import without_support
    from vlmkd.eval.predict import student_outputs

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
        out = student_outputs(student, m, data_cfg, device, desc=f"eval {name} (generalized)")
        feats[name], labels[name] = out["embedding"], out["labels"]
    return features_generalized(
        feats, labels, class_text["train"], class_text["ood_test"], calib_split, spec, why
    )


def format_generalized(gen: dict[str, Any]) -> str:
    """One line for the console: raw and calibrated base / novel / harmonic mean (percent)."""

    def pct(d):
        return " ".join(
            f"{k}={'-' if d[k] is None else f'{100 * d[k]:.2f}'}" for k in ("base", "novel", "harmonic")
        )

    cal = gen["calibration"]
    src = cal["split"] + (f" + {cal['support']['shots']}-shot support" if cal.get("support") else "")
    return (
        f"generalized (among all {gen['classes_scored_among']} names): {pct(gen)} | calibrated "
        f"(gamma={gen['gamma']:.3f}, rule {cal['rule']} on {src}): {pct(gen['calibrated'])}"
    )


def mean_generalized(results: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Seed mean (and std) of generalized results: {"base", "novel", "harmonic", "gamma", "calibrated": {...},
    "std": {...}} as summary.json's OOD methods carry it."""
    rows = [r for r in results if r]
    if not rows:
        return None

    def stats(get) -> tuple[float | None, float | None]:
        vals = [get(r) for r in rows if get(r) is not None]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)

    out: dict[str, Any] = {"calibrated": {}, "std": {"calibrated": {}}}
    for k in ("base", "novel", "harmonic", "gamma"):
        out[k], out["std"][k] = stats(lambda r, k=k: r[k])
    for k in ("base", "novel", "harmonic"):
        out["calibrated"][k], out["std"]["calibrated"][k] = stats(lambda r, k=k: r["calibrated"][k])
    out["classes_scored_among"] = rows[0]["classes_scored_among"]
    out["calibration"] = cal = dict(rows[0]["calibration"])
    rules = {r["calibration"]["rule"] for r in rows}
    if len(rules) > 1:  # e.g. one seed fell back: say so rather than describe the first seed's rule
        cal["rule"] = "mixed: " + ", ".join(sorted(rules))
        cal["description"] += f"; not every seed could use it (rules: {cal['rule'][7:]})"
    if cal.get("support") and len(rules) == 1:  # each seed's own support (drawn with the seed of its run)
        seeds = [r["calibration"]["support"]["seed"] for r in rows if r["calibration"].get("support")]
        cal["support"] = {**cal["support"], "seed": seeds}
        cal["description"] = rule_text(cal)
    return out


def generalized_table_lines(ood: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown table of the OOD methods' generalized scores (the demo's report and console)."""
    rows = {m: r["generalized"] for m, r in ood.items() if r.get("generalized")}
    if not rows:
        return []
    first = next(iter(rows.values()))

    def cell(value, std) -> str:
        return "-" if value is None else f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std else "")

    lines = [
        "",
        f"## Generalized zero-shot: base and novel test images among all {first['classes_scored_among']} names "
        "(mean per-class accuracy, %)",
        "",
        f"Calibrated: gamma subtracted from the base classes' cosine scores; {first['calibration']['description']}."
        + SUPPORT_NOTE * bool(first["calibration"].get("support"))
        + " H: harmonic mean of base and novel.",
        "",
        "| method | base | novel | H | calibrated base | calibrated novel | calibrated H | gamma |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, g in rows.items():
        s, c, sc = g.get("std", {}), g["calibrated"], g.get("std", {}).get("calibrated", {})
        cells = [cell(g[k], s.get(k)) for k in ("base", "novel", "harmonic")]
        cells += [cell(c[k], sc.get(k)) for k in ("base", "novel", "harmonic")]
        cells.append(f"{g['gamma']:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
