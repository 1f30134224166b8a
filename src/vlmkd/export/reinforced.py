"""`vlmkd export-dataset`: the distillation targets of a recipe as a reusable reinforced dataset.

WebDataset shards (`vlmkd.data.pack`: the image's own bytes, `.cls`, `.json`) whose training samples also carry
the K replayed views' parameters (`params.npy`, int32 K x P), the CLIP teacher's features per view (`features.npy`,
float16 K x D), a vision teacher's top-k probabilities per view (`topk_values.npy` float16, `topk_indices.npy`
int32, K x k; with teacher.view=replay), the description embeddings (`text_emb.npy`, float16 n x D, zero rows
where a description is missing) and texts (`descriptions.json`); the evaluation splits are packed plain. Beside
them: `reinforced.json` (the dataset card: teachers, describer, prompts, text encoder, artifact keys, the fields'
shapes), `class_text.npy` (the class-text matrix, when the recipe has one) and pack.json / classes.txt.

`vlmkd train` reads it with data.format=wds data.root=OUT (`vlmkd.teachers.reinforced`), with no teacher, VLM or
text encoder: the same samples, views and targets as training from the caches.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd.config import Config
from vlmkd.data import build_manifests
from vlmkd.data.pack import pack
from vlmkd.describe.store import DescriptionStore
from vlmkd.errors import ConfigError
from vlmkd.tasks.index_map import description_index_map
from vlmkd.tasks.providers import BuildContext, replay_feature_rows, replayed_vision_logits
from vlmkd.tasks.sources import class_text_matrix, describe_sources
from vlmkd.teachers.reinforced import CARD, FORMAT
from vlmkd.teachers.vision import load_vision_teacher
from vlmkd.utils.io import artifact_key, resolve_store, save_npy, write_json
from vlmkd.utils.rowread import open_rows


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    return buf.getvalue()


def export_dataset(cfg: Config, out: str | Path, max_bytes: int, device: str = "cpu") -> dict[str, Any]:
    """Write the reinforced dataset of `cfg` into the empty folder `out`; returns the card."""
    if cfg.clip.view != "replay":
        raise ConfigError(
            "export-dataset stores replayed views: set clip.view=replay (and clip.num_views) and run `vlmkd teach`"
        )
    out = Path(out)
    manifests = build_manifests(cfg.data)
    train = manifests["train"]
    ctx = BuildContext(cfg, manifests, torch.device(device))
    sources: dict[str, Any] = {}
    features = replay_feature_rows(ctx)
    sources["features"], sources["params"] = features.array, features.params
    fields = {
        "features": {"shape": list(features.array.shape[1:]), "dtype": "float16"},
        "params": {"shape": list(features.params.shape[1:]), "dtype": "int32"},
    }
    card: dict[str, Any] = {"format": FORMAT, "version": 1, "num_views": int(features.num_views)}
    keys = {"teacher_features": Path(features.path).parent.name, "manifest": train.key()}
    if cfg.teacher.name and cfg.teacher.name != "clip" and cfg.teacher.view == "replay":
        teacher, teacher_id = load_vision_teacher(
            cfg.teacher, train.num_classes, cfg.data.in_chans, ctx.device
        )
        rows = replayed_vision_logits(ctx, teacher, teacher_id).rows
        sources["topk_values"], sources["topk_indices"] = rows._open()
        k = int(rows.k)
        fields["topk_values"] = {"shape": [card["num_views"], k], "dtype": "float16"}
        fields["topk_indices"] = {"shape": [card["num_views"], k], "dtype": "int32"}
        card["vision_teacher"] = {"id": teacher_id, "topk": k}
        keys["teacher_logits"] = Path(rows.values_path).parent.name
    texts = None
    if cfg.text.descriptions and cfg.text.embeddings:
        texts = _descriptions(cfg, train, sources, fields, keys)
    extra = {"train": lambda i: _sample_fields(i, sources, texts, train)}
    info = pack(manifests, out, max_bytes, cfg.data.on_bad_image, extra)
    if cfg.text.class_embeddings:
        matrix, names = _class_text(cfg)
        save_npy(out / "class_text.npy", matrix)
        card["class_text"] = {"file": "class_text.npy", "class_names": names}
    card.update(
        fields=fields,
        clip_teacher={"name": cfg.clip.name, "revision": cfg.clip.revision, "view": "replay"},
        sources=describe_sources(cfg),
        text_encoder={"encoder": cfg.embed.encoder, "model": cfg.embed.model, "revision": cfg.embed.revision},
        describe={
            "backend": cfg.describe.backend,
            "model": cfg.describe.model,
            "prompt": cfg.describe.prompt,
        },
        classtext={"templates": list(cfg.classtext.templates), "enriched": cfg.classtext.enriched},
        artifact_keys=keys,
        splits={
            s: {"samples": v["samples"], "manifest_key": v["manifest_key"]} for s, v in info["splits"].items()
        },
        train_with="vlmkd train CONFIG data.format=wds data.root=OUT data.val_fraction=0 (the splits are packed)",
    )
    card["key"] = artifact_key({k: v for k, v in card.items() if k != "train_with"})
    write_json(out / CARD, card)
    return card


def _descriptions(cfg: Config, train, sources: dict, fields: dict, keys: dict) -> dict[str, list[str]]:
    array_path, index_path = description_index_map(cfg, train)
    sources["text_rows"], sources["text_index"] = open_rows(array_path), open_rows(index_path)
    n, dim = sources["text_index"].shape[1], sources["text_rows"].shape[-1]
    fields["text_emb"] = {"shape": [int(n), int(dim)], "dtype": "float16"}
    keys["descriptions"] = resolve_store(cfg.text.descriptions).name
    keys["embeddings"] = resolve_store(cfg.text.embeddings).name
    return DescriptionStore(resolve_store(cfg.text.descriptions)).texts_by_id()


def _sample_fields(i: int, sources: dict, texts: dict | None, train) -> dict[str, bytes]:
    fields = {name: _npy(np.asarray(sources[name][i])) for name in sources if not name.startswith("text_")}
    if "text_rows" in sources:
        idx = np.asarray(sources["text_index"][i])
        emb = np.zeros((len(idx), sources["text_rows"].shape[-1]), dtype=np.float16)
        valid = idx >= 0
        if valid.any():  # the same rows, in the same slots, as the index map gives the training dataset
            emb[valid] = np.asarray(sources["text_rows"][idx[valid]], dtype=np.float16)
        fields["text_emb.npy"] = _npy(emb)
        fields["descriptions.json"] = json.dumps(
            texts.get(str(train.ids[i]), []), ensure_ascii=False
        ).encode()
    return {(k if k.endswith(".json") or k.endswith(".npy") else f"{k}.npy"): v for k, v in fields.items()}


def _class_text(cfg: Config) -> tuple[np.ndarray, list[str]]:
    matrix, names, _ = class_text_matrix(cfg)
    return np.asarray(matrix, dtype=np.float16), list(names)
