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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError, ConfigError

GAMMA_GRID = np.round(np.arange(0.0, 2.0 + 1e-9, 0.001), 4)  # cosine gaps span [0, 2]
# standardized scores (in cosine units via `scale`) may need a negative gamma: they can overcorrect the bias
SIGNED_GRID = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.001), 4)
GRIDS = {"cosine": GAMMA_GRID, "standardized": SIGNED_GRID}
GRID_TEXTS = {"cosine": "grid 0-2, step 0.001", "standardized": "grid -1 to 1, step 0.001"}
RULES = ("support", "base_tolerance")
SCORE_FORMS = ("auto", "cosine", "standardized")
SCORE_NORM_FILE = "score_norm.safetensors"
MAX_CALIBRATION_IMAGES = 4000  # enough for a stable accuracy; keeps the train-split fallback cheap


@dataclass(frozen=True)
class CalibrationSpec:
    """How gamma is chosen (see the module docstring): `eval.calibration*` of the config."""

    rule: str = "support"
    tolerance: float = 0.03  # base_tolerance only
    shots: int = 5  # support only: K images per novel class, drawn like the K-shot evaluation (same seed)
    seed: int = 0
    max_base_drop: float | None = 0.05  # support only: held-out base accuracy kept within this of raw cosine
    scores: str = "auto"  # cosine | standardized | auto (see the module docstring)

    @classmethod
    def from_config(cls, eval_cfg: Any, **override: Any) -> CalibrationSpec:
        spec = cls(
            eval_cfg.calibration,
            eval_cfg.calibration_tolerance,
            eval_cfg.calibration_shots,
            eval_cfg.calibration_seed,
            eval_cfg.calibration_max_base_drop,
            getattr(eval_cfg, "calibration_scores", "auto"),
        )
        spec = cls(**{**spec.__dict__, **{k: v for k, v in override.items() if v is not None}})
        if spec.rule not in RULES:
            raise ConfigError(f"eval.calibration must be one of {', '.join(RULES)}; got {spec.rule!r}")
        if spec.scores not in SCORE_FORMS:
            raise ConfigError(
                f"eval.calibration_scores must be one of {', '.join(SCORE_FORMS)}; got {spec.scores!r}"
            )
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
    form = cal.get("scores", "cosine")
    grid = GRID_TEXTS.get(
        form, "cosine scores: " + GRID_TEXTS["cosine"] + "; standardized: " + GRID_TEXTS["standardized"]
    )
    if cal["rule"] == "support":
        s = cal["support"]
        seed = s["seed"] if isinstance(s["seed"], int) else ", ".join(map(str, s["seed"]))
        text = (
            f"gamma maximises the harmonic mean of base accuracy on {base} and novel accuracy on the "
            f"{s['shots']}-shot support ({s['images']} novel-class training images, the ones the {s['shots']}-shot "
            f"adaptation uses, seed {seed}), among all names ({grid})"
            + (
                f", keeping base accuracy within {100 * cal['max_base_drop']:.0f} points of the raw cosine scores"
                if cal.get("max_base_drop") is not None
                else ""
            )
        )
    else:
        text = (
            f"largest gamma whose accuracy on {base} among all names stays within {100 * cal['tolerance']:.0f} "
            f"points of the raw cosine scores ({grid})"
        )
    if form == "per seed":
        text += "; each seed kept the score form (cosine or standardized) with the higher held-out objective"
    elif form == "standardized":
        text += (
            "; scores standardized per class (cosine minus its mean over those held-out images, each class "
            "weighing the same, over its standard deviation there)"
        )
    if cal.get("forms_compared"):
        text += (
            " ("
            + ", ".join(f"{k}: objective H {100 * v:.1f}" for k, v in cal["forms_compared"].items())
            + f"; {form} kept)"
        )
    return text + (
        "; no test image is used" if cal["rule"] == "support" else "; no novel-class label is used"
    )


