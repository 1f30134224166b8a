"""Config -> task: student, loss terms (with class counts injected), teachers and cached extras."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError
from vlmkd.students import create_student
from vlmkd.tasks.distill import DistillTask, LossSpec


@dataclass
class EvalSpec:
    """How predictions are made: from classifier logits, or by cosine to class-text embeddings."""

    mode: str = "logits"  # logits | cosine
    temperature: float = 0.07
    # split -> C_split x D class-text embeddings
    class_text: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # class texts + text encoder, for zero-shot export

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "temperature": self.temperature,
            "splits": sorted(self.class_text),
            **self.info,
        }


def _class_text_info(cfg: Config, train_classes: list[str]) -> dict[str, Any]:
    """The texts of the training classes and the encoder that embedded them (so exports can add classes)."""
    from vlmkd.tasks.sources import class_text_matrix
    from vlmkd.text.store import EmbeddingStore

    _, names, texts = class_text_matrix(cfg)
    meta = EmbeddingStore(cfg.text.class_embeddings).meta
    info: dict[str, Any] = {
        "text_encoder": {
            "name": cfg.embed.encoder,
            "model": cfg.embed.model,
            "encoder_id": meta.get("encoder_id"),
        }
    }
    if texts is not None:
        row = {n: i for i, n in enumerate(names)}
        info["class_texts"] = [texts[row[n]] for n in train_classes]
    return info


def _build_loss(name: str, args: dict[str, Any], train_counts: np.ndarray):
    from vlmkd.losses import LOSSES

    fn = LOSSES.get(name)
    args = dict(args)
    if "class_counts" in inspect.signature(fn).parameters and "class_counts" not in args:
        args["class_counts"] = train_counts.tolist()
    return LOSSES.build(name, **args)


def build_task(cfg: Config, manifests: dict[str, Manifest], device: torch.device):
    """(task, per-sample extras for the training dataset, EvalSpec)."""
    train = manifests["train"]
    counts = train.class_counts()
    terms: list[LossSpec] = []
    for term, spec in cfg.losses.items():
        if spec.weight == 0:
            continue  # a weight of 0 switches a term off (ablations are one override each)
        terms.append(LossSpec(term, spec.weight, _build_loss(spec.name, spec.args, counts)))
    needed = {n for t in terms for n in t.module.inputs}

    extras: dict[str, Any] = {}
    eval_spec = EvalSpec()
    class_text = None
    embed_dim = cfg.model.embed_dim
    if needed & {"class_text"} or cfg.model.head == "embedding":
        from vlmkd.tasks.sources import load_class_text

        class_text, per_split = load_class_text(cfg, manifests)
        eval_spec = EvalSpec(
            "cosine", _temperature(terms), per_split, _class_text_info(cfg, train.class_names)
        )
        embed_dim = embed_dim or class_text.shape[1]
    if needed & {"text_emb", "caption_emb"}:
        from vlmkd.tasks.sources import load_image_text

        per_image = load_image_text(cfg, train)  # the descriptions double as the OOD paper's captions (L_cap)
        for key in needed & {"text_emb", "caption_emb"}:
            extras[key] = per_image
        embed_dim = embed_dim or per_image.shape[-1]
    if "teacher_features" in needed and cfg.clip.view in ("clean", "augmented_k"):
        from vlmkd.tasks.sources import load_teacher_features

        extras["teacher_features"] = load_teacher_features(cfg, train, device)
        embed_dim = embed_dim or extras["teacher_features"].shape[-1]
    clip_teacher = teacher_view = None
    if "teacher_features" in needed and cfg.clip.view == "consistent":
        from vlmkd.data.transforms import preprocess_config
        from vlmkd.teachers.clip import load_clip_teacher
        from vlmkd.teachers.view import TeacherView

        if not cfg.clip.name:
            raise ConfigError("clip.view=consistent needs clip.name (the teacher runs live on each batch)")
        clip_teacher = load_clip_teacher(cfg.clip.name, cfg.clip.revision, device=str(device))
        teacher_view = TeacherView(preprocess_config(cfg.data), clip_teacher.preprocess_config())
        embed_dim = embed_dim or int(clip_teacher.embed_dim)
    elif "teacher_features" in needed and cfg.clip.view not in ("clean", "augmented_k"):
        raise ConfigError(f"clip.view must be clean, augmented_k or consistent, got {cfg.clip.view!r}")
    if needed & {"proj", "embedding"} and cfg.model.head == "classifier":
        raise ConfigError("a loss uses the student's embedding; set model.head=both (or embedding)")

    student = create_student(
        cfg.model.name,
        train.num_classes,
        cfg.data.in_chans,
        cfg.model.head,
        embed_dim,
        cfg.model.proj_type,
        cfg.model.pretrained,
        cfg.model.drop_rate,
    )
    if cfg.model.checkpoint:
        from vlmkd.engine.checkpoint import load_student

        init, _ = load_student(cfg.model.checkpoint)
        missing = student.load_state_dict(init.state_dict(), strict=False)
        if missing.unexpected_keys:
            raise ConfigError(
                f"model.checkpoint does not match model.name: unexpected {missing.unexpected_keys[:3]}"
            )

    vision_teacher = None
    if "teacher_logits" in needed and cfg.teacher.name == "clip":
        if cfg.teacher.mode == "cached":  # the clip.view features, cached by `vlmkd teach`
            from vlmkd.tasks.sources import zero_shot_teacher_logits

            extras["teacher_logits"] = zero_shot_teacher_logits(cfg, manifests, device)
        elif cfg.teacher.mode == "live":  # consistent teaching: the teacher classifies the student's own crop
            vision_teacher = _live_zero_shot_teacher(cfg, manifests, device)
        else:
            raise ConfigError(f"teacher.mode must be live or cached, got {cfg.teacher.mode!r}")
    elif "teacher_logits" in needed:
        from vlmkd.teachers.vision import cached_teacher_logits, load_vision_teacher

        teacher, teacher_id = load_vision_teacher(cfg.teacher, train.num_classes, cfg.data.in_chans, device)
        if cfg.teacher.mode == "cached":
            extras["teacher_logits"] = cached_teacher_logits(
                teacher, teacher_id, train, cfg.data, cfg.teacher.cache_dir, device
            )
        elif cfg.teacher.mode == "live":
            vision_teacher = teacher
        else:
            raise ConfigError(f"teacher.mode must be live or cached, got {cfg.teacher.mode!r}")

    task = DistillTask(
        student,
        terms,
        torch.as_tensor(class_text) if class_text is not None else None,
        vision_teacher,
        clip_teacher,
        sample_text=cfg.text.multi == "sample",
        teacher_view=teacher_view,
    )
    return task, extras, eval_spec


def _live_zero_shot_teacher(cfg: Config, manifests: dict[str, Manifest], device: torch.device) -> nn.Module:
    from vlmkd.data.transforms import preprocess_config
    from vlmkd.tasks.sources import check_same_space, load_class_text
    from vlmkd.teachers.clip import load_clip_teacher
    from vlmkd.teachers.view import TeacherView
    from vlmkd.teachers.zero_shot import ZeroShotClassifier

    if not cfg.clip.name:
        raise ConfigError("teacher.name=clip needs clip.name (the CLIP teacher that classifies zero-shot)")
    teacher = load_clip_teacher(cfg.clip.name, cfg.clip.revision, device=str(device))
    class_text, _ = load_class_text(cfg, manifests)
    check_same_space(int(teacher.embed_dim), class_text.shape[1])
    view = TeacherView(preprocess_config(cfg.data), teacher.preprocess_config())
    classifier = ZeroShotClassifier(
        teacher, view, torch.as_tensor(class_text), cfg.teacher.zero_shot_temperature
    )
    return classifier.to(device)


def _temperature(terms: list[LossSpec]) -> float:
    for t in terms:
        temp = getattr(t.module, "temperature", None)
        if isinstance(temp, float):
            return temp
    return 0.07
