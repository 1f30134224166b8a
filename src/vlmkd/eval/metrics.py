"""Classification metrics: top-1, mean per-class accuracy, confusion, long-tail Many/Medium/Few and tail groups.

Inputs are numpy arrays (torch tensors are accepted too); every returned number is a plain Python float/int/None so
the result is JSON-serialisable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vlmkd.errors import ConfigError, DataError


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def classification_metrics(
    preds: Any,
    labels: Any,
    num_classes: int,
    train_counts: Any = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
    tail_classes: int = 3,
    with_confusion: bool = True,
) -> dict[str, Any]:
    """Metrics of predicted class ids `preds` against `labels` (both length N, ids in [0, num_classes)).

    Keys:
    - ``overall``: top-1 accuracy (fraction); ``mean_per_class``: mean accuracy over classes present in `labels`;
      ``per_class``: accuracy per class, None for classes absent from `labels`; ``confusion``: C x C counts,
      rows = true class, columns = predicted class. ``overall``/``mean_per_class`` are None for an empty input.
    - With `train_counts` (training images per class): ``many`` / ``medium`` / ``few``: mean per-class accuracy
      over classes with count > many_threshold / many_threshold >= count >= few_threshold / count < few_threshold
      (only classes present in `labels` are averaged; None when no such class); ``bucket_sizes``: classes per bucket
      by training count; ``tail``: mean per-class accuracy over the `tail_classes` classes with the fewest training
      images among the classes present in `labels` (ties broken by class index), ``tail_classes``: their ids.
    """
    preds = _np(preds).reshape(-1).astype(np.int64)
    labels = _np(labels).reshape(-1).astype(np.int64)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if preds.shape != labels.shape:
        raise DataError(f"{preds.size} predictions for {labels.size} labels")
    for name, arr in (("labels", labels), ("predictions", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise DataError(
                f"{name} must be class ids in [0, {num_classes}); got range [{arr.min()}, {arr.max()}]"
            )

    # per-class counts in O(C): the C x C confusion (66M cells at 8,142 classes) only when asked for
    totals = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[preds == labels], minlength=num_classes)
    present = totals > 0
    acc = np.full(num_classes, np.nan)
    acc[present] = correct[present] / totals[present]

    out: dict[str, Any] = {
        "overall": float(correct.sum() / labels.size) if labels.size else None,
        "mean_per_class": float(acc[present].mean()) if present.any() else None,
        "per_class": [None if math.isnan(a) else float(a) for a in acc],
    }
    if with_confusion:
        confusion = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
        out["confusion"] = confusion.reshape(num_classes, num_classes).tolist()
    if train_counts is None:
        return out

    counts = _np(train_counts).reshape(-1)
    if counts.size != num_classes:
        raise DataError(f"train_counts has {counts.size} entries for {num_classes} classes")
    if few_threshold > many_threshold:
        raise ConfigError(
            f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})"
        )
    buckets = {
        "many": counts > many_threshold,
        "medium": (counts <= many_threshold) & (counts >= few_threshold),
        "few": counts < few_threshold,
    }
    for name, members in buckets.items():
        out[name] = _mean([float(acc[c]) for c in np.flatnonzero(members & present)])
    out["bucket_sizes"] = {name: int(members.sum()) for name, members in buckets.items()}
    scored = [c for c in range(num_classes) if present[c]]
    tail = sorted(scored, key=lambda c: (counts[c], c))[: max(int(tail_classes), 0)]
    out["tail"] = _mean([float(acc[c]) for c in tail])
    out["tail_classes"] = [int(c) for c in tail]
    return out


def topk_accuracy(logits: Any, labels: Any, k: int = 1) -> float:
    """Fraction of rows of `logits` (N x C) whose label is among the k highest scores (k is capped at C)."""
    logits = _np(logits)
    labels = _np(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise DataError(f"logits must be N x C with N = {labels.size}, got shape {logits.shape}")
    if int(k) < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if labels.size == 0:
        return float("nan")
    k = min(int(k), logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def average_last_k(values: list[float], k: int = 5) -> float:
    """Mean of the last `k` values (all of them when fewer): the OOD paper reports the mean of the last 5 epochs."""
    if int(k) < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if len(values) == 0:
        raise ValueError("average_last_k needs at least one value")
    return float(np.mean([float(v) for v in values[-int(k) :]]))
