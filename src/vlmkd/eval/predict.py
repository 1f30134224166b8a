"""Running a student over a manifest: logits or embeddings, batched, with a progress bar."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from vlmkd.config import DataConfig
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.manifest import Manifest
from vlmkd.data.transforms import build_transform
from vlmkd.utils.checkpoint_io import unwrap
from vlmkd.utils.dist import gather_objects, get_info
from vlmkd.utils.progress import progress


@torch.no_grad()
def student_outputs(
    student: torch.nn.Module,
    manifest: Manifest,
    data_cfg: DataConfig,
    device: str | torch.device = "cpu",
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """{"logits"?, "embedding"?, "labels", "index"} over the manifest (eval transform, no augmentation)."""
    model = unwrap(student)
    was_training = model.training
    model.eval()
    ds = ManifestDataset(manifest, build_transform(data_cfg, train=False), on_bad_image=data_cfg.on_bad_image)
    dl = DataLoader(
        ds,
        batch_size=data_cfg.eval_batch_size,
        shuffle=False,
        num_workers=data_cfg.num_workers,
        collate_fn=collate_skip,
    )
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in progress(dl, desc=desc, unit="batch"):
        if "image" not in batch:
            continue
        out = model(batch["image"].to(device, _dtype(model)))
        for k in ("logits", "embedding"):
            if k in out:
                chunks.setdefault(k, []).append(out[k].float().cpu().numpy())
        chunks.setdefault("labels", []).append(batch["label"].numpy())
        chunks.setdefault("index", []).append(batch["index"].numpy())
    model.train(was_training)
    return {k: np.concatenate(v) for k, v in chunks.items()}


def sharded_outputs(
    student: torch.nn.Module,
    manifest: Manifest,
    data_cfg: DataConfig,
    device: str | torch.device = "cpu",
    desc: str = "eval",
    shard: bool = False,
) -> dict[str, np.ndarray] | None:
    """`student_outputs`; with `shard` under a process group (every rank calls it), each rank runs every
    world-th image and the rows are gathered on rank 0 in the manifest's order, so rank 0 gets what one process
    computes, no rank waits idle through the whole split, and the rows are held once. None on the other ranks."""
    info = get_info()
    if not (shard and info.enabled and info.world_size > 1):
        return student_outputs(student, manifest, data_cfg, device, desc)
    rows = np.arange(info.rank, len(manifest), info.world_size)
    out = student_outputs(student, manifest.subset(rows), data_cfg, device, desc)
    out["index"] = rows[out["index"]] if "index" in out else rows[:0]
    parts = gather_objects(out)
    if parts is None:
        return None
    parts = [p for p in parts if len(p["index"])] or parts[:1]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


@torch.no_grad()
def student_predictions(
    student: torch.nn.Module,
    manifest: Manifest,
    data_cfg: DataConfig,
    score,
    device: str | torch.device = "cpu",
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """{"pred", "labels"} over the manifest, streamed: `score(outputs)` turns a batch's student outputs into
    B x C scores, and only their argmax is kept (never an N x C matrix)."""
    model = unwrap(student)
    was_training = model.training
    model.eval()
    ds = ManifestDataset(manifest, build_transform(data_cfg, train=False), on_bad_image=data_cfg.on_bad_image)
    dl = DataLoader(
        ds, batch_size=data_cfg.eval_batch_size, num_workers=data_cfg.num_workers, collate_fn=collate_skip
    )
    preds, labels = [], []
    for batch in progress(dl, desc=desc, unit="batch"):
        if "image" in batch:
            out = {
                k: v.float().cpu().numpy() for k, v in model(batch["image"].to(device, _dtype(model))).items()
            }
            preds.append(np.asarray(score(out)).argmax(1))
            labels.append(batch["label"].numpy())
    model.train(was_training)
    empty = np.zeros(0, np.int64)
    return {"pred": np.concatenate(preds or [empty]), "labels": np.concatenate(labels or [empty])}


def cosine_logits(embedding: np.ndarray, class_text: np.ndarray, temperature: float = 0.07) -> np.ndarray:
    e = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    w = class_text / np.maximum(np.linalg.norm(class_text, axis=1, keepdims=True), 1e-12)
    return e @ w.T / temperature


def _dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's parameter dtype (float64 in a train.precision=float64 run): inputs are cast to it."""
    return next(model.parameters(), torch.empty(0)).dtype  # float32 for a module with no parameters
