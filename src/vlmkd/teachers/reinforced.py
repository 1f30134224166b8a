"""Reading a reinforced dataset (`vlmkd export-dataset`): WebDataset shards whose training samples carry, next to
the image, the K replayed views' parameters, the teacher's features (and top-k probabilities) per view and the
description embeddings, with a dataset card (`reinforced.json`) beside the shards.

Training reads it with `data.format=wds`, `data.root=<the folder>`: the images through the shard reader
(`vlmkd.data.shards`), the per-sample arrays through this module, so no teacher, VLM or text encoder is needed.
The arrays are gathered once, in one sequential pass over the training shards, into N-row .npy stores in manifest
order (under `<clip.cache_dir>/reinforced/<key>`), which the row sources then read row by row like any cache.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data.manifest import Manifest
from vlmkd.data.sharded import expand_spec, local_path, scheme_of
from vlmkd.data.shards import shard_index, split_member
from vlmkd.errors import ArtifactError
from vlmkd.utils.dist import build_once
from vlmkd.utils.io import artifact_key, atomic_path, read_json, write_json

log = logging.getLogger("vlmkd")
CARD = "reinforced.json"
FORMAT = "vlmkd-reinforced"
ARRAY_FIELDS = ("features", "params", "topk_values", "topk_indices", "text_emb")


def reinforced_card(data_cfg: Any) -> dict[str, Any] | None:
    """The dataset card when `data` points at a reinforced dataset (format wds, root a folder with the card)."""
    if getattr(data_cfg, "format", None) != "wds" or not data_cfg.root:
        return None
    path = Path(data_cfg.root).expanduser() / CARD
    if not path.is_file():
        return None
    card = read_json(path)
    if card.get("format") != FORMAT:
        raise ArtifactError(
            f"{str(path)!r} is not a vlmkd reinforced-dataset card; rerun `vlmkd export-dataset`"
        )
    return card


def reinforced_arrays(
    data_cfg: Any, card: dict[str, Any], manifest: Manifest, cache_dir: str
) -> dict[str, Path]:
    """{field: N-row .npy in `manifest` order} for the card's per-sample array fields, gathered once."""
    fields = {f: card["fields"][f] for f in ARRAY_FIELDS if f in card["fields"]}
    key = artifact_key({"card": card["key"], "manifest": manifest.key(), "fields": fields, "v": 1})
    folder = Path(cache_dir) / "reinforced" / key[:16]
    paths = {f: folder / f"{f}.npy" for f in fields}
    build_once(None, (folder / "done.json").is_file, lambda: _gather(manifest, fields, folder, key))
    return paths


def class_text(data_cfg: Any, card: dict[str, Any]) -> tuple[np.ndarray, list[str]] | None:
    """(C x D class-text embeddings, their class names) stored with the dataset, if any."""
    if "class_text" not in card:
        return None
    arr = np.load(Path(data_cfg.root).expanduser() / card["class_text"]["file"], allow_pickle=False)
    return arr, list(card["class_text"]["class_names"])


def _gather(manifest: Manifest, fields: dict[str, dict], folder: Path, key: str) -> None:
    n = len(manifest)
    position = {str(p): i for i, p in enumerate(manifest.paths)}
    if scheme_of(manifest.root) != "wds":
        raise ArtifactError("a reinforced dataset is read from its shards: set data.format=wds")
    urls = expand_spec(manifest.root.split(":", 1)[1])
    folder.mkdir(parents=True, exist_ok=True)
    arrays, tmps, ctxs = {}, {}, {}
    for f, spec in fields.items():
        ctxs[f] = atomic_path(folder / f"{f}.npy")
        tmps[f] = ctxs[f].__enter__()
        shape = (n, *spec["shape"])
        arrays[f] = np.lib.format.open_memmap(tmps[f], mode="w+", dtype=np.dtype(spec["dtype"]), shape=shape)
    seen = np.zeros(n, dtype=bool)
    for url in urls:
        where = {rec[0]: position.get(str(rec[2]), -1) for rec in shard_index(url)["samples"]}
        with tarfile.open(local_path(url), "r:") as tar:
            for m in tar:
                k, ext = split_member(m.name)
                field = ext.removesuffix(".npy")
                if k is None or field not in arrays or not ext.endswith(".npy") or where.get(k, -1) < 0:
                    continue
                i = where[k]
                arrays[field][i] = np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
                seen[i] = True
    for f in fields:
        arrays[f].flush()
        del arrays[f]
        ctxs[f].__exit__(None, None, None)
    if not seen.all():
        log.warning(
            "reinforced dataset: %d of %d samples have no stored arrays (rows left zero)", (~seen).sum(), n
        )
    write_json(folder / "done.json", {"key": key, "n": n})
