"""Providers: one per loss input (`text_emb`, `caption_emb`, `teacher_features`, `teacher_logits`, `class_text`).

A provider is registered under the input's name and built only when an enabled loss term declares that input. It
serves its tensor in one of two ways:

- cached: `rows` is a per-sample row source (vlmkd.tasks.rows) that the training dataset reads one sample at a
  time from a memory-mapped store, so the batch carries the rows under the input's name; `forward` may finish them
  on the task side (zero-shot KD logits are computed per batch from cached features and the class texts);
- live: `forward(batch, out)` runs a frozen teacher on the batch under no_grad.

Nothing here holds an N x C or N x n x D array: memory is bounded by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.data.transforms import preprocess_config
from vlmkd.errors import ConfigError
from vlmkd.losses.kd import densify_topk
from vlmkd.registry import Registry
from vlmkd.tasks.rows import ReplayRows, ReplaySparseRows, StoreRows
from vlmkd.tasks.sources import (
    check_same_space,
    check_teacher_texts,
    image_text_rows,
    load_class_text,
    match_class_text,
    teacher_feature_rows,
)
from vlmkd.teachers.clip import load_clip_teacher
from vlmkd.teachers.features import teacher_features as compute_teacher_features
from vlmkd.teachers.features import view_params_path
from vlmkd.teachers.reinforced import class_text as reinforced_class_text
from vlmkd.teachers.reinforced import reinforced_arrays, reinforced_card
from vlmkd.teachers.replay import replayed_teacher_logits
from vlmkd.teachers.view import TeacherView
from vlmkd.teachers.vision import cached_teacher_logits, load_vision_teacher
from vlmkd.teachers.zero_shot import ZeroShotClassifier

PROVIDERS = Registry("loss input provider")
SALT = {"text_emb": 1, "caption_emb": 2, "teacher_features": 3}  # independent choices per input


@dataclass
class BuildContext:
    """What providers are built from; the class-text matrix is loaded once and shared."""

    cfg: Config
    manifests: dict[str, Manifest]
    device: torch.device
    _class_text: Any = field(default=None, repr=False)
    _reinforced: Any = field(default=None, repr=False)

    @property
    def train(self) -> Manifest:
        return self.manifests["train"]

    def class_text(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._class_text is None:
            stored = self.reinforced() and reinforced_class_text(self.cfg.data, self.reinforced()[0])
            if stored:  # the class texts shipped with a reinforced dataset
                self._class_text = match_class_text(stored[0], stored[1], self.manifests)
            else:
                self._class_text = load_class_text(self.cfg, self.manifests)
        return self._class_text

    def reinforced(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(card, {field: N-row .npy}) when the training data is a reinforced dataset (`vlmkd export-dataset`):
        its stored views and targets stand in for the teachers and the text artifacts."""
        if self._reinforced is None:
            card = reinforced_card(self.cfg.data)
            arrays = (
                reinforced_arrays(self.cfg.data, card, self.train, self.cfg.clip.cache_dir) if card else {}
            )
            self._reinforced = (card, arrays) if card else ()
        return self._reinforced or None


