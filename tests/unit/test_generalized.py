"""Generalized zero-shot and calibrated stacking: golden values on hand-made cosine matrices."""

from types import SimpleNamespace

import numpy as np
import pytest

from vlmkd.data.manifest import Manifest
from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.eval.fewshot import draw_support
from vlmkd.eval.generalized import (
    GAMMA_GRID,
    SIGNED_GRID,
    CalibrationSpec,
    ScoreNorm,
    SeenCalibration,
    accuracy_curve,
    calibrated_predictions,
    choose_gamma,
    choose_gamma_support,
    cosine,
    generalized_table_lines,
    generalized_zero_shot,
    harmonic,
    mean_generalized,
    mean_per_class,
    save_calibration,
    support_manifest,
)

# 2 seen (base) classes, 1 novel class. Base images beat the novel column by 0.3025, 0.3225, 0.3605 and 0.3425
# (half a grid step off the 0.001 grid, so float rounding cannot move a golden value).
# Novel images: their own class scores 0.1005 below the best base class (the seen-class bias).
BASE_COS = np.array(
    [[0.9, 0.2, 0.5975], [0.3, 0.8, 0.4775], [0.85, 0.1, 0.4895], [0.2, 0.9, 0.5575]], np.float32
)
BASE_Y = np.array([0, 1, 0, 1])
NOVEL_COS = np.array([[0.7, 0.2, 0.5995], [0.1, 0.75, 0.6495]], np.float32)
NOVEL_Y = np.array([0, 0])
TOL0 = CalibrationSpec("base_tolerance", tolerance=0.0)


def test_calibrated_predictions_penalise_seen_columns_only():
    assert calibrated_predictions(NOVEL_COS, 2, 0.0).tolist() == [0, 1]
    assert calibrated_predictions(NOVEL_COS, 2, 0.15).tolist() == [2, 2]


def test_accuracy_curve_equals_argmax_at_every_gamma():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, size=(60, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=60)
    curve = accuracy_curve(cos, labels, 4)
    for i in range(0, len(GAMMA_GRID), 7):
        ref = mean_per_class(calibrated_predictions(cos, 4, float(GAMMA_GRID[i])), labels)
        assert curve[i] == pytest.approx(ref, abs=1e-12), GAMMA_GRID[i]


def test_choose_gamma_is_the_largest_that_keeps_base_accuracy():
    # every base image stays right up to gamma 0.302 (grid step 0.001, smallest margin 0.3025)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.0) == pytest.approx(0.302)
    # 0.25 allowed: class 0 may drop to 1/2 (mean 0.75) but not class 1 as well (0.323 -> mean 0.5)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.25) == pytest.approx(0.322)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.5) == pytest.approx(0.342)
    assert choose_gamma(BASE_COS[:0], BASE_Y[:0], 2) == 0.0


def test_support_rule_takes_the_middle_of_the_best_plateau():
    # H = 1 from 0.101 (both support images flip to novel) to 0.302 (the first base image flips): the middle
    gamma, objective = choose_gamma_support(BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2)
    assert gamma == pytest.approx(0.202)
    assert objective == {"base": 1.0, "novel": 1.0, "harmonic": 1.0}


def test_support_rule_trades_base_accuracy_for_novel_when_h_says_so():
    # the novel image is 0.3305 below the best base class: beyond what base_tolerance allows (it keeps
    # gamma <= 0.302, novel 0), but gamma in [0.331, 0.342] gives base 0.5, novel 1, H 2/3 (the maximum)
    support = np.array([[0.7, 0.2, 0.3695]], np.float32)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.03) == pytest.approx(0.302)
    gamma, objective = choose_gamma_support(BASE_COS, BASE_Y, support, np.array([0]), 2)
    assert gamma == pytest.approx(0.337)  # the middle of 0.331..0.342
    assert objective["base"] == 0.5 and objective["novel"] == 1.0
    assert objective["harmonic"] == pytest.approx(2 / 3)
    # with a cap on the base loss, H is maximised only where base stays within it: here base must stay 1.0,
    # so gamma stays below 0.302 (the first base image flips there) and the novel image is not reached
    capped, objective = choose_gamma_support(BASE_COS, BASE_Y, support, np.array([0]), 2, max_base_drop=0.05)
    assert capped < 0.302 and objective["base"] == 1.0 and objective["novel"] == 0.0


