"""One class list, scored the way a zero-shot export or `vlmkd predict --classes` scores it.

A zero-shot student classifies among any class names: one class-text row per name, cosine to the image embedding.
The run's calibration (`vlmkd.eval.calibration`: standardized scores and gamma) was chosen for trained and
untrained names competing, where the trained ones win too often. It therefore applies to a list that mixes both;
a list of trained names only, or of untrained names only, has no such bias to remove and scores raw cosine, which
is what `vlmkd eval`'s restricted splits score (test and id among the trained names, ood_test among the novel
ones). One rule, `list_scores`, is used by predict, by export (its model card) and by `vlmkd eval --classes`, so
that the three report the same figure for the same list.

The figure: every test image of a listed class that the run's data has (split `test` for the trained classes,
`id` when there is no test split, `ood_test` for the novel ones), scored among all listed names.

    res = class_list_accuracy(student, manifests, names, rows, seen, calibration, cfg.data)
    res["overall"], res["mean_per_class"], res["images"], res["scores"], res["splits"]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmkd.errors import ConfigError
from vlmkd.eval.calibration import SeenCalibration
from vlmkd.eval.predict import student_outputs

BASE_SPLITS = (
    "test",
    "id",
)  # where a trained class's test images are: the test split, else the held-out base


def applies_calibration(seen: np.ndarray | None) -> bool:
    """The calibration applies only when trained and untrained names compete (see the module docstring)."""
    if seen is None or not len(seen):
        return False
    seen = np.asarray(seen, dtype=bool)
    return bool(seen.any() and not seen.all())


def score_form(calibration: SeenCalibration | None, seen: np.ndarray | None) -> str:
    """The scores a list gets, in words: "cosine", or "standardized" / "cosine" + gamma when calibrated."""
    if calibration is None or not applies_calibration(seen):
        return "cosine"
    form = calibration.form
    return f"{form}, gamma {calibration.gamma:.3f}" if calibration.gamma else form


def list_scores(
    cos: np.ndarray, seen: np.ndarray | None, calibration: SeenCalibration | None, stats: Any = None
) -> np.ndarray:
    """The scores of a class list's cosine matrix: calibrated for a mixed list, raw cosine otherwise.
    `stats`: `calibration.stats(class_text)` of the columns, computed once by the caller (or None)."""
    if calibration is None or not applies_calibration(seen):
        return np.asarray(cos, dtype=np.float32)
    if stats is None and calibration.norm is not None:
        raise ValueError("standardized scores need the columns' statistics: calibration.stats(class_text)")
    return calibration.apply(cos, np.asarray(seen, dtype=bool), stats)


def list_manifests(manifests: dict[str, Any], names: list[str]) -> list[tuple[str, Any, np.ndarray]]:
    """(split, its images of listed classes, their label in `names`) per split that has any: trained classes'
    from `test` (else `id`), novel ones' from `ood_test`. A name the run's data does not have has no image."""
    index = {n: i for i, n in enumerate(names)}
    base = next((s for s in BASE_SPLITS if s in manifests and len(manifests[s])), None)
    out = []
    for split in (base, "ood_test"):
        m = manifests.get(split) if split else None
        if m is None:
            continue
        classes = [c for c, n in enumerate(m.class_names) if n in index]
        if not classes:
            continue
        part = m.relabel(classes, split)
        if len(part):
            out.append((split, part, np.array([index[m.class_names[c]] for c in classes], dtype=np.int64)))
    return out


def accuracy_of_predictions(pred: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Overall accuracy and mean per-class accuracy (over the classes that have images)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if not len(labels):
        return {"overall": None, "mean_per_class": None}
    per_class = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return {"overall": float((pred == labels).mean()), "mean_per_class": float(np.mean(per_class))}


def class_list_accuracy(
    student: Any,
    manifests: dict[str, Any],
    names: list[str],
    rows: np.ndarray,
    seen: np.ndarray,
    calibration: SeenCalibration | None,
    data_cfg: Any,
    device: Any = "cpu",
) -> dict[str, Any]:
    """Accuracy of the student's embedding head among `names` (class-text `rows`, `seen` = trained flags) on the
    run's test images of the listed classes, scored by `list_scores`. See the module docstring."""
    rows = np.asarray(rows, dtype=np.float32)
    seen = np.asarray(seen, dtype=bool)
    stats = calibration.stats(rows) if calibration is not None and applies_calibration(seen) else None
    preds, labels, splits = [], [], {}
    for split, part, lut in list_manifests(manifests, names):
        out = student_outputs(student, part, data_cfg, device, desc=f"eval {split} (class list)")
        if "embedding" not in out:
            raise ConfigError("scoring class names needs a student with an embedding head (model.head=both)")
        e = out["embedding"]
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        scores = list_scores((e @ rows.T).astype(np.float32), seen, calibration, stats)
        preds.append(scores.argmax(1))
        labels.append(lut[out["labels"]])
        splits[split] = {
            "images": int(len(out["labels"])),
            "classes": [names[i] for i in sorted(lut)],
            "root": str(part.root),
        }
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return {
        "names": list(names),
        "seen": seen.tolist(),
        "scores": score_form(calibration, seen),
        "images": int(len(lab)),
        "classes_with_images": int(len(np.unique(lab))),
        "splits": splits,
        **accuracy_of_predictions(pred, lab),
    }


def format_class_list(res: dict[str, Any]) -> str:
    """One line: the list's accuracy, its score form and the images it was measured on."""
    if res.get("overall") is None:
        return (
            f"class list ({len(res['names'])} names, {res['scores']} scores): no test image of a listed class "
            "in the run's data"
        )
    where = "; ".join(
        f"split {s}: {v['images']} images of {', '.join(v['classes'])}" for s, v in res["splits"].items()
    )
    return (
        f"class list ({len(res['names'])} names, {sum(res['seen'])} trained, {res['scores']} scores): "
        f"overall={100 * res['overall']:.2f} mean_per_class={100 * res['mean_per_class']:.2f} ({where})"
    )
