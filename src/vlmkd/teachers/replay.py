"""Replayed views (dataset reinforcement, Apple ml-dr / FKD / DataCompDR): K views per image drawn from the
student's OWN training transform, their parameters stored next to the teacher's output for each.

Teaching: view v of image i is `draw(image)` of the recipe's training transform (`vlmkd.data.transforms`) under the
seed `view_seed(i, v)`; the teacher sees that exact tensor, re-expressed in its input space (`TeacherView`, as the
live consistent teacher does). Training: sample i at epoch e replays one of its K stored views, chosen by
`view_choice(seed, e, i, K)`, so the student's crop is the one the teacher saw (consistent
teaching, Beyer et al. 2022) with no teacher at training time.

Sparse logits (ml-dr): a view's teacher distribution is kept as its top-k probabilities (float16) and their class
indices; `vlmkd.losses.kd.densify_topk` spreads the remaining mass evenly over the other classes per batch.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from vlmkd.data.dataset import BatchFetched, collate_skip
from vlmkd.data.images import open_image
from vlmkd.data.manifest import Manifest
from vlmkd.data.transforms import build_transform, preprocess_config
from vlmkd.data.views import NUM_PARAMS, PARAM_FIELDS
from vlmkd.errors import ArtifactError, ConfigError, DataError
from vlmkd.teachers.view import TeacherView
from vlmkd.utils.dist import WorkSplit, work_split
from vlmkd.utils.io import artifact_key, read_json, save_npy, write_json
from vlmkd.utils.provenance import record_artifact
from vlmkd.utils.rng import seeded_call
from vlmkd.utils.sharded import ShardedRows, spans

LOGIT_SHARD = 8192  # samples x views per shard of replayed logits: the unit of resume and of the split

VIEW_SALT = 4  # the per-(seed, epoch, sample) choice of a stored view; every replayed store uses this one
VIEW_SEED = "(index * 1000003 + view) * 7919 + 1"


def view_seed(index: int, view: int) -> int:
    """The seed of stored view `view` of sample `index`: reruns, resumes, shards and worker counts agree."""
    return (index * 1_000_003 + view) * 7919 + 1


_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def view_choice(seed: int, epoch: int, index: int, num_views: int) -> int:
    """Which of the K stored views sample `index` replays at `epoch`: a function of (seed, epoch, index) only.

    A hash in plain integer arithmetic (about 1 us), not `vlmkd.tasks.rows.pick`'s numpy generator (about 37 us):
    the dataset asks for it for every replayed store of every sample, and at 128 samples a batch the generator's
    construction alone added ~10 ms a step (measured on an H200 run of benchmarks/distill_overhead.py)."""
    h = _mix(_mix(_mix(_mix(int(seed) & _MASK) ^ (int(epoch) & _MASK)) ^ (int(index) & _MASK)) ^ VIEW_SALT)
    return int(h % int(num_views))


def replay_recipe(data_cfg: Any) -> dict[str, Any]:
    """What the stored views depend on (part of every replayed cache's key): the student's training transform."""
    if data_cfg is None:
        raise ConfigError("replayed views need the data config (the student's training transform draws them)")
    return {
        "preprocess": preprocess_config(data_cfg),
        "augment": data_cfg.augment,
        "format": data_cfg.format,
        "max_image_pixels": data_cfg.max_image_pixels,
        "params": list(PARAM_FIELDS),
        "seed": VIEW_SEED,
    }


def check_num_views(num_views: int) -> int:
    if int(num_views) < 1:
        raise ConfigError(f"clip.num_views must be >= 1 for clip.view=replay, got {num_views}")
    return int(num_views)


class ReplayedViews(BatchFetched):
    """Item i: {"image": K x C x H x W (the K views, in the teacher's input space when `teacher_pre` is given,
    else the student's tensors), "params": K x P int32, "index": i}; None for a bad image with on_bad_image=skip.

    The image is opened exactly as the training dataset opens it (array or PIL, the transform's decode options),
    so the stored parameters mean the same pixels at training time.
    """

    def __init__(
        self,
        manifest: Manifest,
        data_cfg: Any,
        num_views: int,
        teacher_pre: dict[str, Any] | None = None,
        on_bad_image: str = "error",
    ):
        self.manifest, self.k, self.on_bad_image = manifest, check_num_views(num_views), on_bad_image
        self.transform = build_transform(data_cfg, train=True)
        self.as_array = bool(getattr(self.transform, "accepts_arrays", False))
        self.decode = dict(getattr(self.transform, "decode_options", {}))
        self.view = TeacherView(preprocess_config(data_cfg), teacher_pre) if teacher_pre else None

    def __len__(self) -> int:
        return len(self.manifest)

    def _get(self, i: int, fetched: tuple[bytes, str] | BaseException | None = None) -> dict[str, Any] | None:
        try:
            image = open_image(self.manifest, i, self.as_array, fetched=fetched, **self.decode)
        except DataError:
            if self.on_bad_image == "skip":
                return None
            raise
        drawn = [seeded_call(self.transform.draw, image, seed=view_seed(i, v)) for v in range(self.k)]
        pixels = torch.stack([x for x, _ in drawn])
        if self.view is not None:
            pixels = self.view(pixels)
        params = np.stack([p for _, p in drawn]).astype(np.int32)
        return {"image": pixels, "params": torch.from_numpy(params), "index": i}


def param_shape(num_views: int) -> tuple[int, int]:
    return (int(num_views), NUM_PARAMS)


# ------------------------------------------------------------------------------------------------ sparse logits


def sparsify_topk(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the k most probable classes of softmax(logits) along the last axis: probabilities in
    float16 (largest first) and int32 class indices. k >= C keeps every class."""
    if int(k) < 1:
        raise ConfigError(f"the number of stored teacher classes (topk) must be >= 1, got {k}")
    probs = torch.softmax(logits.float(), dim=-1)
    values, indices = probs.topk(min(int(k), probs.shape[-1]), dim=-1)
    return values.numpy().astype(np.float16), indices.numpy().astype(np.int32)


# ------------------------------------------------------------------------------------- vision teacher, replayed


def replayed_teacher_logits(
    teacher: torch.nn.Module,
    teacher_id: str,
    manifest: Manifest,
    data_cfg: Any,
    cache_dir: str | Path,
    device: torch.device,
    num_views: int,
    topk: int,
) -> Path:
    """A vision teacher's top-k probabilities on K replayed views of every sample (the student's own training
    transform: the teacher classifies exactly the student's tensor), cached under a content key as
    `topk_values.npy` (N x K x k float16), `topk_indices.npy` (N x K x k int32) and `params.npy` (N x K x P int32).
    Returns the folder. Under torchrun every rank computes its shards and rank 0 merges (`vlmkd.utils.sharded`).
    """
    k = min(int(topk), manifest.num_classes)
    key = artifact_key(
        {
            "teacher": teacher_id,
            "view": "replay",
            "num_views": check_num_views(num_views),
            "topk": k,
            "replay": replay_recipe(data_cfg),
            "manifest": manifest.key(),
        }
    )
    folder = Path(cache_dir) / key[:16]
    split = work_split()
    if not split.collective:  # built inside training only: one process builds it all
        split = WorkSplit()
    done = (folder / "meta.json").is_file()
    if done and read_json(folder / "meta.json").get("key") != key:
        raise ArtifactError(f"{folder} holds teacher logits of another key; delete it")
    split.barrier()  # every rank has looked before any rank writes
    if not done:
        size = LOGIT_SHARD // max(1, int(num_views))
        parts = {
            name: ShardedRows(folder / "shards" / name, spans(len(manifest), size), shape, split, label)
            for name, shape, label in (
                ("values", (int(num_views), k), "replayed teacher logits"),
                ("indices", (int(num_views), k), "their classes"),
                ("params", param_shape(num_views), "view parameters"),
            )
        }
        ds = ReplayedViews(manifest, data_cfg, num_views, None, data_cfg.on_bad_image)
        parts["values"].compute(lambda lo, hi: _topk_rows(teacher, ds, lo, hi, k, data_cfg, device, parts))
        if parts["values"].merger:
            parts["indices"].concatenate(folder / "topk_indices.npy", dtype=np.int32)
            parts["params"].concatenate(folder / "params.npy", dtype=np.int32)
            parts["values"].concatenate(folder / "topk_values.npy")
            write_json(folder / "meta.json", {"key": key, "teacher": teacher_id, "view": "replay", "topk": k})
        for rows in parts.values():
            rows.finish()
        for sub in (*(rows.parts for rows in parts.values()), folder / "shards"):
            with contextlib.suppress(OSError):  # not empty: another process still finishing
                sub.rmdir()
    record_artifact("teacher_logits", key, folder, teacher=teacher_id)
    return folder


@torch.no_grad()
def _topk_rows(teacher, ds: ReplayedViews, lo: int, hi: int, k: int, data_cfg, device, parts) -> np.ndarray:
    """Rows [lo, hi) of the values; their indices and view parameters are written first (rows of skipped images
    stay zero: the training dataset replaces those images)."""
    n, views = hi - lo, ds.k
    values = np.zeros((n, views, k), np.float16)
    indices = np.zeros((n, views, k), np.int32)
    params = np.zeros((n, *param_shape(views)), np.int32)
    loader = DataLoader(
        Subset(ds, range(lo, hi)),
        batch_size=max(1, int(data_cfg.eval_batch_size) // views),
        num_workers=int(data_cfg.num_workers or 0),
        collate_fn=collate_skip,
    )
    for b in loader:
        if "image" not in b:
            continue
        rows = b["index"].numpy() - lo
        logits = teacher(b["image"].flatten(0, 1).to(device)).float().cpu()
        v, i = sparsify_topk(logits.reshape(len(rows), views, -1), k)
        values[rows], indices[rows], params[rows] = v, i, b["params"].numpy()
    s = parts["values"].spans.index((lo, hi))
    save_npy(parts["indices"].path(s), indices)
    save_npy(parts["params"].path(s), params)
    return values
