"""Teacher image features, cached per (teacher, preprocessing, view, manifest), and teacher zero-shot scoring.

Layout of one cache: `<clip.cache_dir>/<key[:16]>/meta.json` (the full key and provenance) and `features.npy`
(float16, N x D for the clean view, N x K x D for K augmented or replayed views, not normalised; replayed views
add `params.npy`, their N x K x P parameters, `vlmkd.teachers.replay`). While it is being computed
the rows go to `shard_NNNNN.npy` files (atomic writes), so a killed run resumes from its finished shards. Under
torchrun (or `--shard I/N` job arrays) each process computes its own shards and one merges them into
`features.npy` (`vlmkd.utils.sharded`); the shards are removed only when no other process can still read them. The key names the teacher's weights, its preprocessing, the view
and the manifest's content, so switching any of them never reuses stale features (the original OOD code's bug).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from vlmkd.data.dataset import BatchFetched, collate_skip
from vlmkd.data.images import open_image
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ArtifactError, ConfigError, DataError
from vlmkd.eval.metrics import classification_metrics
from vlmkd.teachers.replay import ReplayedViews, param_shape, replay_recipe
from vlmkd.utils.dist import work_split
from vlmkd.utils.io import artifact_key, load_npy, read_json, save_npy, write_json
from vlmkd.utils.progress import progress
from vlmkd.utils.provenance import record_artifact, record_model
from vlmkd.utils.rng import seeded_call
from vlmkd.utils.sharded import ShardedRows, spans

log = logging.getLogger("vlmkd")

SHARD_SIZE = 2048  # rows per shard: the unit of resume
PARAM_PARTS = "param_shards"  # replayed views: the view parameters' shards
CACHE_FORMAT = 1
CACHED_VIEWS = ("clean", "augmented_k", "replay")
MULTI_VIEWS = ("augmented_k", "replay")  # N x K x D caches
# The augmented views' recipe is part of their key: change it here and old caches stop matching.
AUGMENT = {
    "crop": "RandomResizedCrop",
    "scale": [0.08, 1.0],
    "ratio": [0.75, 4 / 3],
    "flip": 0.5,
    "seed": "(index * 1000003 + view) * 7919",
}


# ------------------------------------------------------------------------------------------------- keys


def feature_key(teacher: Any, manifest: Manifest, clip_cfg: Any, data_cfg: Any = None) -> dict[str, Any]:
    """What the cached features depend on (its sha256 is the cache key); replayed views also depend on the
    student's training transform (`data_cfg`), which draws them."""
    view = _check_view(clip_cfg)
    key = {
        "format": CACHE_FORMAT,
        "teacher_id": teacher.teacher_id,
        "revision": clip_cfg.revision,
        "preprocess": teacher.preprocess_config(),
        "view": view,
        "num_views": _num_views(clip_cfg),
        "manifest_key": manifest.key(),
        "n": len(manifest),
    }
    if view == "augmented_k":
        key["augment"] = AUGMENT
    if view == "replay":  # the student's own views: pre_resize does not apply (the recipe's transform does)
        key["replay"] = replay_recipe(data_cfg)
        return key
    if getattr(clip_cfg, "pre_resize", None):  # only when set: caches made without it keep their keys
        key["pre_resize"] = {"size": int(clip_cfg.pre_resize), "mode": "squash", "interpolation": "bilinear"}
    return key


def cache_folder(teacher: Any, manifest: Manifest, clip_cfg: Any, data_cfg: Any = None) -> Path:
    return Path(clip_cfg.cache_dir) / artifact_key(feature_key(teacher, manifest, clip_cfg, data_cfg))[:16]


def _check_view(clip_cfg: Any) -> str:
    view = clip_cfg.view
    if view == "consistent":
        raise ConfigError(
            "clip.view=consistent is not cacheable: that mode runs the teacher live on the student's augmented "
            "view (the training task does it); cache clip.view=clean, augmented_k or replay (the student's own "
            "views, replayed: consistent teaching at cached cost)"
        )
    if view not in CACHED_VIEWS:
        raise ConfigError(f"clip.view must be clean, consistent, augmented_k or replay, got {view!r}")
    if view in MULTI_VIEWS and clip_cfg.num_views < 1:
        raise ConfigError(f"clip.num_views must be >= 1 for clip.view={view}, got {clip_cfg.num_views}")
    return view


