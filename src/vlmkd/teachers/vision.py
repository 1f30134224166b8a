"""Vision teachers for classic KD: a vlmkd run (or its checkpoint) or a timm model, and their cached logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlmkd.config import DataConfig, VisionTeacherConfig
from vlmkd.data.manifest import Manifest
from vlmkd.data.transforms import preprocess_config
from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.eval.predict import student_outputs
from vlmkd.students.io import load_student
from vlmkd.utils.dist import WorkSplit, work_split
from vlmkd.utils.io import artifact_key, load_npy, path_fingerprint, read_json, write_json
from vlmkd.utils.provenance import record_artifact, record_model
from vlmkd.utils.sharded import ShardedRows, spans

LOGIT_SHARD = 8192  # rows per shard: the unit of resume and of the split across ranks


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
        model, meta = load_student(p, device)
        if meta["spec"]["num_classes"] != num_classes:
            raise ConfigError(
                f"teacher {cfg.name!r} predicts {meta['spec']['num_classes']} classes, "
                f"the student {num_classes}; train the teacher on the same label set"
            )
        wfile = p / "student.safetensors" if p.is_dir() else p
        weights = path_fingerprint(wfile)  # content, not mtime: a copied or touched file keeps its cache
        teacher_id = f"vlmkd:{artifact_key({'spec': meta['spec'], 'weights': weights})[:16]}"
        model = LogitsOnly(model)
    else:
        import timm

        if not timm.is_model(cfg.name):
            raise ConfigError(f"teacher {cfg.name!r} is neither an existing path nor a timm model name")
        _check_timm_head(cfg, num_classes)
        model = timm.create_model(
            cfg.name, pretrained=cfg.checkpoint is None, num_classes=num_classes, in_chans=in_chans
        )
        teacher_id, weights = f"timm:{cfg.name}", None
        if cfg.checkpoint:
            state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
            weights = path_fingerprint(cfg.checkpoint)
            teacher_id += f"@{weights[:16]}"
    record_model("vision_teacher", teacher_id, weights)
    return model.to(device).eval().requires_grad_(False), teacher_id


def _check_timm_head(cfg: VisionTeacherConfig, num_classes: int) -> None:
    """Pretrained timm weights carry their own head (ImageNet: 1000 classes); for another class count timm puts
    a random head on it, and KD would then learn from noise. Such a teacher needs fine-tuned weights."""
    from timm.models import get_pretrained_cfg_value

    if cfg.checkpoint:
        return
    native = get_pretrained_cfg_value(cfg.name, "num_classes") or 1000
    if native != num_classes:
        raise ConfigError(
            f"timm teacher {cfg.name!r} has a {native}-class pretrained head but this dataset has {num_classes} "
            "classes: its head would be random; give teacher.checkpoint (weights fine-tuned on these classes) "
            "or a vlmkd run folder as teacher.name"
        )


def cached_teacher_logits(
    teacher: nn.Module,
    teacher_id: str,
    manifest: Manifest,
    data_cfg: DataConfig,
    cache_dir: str | Path,
    device: torch.device,
    num_classes: int | None = None,
) -> np.ndarray:
    """Teacher logits (float16 N x C) on the clean (eval-transform) view of every sample, cached under a content
    key. Under torchrun every rank must call it: each computes its shards of rows, rank 0 merges, then all read
    the cache (`vlmkd.utils.sharded`); no rank builds the whole cache."""

    key = artifact_key(
        {
            "teacher": teacher_id,
            "preprocess": preprocess_config(data_cfg),
            "view": "clean",
            "manifest": manifest.key(),
        }
    )
    folder = Path(cache_dir) / key[:16]
    split = work_split()
    if not split.collective:  # built inside training only: no job-array mode, one process builds it all
        split = WorkSplit()
    done = _finished_logits(folder, key)
    split.barrier()  # every rank has looked before any rank writes
    if not done:
        c = int(num_classes or manifest.num_classes)
        rows = ShardedRows(
            folder / "shards", spans(len(manifest), LOGIT_SHARD), (c,), split, "teacher logits"
        )
        rows.compute(lambda lo, hi: _logit_rows(teacher, manifest, lo, hi, c, data_cfg, device))
        if rows.merger:
            rows.concatenate(folder / "logits.npy")
            meta = {"key": key, "teacher": teacher_id, "n": len(manifest), "view": "clean"}
            write_json(folder / "meta.json", meta)  # last: its presence marks a complete cache
        rows.finish()
    record_artifact("teacher_logits", key, folder, teacher=teacher_id)
    return load_npy(folder / "logits.npy")


def _finished_logits(folder: Path, key: str) -> bool:
    if not (folder / "meta.json").is_file():
        return False
    if read_json(folder / "meta.json").get("key") != key:
        raise ArtifactError(f"{folder} holds logits for another key; delete it")
    return True


def _logit_rows(teacher, manifest: Manifest, lo: int, hi: int, c: int, data_cfg, device) -> np.ndarray:
    part = manifest.subset(np.arange(lo, hi))
    out = student_outputs(_AsStudent(teacher), part, data_cfg, device, desc="teacher logits")
    logits = np.zeros((hi - lo, c), dtype=np.float16)  # rows of skipped images stay zero
    if "index" in out:  # absent when every image of the span was skipped
        logits[out["index"]] = out["logits"].astype(np.float16)
    return logits


class _AsStudent(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return {"logits": self.m(x)}
