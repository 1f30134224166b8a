"""Safe `.pt` files: written atomically, always read with `weights_only=True` (no pickled code runs on load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmkd.errors import ArtifactError
from vlmkd.utils.io import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"checkpoint {str(p)!r} not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ArtifactError(
            f"checkpoint {str(p)!r} cannot be loaded safely ({type(e).__name__}: {e})"
        ) from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP (or any `.module`) wrapper."""
    return model.module if hasattr(model, "module") else model


def prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of a state dict under `prefix.`, with the prefix removed (one submodule's state)."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
