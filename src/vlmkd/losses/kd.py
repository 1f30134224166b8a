"""Logit distillation from a vision teacher: Hinton soft KD and DeiT hard distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.losses.classification import require_positive


@LOSSES.register("kd")
class SoftKD(nn.Module):
    """Hinton et al.: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch. The teacher is a constant.

    logit_adjust=True (needs class_counts, filled in by the task): both sides get + log(prior) before the softmax,
    i.e. the student's balanced logits are matched to a balanced teacher in the training distribution's terms, as
    balanced softmax / logit adjustment treat the labels. Plain KD on long-tailed data pulls the student's raw
    logits towards the head classes, which undoes what a long-tail classification loss does for the tail.
    """

    inputs = ("logits", "teacher_logits")

    def __init__(
        self, temperature: float = 2.0, logit_adjust: bool = False, class_counts: list[int] | None = None
    ):
        super().__init__()
        self.temperature = require_positive("temperature", temperature)
        self.log_prior = None
        if logit_adjust:
            if class_counts is None:
                raise ConfigError("kd with logit_adjust=true needs class_counts (the training class counts)")
            counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
            self.log_prior = torch.log(counts / counts.sum())

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        if self.log_prior is not None:
            prior = self.log_prior.to(logits.device)
            logits, teacher_logits = logits + prior, teacher_logits + prior
        log_p_s = F.log_softmax(logits / T, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


@LOSSES.register("hard_kd")
class HardKD(nn.Module):
    """DeiT hard distillation: cross-entropy of the student against the teacher's argmax class."""

    inputs = ("logits", "teacher_logits")

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, teacher_logits.detach().argmax(dim=-1))
