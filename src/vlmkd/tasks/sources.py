"""Where a task's inputs come from: the artifacts of the describe / embed / classtext / teach stages.

The training loop never runs a VLM: it reads description embeddings, class-text embeddings and teacher features
from their content-keyed stores, checked against the manifest they were made for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ArtifactError, ConfigError


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_image_text(cfg: Config, manifest: Manifest) -> np.ndarray:
    """Per-image text embeddings in manifest order: N x D (average of n descriptions) or N x n x D ("sample")."""
    if cfg.text.source == "class_templates":  # ablation: descriptions replaced by "a photo of a {c}."
        from vlmkd.text.encoders import build_text_encoder

        enc = build_text_encoder(cfg.embed.encoder, cfg.embed.model, cfg.embed.revision, cfg.embed.device)
        from dataclasses import replace

        from vlmkd.text.classtext import class_texts

        texts = class_texts(manifest.class_names, replace(cfg.classtext, enriched=False))
        emb = enc.encode([t for ts in texts for t in ts])  # the same templates as `vlmkd classtext`
        per_class = _normalise(emb.reshape(manifest.num_classes, len(texts[0]), -1).mean(1))
        return per_class[manifest.labels].astype(np.float16)
    if cfg.text.source != "descriptions":
        raise ConfigError(f"text.source must be descriptions or class_templates, got {cfg.text.source!r}")
    if not cfg.text.descriptions or not cfg.text.embeddings:
        raise ConfigError(
            "the text loss needs text.descriptions and text.embeddings (run `vlmkd describe` and "
            "`vlmkd embed`), or text.source=class_templates"
        )
    from vlmkd.describe.store import DescriptionStore
    from vlmkd.text.store import EmbeddingStore, embeddings_for_manifest

    desc, emb = DescriptionStore(cfg.text.descriptions), EmbeddingStore(cfg.text.embeddings)
    n = cfg.describe.n_descriptions
    arr, mask = embeddings_for_manifest(desc, emb, manifest, n, return_mask=True)
    if not mask.any(1).all():
        raise ArtifactError(
            f"{int((~mask.any(1)).sum())} training images have no description; rerun "
            "`vlmkd describe` to retry the failures"
        )
    if cfg.text.multi == "average" or n == 1:
        return _normalise(arr.astype(np.float32).mean(1)).astype(np.float16)
    if cfg.text.multi == "sample":
        return arr  # N x n x D: the task samples one description per image and step
    raise ConfigError(f"text.multi must be average or sample, got {cfg.text.multi!r}")


def class_text_matrix(cfg: Config) -> tuple[np.ndarray, list[str], list[list[str]] | None]:
    """(C_all x D class-text embeddings, their class names, their texts) from text.class_embeddings."""
    if not cfg.text.class_embeddings:
        raise ConfigError(
            "class-text embeddings are needed; run `vlmkd classtext` and set text.class_embeddings"
        )
    from vlmkd.text.store import EmbeddingStore, class_embedding_matrix

    store = EmbeddingStore(cfg.text.class_embeddings)
    names = store.meta.get("class_names")
    if not names:
        raise ArtifactError(
            f"{str(store.path)!r} is not a class-text store (no class_names); run `vlmkd classtext`"
        )
    return class_embedding_matrix(store, len(names)), list(names), class_texts_of(store.path, list(names))


def class_texts_of(store_path: Path, names: list[str]) -> list[list[str]] | None:
    """The texts behind a class-text embedding store (`<classtext>/<key>/embeddings/<key>`), when they match."""
    from vlmkd.text.classtext import load_class_texts

    for folder in (store_path.parent.parent, store_path.parent):
        if (folder / "classtexts.json").is_file():
            data = load_class_texts(folder)
            return data["texts"] if list(data.get("class_names", names)) == names else None
    return None  # texts are informative (teacher eval, export); the embeddings are what training needs


def load_class_text(cfg: Config, manifests: dict[str, Manifest]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(train-class text embeddings, {split: that split's class-text embeddings}), matched by class name."""
    matrix, names, _ = class_text_matrix(cfg)
    row = {n: i for i, n in enumerate(names)}
    per_split = {}
    for split, m in manifests.items():
        missing = [n for n in m.class_names if n not in row]
        if missing:
            if split == "train":
                raise ArtifactError(
                    f"class {missing[0]!r} has no class text in {cfg.text.class_embeddings!r}; "
                    "rerun `vlmkd classtext` over all classes"
                )
            continue
        per_split[split] = matrix[[row[n] for n in m.class_names]].astype(np.float32)
    return per_split["train"], per_split


def load_teacher_features(cfg: Config, manifest: Manifest, device: torch.device) -> np.ndarray:
    if not cfg.clip.name:
        raise ConfigError(
            "a loss needs teacher image features; set clip.name (e.g. open_clip:ViT-L-14/openai)"
        )
    from vlmkd.teachers.clip import load_clip_teacher
    from vlmkd.teachers.features import teacher_features

    teacher = load_clip_teacher(cfg.clip.name, cfg.clip.revision, device=str(device))
    return teacher_features(teacher, manifest, cfg.clip, device=str(device))


def check_same_space(image_dim: int, text_dim: int) -> None:
    """A zero-shot teacher needs class texts embedded by its own text tower."""
    if image_dim != text_dim:
        raise ConfigError(
            f"teacher image features ({image_dim}-d) and class texts ({text_dim}-d) are in different spaces; "
            "embed the class texts with the teacher's text encoder"
        )


def zero_shot_teacher_logits(cfg: Config, manifests: dict[str, Manifest], device: torch.device) -> np.ndarray:
    """KD teacher logits of a CLIP-style teacher used as a zero-shot classifier over the class texts."""
    feats = np.asarray(load_teacher_features(cfg, manifests["train"], device), dtype=np.float32)
    if feats.ndim == 3:
        feats = feats.mean(1)
    class_text, _ = load_class_text(cfg, manifests)
    check_same_space(feats.shape[1], class_text.shape[1])
    scale = 1.0 / cfg.teacher.zero_shot_temperature
    return (scale * _normalise(feats) @ _normalise(class_text).T).astype(np.float32)


def describe_sources(cfg: Config) -> dict[str, Any]:
    """Provenance of the text supervision, for summaries and model cards."""
    out: dict[str, Any] = {}
    if cfg.text.descriptions:
        from vlmkd.describe.store import DescriptionStore

        with contextlib.suppress(
            Exception
        ):  # provenance only; a missing store is reported by training itself
            out["describer"] = {
                k: v
                for k, v in DescriptionStore(cfg.text.descriptions).meta.items()
                if k in ("backend", "model", "revision", "prompt")
            }
    if cfg.clip.name:
        out["clip_teacher"] = cfg.clip.name
    if cfg.teacher.name:
        out["vision_teacher"] = cfg.teacher.name
    return out
