"""Where a task's inputs come from: the artifacts of the describe / embed / classtext / teach stages.

The training loop never runs a VLM: it reads description embeddings, class-text embeddings and teacher features
from their content-keyed stores, checked against the manifest they were made for. Per-image stores are served as
row sources (vlmkd.tasks.rows) that the dataset reads one sample at a time; nothing here makes an N-row copy.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd.config import Config
from vlmkd.data.images import unreadable_files
from vlmkd.data.manifest import Manifest
from vlmkd.describe.store import DescriptionStore
from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.tasks.index_map import description_index_map
from vlmkd.tasks.rows import LabelRows, StoreRows
from vlmkd.teachers.clip import load_clip_teacher
from vlmkd.teachers.features import class_text_features, teacher_features
from vlmkd.text.classtext import class_texts, load_class_texts
from vlmkd.text.encoders import build_text_encoder
from vlmkd.text.store import EmbeddingStore, class_embedding_matrix
from vlmkd.utils.logging import log


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def image_text_rows(cfg: Config, manifest: Manifest, salt: int = 1):
    """Per-image text embeddings as a row source: one description sampled per (seed, epoch, image) with
    text.multi=sample, the renormalised mean of the image's descriptions with average."""

    if cfg.text.source == "class_templates":  # ablation: descriptions replaced by "a photo of a {c}."
        return LabelRows(class_template_embeddings(cfg, manifest), manifest.labels)
    if cfg.text.source != "descriptions":
        raise ConfigError(f"text.source must be descriptions or class_templates, got {cfg.text.source!r}")
    if cfg.text.multi not in ("average", "sample"):
        raise ConfigError(f"text.multi must be average or sample, got {cfg.text.multi!r}")
    if not cfg.text.descriptions or not cfg.text.embeddings:
        raise ConfigError(
            "the text loss needs text.descriptions and text.embeddings (run `vlmkd describe` and "
            "`vlmkd embed`), or text.source=class_templates"
        )

    array_path, index_path = description_index_map(cfg, manifest)
    rows = StoreRows(
        array_path, index_path, "pick" if cfg.text.multi == "sample" else "average", cfg.train.seed, salt
    )
    if rows.missing():
        _require_descriptions(cfg, manifest, np.flatnonzero(np.asarray(rows.index).max(1) < 0))
    return rows


def _require_descriptions(cfg: Config, manifest: Manifest, missing: np.ndarray) -> None:
    """Every readable training image needs a description. Under data.on_bad_image=skip, unreadable images (which
    describe skips) are replaced by readable stand-ins in training, so their missing rows are never read."""
    if cfg.data.on_bad_image == "skip":
        cap = cfg.data.max_image_pixels or None
        bad = unreadable_files({"train": manifest.subset(missing)}, cap, decode=True)
        missing = [i for i in missing if manifest.paths is None or manifest.paths[i] not in bad]
    if len(missing):
        raise ArtifactError(
            f"{len(missing)} training images have no description; rerun `vlmkd describe` to retry the failures"
        )


def class_template_embeddings(cfg: Config, manifest: Manifest) -> np.ndarray:
    """C x D float16: each class's "a photo of a {c}." templates embedded (as `vlmkd classtext`), averaged."""
    from dataclasses import replace

    enc = build_text_encoder(cfg.embed.encoder, cfg.embed.model, cfg.embed.revision, cfg.embed.device)
    texts = class_texts(manifest.class_names, replace(cfg.classtext, enriched=False))
    emb = enc.encode([t for ts in texts for t in ts])
    return _normalise(emb.reshape(manifest.num_classes, len(texts[0]), -1).mean(1)).astype(np.float16)


def class_text_matrix(cfg: Config) -> tuple[np.ndarray, list[str], list[list[str]] | None]:
    """(C_all x D class-text embeddings, their class names, their texts) from text.class_embeddings."""
    if not cfg.text.class_embeddings:
        raise ConfigError(
            "class-text embeddings are needed; run `vlmkd classtext` and set text.class_embeddings"
        )

    store = EmbeddingStore(cfg.text.class_embeddings)
    names = store.meta.get("class_names")
    if not names:
        raise ArtifactError(
            f"{str(store.path)!r} is not a class-text store (no class_names); run `vlmkd classtext`"
        )
    return class_embedding_matrix(store, len(names)), list(names), class_texts_of(store.path, list(names))