def _num_views(clip_cfg: Any) -> int:
    return int(clip_cfg.num_views) if clip_cfg.view in MULTI_VIEWS else 1


# ------------------------------------------------------------------------------------------------- views


def augment_transform(pre: dict[str, Any]):
    """RandomResizedCrop + flip at the teacher's input size, then the teacher's own normalisation."""
    from torchvision import transforms as T

    interp = getattr(
        T.InterpolationMode, str(pre.get("interpolation", "bicubic")).upper(), T.InterpolationMode.BICUBIC
    )
    mode = "L" if int(pre.get("in_chans", 3)) == 1 else "RGB"
    return T.Compose(
        [
            T.Lambda(functools.partial(_convert, mode=mode)),  # picklable for any worker start method
            T.RandomResizedCrop(
                int(pre["image_size"]),
                scale=tuple(AUGMENT["scale"]),
                ratio=tuple(AUGMENT["ratio"]),
                interpolation=interp,
            ),
            T.RandomHorizontalFlip(AUGMENT["flip"]),
            T.ToTensor(),
            T.Normalize(pre["mean"], pre["std"]),
        ]
    )


def _convert(image, mode: str):
    return image.convert(mode) if image.mode != mode else image


class TeacherViews(BatchFetched):
    """Item i: {"image": C x H x W (clean) or K x C x H x W (augmented), "index": i}; None for a bad image
    when on_bad_image="skip" (its feature row stays zero)."""

    def __init__(
        self,
        teacher: Any,
        manifest: Manifest,
        view: str,
        num_views: int = 1,
        on_bad_image: str = "error",
        pre_resize: int | None = None,
    ):
        from torchvision import transforms as T

        self.teacher, self.manifest, self.view, self.k = teacher, manifest, view, num_views
        self.on_bad_image = on_bad_image
        # the OOD paper's code squashes every image to 256 x 256 before CLIP's own resize and crop
        self.squash = T.Resize((pre_resize, pre_resize)) if pre_resize else None
        self.augment = augment_transform(teacher.preprocess_config()) if view == "augmented_k" else None

    def __len__(self) -> int:
        return len(self.manifest)

    def _get(self, i: int, fetched: tuple[bytes, str] | BaseException | None = None) -> dict[str, Any] | None:
        try:
            image = open_image(self.manifest, i, fetched=fetched)
        except DataError:
            if self.on_bad_image == "skip":
                return None
            raise
        if self.squash is not None:
            image = self.squash(image)
        if self.augment is None:
            return {"image": self.teacher.preprocess(image), "index": i}
        # seeded per (sample, view): reruns, resumes and any worker count give identical views
        views = [seeded_call(self.augment, image, seed=(i * 1_000_003 + v) * 7919) for v in range(self.k)]
        return {"image": torch.stack(views), "index": i}


# ------------------------------------------------------------------------------------------------- cache


@torch.no_grad()
def _encode(teacher: Any, pixels: torch.Tensor, device: str) -> np.ndarray:
    flat = pixels.flatten(0, 1) if pixels.ndim == 5 else pixels  # B x K x C x H x W -> (B K) x C x H x W
    feats = teacher.encode_image(flat.to(device)).float().cpu()
    return feats.reshape(*pixels.shape[: pixels.ndim - 3], -1).numpy()


def _compute_rows(
    loader_args: dict,
    ds: Dataset,
    lo: int,
    hi: int,
    teacher: Any,
    device: str,
    row_shape: tuple,
    bar,
    params: ShardedRows | None = None,
) -> np.ndarray:
    out = np.zeros((hi - lo, *row_shape), dtype=np.float16)
    view_params = None if params is None else np.zeros((hi - lo, *params.row_shape), dtype=np.int32)
    for b in DataLoader(Subset(ds, range(lo, hi)), collate_fn=collate_skip, shuffle=False, **loader_args):
        if "image" in b:
            out[b["index"].numpy() - lo] = _encode(teacher, b["image"], device)
            if view_params is not None:
                view_params[b["index"].numpy() - lo] = b["params"].numpy()
        bar.update(len(b.get("index", ())) + b["skipped"])
    if params is not None:  # before the features shard: a finished features shard has its parameters
        save_npy(params.path(params.spans.index((lo, hi))), view_params)
    return out


