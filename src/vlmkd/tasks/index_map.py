"""Sample -> description-embedding row map (int32 N x n), computed once per (manifest, descriptions, embeddings).

Matching a million sample ids to a million embedding ids needs Python dicts and strings per row; that is done
once, by one process, and the result stored as a small .npy next to the embedding store. Training ranks and loader
workers then memory-map it with the embeddings and never hold a Python object per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.describe.store import DescriptionStore
from vlmkd.text.store import EmbeddingStore, rows_for_manifest
from vlmkd.utils.dist import build_once
from vlmkd.utils.io import artifact_key, read_json, resolve_store, save_npy


def description_index_map(cfg: Config, manifest: Manifest) -> tuple[Path, Path]:
    """(embeddings.npy, index .npy): row r of the index map lists sample r's embedding rows, -1 where missing."""
    desc_dir, emb_dir = resolve_store(cfg.text.descriptions), resolve_store(cfg.text.embeddings)
    n = int(cfg.describe.n_descriptions)
    key = artifact_key(
        {
            "manifest": manifest.key(),
            "descriptions": read_json(desc_dir / "meta.json")["key"],
            "embeddings": read_json(emb_dir / "meta.json")["key"],
            "n": n,
        }
    )
    path = emb_dir / "index" / f"{key[:16]}.npy"
    # one process matches the ids; the others look first, then wait for its file (never a half-made one)
    build_once(None, path.is_file, lambda: save_npy(path, _compute(desc_dir, emb_dir, manifest, n)))
    return emb_dir / "embeddings.npy", path


def _compute(desc_dir: Path, emb_dir: Path, manifest: Manifest, n: int) -> np.ndarray:
    rows = rows_for_manifest(DescriptionStore(desc_dir), EmbeddingStore(emb_dir), manifest, n)
    if rows.size and rows.max() >= np.iinfo(np.int32).max:
        return rows  # more than 2^31 embedding rows: keep int64
    return rows.astype(np.int32)
