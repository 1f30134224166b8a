"""Logit distillation from a vision teacher: Hinton soft KD and DeiT hard distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.losses import LOSSES
from vlmkd.losses.classification import require_positive


@LOSSES.register("kd")
class SoftKD(nn.Module):
    """Hinton et al.: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch. The teacher is a constant."""

    inputs = ("logits", "teacher_logits")

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = require_positive("temperature", temperature)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        log_p_s = F.log_softmax(logits / T, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


@LOSSES.register("hard_kd")
class HardKD(nn.Module):
    """DeiT hard distillation: cross-entropy of the student against the teacher's argmax class."""

    inputs = ("logits", "teacher_logits")

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, teacher_logits.detach().argmax(dim=-1))
