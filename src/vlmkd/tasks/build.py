"""Config -> task: student, loss terms (with class counts injected), and the providers of the inputs they declare.

Each loss input (`text_emb`, `caption_emb`, `teacher_features`, `teacher_logits`, `class_text`) is served by the
provider registered under its name (vlmkd.tasks.providers); only the inputs of enabled terms are built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.students import create_student
from vlmkd.students.io import load_student
from vlmkd.tasks.distill import STUDENT_OUTPUTS, DistillTask, LossSpec
from vlmkd.tasks.providers import BuildContext, build_providers
from vlmkd.tasks.sources import class_text_matrix
from vlmkd.text.coop import LearnedClassText, build_prompt_learner
from vlmkd.text.store import EmbeddingStore
from vlmkd.utils.logging import log


@dataclass
class EvalSpec:
    """How predictions are made: from classifier logits, or by cosine to class-text embeddings."""

    mode: str = "logits"  # logits | cosine
    temperature: float = 0.07
    # split -> C_split x D class-text embeddings
    class_text: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # class texts + text encoder, for zero-shot export
    # CoOp: split -> class names whose texts the prompt learner computes (class_text is then learned)
    learned: dict[str, list[str]] | None = None

    def for_state(self, state: nn.Module) -> EvalSpec:
        """This spec reading the class texts of `state` (a TrainableState: the live one, its EMA or a restored
        best epoch), so evaluation and export pair a student with the prompts learned alongside it."""
        learner = getattr(state, "prompt_learner", None)
        if self.learned is None or learner is None:
            return self
        return replace(self, class_text=LearnedClassText(learner, self.learned))

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
    fn = LOSSES.get(name)
    args = dict(args)
    if "class_counts" in inspect.signature(fn).parameters and "class_counts" not in args:
        args["class_counts"] = train_counts.tolist()
    return LOSSES.build(name, **args)


def build_task(cfg: Config, manifests: dict[str, Manifest], device: torch.device):
    """(task, per-sample row sources for the training dataset, EvalSpec)."""
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
    if cfg.text.coop.enabled and "class_text" not in needed:
        raise ConfigError("text.coop.enabled needs a loss on class texts, e.g. losses.cls.name=vl_cls")

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
    head = heads_read(cfg.model.head, terms, eval_spec.mode)
    with torch.random.fork_rng(devices=[]):  # the student's init must not depend on what the providers draw
        providers = build_providers(ctx, needed)
    embed_dim = cfg.model.embed_dim if head != "classifier" else 0
    if head != "classifier":
        for name in (
            "class_text",
            "text_emb",
            "caption_emb",
            "teacher_features",
        ):  # the space the student joins
            if not embed_dim and name in providers and providers[name].dim:
                embed_dim = providers[name].dim
        if not embed_dim and eval_spec.class_text:
            embed_dim = ctx.class_text()[0].shape[1]
        if eval_spec.class_text:  # e.g. an inherited 768 (CLIP ViT-L/14) against 384-d MiniLM class texts
            _same_dim(embed_dim, ctx.class_text()[0].shape[1], "the class-text embeddings")
        for name in ("text_emb", "caption_emb"):
            if name in providers and providers[name].dim and "embedding" in _reads(terms, name):
                _same_dim(embed_dim, providers[name].dim, "the description embeddings")
    student = _student(cfg, train, head, embed_dim)
    learner = None
    if cfg.text.coop.enabled:  # CoOp (vlmkd.text.coop): the class_text input becomes learned
        class_texts, dim = _prompt_texts(cfg)
        learner = build_prompt_learner(cfg.text.coop, cfg.embed, class_texts, dim, train.class_names, device)
        eval_spec.learned = {s: m.class_names for s, m in manifests.items() if s in eval_spec.class_text}
    task = DistillTask(student, terms, providers, cfg.train.gather, cfg.train.local_loss, learner)
    return task, task.row_sources, eval_spec


def _reads(terms: list[LossSpec], name: str) -> set[str]:
    """The student outputs read by the terms that also read input `name`."""
    return {
        STUDENT_OUTPUTS[n]
        for t in terms
        if name in t.module.inputs
        for n in t.module.inputs
        if n in STUDENT_OUTPUTS
    }


def heads_read(head: str, terms: list[LossSpec], eval_mode: str) -> str:
    """The heads to build: those of `model.head` that an enabled term or the evaluation reads.

    A head nobody reads would get no gradient: DDP (find_unused_parameters=False) stops at the second step, and
    the checkpoint would carry weights that never trained. So `model.head=both` with the text term switched off
    (`losses.text.weight=0`, the "no text" ablation) builds the classifier only, and says so."""
    reads = {STUDENT_OUTPUTS[n] for t in terms for n in t.module.inputs if n in STUDENT_OUTPUTS}
    reads.add("embedding" if eval_mode == "cosine" else "logits")
    if head == "embedding" and "logits" in reads:
        raise ConfigError("a loss reads the classifier's logits; set model.head=classifier or both")
    if head != "both":
        return head
    built = {"logits": "classifier", "embedding": "embedding"}
    kept = [built[k] for k in ("logits", "embedding") if k in reads]
    if len(kept) == 2:
        return "both"
    log.info(
        "model.head=both: no enabled term or evaluation reads the %s head; built %s only",
        "embedding" if kept == ["classifier"] else "classifier",
        kept[0],
    )
    return kept[0]


def _prompt_texts(cfg: Config) -> tuple[dict[str, list[str]], int]:
    """name -> the texts CoOp puts its context in front of, and the class-text store's dimension."""
    if cfg.text.coop.texts not in ("names", "class_texts"):
        raise ConfigError(f"text.coop.texts must be names or class_texts, got {cfg.text.coop.texts!r}")
    matrix, names, texts = class_text_matrix(cfg)
    if cfg.text.coop.texts == "names":
        return {n: [n.replace("_", " ") + "."] for n in names}, matrix.shape[1]
    if texts is None:
        raise ConfigError(
            "text.coop.texts=class_texts needs the texts of the class-text store (`vlmkd classtext`)"
        )
    return {n: [t] if isinstance(t, str) else list(t) for n, t in zip(names, texts)}, matrix.shape[1]


def _same_dim(embed_dim: int, got: int, what: str) -> int:
    """The student's embedding size checked against the text side it is scored with (one-line error)."""
    if embed_dim and embed_dim != got:
        raise ConfigError(
            f"model.embed_dim={embed_dim} but {what} are {got}-d; set model.embed_dim=0 to infer it (or {got})"
        )
    return embed_dim or got


def _student(cfg: Config, train: Manifest, head: str, embed_dim: int) -> nn.Module:
    m = cfg.model
    student = create_student(
        m.name,
        num_classes=train.num_classes,
        in_chans=cfg.data.in_chans,
        head=head,
        embed_dim=embed_dim,
        proj_type=m.proj_type,
        pretrained=m.pretrained,
        drop_rate=m.drop_rate,
    )
    if m.checkpoint:
        init, _ = load_student(m.checkpoint)
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