def test_generalized_raw_and_calibrated_golden():
    res = generalized_zero_shot(BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, TOL0)
    assert (res["base"], res["novel"], res["harmonic"]) == (1.0, 0.0, 0.0)
    assert res["gamma"] == pytest.approx(0.302)
    assert res["calibrated"] == {"base": 1.0, "novel": 1.0, "harmonic": 1.0}
    assert res["classes_scored_among"] == 3 and res["calibration"]["split"] == "val"
    assert res["calibration"]["rule"] == "base_tolerance" and "support" not in res["calibration"]
    assert harmonic(0.5, 0.25) == pytest.approx(1 / 3) and harmonic(None, 0.5) is None


def test_generalized_records_the_support_rule_and_its_fallback():
    spec = CalibrationSpec(shots=2, seed=3)
    res = generalized_zero_shot(
        BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, spec, "val", NOVEL_COS, NOVEL_Y
    )
    cal = res["calibration"]
    assert res["gamma"] == pytest.approx(0.202) and cal["rule"] == "support"
    assert cal["support"] == {"split": "ood", "shots": 2, "seed": 3, "images": 2} and cal["images"] == 4
    assert "2-shot support" in cal["description"] and "seed 3" in cal["description"]
    # no support given: the pure zero-shot rule, and the record says why
    res = generalized_zero_shot(
        BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, spec, fallback="none"
    )
    assert res["calibration"]["rule"] == "base_tolerance" and res["calibration"]["fallback"] == "none"


def test_spec_from_config_and_support_manifest():
    ev = SimpleNamespace(
        calibration="support",
        calibration_tolerance=0.03,
        calibration_shots=5,
        calibration_seed=0,
        calibration_max_base_drop=0.05,
    )
    assert CalibrationSpec.from_config(ev, shots=3, seed=None) == CalibrationSpec("support", 0.03, 3, 0, 0.05)
    with pytest.raises(ConfigError, match="eval.calibration must be one of support, base_tolerance"):
        CalibrationSpec.from_config(SimpleNamespace(**{**ev.__dict__, "calibration": "val"}))
    with pytest.raises(ConfigError, match="calibration_scores must be one of auto, cosine, standardized"):
        CalibrationSpec.from_config(SimpleNamespace(**{**ev.__dict__, "calibration_scores": "zscore"}))
    pool = Manifest(
        ids=[f"n{i}" for i in range(12)],
        labels=[i % 2 for i in range(12)],
        class_names=["x", "y"],
        indices=np.arange(12),
    )
    support, why = support_manifest({"ood": pool}, CalibrationSpec(shots=3, seed=7))
    assert why is None and list(support.ids) == list(draw_support(pool, 3, 7).ids)  # the K-shot eval's
    assert support_manifest({"ood": pool}, CalibrationSpec(shots=7))[1].startswith("a novel class has 6")
    assert support_manifest({}, CalibrationSpec())[0] is None


def test_seed_mean_and_table():
    a = generalized_zero_shot(BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, TOL0)
    b = {**a, "novel": 0.5, "harmonic": harmonic(1.0, 0.5)}
    m = mean_generalized([a, b, None])
    assert m["novel"] == pytest.approx(0.25) and m["std"]["novel"] == pytest.approx(0.25)
    assert m["calibrated"]["harmonic"] == 1.0 and m["std"]["calibrated"]["harmonic"] == 0.0
    lines = generalized_table_lines({"vl_cls": {"generalized": m}, "other": {}})
    assert any(line.startswith("| vl_cls | 100.0 | 25.0 ± 25.0 |") for line in lines)
    assert mean_generalized([None]) is None and generalized_table_lines({"x": {}}) == []


