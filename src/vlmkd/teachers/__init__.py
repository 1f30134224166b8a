"""Teachers: vision-language (CLIP-style) teachers and vision teachers for KD."""

from __future__ import annotations

from typing import Any

from vlmkd.teachers.clip import load_clip_teacher


def build_clip_teacher(clip_cfg: Any, device: str = "cpu") -> Any:
    """The CLIP-style teacher of a `ClipTeacherConfig` (clip.name, clip.revision), frozen, on `device`."""

    return load_clip_teacher(clip_cfg.name, clip_cfg.revision, device)
