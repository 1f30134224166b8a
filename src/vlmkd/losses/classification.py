"""Classification losses on student logits: plain CE and the long-tail variants that use training class counts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES


def require_positive(name: str, value: Any) -> float:
    """`value` as a float, or ConfigError when it is not a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return v


def counts_tensor(class_counts: Any) -> torch.Tensor:
    """Training-set images per class (list, 1-D array or tensor) as a float64 tensor.

    Classes with zero training images are counted as one image, so their log-prior and effective-number weight stay
    finite (such a class never appears as a training label, so this only affects the other classes' softmax).
    """
    if class_counts is None:
        raise ConfigError("class_counts is required (training images per class)")
    if isinstance(class_counts, torch.Tensor):
        class_counts = class_counts.detach().cpu().numpy()
    try:
        arr = np.asarray(class_counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"class_counts must be a list of numbers, got {class_counts!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"class_counts must be a non-empty 1-D list, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError("class_counts must be finite and >= 0")
    if arr.sum() <= 0:
        raise ConfigError("class_counts are all zero")
    return torch.from_numpy(np.maximum(arr, 1.0))


def _check_classes(logits: torch.Tensor, n: int, what: str) -> None:
    if logits.shape[-1] != n:
        raise ConfigError(f"{what}: logits have {logits.shape[-1]} classes but class_counts has {n} entries")


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy on class logits, optional label smoothing."""

    inputs = ("logits", "labels")

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


class _PriorAdjusted(nn.Module):
    inputs = ("logits", "labels")
    scale = 1.0

    def __init__(self, class_counts: Any):
        super().__init__()
        counts = counts_tensor(class_counts)
        self.register_buffer("log_prior", torch.log(counts / counts.sum()).float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_classes(logits, self.log_prior.numel(), type(self).__name__)
        return F.cross_entropy(logits + self.scale * self.log_prior.to(logits.dtype), labels)


@LOSSES.register("balanced_softmax")
class BalancedSoftmax(_PriorAdjusted):
    """Balanced Softmax (Ren et al. 2020): cross-entropy on logits + log(prior), prior = n_c / sum(n)."""

    def __init__(self, class_counts: Any):
        super().__init__(class_counts)


@LOSSES.register("logit_adjusted")
class LogitAdjusted(_PriorAdjusted):
    """Logit-adjusted cross-entropy (Menon et al. 2020): cross-entropy on logits + tau * log(prior)."""

    def __init__(self, class_counts: Any, tau: float = 1.0):
        super().__init__(class_counts)
        try:
            self.scale = float(tau)
        except (TypeError, ValueError):
            raise ConfigError(f"tau must be a number, got {tau!r}") from None


@LOSSES.register("class_balanced")
class ClassBalanced(nn.Module):
    """Class-balanced cross-entropy (Cui et al. 2019).

    Weight of class c: w_c = (1 - beta) / (1 - beta^n_c), rescaled so the C weights sum to C. The loss is the plain
    batch mean of w_{y_i} * CE_i (as in the reference implementation), not the weighted mean of `F.cross_entropy`
    (which divides by the sum of the batch's weights and would undo the normalisation).
    """

    inputs = ("logits", "labels")

    def __init__(self, class_counts: Any, beta: float = 0.9999):
        super().__init__()
        beta = float(beta)
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta must be in [0, 1), got {beta!r}")
        counts = counts_tensor(class_counts)
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
        w = w / w.sum() * counts.numel()
        self.beta = beta
        self.register_buffer("weights", w.float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_classes(logits, self.weights.numel(), "class_balanced")
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        return (self.weights.to(per_sample.dtype)[labels] * per_sample).mean()
