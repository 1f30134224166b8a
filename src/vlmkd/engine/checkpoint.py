"""Training checkpoints: the RNG state a resumed run restores (file I/O in vlmkd.utils.checkpoint_io)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from vlmkd.students.io import export_student, load_student
from vlmkd.utils.checkpoint_io import load_checkpoint, save_checkpoint, unwrap


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from (dropout, sampled descriptions, numpy in user code)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        # numpy's MT19937 state as tensors and ints, so the checkpoint stays loadable with weights_only=True
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "numpy" in state:  # absent in checkpoints written before numpy's state was saved
        keys, pos = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# file I/O and the student's shipped form live below the engine (teachers, eval and export read them too)
__all__ = [
    "export_student",
    "load_checkpoint",
    "load_student",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unwrap",
]
