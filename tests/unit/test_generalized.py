"""Generalized zero-shot and calibrated stacking: golden values on hand-made cosine matrices."""

import numpy as np
import pytest

from vlmkd.eval.generalized import (
    calibrated_predictions,
    choose_gamma,
    generalized_table_lines,
    generalized_zero_shot,
    harmonic,
    mean_generalized,
)

# 2 seen (base) classes, 1 novel class. Base images beat the novel column by 0.302, 0.322, 0.36 and 0.342.
# Novel images: their own class scores 0.1 below the best base class (the seen-class bias).
BASE_COS = np.array([[0.9, 0.2, 0.598], [0.3, 0.8, 0.478], [0.85, 0.1, 0.49], [0.2, 0.9, 0.558]], np.float32)
BASE_Y = np.array([0, 1, 0, 1])
NOVEL_COS = np.array([[0.7, 0.2, 0.6], [0.1, 0.75, 0.65]], np.float32)
NOVEL_Y = np.array([0, 0])


def test_calibrated_predictions_penalise_seen_columns_only():
    assert calibrated_predictions(NOVEL_COS, 2, 0.0).tolist() == [0, 1]
    assert calibrated_predictions(NOVEL_COS, 2, 0.15).tolist() == [2, 2]


def test_choose_gamma_is_the_largest_that_keeps_base_accuracy():
    # every base image stays right up to gamma 0.30 (grid step 0.005, smallest margin 0.302)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.0) == pytest.approx(0.30)
    # 0.25 allowed: class 0 may drop to 1/2 (mean 0.75) but not class 1 as well (0.325 -> mean 0.5)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.25) == pytest.approx(0.32)
    assert choose_gamma(BASE_COS, BASE_Y, 2, tolerance=0.5) == pytest.approx(0.34)
    assert choose_gamma(BASE_COS[:0], BASE_Y[:0], 2) == 0.0


def test_generalized_raw_and_calibrated_golden():
    res = generalized_zero_shot(BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, tolerance=0.0)
    assert (res["base"], res["novel"], res["harmonic"]) == (1.0, 0.0, 0.0)
    assert res["gamma"] == pytest.approx(0.30)
    assert res["calibrated"] == {"base": 1.0, "novel": 1.0, "harmonic": 1.0}
    assert res["classes_scored_among"] == 3 and res["calibration"]["split"] == "val"
    assert harmonic(0.5, 0.25) == pytest.approx(1 / 3) and harmonic(None, 0.5) is None


def test_seed_mean_and_table():
    a = generalized_zero_shot(BASE_COS, BASE_Y, NOVEL_COS, NOVEL_Y, 2, BASE_COS, BASE_Y, tolerance=0.0)
    b = {**a, "novel": 0.5, "harmonic": harmonic(1.0, 0.5)}
    m = mean_generalized([a, b, None])
    assert m["novel"] == pytest.approx(0.25) and m["std"]["novel"] == pytest.approx(0.25)
    assert m["calibrated"]["harmonic"] == 1.0 and m["std"]["calibrated"]["harmonic"] == 0.0
    lines = generalized_table_lines({"vl_cls": {"generalized": m}, "other": {}})
    assert any(line.startswith("| vl_cls | 100.0 | 25.0 ± 25.0 |") for line in lines)
    assert mean_generalized([None]) is None and generalized_table_lines({"x": {}}) == []
