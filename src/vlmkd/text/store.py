"""The embedding store: float16 N x D L2-normalised rows (memory-mapped .npy), their ids, and a keyed meta.json.

Layout: `<parent>/<key[:16]>/{embeddings.npy, ids.json, meta.json}` and `<parent>/LATEST` naming the last one.
The key is sha256 of (encoder id + revision, the content fingerprint of a local encoder folder, the texts, the ids):
another encoder, retrained weights in the same folder or other texts never reuse rows. Texts are deduplicated before
encoding (one encoder call per distinct text); rows are stored per item. The distinct texts are encoded in shards
(`<key[:16]>/shards/`, resumable), split across torchrun ranks or `--shard I/N` jobs like every stage.
Runs record the keyed folder they read (`vlmkd.utils.provenance`), never `LATEST`.

Reading for training:
    emb = EmbeddingStore("artifacts/embeddings")        # .ids, .array (mmap, float16), .meta, .lookup(ids)
    X = embeddings_for_manifest(DescriptionStore(...), emb, manifest, n=1)   # N x n x D float16
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError, DataError
from vlmkd.utils.dist import work_split
from vlmkd.utils.io import (
    artifact_key,
    atomic_path,
    load_npy,
    path_fingerprint,
    read_json,
    resolve_store,
    write_json,
)
from vlmkd.utils.progress import progress
from vlmkd.utils.provenance import record_artifact, record_model
from vlmkd.utils.rowread import open_rows
from vlmkd.utils.sharded import ShardedRows, spans

EMBED_SHARD = 65536  # distinct texts per shard: the unit of resume and of the split across processes

log = logging.getLogger("vlmkd")


def texts_digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for t in items:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def embedding_key(encoder_id: str, texts: list[str], ids: list[str], weights: str | None = None) -> str:
    key = {"encoder": encoder_id, "texts": texts_digest(texts), "ids": texts_digest(ids)}
    if weights:  # only for local folders: stores of hub models keep their keys
        key["weights"] = weights
    return artifact_key(key)


def encoder_weights(encoder_id: str) -> str | None:
    """Content fingerprint of a local encoder folder named in `encoder_id` ("name:/path[@revision]"), else None.
    The id names a path, not its contents: without this, retrained weights saved to the same folder would
    reuse the old embeddings."""
    path = encoder_id.partition(":")[2].rsplit("@", 1)[0]
    return path_fingerprint(path) if path and Path(path).exists() else None


def dedup(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(unique texts in first-seen order, index of each input text in the unique list)."""
    pos: dict[str, int] = {}
    inverse = np.fromiter((pos.setdefault(t, len(pos)) for t in texts), dtype=np.int64, count=len(texts))
    return list(pos), inverse


def _encode_rows(texts: list[str], encoder: Any, batch_size: int, desc: str) -> np.ndarray:
    """len(texts) x D float16, L2-normalised in float32 first."""
    out = np.zeros((len(texts), int(encoder.dim)), np.float32)
    for s in progress(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        out[s : s + batch_size] = encoder.encode(texts[s : s + batch_size])
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float16)


