"""Seeded calls into code that draws from torch's global CPU generator (torchvision's random transforms)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def seeded_call(fn: Callable[..., Any], *args: Any, seed: int) -> Any:
    """`fn(*args)` with the global CPU generator seeded to `seed`, restored afterwards.

    Per-call seeds make augmentation a function of (seed, epoch, sample) alone: independent of worker count,
    world size and resume point, and of whatever else drew from the generator before. The CPU generator is
    seeded directly: torch.manual_seed would also queue CUDA seeding, which is slow.
    """
    gen = torch.random.default_generator
    state = gen.get_state()
    gen.manual_seed(seed)
    try:
        return fn(*args)
    finally:
        gen.set_state(state)
