"""summary.json stays small at iNat's 8,142 classes: the confusion matrix goes to confusion.npz."""

import json

import numpy as np

from vlmkd.eval.metrics import classification_metrics
from vlmkd.eval.report import write_summary


def summary_of(c: int, with_confusion: bool, n: int = 20_000):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, n)
    preds = np.where(rng.random(n) < 0.5, labels, rng.integers(0, c, n))
    metrics = classification_metrics(preds, labels, c, np.full(c, 50), with_confusion=with_confusion)
    names = [f"species_{i:05d}" for i in range(c)]
    return (
        {"class_names": names, "train_counts": [50] * c, "splits": {"test": metrics, "val": metrics}},
        preds,
        labels,
    )


def test_summary_at_8142_classes_is_under_1mb(tmp_path):
    write_summary(tmp_path, summary_of(8142, with_confusion=False)[0])
    size = (tmp_path / "summary.json").stat().st_size
    assert size < 1_000_000, size


def test_confusion_goes_to_npz(tmp_path):
    summary, preds, labels = summary_of(500, with_confusion=True)
    overall = summary["splits"]["test"]["overall"]
    write_summary(tmp_path, summary)
    loaded = json.loads((tmp_path / "summary.json").read_text())
    assert "confusion" not in loaded["splits"]["test"] and loaded["confusion_file"] == "confusion.npz"
    conf = np.load(tmp_path / "confusion.npz")["test"]
    assert (
        conf.shape == (500, 500) and conf.sum() == len(labels) and np.trace(conf) == (preds == labels).sum()
    )
    assert loaded["splits"]["test"]["overall"] == overall


def test_metrics_without_confusion_match(tmp_path):
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    full = classification_metrics(preds, labels, 7, np.arange(1, 8) * 10)
    lean = classification_metrics(preds, labels, 7, np.arange(1, 8) * 10, with_confusion=False)
    assert "confusion" not in lean and lean == {k: v for k, v in full.items() if k != "confusion"}