def test_seed_mean_of_the_support_rule_names_every_seed_and_the_support():
    spec = [CalibrationSpec(shots=2, seed=s) for s in (0, 1)]
    rows = [
        generalized_zero_shot(
            BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, s, "val", NOVEL_COS, NOVEL_Y
        )
        for s in spec
    ]
    m = mean_generalized(rows)
    assert m["calibration"]["support"]["seed"] == [0, 1]
    text = "\n".join(generalized_table_lines({"vl_cls": {"generalized": m}}))
    assert "seed 0, 1" in text and "use the labels of those support images for one scalar" in text


def test_score_norm_stats_are_each_class_columns_mean_and_std(tmp_path):
    rng = np.random.default_rng(0)
    images, text = rng.normal(size=(200, 8)), rng.normal(size=(5, 8))
    cos = cosine(images, text)
    norm = ScoreNorm.fit(images, text)
    mu, sd = norm.stats(text)
    np.testing.assert_allclose(mu, cos.mean(0), atol=1e-6)
    np.testing.assert_allclose(sd, cos.std(0), atol=1e-6)
    assert norm.scale == pytest.approx(cos.std(0).mean(), rel=1e-5)
    z = norm.apply(cos, text)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), norm.scale, rtol=1e-4)
    # a class named later (not in `text`) is standardised the same way, from image-space statistics alone
    extra = rng.normal(size=(1, 8))
    np.testing.assert_allclose(norm.stats(extra)[1], cosine(images, extra).std(0), atol=1e-6)
    # with labels every class weighs the same: the mean and the mean square are averages of per-class averages
    labels = np.r_[np.zeros(190, int), np.ones(10, int)]
    balanced = ScoreNorm.fit(images, text, labels)
    per_class = [cos[labels == c] for c in (0, 1)]
    mean = np.mean([c.mean(0) for c in per_class], axis=0)
    sq = np.mean([(c.astype(np.float64) ** 2).mean(0) for c in per_class], axis=0)
    np.testing.assert_allclose(balanced.stats(text)[0], mean, atol=1e-6)
    np.testing.assert_allclose(balanced.stats(text)[1], np.sqrt(sq - mean**2), atol=1e-6)
    norm.save(tmp_path / "n.safetensors")
    back = ScoreNorm.load(tmp_path / "n.safetensors")
    assert back.scale == norm.scale
    np.testing.assert_allclose(back.apply(cos, text), z, atol=1e-5)
    with pytest.raises(ArtifactError, match="missing: its calibration uses standardized scores"):
        ScoreNorm.load(tmp_path / "none.safetensors")


def _biased_problem(seed: int = 0):
    """2 seen classes, 1 novel. The novel name scores low on everything: a novel image beats the novel column's
    usual level by far, but stays below the seen classes by a margin as wide as the base images' own margins, so
    no constant on cosine separates them, while the novel column's Z-score does."""
    rng = np.random.default_rng(seed)

    def images(n, label):
        cos = rng.normal([0.3, 0.3, 0.05], [0.05, 0.05, 0.01], size=(n, 3))
        if label < 2:
            cos[:, label] += 0.3
        else:
            cos[:, 2] += 0.06  # 6 novel-column deviations above its level, still under the seen columns
            cos[:, :2] += rng.uniform(0.0, 0.25, size=(n, 1))
        return cos.astype(np.float32)

    y = np.repeat([0, 1], 40)
    base = np.concatenate([images(40, 0), images(40, 1)])
    calib = np.concatenate([images(40, 0), images(40, 1)])
    return base, y, images(30, 2), np.zeros(30, int), calib, y, images(6, 2), np.zeros(6, int)