def cosine(embedding: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    e = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    w = class_text / np.maximum(np.linalg.norm(class_text, axis=1, keepdims=True), 1e-12)
    return (e @ w.T).astype(np.float32)


@dataclass
class ScoreNorm:
    """Standardized scores (module docstring): the held-out images' mean unit embedding and covariance.

    A class text w (unit) scores (cos - w.mean) / sqrt(w' cov w) * scale: its cosine's Z-score over those
    images, for any class name, in cosine units. D + D x D floats (2.4 MB at 768-d), whatever the class count."""

    mean: np.ndarray
    cov: np.ndarray
    scale: float = 1.0

    @classmethod
    def fit(
        cls, embedding: np.ndarray, class_text: np.ndarray, labels: np.ndarray | None = None
    ) -> ScoreNorm:
        """From held-out image embeddings. With `labels`, every class weighs the same (the mean and the second
        moment are averages of per-class averages), so that 5 support images of a novel class count as much as
        200 validation images of a base class. `scale` = the mean deviation of `class_text` (the run's classes)."""
        e = np.asarray(embedding, np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        groups = [e] if labels is None else [e[np.asarray(labels) == c] for c in np.unique(labels)]
        mean = np.mean([g.mean(0) for g in groups], axis=0)
        second = np.mean([g.T @ g / len(g) for g in groups], axis=0)
        norm = cls(mean, second - np.outer(mean, mean))
        _, sd = norm.stats(class_text)
        norm.scale = float(sd.mean())
        return norm

    def stats(self, class_text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard deviation) of each class's cosine over the images the norm was fitted on."""
        w = np.asarray(class_text, np.float64)
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        var = np.einsum("cd,de,ce->c", w, self.cov, w)
        return w @ self.mean, np.sqrt(np.maximum(var, 1e-12))

    def apply(self, cos: np.ndarray, class_text: np.ndarray | None = None, stats=None) -> np.ndarray:
        """Standardized scores of `cos`'s columns: pass their class texts, or their `stats` computed once."""
        mu, sd = self.stats(class_text) if stats is None else stats
        return ((np.asarray(cos, np.float64) - mu) / sd * self.scale).astype(np.float32)

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        from vlmkd.utils.io import atomic_path

        with atomic_path(Path(path)) as tmp:
            save_file(
                {"mean": self.mean.astype(np.float32), "cov": self.cov.astype(np.float32)},
                str(tmp),
                metadata={"scale": repr(float(self.scale))},
            )

    @classmethod
    def load(cls, path: str | Path) -> ScoreNorm:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(
                f"{str(path)!r} is missing: its calibration uses standardized scores; rerun "
                "`vlmkd eval RUN eval.generalized=true` (or export again)"
            )
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
            return cls(f.get_tensor("mean"), f.get_tensor("cov"), float(meta.get("scale", 1.0)))


@dataclass
class SeenCalibration:
    """What predict applies to zero-shot cosine scores: the score form (a ScoreNorm for standardized scores, None
    for cosine) and gamma, subtracted from the classes the student was trained on ("seen")."""

    gamma: float = 0.0
    norm: ScoreNorm | None = None

    @property
    def form(self) -> str:
        return "cosine" if self.norm is None else "standardized"

    def stats(self, class_text: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.norm is None else self.norm.stats(class_text)

    def apply(self, cos: np.ndarray, seen: np.ndarray | None, stats=None) -> np.ndarray:
        """Calibrated scores; `stats` = `self.stats(class_text)` of the columns (computed once by the caller)."""
        if self.norm is not None:
            out = self.norm.apply(cos, stats=stats)
        else:
            out = np.array(cos, dtype=np.float32, copy=True)
        if self.gamma and seen is not None:
            out[:, seen] -= np.float32(self.gamma)
        return out

    @classmethod
    def of_run(cls, run_dir: str | Path) -> SeenCalibration:
        """The calibration recorded for a run folder by `vlmkd eval` or by training with eval.generalized=true
        (calibration.json, score_norm.safetensors), else that of an older run's summary.json (cosine); none
        (gamma 0, cosine) when it was never calibrated."""
        from vlmkd.utils.io import read_json

        run_dir = Path(run_dir)
        if (run_dir / "calibration.json").is_file():
            rec = read_json(run_dir / "calibration.json")
            norm = ScoreNorm.load(run_dir / SCORE_NORM_FILE) if rec.get("scores") == "standardized" else None
            return cls(float(rec.get("gamma") or 0.0), norm)
        if (run_dir / "summary.json").is_file():
            gen = read_json(run_dir / "summary.json").get("generalized")
            if (
                isinstance(gen, dict)
                and gen.get("gamma") is not None
                and gen.get("scores", "cosine") == "cosine"
            ):
                return cls(float(gen["gamma"]))
        return cls()


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


def accuracy_curve(
    cos: np.ndarray, labels: np.ndarray, n_seen: int, grid: np.ndarray = GAMMA_GRID
) -> np.ndarray:
    """Mean per-class accuracy among all names at every gamma of `grid`, as `calibrated_predictions` would
    score it: the argmax is the best seen class while (its score - gamma) >= the best unseen score (seen columns
    come first, so ties go to them), else the best unseen class. One comparison per gamma instead of an argmax."""
    cos = np.asarray(cos, np.float32)
    labels = np.asarray(labels)
    seen, unseen = cos[:, :n_seen], cos[:, n_seen:]
    seen_ok = seen.argmax(1) == labels
    unseen_ok = n_seen + unseen.argmax(1) == labels
    picks_seen = seen.max(1)[None, :] - np.asarray(grid, np.float32)[:, None] >= unseen.max(1)[None, :]
    hit = np.where(picks_seen, seen_ok[None, :], unseen_ok[None, :])
    return np.mean([hit[:, labels == c].mean(1) for c in np.unique(labels)], axis=0)


def choose_gamma(
    calib_cos: np.ndarray,
    calib_labels: np.ndarray,
    n_seen: int,
    tolerance: float = 0.03,
    grid: np.ndarray = GAMMA_GRID,
    reference: float | None = None,
) -> float:
    """The base_tolerance rule (calib_labels are base-class ids < n_seen): the largest gamma before the first
    one whose accuracy falls more than `tolerance` below `reference` (default: the first grid point's)."""
    if not len(calib_labels):
        return 0.0
    acc = accuracy_curve(calib_cos, calib_labels, n_seen, grid)
    ref = acc[0] if reference is None else reference
    below = np.flatnonzero(acc < ref - tolerance - 1e-12)
    if len(below) and below[0] == 0:  # even the first gamma costs too much: the one closest to raw scores
        return float(grid[0])
    return float(grid[below[0] - 1] if len(below) else grid[-1])


def choose_gamma_support(
    calib_cos: np.ndarray,
    calib_labels: np.ndarray,
    support_cos: np.ndarray,
    support_labels: np.ndarray,
    n_seen: int,
    max_base_drop: float | None = None,
    grid: np.ndarray = GAMMA_GRID,
    reference: float | None = None,
) -> tuple[float, dict[str, float]]:
    """The support rule: gamma maximising H(base accuracy of the held-out base images, novel accuracy of the
    support images; support_labels are novel ids 0..N-1), both among all names, base accuracy kept within
    `max_base_drop` of `reference` (default: the first grid point's). Of several maximisers the median one: a
    plateau's middle rather than its edge, where one support image decided. Also returns the objective's parts
    at that gamma; its harmonic is -1 when no gamma keeps base accuracy within the cap."""
    base = accuracy_curve(calib_cos, calib_labels, n_seen, grid)
    novel = accuracy_curve(support_cos, np.asarray(support_labels) + n_seen, n_seen, grid)
    h = np.where(base + novel > 0, 2 * base * novel / np.maximum(base + novel, 1e-12), 0.0)
    if max_base_drop is not None:
        ref = base[0] if reference is None else reference
        h = np.where(base >= ref - max_base_drop - 1e-12, h, -1.0)
    best = np.flatnonzero(h >= h.max() - 1e-12)
    i = best[len(best) // 2]
    return float(grid[i]), {"base": float(base[i]), "novel": float(novel[i]), "harmonic": float(h[i])}


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
    from vlmkd.utils.io import write_json

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
        f"({gen.get('scores', 'cosine')} scores, gamma={gen['gamma']:.3f}, rule {cal['rule']} on {src}): "
        f"{pct(gen['calibrated'])}"
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
    out["scores"] = [r.get("scores", "cosine") for r in rows]  # each seed's form: auto may pick differently
    out["calibration"] = cal = dict(rows[0]["calibration"])
    cal.pop("forms_compared", None)  # seed 0's comparison; each seed compared its own
    cal["scores"] = out["scores"][0] if len(set(out["scores"])) == 1 else "per seed"
    rules = {r["calibration"]["rule"] for r in rows}
    if cal.get("support") and len(rules) == 1:  # each seed's own support (drawn with the seed of its run)
        seeds = [r["calibration"]["support"]["seed"] for r in rows if r["calibration"].get("support")]
        cal["support"] = {**cal["support"], "seed": seeds}
    cal["description"] = rule_text(cal)
    if len(rules) > 1:  # e.g. one seed fell back: say so rather than describe the first seed's rule
        cal["rule"] = "mixed: " + ", ".join(sorted(rules))
        cal["description"] += f"; not every seed could use it (rules: {cal['rule'][7:]})"
    return out


def _table_rule(rows: dict[str, dict[str, Any]]) -> str:
    """The calibration rule in words for a table of methods: the first's, with the score form left to the
    table's column when the methods or seeds kept different ones."""
    cal = next(iter(rows.values()))["calibration"]
    forms = {f for g in rows.values() for f in (g.get("scores") or ["cosine"])}
    if len(forms) == 1 or cal["rule"].startswith("mixed"):
        return cal["description"]
    return rule_text({**cal, "scores": "per seed"})


def _forms_cell(forms: list[str]) -> str:
    counts = {f: forms.count(f) for f in dict.fromkeys(forms)}
    return ", ".join(f if len(counts) == 1 else f"{f} x{n}" for f, n in counts.items())


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
        "Raw: cosine scores. Calibrated: gamma subtracted from the base classes' scores, cosine or standardized "
        f"(column scores); {_table_rule(rows)}."
        + SUPPORT_NOTE * bool(first["calibration"].get("support"))
        + " H: harmonic mean of base and novel.",
        "",
        "| method | base | novel | H | calibrated base | calibrated novel | calibrated H | scores | gamma |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, g in rows.items():
        s, c, sc = g.get("std", {}), g["calibrated"], g.get("std", {}).get("calibrated", {})
        cells = [cell(g[k], s.get(k)) for k in ("base", "novel", "harmonic")]
        cells += [cell(c[k], sc.get(k)) for k in ("base", "novel", "harmonic")]
        forms = g.get("scores") or ["cosine"]
        cells.append(_forms_cell(forms))
        cells.append(f"{g['gamma']:.3f}" if len(set(forms)) == 1 else "mixed")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
