"""Calibrated generalized zero-shot scoring: the score forms (cosine, standardized), the gamma grids and rules,
and the stored calibration a run applies at export and predict time. The evaluation that chooses them is
`vlmkd.eval.generalized`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.utils.io import atomic_path, read_json

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
