"""Text side: encoders (registered by name), the embedding store, and per-class texts."""

from vlmkd.text.classtext import build_class_texts, class_texts, load_class_texts
from vlmkd.text.encoders import TEXT_ENCODERS, build_text_encoder, list_text_encoders
from vlmkd.text.store import (
    EmbeddingStore,
    class_embedding_matrix,
    embed_descriptions,
    embed_texts,
    embeddings_for_manifest,
    rows_for_manifest,
)

__all__ = [
    "TEXT_ENCODERS",
    "EmbeddingStore",
    "build_class_texts",
    "build_text_encoder",
    "class_embedding_matrix",
    "class_texts",
    "embed_descriptions",
    "embed_texts",
    "embeddings_for_manifest",
    "list_text_encoders",
    "load_class_texts",
    "rows_for_manifest",
]