def _load_finished(folder: Path, key: str, n: int) -> np.ndarray | None:
    meta_path, feats = folder / "meta.json", folder / "features.npy"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    if meta.get("key") != key:
        raise ArtifactError(f"{str(folder)!r} holds teacher features of another key; move it away and rerun")
    if not (meta.get("complete") and feats.is_file()):
        return None
    arr = load_npy(feats)
    if arr.shape[0] != n:
        raise ArtifactError(
            f"{str(feats)!r} has {arr.shape[0]} rows for {n} samples; delete the folder and rerun"
        )
    return arr


def _start_meta(
    folder: Path, key: str, key_obj: dict, manifest: Manifest, shape: list, shard_size: int
) -> None:
    meta_path = folder / "meta.json"
    meta = read_json(meta_path) if meta_path.is_file() else None
    if meta is None or meta.get("complete"):  # new, or finished once and features.npy since deleted
        meta = {
            "key": key,
            **key_obj,
            "split": manifest.split,
            "shape": shape,
            "dtype": "float16",
            "shard_size": int(shard_size),
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(meta_path, meta)


def teacher_features(
    teacher: Any,
    manifest: Manifest,
    clip_cfg: Any,
    device: str = "cpu",
    data_cfg: Any = None,
    shard_size: int | None = None,
    shard: str | tuple[int, int] | None = None,
    merge: str = "auto",
) -> np.ndarray | None:
    """float16 teacher image features in manifest order, from the cache or computed (resumably) into it.

    N x D for clip.view=clean (the teacher's own preprocessing of the un-augmented image: the paper's setup),
    N x K x D for augmented_k (K = clip.num_views seeded RandomResizedCrop+flip views) and for replay (K views
    of the student's own training transform, `data_cfg`'s, with their parameters in `view_params_path`).
    Memory-mapped when cached. `data_cfg` supplies num_workers and on_bad_image (skipped images get all-zero rows).
    Under torchrun every rank must call it: each computes its shards, rank 0 merges (`vlmkd.utils.sharded`).
    With `shard="I/N"` (job arrays) it returns None while other shards are missing; `merge="only"` computes
    nothing and merges finished shards (an error when some are missing).
    """
    key_obj = feature_key(teacher, manifest, clip_cfg, data_cfg)
    key = artifact_key(key_obj)
    folder = Path(clip_cfg.cache_dir) / key[:16]
    n = len(manifest)
    split = work_split(shard)
    done = _load_finished(folder, key, n)
    split.barrier()  # every rank has looked before any rank writes
    if done is not None:
        log.info("teacher features: reusing %s", folder)
        if merge == "only":
            ShardedRows.remove_leftovers(folder)
            ShardedRows.remove_leftovers(folder / PARAM_PARTS)
        _record(teacher, key, folder)
        return done
    view, k = key_obj["view"], key_obj["num_views"]
    row_shape = (k, teacher.embed_dim) if view in MULTI_VIEWS else (teacher.embed_dim,)
    if split.rank == 0 or not split.collective:
        size = shard_size or int(getattr(clip_cfg, "shard_size", 0) or SHARD_SIZE)
        _start_meta(folder, key, key_obj, manifest, [n, *row_shape], size)
    split.barrier()
    meta = read_json(folder / "meta.json")
    size = int(meta["shard_size"])  # a resumed run keeps the shard boundaries it started with
    rows = ShardedRows(folder, spans(n, size), row_shape, split, "teacher features")
    # replayed views: each features shard's view parameters, written just before it (so a finished features
    # shard always has its parameters)
    params = ShardedRows(folder / PARAM_PARTS, rows.spans, param_shape(k), split, "view parameters")
    t0 = time.time()
    if merge != "only":
        _compute_mine(rows, teacher, manifest, key_obj, clip_cfg, data_cfg, device, params)
    elif rows.missing():
        raise ArtifactError(
            f"teacher features: {len(rows.missing())} of {len(rows.spans)} shards are missing in "
            f"{str(folder)!r}; run every `vlmkd teach CONFIG --shard I/N` first"
        )
    if rows.merger:
        if view == "replay":
            params.concatenate(folder / "params.npy", dtype=np.int32)
        rows.concatenate(folder / "features.npy")
        skipped = _zero_rows(folder / "features.npy")
        stats = {"skipped_images": skipped, "seconds_last_run": round(time.time() - t0, 1)}
        write_json(folder / "meta.json", {**meta, "complete": True, **stats})
        log.info("teacher features: merged %d shards -> %s", len(rows.spans), folder)
    elif not split.collective:
        log.info(rows.waiting_message("vlmkd teach CONFIG"))
        return None
    rows.finish(explicit_merge=merge == "only")
    if view == "replay":
        params.finish(explicit_merge=merge == "only")
        with contextlib.suppress(OSError):  # still in use by another process: left for its finish
            (folder / PARAM_PARTS).rmdir()
    _record(teacher, key, folder)
    return load_npy(folder / "features.npy")


def view_params_path(features: np.ndarray) -> Path:
    """The N x K x P view parameters stored next to a replayed features cache (`features.npy`)."""
    return Path(features.filename).parent / "params.npy"


def _compute_mine(
    rows: ShardedRows,
    teacher: Any,
    manifest: Manifest,
    key_obj: dict,
    clip_cfg: Any,
    data_cfg: Any,
    device: str,
    params: ShardedRows | None = None,
) -> None:
    """This process's missing shards (then, under torchrun, the barrier every rank meets)."""
    todo = rows.todo()
    if todo:
        log.info("teacher features: %d/%d shards to compute -> %s", len(todo), len(rows.spans), rows.parts)
    on_bad = getattr(data_cfg, "on_bad_image", "error")
    pre_resize = getattr(clip_cfg, "pre_resize", None)
    if key_obj["view"] == "replay":
        ds = ReplayedViews(manifest, data_cfg, key_obj["num_views"], teacher.preprocess_config(), on_bad)
    else:
        ds = TeacherViews(teacher, manifest, key_obj["view"], key_obj["num_views"], on_bad, pre_resize)
        params = None
    loader_args = {
        "batch_size": max(1, int(clip_cfg.batch_size)),
        "num_workers": int(getattr(data_cfg, "num_workers", 0) or 0),
    }
    total = sum(rows.spans[s][1] - rows.spans[s][0] for s in todo)
    with progress(total=total, desc="teacher features", unit="img") as bar:
        rows.compute(
            lambda lo, hi: _compute_rows(
                loader_args, ds, lo, hi, teacher, device, rows.row_shape, bar, params
            ),
            todo,
        )


def _record(teacher: Any, key: str, folder: Path) -> None:
    record_artifact("teacher_features", key, folder, teacher=teacher.teacher_id)
    record_model("clip_teacher", teacher.teacher_id)  # the id carries the local weights' content fingerprint


def _zero_rows(path: Path, chunk: int = 65536) -> int:
    """All-zero rows (skipped images), read in chunks from the memory map."""
    arr = load_npy(path)
    flat = arr.reshape(len(arr), -1)
    return int(sum((np.abs(flat[i : i + chunk]).sum(1) == 0).sum() for i in range(0, len(arr), chunk)))


# ---------------------------------------------------------------------------------------------- zero-shot


@torch.no_grad()
def class_text_features(teacher: Any, class_texts: list[list[str]], batch_size: int = 256) -> torch.Tensor:
    """C x D: each class's texts through the teacher's text tower, L2-normalised, averaged, renormalised."""
    empty = [c for c, texts in enumerate(class_texts) if not texts]
    if empty:
        raise ArtifactError(f"class {empty[0]} has no text; rerun `vlmkd classtext`")
    flat = [t for texts in class_texts for t in texts]
    emb = torch.cat(
        [teacher.encode_text(flat[s : s + batch_size]).float().cpu() for s in range(0, len(flat), batch_size)]
    )
    owner = torch.tensor([c for c, texts in enumerate(class_texts) for _ in texts])
    sums = torch.zeros(len(class_texts), emb.shape[1]).index_add_(0, owner, F.normalize(emb, dim=-1))
    return F.normalize(sums, dim=-1)  # the direction of the sum is that of the mean


def zero_shot_accuracy(image_feats: Any, class_feats: Any, labels: Any) -> dict[str, Any]:
    """classification_metrics of argmax cosine(image, class) (N x K x D image features: views averaged)."""

    x = torch.as_tensor(np.asarray(image_feats, dtype=np.float32))
    if x.ndim == 3:
        x = F.normalize(x, dim=-1).mean(1)
    w = torch.as_tensor(np.asarray(class_feats, dtype=np.float32))
    sims = F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).T
    return classification_metrics(sims.argmax(1).numpy(), labels, w.shape[0])
