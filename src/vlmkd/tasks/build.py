"""Config -> task: student, loss terms (with class counts injected), and the providers of the inputs they declare.

Each loss input (`text_emb`, `caption_emb`, `teacher_features`, `teacher_logits`, `class_text`) is served by the
provider registered under its name (vlmkd.tasks.providers); only the inputs of enabled terms are built.
"""

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
            # CoOp: the learned class-text matrix (exports cannot rerun the text tower with the learned context)
            **(
                {"class_text_learned": self.class_text.to_json()}
                if hasattr(self.class_text, "to_json")
                else {}
            ),
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
    """(task, per-sample row sources for the training dataset, EvalSpec)."""
    from vlmkd.tasks.providers import BuildContext, build_providers

    train = manifests["train"]
    counts = train.class_counts()
    terms: list[LossSpec] = []
    for term, spec in cfg.losses.items():
        if spec.weight == 0:
            continue  # a weight of 0 switches a term off (ablations are one override each)
        terms.append(LossSpec(term, spec.weight, _build_loss(spec.name, spec.args, counts)))
    needed = {n for t in terms for n in t.module.inputs}
    if needed & {"proj", "embedding"} and cfg.model.head == "classifier":
        raise ConfigError("a loss uses the student's embedding; set model.head=both (or embedding)")

    ctx = BuildContext(cfg, manifests, device)
    eval_spec = EvalSpec()
    if "class_text" in needed or cfg.model.head == "embedding":
        per_split = ctx.class_text()[1]
        # cosine to the class texts when the embedding is trained against them; a classifier read by a loss
        # that only uses the class texts as a target (text_soft) keeps its logits
        cosine = cfg.model.head == "embedding" or any(
            {"embedding", "class_text"} <= set(t.module.inputs) for t in terms
        )
        eval_spec = EvalSpec(
            "cosine" if cosine else "logits",
            _temperature(terms),
            per_split,
            _class_text_info(cfg, train.class_names),
        )
    with torch.random.fork_rng(devices=[]):  # the student's init must not depend on what the providers draw
        providers = build_providers(ctx, needed)
    embed_dim = cfg.model.embed_dim
    for name in ("class_text", "text_emb", "caption_emb", "teacher_features"):  # the space the student joins
        if not embed_dim and name in providers and providers[name].dim:
            embed_dim = providers[name].dim
    if not embed_dim and eval_spec.class_text:
        embed_dim = ctx.class_text()[0].shape[1]
    if eval_spec.class_text:  # e.g. an inherited 768 (CLIP ViT-L/14) against 384-d MiniLM class texts
        _same_dim(embed_dim, ctx.class_text()[0].shape[1], "the class-text embeddings")
    for name in ("text_emb", "caption_emb"):
        if name in providers and providers[name].dim:
            _same_dim(embed_dim, providers[name].dim, "the description embeddings")
    student = _student(cfg, train, embed_dim)
    task = DistillTask(student, terms, providers, cfg.train.gather, cfg.train.local_loss)
    if cfg.text.coop.enabled:  # CoOp (vlmkd.text.coop): the task's class_text becomes learned
        from vlmkd.text.coop import attach_coop

        attach_coop(task, eval_spec, cfg, manifests, device)
    return task, task.row_sources, eval_spec


def _same_dim(embed_dim: int, got: int, what: str) -> int:
    """The student's embedding size checked against the text side it is scored with (one-line error)."""
    if embed_dim and embed_dim != got:
        raise ConfigError(
            f"model.embed_dim={embed_dim} but {what} are {got}-d; set model.embed_dim=0 to infer it (or {got})"
        )
    return embed_dim or got


def _student(cfg: Config, train: Manifest, embed_dim: int | None) -> nn.Module:
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
    return student


def _temperature(terms: list[LossSpec]) -> float:
    """The cosine head's temperature: that of the term scoring the embedding against the class texts (vl_cls),
    else the first term's. A KD or text temperature listed first is not the head's (the combined student's KD
    temperature 2.0 would flatten its exported zero-shot probabilities)."""
    for head_only in (True, False):
        for t in terms:
            temp = getattr(t.module, "temperature", None)
            reads_head = {"embedding", "class_text"} <= set(t.module.inputs)
            if isinstance(temp, float) and (reads_head or not head_only):
                return temp
    return 0.07
