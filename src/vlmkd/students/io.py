"""A student's shipped form: `student.safetensors` + `student.json` (architecture spec, class names, preprocessing).

A training checkpoint (`checkpoints/last.pt`, `best.pt`) holds the run's whole trainable state under "state"
(student, loss parameters, learned prompts); `load_student` reads the student's part of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlmkd.errors import ArtifactError
from vlmkd.students import student_from_spec
from vlmkd.utils.checkpoint_io import load_checkpoint, prefixed, unwrap
from vlmkd.utils.io import atomic_path, read_json, write_json


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


def checkpoint_student_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The student's weights inside a training checkpoint (the trainable state's `student.` entries)."""
    if "state" in ckpt:
        return prefixed(ckpt["state"], "student")
    if "student" in ckpt:  # checkpoints written before the trainable state was one module
        return ckpt["student"]
    raise ArtifactError("this checkpoint holds no student weights; point at a vlmkd run folder")


def load_student(path: str | Path, device: str | torch.device = "cpu"):
    """A student from a run folder, a student.safetensors file, or a training checkpoint in a run folder.

    Returns (student in eval mode, metadata dict from student.json).
    """
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
        state = checkpoint_student_state(load_checkpoint(p))
    else:
        wpath = p if p.suffix == ".safetensors" else run_dir / "student.safetensors"
        if not wpath.is_file():
            raise ArtifactError(
                f"{str(wpath)!r} not found; train the run to the end or point at a checkpoint .pt"
            )
        state = load_file(str(wpath))
    student.load_state_dict(state)
    return student.to(device).eval(), meta