def class_texts_of(store_path: Path, names: list[str]) -> list[list[str]] | None:
    """The texts behind a class-text embedding store (`<classtext>/<key>/embeddings/<key>`), when they match."""

    for folder in (store_path.parent.parent, store_path.parent):
        if (folder / "classtexts.json").is_file():
            data = load_class_texts(folder)
            return data["texts"] if list(data.get("class_names", names)) == names else None
    return None  # texts are informative (teacher eval, export); the embeddings are what training needs


def load_class_text(cfg: Config, manifests: dict[str, Manifest]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(train-class text embeddings, {split: that split's class-text embeddings}), matched by class name."""
    matrix, names, _ = class_text_matrix(cfg)
    return match_class_text(matrix, names, manifests, cfg.text.class_embeddings)


def match_class_text(
    matrix: np.ndarray, names: list[str], manifests: dict[str, Manifest], where: str = "the class texts"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`load_class_text` for a given (matrix, class names)."""
    row = {n: i for i, n in enumerate(names)}
    per_split = {}
    for split, m in manifests.items():
        missing = [n for n in m.class_names if n not in row]
        if missing:
            if split == "train":
                raise ArtifactError(
                    f"class {missing[0]!r} has no class text in {where!r}; "
                    "rerun `vlmkd classtext` over all classes"
                )
            continue
        per_split[split] = matrix[[row[n] for n in m.class_names]].astype(np.float32)
    return per_split["train"], per_split


def teacher_feature_rows(
    cfg: Config, manifest: Manifest, device: torch.device, combine: str, salt: int = 0, teacher: Any = None
):
    """Cached teacher image features (`vlmkd teach`, computed here when missing) as a row source: one of the K
    augmented views per (seed, epoch, image) with combine="pick", or their plain mean with "mean"."""
    if not cfg.clip.name:
        raise ConfigError(
            "a loss needs teacher image features; set clip.name (e.g. open_clip:ViT-L-14/openai)"
        )

    teacher = teacher or load_clip_teacher(cfg.clip.name, cfg.clip.revision, device=str(device))
    feats = teacher_features(teacher, manifest, cfg.clip, device=str(device))
    return StoreRows(feats.filename, None, combine, cfg.train.seed, salt)


def check_teacher_texts(
    teacher: Any, cfg: Config, class_names: list[str], rows: np.ndarray, sample: int = 16
) -> None:
    """The class-text rows a zero-shot teacher scores against must be its own text space: the same width is not
    enough (two different 512-d towers agree on it), so up to `sample` classes' texts are re-embedded with the
    teacher's tower and compared with the stored rows (`rows`, one per name in `class_names`)."""
    check_same_space(int(teacher.embed_dim), rows.shape[1])

    _, names, texts = class_text_matrix(cfg)
    if texts is None:
        log.warning(
            "no class texts next to %s: the teacher/class-text check compares widths only",
            cfg.text.class_embeddings,
        )
        return
    row = {n: i for i, n in enumerate(names)}
    k = min(sample, len(class_names))
    mine = class_text_features(teacher, [texts[row[n]] for n in class_names[:k]]).numpy()
    cos = (mine * _normalise(np.asarray(rows[:k], dtype=np.float32))).sum(1)
    if float(cos.min()) < 0.99:  # the same tower reproduces its rows up to float16 storage
        encoder = EmbeddingStore(cfg.text.class_embeddings).meta.get("encoder_id", "an unknown encoder")
        raise ConfigError(
            f"the class texts in {cfg.text.class_embeddings!r} were embedded by {encoder}, not by the teacher "
            f"{teacher.teacher_id} (cosine {float(cos.min()):.2f} on the same texts); embed them with the "
            "teacher's text tower (`vlmkd classtext` with embed.encoder/embed.model naming the teacher)"
        )


def check_same_space(image_dim: int, text_dim: int) -> None:
    """A zero-shot teacher needs class texts embedded by its own text tower."""
    if image_dim != text_dim:
        raise ConfigError(
            f"teacher image features ({image_dim}-d) and class texts ({text_dim}-d) are in different spaces; "
            "embed the class texts with the teacher's text encoder"
        )


def describe_sources(cfg: Config) -> dict[str, Any]:
    """Provenance of the text supervision, for summaries and model cards."""
    out: dict[str, Any] = {}
    if cfg.text.descriptions:
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
