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


def densify_topk(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B x C teacher log-probabilities from stored top-k probabilities (B x k) and their classes (B x k).

    As Apple ml-dr's "smooth" densify: the k stored probabilities in place, the remaining mass 1 - sum spread
    evenly over the other C - k classes. Log-probabilities serve as logits: log_softmax(log p / T) is the teacher's
    own softmax at temperature T on the stored classes (softmax(z / T) is proportional to p^(1/T)), so KD at any
    temperature reads them like dense logits. Probabilities are floored at 1e-8 (below float16's resolution of the
    stored values) so that no class has log 0, which would make KL's 0 * log 0 a NaN.
    """
    values = values.float()
    k = values.shape[-1]
    rest = (1.0 - values.sum(-1, keepdim=True)).clamp(min=0.0) / max(num_classes - k, 1)
    dense = rest.expand(-1, num_classes).clone().scatter_(-1, indices.long(), values)
    dense = dense / dense.sum(-1, keepdim=True)  # float16 rounding can leave the total off 1
    return dense.clamp(min=1e-8).log()


@LOSSES.register("hard_kd")
class HardKD(nn.Module):
    """DeiT hard distillation: cross-entropy of the student against the teacher's argmax class."""

    inputs = ("logits", "teacher_logits")

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, teacher_logits.detach().argmax(dim=-1))
