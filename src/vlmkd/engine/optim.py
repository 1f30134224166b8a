"""Optimizers and per-step learning-rate schedules (warm-up + cosine / step / one-cycle / constant)."""

from __future__ import annotations

import math

import torch

from vlmkd.config import OptimConfig
from vlmkd.errors import ConfigError


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # biases, norms and temperatures are not decayed
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ConfigError(f"unknown optim.name {cfg.name!r}; choose sgd or adamw")


def lr_factor(step: int, total: int, warmup: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`."""
    if cfg.schedule == "onecycle":  # linear ramp over 30% (or the warm-up), then cosine to ~0
        ramp = warmup or max(1, int(0.3 * total))
        if step < ramp:
            return 0.04 + 0.96 * step / ramp
        t = (step - ramp) / max(1, total - ramp)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "step":
        epoch = step / max(1, steps_per_epoch)
        total_epochs = total / max(1, steps_per_epoch)
        marks = [m * total_epochs if m < 1 else m for m in cfg.milestones]
        return cfg.gamma ** sum(epoch >= m for m in marks)
    raise ConfigError(f"unknown optim.schedule {cfg.schedule!r}; choose cosine, step, onecycle or constant")


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int):
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    lr_factor(0, total_steps, warmup, cfg, steps_per_epoch)  # validates the schedule name early
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup, cfg, steps_per_epoch)
    )
