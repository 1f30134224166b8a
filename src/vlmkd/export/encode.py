"""Class texts to embeddings for an export: the text encoder a run recorded, and one normalised row per class."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmkd.errors import ConfigError
from vlmkd.text.encoders import build_text_encoder


def build_encoder(name: str | None = None, model: str | None = None) -> Any:
    """A text encoder (`.encoder_id`, `.dim`, `.encode(texts)` -> normalised array) by name, or by a run's record
    ({"name", "model", "encoder_id"}); `vlmkd.text.encoders` builds it (the bundled MiniLM by default)."""
    if isinstance(name, dict):
        name, model = name.get("name"), model or name.get("model")
    return build_text_encoder(name or "sentence_transformers", model=model)


def encoder_record(encoder: Any, name: str | None, model: str | None) -> dict[str, Any]:
    return {
        "name": name or "sentence_transformers",
        "model": model,
        "id": str(encoder.encoder_id),
        "dim": int(encoder.dim),
    }


def embed_classes(encoder: Any, texts: list[str | list[str]]) -> np.ndarray:
    """One L2-normalised row per class; a class with several texts gets the normalised mean of their embeddings."""
    groups = [[t] if isinstance(t, str) else list(t) for t in texts]
    if any(not g for g in groups):
        raise ConfigError("every class needs at least one text")
    flat = [t for g in groups for t in g]
    emb = (
        np.asarray(encoder.encode(flat), dtype=np.float32)
        if flat
        else np.zeros((0, int(encoder.dim)), np.float32)
    )
    rows, i = [], 0
    for g in groups:
        rows.append(emb[i : i + len(g)].mean(0))
        i += len(g)
    out = np.stack(rows) if rows else np.zeros((0, emb.shape[1]), np.float32)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
