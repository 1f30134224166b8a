"""The class-list rule (vlmkd.eval.class_list) with golden values: the run's calibration applies only where
trained and untrained names compete; a list of one kind scores raw cosine, as `vlmkd eval`'s restricted splits do.

The calibration is built by hand so that standardizing flips the argmax: classes 0 and 1 have text rows e0, e1;
over the held-out images class 0's cosine has mean 0.5 and sd 0.1, class 1's mean 0 and sd 0.15 (scale 0.1).
An image at (0.8, 0.6) is class 0 by cosine (0.8 > 0.6) and class 1 standardized ((0.8-0.5)/0.1*0.1 = 0.3 <
(0.6-0)/0.15*0.1 = 0.4).
"""

import numpy as np
import pytest

from vlmkd.data.manifest import Manifest
from vlmkd.eval.calibration import ScoreNorm, SeenCalibration
from vlmkd.eval.class_list import accuracy_of_predictions, applies_calibration, list_manifests, list_scores
from vlmkd.export.card import BLOCK_END, BLOCK_START, class_list_block, replace_class_list_block
from vlmkd.predict import Predictor

TEXT = np.eye(2, dtype=np.float32)
EMB = np.array([[0.8, 0.6]], np.float32)
NORM = ScoreNorm(np.array([0.5, 0.0]), np.diag([0.01, 0.0225]), scale=0.1)


def _predictor(seen, gamma=0.0):
    runtime = lambda x: {"embedding": x}  # noqa: E731 - the "model" returns its input as the embedding
    cal = SeenCalibration(gamma, NORM)
    return Predictor(runtime, {}, ["a", "b"], "cosine", TEXT, 0.1, seen=np.array(seen, bool), calibration=cal)


@pytest.mark.parametrize("seen", [[False, False], [True, True]])
def test_a_list_of_one_kind_scores_raw_cosine(seen):
    # before: predict standardized every list, so a novel-names export disagreed with eval's ood_test
    np.testing.assert_allclose(_predictor(seen, gamma=0.05).logits(EMB), [[8.0, 6.0]], rtol=1e-6)
    assert not applies_calibration(np.array(seen))


def test_a_mixed_list_gets_the_runs_calibration():
    # standardized 0.3 and 0.4, gamma 0.05 off the trained class 0, / temperature 0.1
    np.testing.assert_allclose(_predictor([True, False], gamma=0.05).logits(EMB), [[2.5, 4.0]], rtol=1e-5)
    cal = SeenCalibration(0.05, NORM)
    got = list_scores(EMB, np.array([True, False]), cal, cal.stats(TEXT))
    np.testing.assert_allclose(got, [[0.25, 0.4]], rtol=1e-5)
    np.testing.assert_allclose(list_scores(EMB, np.array([False, False]), cal), EMB)
    with pytest.raises(ValueError, match="statistics"):
        list_scores(EMB, np.array([True, False]), cal)


def _manifest(split, names, labels):
    n = len(labels)
    return Manifest(
        ids=[f"{split}{i}" for i in range(n)],
        labels=np.array(labels),
        class_names=names,
        paths=[f"{i}.png" for i in range(n)],
        split=split,
    )


def test_list_images_come_from_test_for_trained_and_ood_test_for_novel_classes():
    manifests = {
        "test": _manifest("test", ["cat", "dog"], [0, 1, 1]),
        "id": _manifest("id", ["cat", "dog"], [0, 0]),
        "ood_test": _manifest("ood_test", ["fox", "eel"], [0, 1, 1, 0]),
    }
    parts = list_manifests(manifests, ["eel", "dog", "zebra"])
    assert [(s, len(m), lut.tolist()) for s, m, lut in parts] == [("test", 2, [1]), ("ood_test", 2, [0])]
    assert parts[1][1].labels.tolist() == [0, 0]  # relabelled to the list's eel
    # no test split: the held-out base images stand in
    no_test = {k: v for k, v in manifests.items() if k != "test"}
    assert [s for s, *_ in list_manifests(no_test, ["cat"])] == ["id"]
    assert list_manifests(manifests, ["zebra"]) == []


def test_accuracy_of_predictions_golden():
    got = accuracy_of_predictions(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert got == {"overall": 0.75, "mean_per_class": pytest.approx((2 / 3 + 1) / 2)}
    assert accuracy_of_predictions(np.zeros(0), np.zeros(0)) == {"overall": None, "mean_per_class": None}


def test_the_cards_class_list_block_is_replaced_in_place():
    first = {
        "names": ["fox", "eel"],
        "seen": [False, False],
        "scores": "cosine",
        "error": "not measured here",
    }
    card = "# card\n\n" + "\n".join(class_list_block(first)) + "\n## Size and speed\n"
    assert "- accuracy with this class list: not measured (not measured here)" in card
    assert "all of one kind (all trained or all zero-shot), so no calibration applies" in card
    res = {
        "names": ["cat", "fox"],
        "seen": [True, False],
        "scores": "standardized, gamma 0.100",
        "overall": 0.5,
        "mean_per_class": 0.25,
        "images": 4,
        "classes_with_images": 2,
        "splits": {"test": {"images": 2, "classes": ["cat"], "root": "/d"}},
    }
    new = replace_class_list_block(card, res, "runs/x")
    assert new.count(BLOCK_START) == new.count(BLOCK_END) == 1 and new.endswith("## Size and speed\n")
    assert "1 trained on (cat), 1 zero-shot, never trained on (fox)" in new
    assert "overall 50.00%, mean per class 25.00%" in new and "`vlmkd eval runs/x --classes" in new
    assert "trained and untrained names compete, so the run's calibration applies" in new
    assert "fox, eel" not in new
    assert replace_class_list_block(new, res, "runs/x") == new