class Provider(nn.Module):
    """Serves one loss input; cached providers set `rows`, live ones override `forward`."""

    def __init__(self, name: str, rows: Any = None, dim: int | None = None):
        super().__init__()
        self.name, self.rows, self.dim = name, rows, dim

    def forward(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.name not in batch:
            raise ConfigError(
                f"the batch has no {self.name!r} rows; build the dataset with the task's row sources"
            )
        return batch[self.name]


class ClassTextProvider(Provider):
    def __init__(self, class_text: np.ndarray):
        super().__init__("class_text", dim=int(class_text.shape[1]))
        self.register_buffer("value", torch.as_tensor(class_text).float(), persistent=False)

    def forward(self, batch, out):
        return self.value


class ZeroShotLogits(Provider):
    """KD logits of a CLIP teacher as a zero-shot classifier: scale * cos(cached feature row, class text)."""

    def __init__(self, rows: Any, class_text: np.ndarray, temperature: float):
        super().__init__("teacher_logits", rows)
        self.register_buffer(
            "class_text", F.normalize(torch.as_tensor(class_text).float(), dim=-1), persistent=False
        )
        self.scale = 1.0 / temperature

    def forward(self, batch, out):
        feats = batch["teacher_logits"].float()  # the rows are the cached features (views averaged)
        return self.scale * F.normalize(feats, dim=-1) @ self.class_text.T


class SparseLogits(Provider):
    """KD logits from stored top-k teacher probabilities: the batch rows are [values, indices] (`SparseRows`),
    densified here per batch to log-probabilities (`vlmkd.losses.kd.densify_topk`)."""

    def __init__(self, rows: Any, num_classes: int):
        super().__init__("teacher_logits", rows)
        self.num_classes = int(num_classes)

    def forward(self, batch, out):
        x = batch["teacher_logits"]
        k = x.shape[-1] // 2
        return densify_topk(x[:, :k], x[:, k:].round().long(), self.num_classes)


class LiveTeacher(Provider):
    """A frozen teacher run on the batch: a vision/zero-shot classifier (logits) or a CLIP image tower (features).

    The teacher is held outside the module tree (never trained or checkpointed); `to()` still moves it.
    """

    def __init__(self, name: str, teacher: Any, view: Any = None, dim: int | None = None):
        super().__init__(name, dim=dim)
        self.__dict__["teacher"] = teacher
        self.view = view  # student pixels -> the CLIP teacher's input space (features only)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if isinstance(self.teacher, nn.Module):
            self.teacher._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def forward(self, batch, out):
        if self.view is None:  # a classifier on the student's own batch
            t = self.teacher(batch["image"])
            return t["logits"] if isinstance(t, dict) else t
        pixels = batch.get("teacher_image")
        if pixels is None:  # consistent view: the teacher sees the student's own augmented crop
            pixels = self.view(batch["image"])
        return self.teacher.encode_image(pixels).float()


def list_providers() -> list[str]:
    return PROVIDERS.names()


def build_providers(ctx: BuildContext, needed: set[str]) -> dict[str, Provider]:
    """The providers of the needed inputs that are not student outputs or labels."""
    return {name: PROVIDERS.build(name, ctx=ctx) for name in sorted(needed) if name in PROVIDERS}


# ------------------------------------------------------------------------------------------------ providers


def _image_text(name: str, ctx: BuildContext) -> Provider:
    cfg = ctx.cfg
    stored = ctx.reinforced()
    if stored and "text_emb" in stored[1]:  # the description embeddings shipped with the dataset
        combine = "pick" if cfg.text.multi == "sample" else "average"
        rows = StoreRows(stored[1]["text_emb"], None, combine, cfg.train.seed, SALT[name])
        return Provider(name, rows, dim=rows.dim)
    rows = image_text_rows(cfg, ctx.train, salt=SALT[name])
    return Provider(name, rows, dim=rows.dim)


@PROVIDERS.register("text_emb")
def text_emb(ctx: BuildContext) -> Provider:
    return _image_text("text_emb", ctx)


@PROVIDERS.register("caption_emb")
def caption_emb(ctx: BuildContext) -> Provider:  # the descriptions double as the OOD paper's captions (L_cap)
    return _image_text("caption_emb", ctx)


@PROVIDERS.register("class_text")
def class_text(ctx: BuildContext) -> Provider:
    return ClassTextProvider(ctx.class_text()[0])


@PROVIDERS.register("teacher_features")
def teacher_features(ctx: BuildContext) -> Provider:
    cfg = ctx.cfg
    if cfg.clip.view in ("clean", "augmented_k"):
        rows = teacher_feature_rows(cfg, ctx.train, ctx.device, "pick", SALT["teacher_features"])
        return Provider("teacher_features", rows, dim=rows.dim)
    if cfg.clip.view == "replay":
        rows = replay_feature_rows(ctx)
        return Provider("teacher_features", rows, dim=rows.dim)
    if cfg.clip.view != "consistent":
        raise ConfigError(
            f"clip.view must be clean, augmented_k, replay or consistent, got {cfg.clip.view!r}"
        )
    if not cfg.clip.name:
        raise ConfigError("clip.view=consistent needs clip.name (the teacher runs live on each batch)")
    teacher, view = _clip_teacher(ctx)
    return LiveTeacher("teacher_features", teacher, view, dim=int(teacher.embed_dim))


@PROVIDERS.register("teacher_logits")
def teacher_logits(ctx: BuildContext) -> Provider:
    cfg = ctx.cfg
    if cfg.teacher.mode not in ("live", "cached"):
        raise ConfigError(f"teacher.mode must be live or cached, got {cfg.teacher.mode!r}")
    if cfg.teacher.name == "clip":
        return _zero_shot_teacher(ctx)
    stored = ctx.reinforced()
    if cfg.teacher.mode == "cached" and stored and "topk_values" in stored[1]:  # shipped with the dataset
        a = stored[1]
        rows = ReplaySparseRows(a["topk_values"], a["topk_indices"], a["params"], cfg.train.seed)
        return SparseLogits(rows, ctx.train.num_classes)

    teacher, teacher_id = load_vision_teacher(
        cfg.teacher, ctx.train.num_classes, cfg.data.in_chans, ctx.device
    )
    if cfg.teacher.mode == "live":
        return LiveTeacher("teacher_logits", teacher.eval().requires_grad_(False))
    if cfg.teacher.view == "replay":
        return replayed_vision_logits(ctx, teacher, teacher_id)
    if cfg.teacher.view != "clean":
        raise ConfigError(f"teacher.view must be clean or replay, got {cfg.teacher.view!r}")

    logits = cached_teacher_logits(
        teacher, teacher_id, ctx.train, cfg.data, cfg.teacher.cache_dir, ctx.device
    )
    return Provider("teacher_logits", StoreRows(logits.filename))


def replay_feature_rows(ctx: BuildContext, teacher: Any = None):
    """The CLIP teacher's features on K replayed views (`vlmkd teach` with clip.view=replay; computed when
    missing), served with the views' parameters so the dataset replays them for the student."""

    cfg = ctx.cfg
    stored = ctx.reinforced()
    if stored:  # a reinforced dataset: its stored views and features, no teacher
        return ReplayRows(stored[1]["features"], stored[1]["params"], cfg.train.seed)
    if not cfg.clip.name:
        raise ConfigError("clip.view=replay needs clip.name (the teacher whose features are cached)")
    teacher = teacher or _clip_teacher(ctx)[0]
    feats = compute_teacher_features(teacher, ctx.train, cfg.clip, device=str(ctx.device), data_cfg=cfg.data)
    return ReplayRows(feats.filename, view_params_path(feats), cfg.train.seed)


def replayed_vision_logits(ctx: BuildContext, teacher: Any, teacher_id: str) -> Provider:
    """A vision teacher's top-k probabilities on clip.num_views replayed views (computed when missing)."""

    cfg = ctx.cfg
    folder = replayed_teacher_logits(
        teacher,
        teacher_id,
        ctx.train,
        cfg.data,
        cfg.teacher.cache_dir,
        ctx.device,
        cfg.clip.num_views,
        cfg.teacher.topk,
    )
    rows = ReplaySparseRows(
        folder / "topk_values.npy", folder / "topk_indices.npy", folder / "params.npy", cfg.train.seed
    )
    return SparseLogits(rows, ctx.train.num_classes)


def _clip_teacher(ctx: BuildContext):
    teacher = load_clip_teacher(ctx.cfg.clip.name, ctx.cfg.clip.revision, device=str(ctx.device))
    return teacher, TeacherView(preprocess_config(ctx.cfg.data), teacher.preprocess_config())


def _zero_shot_teacher(ctx: BuildContext) -> Provider:
    cfg = ctx.cfg
    if cfg.teacher.mode == "cached" and ctx.reinforced():  # the dataset's stored views, no teacher
        class_text_arr = ctx.class_text()[0]
        rows = replay_feature_rows(ctx)
        check_same_space(rows.dim, class_text_arr.shape[1])
        return ZeroShotLogits(rows, class_text_arr, cfg.teacher.zero_shot_temperature)
    if not cfg.clip.name:
        raise ConfigError("teacher.name=clip needs clip.name (the CLIP teacher that classifies zero-shot)")
    class_text_arr = ctx.class_text()[0]
    if cfg.teacher.mode == "cached":  # the clip.view features, cached by `vlmkd teach`
        teacher, _ = _clip_teacher(ctx)
        check_teacher_texts(teacher, cfg, ctx.train.class_names, class_text_arr)
        if (
            cfg.clip.view == "replay"
        ):  # the replayed view's features: the teacher classifies the student's crop
            rows = replay_feature_rows(ctx, teacher)
        else:
            rows = teacher_feature_rows(cfg, ctx.train, ctx.device, "mean", teacher=teacher)
        check_same_space(rows.dim, class_text_arr.shape[1])
        return ZeroShotLogits(rows, class_text_arr, cfg.teacher.zero_shot_temperature)
    # consistent teaching: the teacher classifies the student's own crop
    return LiveTeacher("teacher_logits", _zero_shot_classifier(ctx)[0])


def _zero_shot_classifier(ctx: BuildContext) -> tuple[nn.Module, str]:
    """(the clip teacher as a live zero-shot classifier over the training classes' texts, on student pixels; its
    id): the live KD teacher, and the teacher the run's end scores."""

    cfg = ctx.cfg
    class_text_arr = ctx.class_text()[0]
    teacher, view = _clip_teacher(ctx)
    check_teacher_texts(teacher, cfg, ctx.train.class_names, class_text_arr)
    classifier = ZeroShotClassifier(
        teacher, view, torch.as_tensor(class_text_arr), cfg.teacher.zero_shot_temperature
    )
    return classifier, f"zero-shot {teacher.teacher_id}"


def kd_teacher_classifier(ctx: BuildContext) -> tuple[nn.Module, str] | None:
    """The run's KD teacher as a frozen images -> logits classifier over the training classes, on the student's
    eval pixels (for reporting its own accuracy next to the student's); None for a reinforced dataset, which
    ships the teacher's outputs but not the teacher."""
    cfg = ctx.cfg
    if ctx.reinforced():
        return None
    if cfg.teacher.name == "clip":  # built the way the run's provider built it (which checked clip.name)
        classifier, teacher_id = _zero_shot_classifier(ctx)
        return classifier.to(ctx.device), teacher_id

    teacher, teacher_id = load_vision_teacher(
        cfg.teacher, ctx.train.num_classes, cfg.data.in_chans, ctx.device
    )
    return teacher.eval().requires_grad_(False), teacher_id
