"""The one device resolver: every stage's `device` option ("auto", "cpu", "cuda", "cuda:N") means the same thing."""

from __future__ import annotations

import os

import torch

from vlmkd.errors import ConfigError


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """auto (or empty): this process's GPU when CUDA is available, else the CPU. A bare "cuda" is this process's
    GPU too: under torchrun every rank must own its device (LOCAL_RANK), never all share cuda:0."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    text = str(spec or "auto")
    if text == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r}, but no CUDA device is available; use cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
