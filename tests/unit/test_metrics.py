"""classification_metrics, topk_accuracy, average_last_k: hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmkd.errors import ConfigError, DataError
from vlmkd.eval.metrics import average_last_k, classification_metrics, topk_accuracy

PREDS = np.array([0, 1, 1, 2, 0])
LABELS = np.array([0, 1, 2, 2, 0])


def test_basic_metrics_by_hand():
    m = classification_metrics(PREDS, LABELS, num_classes=4)
    # correct: samples 0, 1, 3, 4 -> 4/5
    assert m["overall"] == pytest.approx(0.8)
    # class 0: 2/2, class 1: 1/1, class 2: 1/2, class 3: absent
    assert m["per_class"] == [1.0, 1.0, 0.5, None]
    assert m["mean_per_class"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion"] == [[2, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert "many" not in m and "tail" not in m
    json.dumps(m)


def test_long_tail_buckets_by_hand():
    # counts: class 0 many (>100), class 1 medium, classes 2, 3 few (<20); class 3 has no test images
    m = classification_metrics(PREDS, LABELS, 4, train_counts=[200, 50, 5, 1])
    assert m["many"] == pytest.approx(1.0)
    assert m["medium"] == pytest.approx(1.0)
    assert m["few"] == pytest.approx(0.5)  # only class 2 is scored
    assert m["bucket_sizes"] == {"many": 1, "medium": 1, "few": 2}
    # the 3 rarest scored classes: 2 (5 imgs), 1 (50), 0 (200) -> (0.5 + 1 + 1) / 3
    assert m["tail_classes"] == [2, 1, 0]
    assert m["tail"] == pytest.approx(2.5 / 3)
    json.dumps(m)
    for key in ("overall", "mean_per_class", "many", "medium", "few", "tail"):
        assert type(m[key]) is float


def test_thresholds_are_inclusive_for_medium_and_configurable():
    preds = labels = np.array([0, 1, 2, 3])
    m = classification_metrics(preds, labels, 4, train_counts=np.array([101, 100, 20, 19]))
    assert m["bucket_sizes"] == {"many": 1, "medium": 2, "few": 1}
    m = classification_metrics(
        preds, labels, 4, train_counts=[101, 100, 20, 19], many_threshold=10, few_threshold=5
    )
    assert m["bucket_sizes"] == {"many": 4, "medium": 0, "few": 0}
    assert m["medium"] is None and m["few"] is None


def test_tail_ties_broken_by_class_index():
    preds = np.array([0, 0, 2, 3])
    labels = np.array([0, 1, 2, 3])  # accuracies 1, 0, 1, 1
    m = classification_metrics(preds, labels, 4, train_counts=[7, 3, 3, 3], tail_classes=2)
    assert m["tail_classes"] == [1, 2]
    assert m["tail"] == pytest.approx(0.5)
    m = classification_metrics(preds, labels, 4, train_counts=[7, 3, 3, 3], tail_classes=10)
    assert m["tail_classes"] == [1, 2, 3, 0]


def test_accepts_torch_and_lists():
    m = classification_metrics(torch.tensor(PREDS), torch.tensor(LABELS), 4, torch.tensor([200, 50, 5, 1]))
    assert m["overall"] == pytest.approx(0.8) and m["few"] == pytest.approx(0.5)
    assert classification_metrics(list(PREDS), list(LABELS), 4)["overall"] == pytest.approx(0.8)


def test_matches_loop_reference_on_random_data():
    rng = np.random.default_rng(0)
    C = 7
    labels = rng.integers(0, C, 300)
    preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, C, 300))
    m = classification_metrics(preds, labels, C)
    per = [np.mean(preds[labels == c] == c) for c in range(C)]
    assert m["per_class"] == pytest.approx(per)
    assert m["mean_per_class"] == pytest.approx(np.mean(per))
    assert m["overall"] == pytest.approx(np.mean(preds == labels))
    conf = np.zeros((C, C), int)
    for y, p in zip(labels, preds):
        conf[y, p] += 1
    assert m["confusion"] == conf.tolist()


def test_errors():
    with pytest.raises(DataError):
        classification_metrics(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(DataError):
        classification_metrics(np.array([0, 1]), np.array([0, 5]), 2)
    with pytest.raises(DataError):
        classification_metrics(np.array([0, 1]), np.array([0, 1]), 2, train_counts=[1, 2, 3])


def test_empty_input():
    m = classification_metrics(np.array([], int), np.array([], int), 3, train_counts=[1, 2, 3])
    assert m["overall"] is None and m["mean_per_class"] is None and m["tail"] is None
    assert m["per_class"] == [None, None, None]


def test_topk_accuracy():
    logits = np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)  # only row 1
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)  # rows 0 and 1
    assert topk_accuracy(torch.tensor(logits), torch.tensor(labels), 5) == pytest.approx(1.0)  # k capped at C


def test_average_last_k():
    assert average_last_k([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(4.0)  # (2+3+4+5+6)/5
    assert average_last_k([1.0, 2.0], k=5) == pytest.approx(1.5)
    assert average_last_k([1.0, 2.0, 3.0], k=1) == pytest.approx(3.0)
    assert type(average_last_k([1, 2])) is float
    with pytest.raises(ConfigError):
        average_last_k([1.0], k=0)
    with pytest.raises(ValueError):
        average_last_k([])
