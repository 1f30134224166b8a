"""Generalized zero-shot: base and novel images each scored among ALL class names, raw and calibrated.

Scored among base + novel names together, a distilled student sends most novel images to a base class (it was
trained on those: the seen-class bias). Calibrated stacking (Chao et al., ECCV 2016) subtracts one constant gamma
from the cosine similarity of every seen (base) class before the argmax.

The rule that picks gamma sees no novel-class label and no test image: on held-out base images (the `val` split,
else the base training images), gamma is the largest value of a grid (0 to 1 in cosine units, step 0.005) for
which their accuracy among all names stays within `tolerance` (default 3 points) of gamma = 0, and stays so for
every smaller gamma. In words: remove as much seen-class bias as the base classes can afford.

    res = generalized_zero_shot(base_cos, base_labels, novel_cos, novel_labels, n_seen, calib_cos, calib_labels)
    res["base"], res["novel"], res["harmonic"], res["gamma"], res["calibrated"]["harmonic"]
"""

from __future__ import annotations

from typing import Any

import numpy as np

GAMMA_GRID = np.round(np.arange(0.0, 1.0 + 1e-9, 0.005), 4)
CALIBRATION_RULE = (
    "largest gamma (cosine units, grid step 0.005) whose accuracy on held-out base images among all names "
    "stays within the tolerance of gamma=0; no novel-class label is used"
)
MAX_CALIBRATION_IMAGES = 4000  # enough for a stable accuracy; keeps the train-split fallback cheap


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


def choose_gamma(
    calib_cos: np.ndarray, calib_labels: np.ndarray, n_seen: int, tolerance: float = 0.03
) -> float:
    """The calibration rule of this module's docstring (calib_labels are base-class ids < n_seen)."""
    if not len(calib_labels):
        return 0.0
    ref = mean_per_class(calibrated_predictions(calib_cos, n_seen, 0.0), calib_labels)
    best = 0.0
    for g in GAMMA_GRID[1:]:
        acc = mean_per_class(calibrated_predictions(calib_cos, n_seen, float(g)), calib_labels)
        if acc < ref - tolerance:
            break
        best = float(g)
    return best


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
    tolerance: float = 0.03,
    calib_split: str = "val",
) -> dict[str, Any]:
    """Mean per-class accuracy of base images (labels 0..n_seen-1) and novel images (labels 0..N-1, columns
    n_seen.. of the cosine matrices) among all n_seen + N classes, raw and with the chosen gamma."""
    gamma = choose_gamma(calib_cos, calib_labels, n_seen, tolerance)
    raw = _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen, 0.0)
    return {
        **raw,
        "gamma": gamma,
        "calibrated": _scores(base_cos, base_labels, novel_cos, novel_labels, n_seen, gamma),
        "classes_scored_among": int(base_cos.shape[1]),
        "calibration": {
            "split": calib_split,
            "images": len(calib_labels),
            "tolerance": tolerance,
            "rule": CALIBRATION_RULE,
        },
    }


def calibration_manifest(manifests: dict[str, Any], seed: int = 0):
    """(split name, manifest) of held-out base images for choosing gamma: val, else the base training images."""
    name = "val" if "val" in manifests and len(manifests["val"]) else "train"
    m = manifests[name]
    if len(m) > MAX_CALIBRATION_IMAGES:
        idx = np.random.default_rng(seed).choice(len(m), MAX_CALIBRATION_IMAGES, replace=False)
        m = m.subset(np.sort(idx))
    return name, m


def features_generalized(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    base_text: np.ndarray,
    novel_text: np.ndarray,
    calib_split: str,
    tolerance: float = 0.03,
) -> dict[str, Any]:
    """Generalized zero-shot from image embeddings of "id" (base), "ood_test" (novel) and `calib_split` (held-out
    base images) and the base / novel class-text rows; the student and the CLIP teacher both go through here."""
    both = np.concatenate([base_text, novel_text])

    def split(name):
        return cosine(feats[name], both), np.asarray(labels[name])

    return generalized_zero_shot(
        *split("id"),
        *split("ood_test"),
        len(base_text),
        *split(calib_split),
        tolerance=tolerance,
        calib_split=calib_split,
    )


def student_generalized(
    student: Any,
    manifests: dict[str, Any],
    class_text: dict[str, np.ndarray],
    data_cfg: Any,
    device: Any = "cpu",
    tolerance: float = 0.03,
) -> dict[str, Any] | None:
    """Generalized zero-shot of an embedding student over X_id (base) and X_ood (`ood_test`, novel), gamma chosen
    on held-out base images. None when the run has no novel classes with class texts. The demo calls this too."""
    from vlmkd.eval.predict import student_outputs

    if not {"train", "ood_test"} <= set(class_text) or not {"id", "ood_test"} <= set(manifests):
        return None
    calib_split, calib = calibration_manifest(manifests)
    feats, labels = {}, {}
    for name, m in (("id", manifests["id"]), ("ood_test", manifests["ood_test"]), (calib_split, calib)):
        out = student_outputs(student, m, data_cfg, device, desc=f"eval {name} (generalized)")
        feats[name], labels[name] = out["embedding"], out["labels"]
    return features_generalized(
        feats, labels, class_text["train"], class_text["ood_test"], calib_split, tolerance
    )


def format_generalized(gen: dict[str, Any]) -> str:
    """One line for the console: raw and calibrated base / novel / harmonic mean (percent)."""

    def pct(d):
        return " ".join(
            f"{k}={'-' if d[k] is None else f'{100 * d[k]:.2f}'}" for k in ("base", "novel", "harmonic")
        )

    return (
        f"generalized (among all {gen['classes_scored_among']} names): {pct(gen)} | calibrated "
        f"(gamma={gen['gamma']:.3f} from {gen['calibration']['split']}): {pct(gen['calibrated'])}"
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
    out["calibration"] = rows[0]["calibration"]
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
        f"Calibrated: gamma subtracted from the base classes' cosine scores; {first['calibration']['rule']} "
        f"(tolerance {100 * first['calibration']['tolerance']:.0f} points, on the {first['calibration']['split']} "
        "split). H: harmonic mean of base and novel.",
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
