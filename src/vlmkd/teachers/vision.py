"""Vision teachers for classic KD: a vlmkd run (or its checkpoint) or a timm model, and their cached logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlmkd.config import DataConfig, VisionTeacherConfig
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.utils.io import artifact_key, load_npy, read_json, save_npy, write_json


class LogitsOnly(nn.Module):
    """Wraps a student-style model so the teacher returns plain logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out["logits"] if isinstance(out, dict) else out


def load_vision_teacher(
    cfg: VisionTeacherConfig, num_classes: int, in_chans: int, device: torch.device
) -> tuple[nn.Module, str]:
    """(frozen teacher in eval mode, teacher id for cache keys)."""
    if not cfg.name:
        raise ConfigError(
            "a KD loss is enabled but teacher.name is empty; name a vlmkd run folder or a timm model"
        )
    p = Path(cfg.name)
    if p.exists():
        from vlmkd.engine.checkpoint import load_student

        model, meta = load_student(p, device)
        if meta["spec"]["num_classes"] != num_classes:
            raise ConfigError(
                f"teacher {cfg.name!r} predicts {meta['spec']['num_classes']} classes, "
                f"the student {num_classes}; train the teacher on the same label set"
            )
        wfile = p / "student.safetensors" if p.is_dir() else p
        teacher_id = f"vlmkd:{artifact_key({'spec': meta['spec'], 'mtime': wfile.stat().st_mtime_ns})[:16]}"
        model = LogitsOnly(model)
    else:
        import timm

        if not timm.is_model(cfg.name):
            raise ConfigError(f"teacher {cfg.name!r} is neither an existing path nor a timm model name")
        model = timm.create_model(
            cfg.name, pretrained=cfg.checkpoint is None, num_classes=num_classes, in_chans=in_chans
        )
        teacher_id = f"timm:{cfg.name}"
        if cfg.checkpoint:
            state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
            teacher_id += f"@{Path(cfg.checkpoint).stat().st_mtime_ns}"
    return model.to(device).eval().requires_grad_(False), teacher_id


def cached_teacher_logits(
    teacher: nn.Module,
    teacher_id: str,
    manifest: Manifest,
    data_cfg: DataConfig,
    cache_dir: str | Path,
    device: torch.device,
) -> np.ndarray:
    """Teacher logits on the clean (eval-transform) view of every sample, cached under a content key."""
    from vlmkd.data.transforms import preprocess_config
    from vlmkd.eval.predict import student_outputs

    key = artifact_key(
        {
            "teacher": teacher_id,
            "preprocess": preprocess_config(data_cfg),
            "view": "clean",
            "manifest": manifest.key(),
        }
    )
    folder = Path(cache_dir) / key[:16]
    if (folder / "meta.json").is_file():
        meta = read_json(folder / "meta.json")
        if meta.get("key") != key:
            raise ArtifactError(f"{folder} holds logits for another key; delete it")
        return load_npy(folder / "logits.npy")
    out = student_outputs(_AsStudent(teacher), manifest, data_cfg, device, desc="teacher logits")
    logits = np.zeros((len(manifest), out["logits"].shape[1]), dtype=np.float16)
    logits[out["index"]] = out["logits"].astype(np.float16)
    save_npy(folder / "logits.npy", logits)
    write_json(folder / "meta.json", {"key": key, "teacher": teacher_id, "n": len(manifest), "view": "clean"})
    return load_npy(folder / "logits.npy")


class _AsStudent(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return {"logits": self.m(x)}
