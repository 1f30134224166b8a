"""Exponential moving average of the student, BatchNorm statistics included (as timm's ModelEmaV3).

torch's `AveragedModel` averages parameters only by default and copies the buffers from the live model, so the EMA
weights were evaluated with the live model's BatchNorm running statistics: statistics of other weights. With
`use_buffers=True` the float buffers are averaged with the same decay; integer buffers (`num_batches_tracked`)
are counters, not estimates, and are copied.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_update_fn(decay: float):
    """A `multi_avg_fn` for AveragedModel: ema <- decay * ema + (1 - decay) * current, per dtype group."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        # AveragedModel groups tensors by dtype, so one check per group is enough
        if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - decay)
        else:
            torch._foreach_copy_(ema, current)

    return update


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of `model`; call `.update_parameters(model)` after each optimizer step."""
    return AveragedModel(model, multi_avg_fn=ema_update_fn(decay), use_buffers=True)