class EmbeddingStore:
    def __init__(self, path: str | Path):
        self.path = resolve_store(path)
        self.meta = read_json(self.path / "meta.json")
        self.key = self.meta["key"]
        self.ids: list[str] = read_json(self.path / "ids.json")
        self.array = load_npy(self.path / "embeddings.npy")  # N x D float16, memory-mapped
        kind = {"descriptions": "embeddings", "classtext": "class_embeddings"}.get(self.meta.get("source"))
        if kind:  # what a training run reads, for its artifacts.json (the keyed folder, never LATEST)
            enc = {k: self.meta.get(k) for k in ("encoder_id", "encoder_weights", "source_key")}
            record_artifact(kind, self.key, self.path, **enc)
            model = "text_encoder" if kind == "embeddings" else "class_text_encoder"
            record_model(model, str(enc["encoder_id"]), enc["encoder_weights"])
        self._row: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def row_of(self) -> dict[str, int]:
        if self._row is None:
            self._row = {i: r for r, i in enumerate(self.ids)}
        return self._row

    def rows(self, ids: list[str], missing: str = "error") -> np.ndarray:
        """Row numbers of `ids` (-1 for absent ids when missing="ignore")."""
        row = self.row_of()
        out = np.fromiter((row.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        if missing == "error" and (out < 0).any():
            bad = ids[int(np.nonzero(out < 0)[0][0])]
            raise ArtifactError(
                f"id {bad!r} is not in the embedding store {str(self.path)!r}; rerun `vlmkd embed`"
            )
        return out

    def lookup(self, ids: list[str]) -> np.ndarray:
        """len(ids) x D float16 rows, read by offset (random rows: not through the memory map, see rowread)."""
        return open_rows(self.path / "embeddings.npy")[self.rows(ids)]


def embed_texts(
    texts: list[str],
    encoder: Any,
    out_dir: str | Path,
    ids: list[str] | None = None,
    batch_size: int = 256,
    extra_meta: dict[str, Any] | None = None,
    shard: str | tuple[int, int] | None = None,
    merge: str = "auto",
    command: str = "vlmkd embed CONFIG",  # the stage a job array reruns with --merge (named in its hints)
) -> EmbeddingStore | None:
    """Encode `texts` (deduplicated) into a keyed store under `out_dir`; an existing store with that key is reused.

    Split across processes like every stage (`vlmkd.utils.sharded`): the distinct texts are cut into shards of
    EMBED_SHARD, each process encodes its own, one merges. Under torchrun every rank must call it. With
    `shard="I/N"` (job arrays) it returns None while other shards are missing; `merge="only"` encodes nothing.
    """
    texts = [str(t) for t in texts]
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(texts))]
    if len(ids) != len(texts):
        raise DataError(f"{len(ids)} ids for {len(texts)} texts")
    if len(set(ids)) != len(ids):
        raise DataError("embedding ids must be unique")
    weights = encoder_weights(encoder.encoder_id)
    key = embedding_key(encoder.encoder_id, texts, ids, weights)
    parent, split = Path(out_dir), work_split(shard)
    folder = parent / key[:16]
    done = (folder / "meta.json").is_file() and (folder / "embeddings.npy").is_file()
    done = done and read_json(folder / "meta.json").get("key") == key
    split.barrier()  # every rank has looked before any rank writes
    if done:
        log.info("embed: up to date (%s)", folder)
        if merge == "only":
            ShardedRows.remove_leftovers(folder / "shards")
    else:
        uniq, inverse = dedup(texts)
        rows = ShardedRows(
            folder / "shards", spans(len(uniq), EMBED_SHARD), (int(encoder.dim),), split, "embed"
        )
        if merge != "only":
            rows.compute(lambda lo, hi: _encode_rows(uniq[lo:hi], encoder, batch_size, "embed"))
        if rows.missing() and (merge == "only" or not split.collective):
            log.info(rows.waiting_message(command))
            if merge == "only":
                raise ArtifactError(
                    f"embed: shards are missing in {str(folder)!r}; run every `--shard I/N` first"
                )
            return None
        if rows.merger:
            _merge_embeddings(rows, inverse, folder, ids)
            meta = {
                "key": key,
                "kind": "embeddings",
                "encoder_id": encoder.encoder_id,
                "encoder_weights": weights,
                "dim": int(encoder.dim),
                "count": len(texts),
                "unique_texts": len(uniq),
                "encoder_calls_saved": len(texts) - len(uniq),
                **(extra_meta or {}),
            }
            write_json(folder / "meta.json", meta)  # last: its presence marks a complete store
            log.info("embed: %d texts (%d distinct) -> %s", len(texts), len(uniq), folder)
        rows.finish(explicit_merge=merge == "only")
    if split.rank == 0 or not split.collective:
        write_json(parent / "LATEST", {"key": key, "folder": key[:16]})
    split.barrier()
    return EmbeddingStore(folder)


def _merge_embeddings(
    rows: Any, inverse: np.ndarray, folder: Path, ids: list[str], chunk: int = 65536
) -> None:
    """The distinct texts' rows -> one row per input text (embeddings.npy, written through a memory map)."""
    uniq = folder / "shards" / "unique.npy"
    rows.concatenate(uniq)
    table = load_npy(uniq)
    with atomic_path(folder / "embeddings.npy") as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float16, shape=(len(inverse), table.shape[1])
        )
        for s in range(0, len(inverse), chunk):
            out[s : s + chunk] = table[inverse[s : s + chunk]]
        out.flush()
        del out
    del table
    uniq.unlink()
    write_json(folder / "ids.json", ids, indent=None)