def test_auto_keeps_the_score_form_with_the_higher_held_out_objective():
    base, by, novel, ny, calib, cy, sup, sy = _biased_problem()
    mu, sd = calib.mean(0), calib.std(0)

    def standardize(c):
        return ((c - mu) / sd * sd.mean()).astype(np.float32)

    res = generalized_zero_shot(
        base, by, novel, ny, 2, calib, cy, CalibrationSpec(), "val", sup, sy, None, standardize
    )
    cal = res["calibration"]
    assert res["scores"] == cal["scores"] == "standardized"
    assert set(cal["forms_compared"]) == {"cosine", "standardized"}
    assert cal["forms_compared"]["standardized"] > cal["forms_compared"]["cosine"]
    assert "standardized per class" in cal["description"] and "standardized kept" in cal["description"]
    # the calibrated numbers are those of the standardized scores at the chosen gamma; raw stays cosine
    again = generalized_zero_shot(base, by, novel, ny, 2, calib, cy, CalibrationSpec(), "val", sup, sy)
    assert (res["base"], res["novel"]) == (again["base"], again["novel"]) and again["scores"] == "cosine"
    pred = calibrated_predictions(standardize(novel), 2, res["gamma"])
    assert res["calibrated"]["novel"] == mean_per_class(pred, ny + 2)
    assert res["calibrated"]["harmonic"] > again["calibrated"]["harmonic"]
    # pinned forms are kept whatever the objective; base_tolerance cannot compare forms: auto means cosine
    pinned = CalibrationSpec(scores="cosine")
    assert (
        generalized_zero_shot(base, by, novel, ny, 2, calib, cy, pinned, "val", sup, sy, None, standardize)[
            "scores"
        ]
        == "cosine"
    )
    tol = CalibrationSpec("base_tolerance")
    assert (
        generalized_zero_shot(base, by, novel, ny, 2, calib, cy, tol, "val", None, None, None, standardize)[
            "scores"
        ]
        == "cosine"
    )
    # base_tolerance on pinned standardized scores: the largest gamma whose base accuracy stays within the
    # tolerance of the RAW cosine scores
    std_tol = CalibrationSpec("base_tolerance", tolerance=0.05, scores="standardized")
    res = generalized_zero_shot(
        base, by, novel, ny, 2, calib, cy, std_tol, "val", None, None, None, standardize
    )
    floor = accuracy_curve(calib, cy, 2, GAMMA_GRID[:1])[0] - 0.05
    curve = accuracy_curve(standardize(calib), cy, 2, SIGNED_GRID)
    i = int(np.argmin(np.abs(SIGNED_GRID - res["gamma"])))
    assert res["scores"] == "standardized" and curve[: i + 1].min() >= floor > curve[i + 1]
    with pytest.raises(ConfigError, match="calibration_scores=standardized needs 2 or more held-out image"):
        generalized_zero_shot(base, by, novel, ny, 2, calib, cy, CalibrationSpec(scores="standardized"))


def test_seen_calibration_applies_the_form_then_gamma_and_reads_run_folders(tmp_path):
    rng = np.random.default_rng(1)
    images, text = rng.normal(size=(50, 6)), rng.normal(size=(4, 6))
    cos, seen = cosine(images, text), np.array([1, 1, 0, 0], bool)
    norm = ScoreNorm.fit(images, text)
    cal = SeenCalibration(0.1, norm)
    mu, sd = norm.stats(text)
    want = (cos - mu) / sd * norm.scale
    want[:, :2] -= 0.1
    np.testing.assert_allclose(cal.apply(cos, seen, cal.stats(text)), want, atol=1e-5)
    np.testing.assert_allclose(SeenCalibration(0.1).apply(cos, seen), cos - 0.1 * seen, atol=1e-7)
    # a run folder: what save_calibration wrote (the ScoreNorm leaves the result); nothing written = uncalibrated
    assert SeenCalibration.of_run(tmp_path) == SeenCalibration()
    gen = {"gamma": 0.1, "scores": "standardized", "calibration": {"rule": "support"}, "score_norm": norm}
    save_calibration(tmp_path, gen)
    assert "score_norm" not in gen
    back = SeenCalibration.of_run(tmp_path)
    assert back.form == "standardized" and back.gamma == 0.1
    np.testing.assert_allclose(back.apply(cos, seen, back.stats(text)), want, atol=1e-5)
