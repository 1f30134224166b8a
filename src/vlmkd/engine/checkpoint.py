"""Training checkpoints (`.pt`, always loaded with weights_only=True) and student-only safetensors exports."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlmkd.errors import ArtifactError
from vlmkd.utils.io import atomic_path, read_json, write_json


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
    return model.module if hasattr(model, "module") else model


def export_student(
    run_dir: str | Path, student: torch.nn.Module, spec: dict[str, Any], extra: dict[str, Any]
) -> Path:
    """student.safetensors + student.json (architecture spec, class names, preprocessing, ...)."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in unwrap(student).state_dict().items()}
    with atomic_path(run_dir / "student.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(run_dir / "student.json", {"spec": spec, **extra})
    return run_dir / "student.safetensors"


def load_student(path: str | Path, device: str | torch.device = "cpu"):
    """A student from a run folder, a student.safetensors file, or a training checkpoint in a run folder.

    Returns (student in eval mode, metadata dict from student.json).
    """
    from vlmkd.students import student_from_spec

    p = Path(path)
    run_dir = p if p.is_dir() else p.parent
    if p.suffix == ".pt" and p.parent.name == "checkpoints":  # RUN/checkpoints/last.pt
        run_dir = p.parent.parent
    meta_path = run_dir / "student.json"
    if not meta_path.is_file():
        raise ArtifactError(
            f"{str(run_dir)!r} has no student.json; give a vlmkd run folder or its student.safetensors"
        )
    meta = read_json(meta_path)
    student = student_from_spec(meta["spec"])
    if p.suffix == ".pt":
        state = load_checkpoint(p)["student"]
    else:
        wpath = p if p.suffix == ".safetensors" else run_dir / "student.safetensors"
        if not wpath.is_file():
            raise ArtifactError(
                f"{str(wpath)!r} not found; train the run to the end or point at a checkpoint .pt"
            )
        state = load_file(str(wpath))
    student.load_state_dict(state)
    return student.to(device).eval(), meta