def description_ids(sample_ids: list[str], ks: list[int] | np.ndarray) -> list[str]:
    return [f"{s}#{int(k)}" for s, k in zip(sample_ids, ks)]


def embed_descriptions(
    desc_store: Any, encoder: Any, out_dir: str | Path, batch_size: int = 256, **shard: Any
) -> EmbeddingStore | None:
    """Embed the successful descriptions of a DescriptionStore; ids are "<sample_id>#<k>"."""
    d = desc_store.load()
    extra = {
        "source": "descriptions",
        "source_key": desc_store.key,
        "manifest_key": desc_store.meta.get("manifest_key"),
    }
    ids = description_ids(d["sample_id"], d["k"])
    return embed_texts(d["text"], encoder, out_dir, ids, batch_size, extra, **shard)


def rows_for_manifest(desc_store: Any, emb_store: EmbeddingStore, manifest: Any, n: int = 1) -> np.ndarray:
    """N x n embedding row numbers in manifest order (-1 where a description failed or k >= what exists).

    Checks that the descriptions were made for this manifest and the embeddings for these descriptions.
    """
    if desc_store.meta.get("manifest_key") != manifest.key():
        raise ArtifactError(
            f"descriptions in {str(desc_store.path)!r} were made for another manifest; rerun `vlmkd describe`"
        )
    if emb_store.meta.get("source_key") != desc_store.key:
        raise ArtifactError(
            f"embeddings in {str(emb_store.path)!r} are not of the descriptions {desc_store.key[:16]}; "
            "rerun `vlmkd embed`"
        )
    ids = [f"{s}#{k}" for s in manifest.ids for k in range(n)]
    return emb_store.rows(ids, missing="ignore").reshape(len(manifest), n)


def embeddings_for_manifest(
    desc_store: Any, emb_store: EmbeddingStore, manifest: Any, n: int = 1, return_mask: bool = False
):
    """N x n x D float16 description embeddings in manifest order.

    A missing description (failed, or fewer than n) is filled with the mean of the sample's other rows
    (renormalised), or zeros when the sample has none; `return_mask=True` also returns the N x n validity mask.
    """
    rows = rows_for_manifest(desc_store, emb_store, manifest, n)
    mask = rows >= 0
    out = np.zeros((*rows.shape, emb_store.dim), np.float16)
    flat = rows[mask]
    if flat.size:
        order = np.argsort(flat)  # read the memory map in ascending order
        vals = np.empty((flat.size, emb_store.dim), np.float16)
        vals[order] = emb_store.array[flat[order]]
        out[mask] = vals
    partial = (~mask).any(1) & mask.any(1)
    for i in np.nonzero(partial)[0]:
        m = out[i][mask[i]].astype(np.float32).mean(0)
        out[i][~mask[i]] = (m / max(np.linalg.norm(m), 1e-12)).astype(np.float16)
    if (~mask.any(1)).any():
        log.warning(
            "embeddings_for_manifest: %d samples have no description (zeros)", int((~mask.any(1)).sum())
        )
    return (out, mask) if return_mask else out


def class_embedding_matrix(store: EmbeddingStore, num_classes: int | None = None) -> np.ndarray:
    """C x D float32: the renormalised mean of each class's text embeddings (ids "<class>#<j>")."""
    cls = np.array([int(i.split("#")[0]) for i in store.ids])
    c = int(num_classes if num_classes is not None else cls.max() + 1)
    arr = np.asarray(store.array, dtype=np.float32)
    out = np.zeros((c, arr.shape[1]), np.float32)
    np.add.at(out, cls, arr)
    if (np.bincount(cls, minlength=c) == 0).any():
        raise ArtifactError(f"some classes have no text in {str(store.path)!r}; rerun `vlmkd classtext`")
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)


def read_texts_file(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, ids) from a .txt (one text a line) or .json (list of texts, or {id: text})."""
    p = Path(path)
    if p.suffix == ".json":
        data = json.loads(p.read_text("utf-8"))
        if isinstance(data, dict):
            return [str(v) for v in data.values()], [str(k) for k in data]
        return [str(t) for t in data], [str(i) for i in range(len(data))]
    lines = [ln.strip() for ln in p.read_text("utf-8").splitlines() if ln.strip()]
    return lines, [str(i) for i in range(len(lines))]
