"""Running a describer over a manifest: sharding, resume, progress, merge, dry-run cost estimate.

Work is split in shards of `shard_size` manifest rows; shard s belongs to process I of N when s % N == I
(`--shard I/N`, default: torch.distributed RANK/WORLD_SIZE). A shard file is written atomically once all its rows
are done, so a killed run loses at most the shards in progress. On rerun, shards whose rows are all "ok" are
skipped and only failed rows are described again. When every shard exists, the shards are merged (checked for gaps
and duplicates) into `descriptions.parquet`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data.images import open_image
from vlmkd.data.manifest import Manifest
from vlmkd.describe.base import Description, failed
from vlmkd.describe.store import (
    decoding_json,
    merge_shards,
    read_rows,
    shard_name,
    write_rows,
)
from vlmkd.errors import ArtifactError, ConfigError, VlmkdError
from vlmkd.utils.io import artifact_key, read_json, write_json
from vlmkd.utils.progress import progress

log = logging.getLogger("vlmkd")


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "I/N" -> (I, N); None -> torch.distributed RANK/WORLD_SIZE from the environment, else (0, 1)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} must look like I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def description_key(manifest: Manifest, identity: dict[str, Any], n: int) -> str:
    return artifact_key({"manifest": manifest.key(), "describer": identity, "n_descriptions": int(n)})


def store_folder(output: str | Path, key: str) -> Path:
    return Path(output) / key[:16]


def _prepare(folder: Path, key: str, manifest: Manifest, identity: dict, n: int, shard_size: int) -> int:
    num_shards = max(1, math.ceil(len(manifest) / shard_size))
    meta = {
        "key": key,
        "kind": "descriptions",
        "manifest_key": manifest.key(),
        "split": manifest.split,
        "num_samples": len(manifest),
        "n_descriptions": n,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "describer": identity,
    }
    if (folder / "meta.json").is_file():
        old = read_json(folder / "meta.json")
        if old.get("key") != key:
            raise ArtifactError(f"{str(folder)!r} holds descriptions with another key; delete it and rerun")
        if old.get("shard_size") != shard_size:
            raise ConfigError(
                f"{str(folder)!r} was started with describe.shard_size={old.get('shard_size')}; keep that value"
            )
        return int(old["num_shards"])
    write_json(folder / "meta.json", meta)
    return num_shards


def _load_images(manifest: Manifest, idx: list[int], workers: int = 8) -> list[Any]:
    def one(i: int):
        try:
            return open_image(manifest, i)
        except VlmkdError as e:
            return e

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, idx))


def _row(manifest, i, k, d: Description, identity, prompt: str, now: str) -> dict[str, Any]:
    return {
        "sample_id": manifest.ids[i],
        "index": i,
        "k": k,
        "text": d.text if d.ok else None,
        "status": "ok" if d.ok else "failed",
        "error": d.error,
        "model_id": str(identity.get("model")),
        "revision": identity.get("revision"),
        "prompt": prompt,
        "decoding": decoding_json(identity),
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "created": now,
    }


def _class_name(manifest: Manifest, i: int) -> str:
    return manifest.class_names[int(manifest.labels[i])]


def describe_rows(
    describer, manifest: Manifest, idx: list[int], n: int, on_done=None
) -> list[list[Description]]:
    """n descriptions for each manifest row in `idx`; unreadable images become failures."""
    images = _load_images(manifest, idx)
    good = [j for j, im in enumerate(images) if not isinstance(im, Exception)]
    out: list[list[Description]] = [[failed(f"unreadable image: {images[j]}")] * n for j in range(len(idx))]
    if good:
        res = describer.describe(
            [images[j] for j in good], [_class_name(manifest, idx[j]) for j in good], n, on_done=on_done
        )
        for j, r in zip(good, res):
            out[j] = r
    if on_done and len(good) < len(idx):
        on_done(len(idx) - len(good))
    return out


def describe_manifest(
    manifest: Manifest,
    cfg: Any,
    describer: Any = None,
    teacher: Any = None,
    shard: str | tuple[int, int] | None = None,
    merge: bool = True,
) -> Path:
    """Describe every image of `manifest` (this process's shards), resume-safe; returns the store folder.

    The merged table is written when all shards exist and `merge` is true. Use `DescriptionStore(folder)` to read.
    """
    from vlmkd.describe import build_describer

    describer = describer or build_describer(cfg, teacher)
    n = int(cfg.n_descriptions)
    identity = describer.identity()
    key = description_key(manifest, identity, n)
    folder = store_folder(cfg.output, key)
    num_shards = _prepare(folder, key, manifest, identity, n, int(cfg.shard_size))
    rank, world = shard if isinstance(shard, tuple) else parse_shard(shard)
    mine = [s for s in range(num_shards) if s % world == rank]
    size = int(read_json(folder / "meta.json")["shard_size"])
    plan = []
    for s in mine:
        path = folder / "shards" / shard_name(s, num_shards)
        rows = [r for r in read_rows(path) if r["status"] == "ok"] if path.is_file() else []
        done = {(r["index"], r["k"]) for r in rows}
        lo, hi = s * size, min(len(manifest), (s + 1) * size)
        todo = [i for i in range(lo, hi) if any((i, k) not in done for k in range(n))]
        if todo or not path.is_file():
            plan.append((path, rows, todo))
    total = sum(len(t) for _, _, t in plan)
    log.info(
        "describe: %d images to do in %d shards (process %d/%d) -> %s", total, len(plan), rank, world, folder
    )
    bar = progress(total=total, desc=f"describe ({identity['backend']})", unit="img")
    t0 = time.time()
    n_failed = 0
    for path, rows, todo in plan:
        done = {(r["index"], r["k"]) for r in rows}
        for c in range(0, len(todo), describer.chunk_size):
            idx = todo[c : c + describer.chunk_size]
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for i, descs in zip(idx, describe_rows(describer, manifest, idx, n, on_done=bar.update)):
                prompt = getattr(describer, "template", None) or identity.get("prompt", "")
                prompt = prompt.replace("{class_name}", _class_name(manifest, i).replace("_", " "))
                for k, d in enumerate(descs):
                    if (i, k) not in done:
                        rows.append(_row(manifest, i, k, d, identity, prompt, now))
                        n_failed += not d.ok
        rows.sort(key=lambda r: (r["index"], r["k"]))
        write_rows(path, rows)
    bar.close()
    if total:
        dt = time.time() - t0
        log.info(
            "describe: %d images in %.1f s (%.2f img/s), %d failed",
            total,
            dt,
            total / max(dt, 1e-9),
            n_failed,
        )
    all_there = all((folder / "shards" / shard_name(s, num_shards)).is_file() for s in range(num_shards))
    from vlmkd.describe.store import MERGED

    if merge and all_there and not plan and (folder / MERGED).is_file():
        log.info("describe: up to date (%s)", folder)
    elif merge and all_there:
        stats = merge_shards(folder, manifest.ids, n)
        if stats["failed"]:
            log.warning(
                "describe: %d descriptions failed; rerun the same command to retry them", stats["failed"]
            )
    elif merge:
        log.info(
            "describe: other shards are still missing; run `vlmkd describe CONFIG --merge` when all finish"
        )
    return folder


def estimate_cost(manifest: Manifest, cfg: Any, describer: Any, sample: int = 16) -> dict[str, Any]:
    """Describe a few evenly spaced images (nothing is stored) and extrapolate time and tokens to the manifest."""
    n = int(cfg.n_descriptions)
    m = max(1, min(len(manifest), sample, max(sample, describer.chunk_size)))
    idx = np.unique(np.linspace(0, len(manifest) - 1, m).round().astype(int)).tolist()
    t0 = time.time()
    res = describe_rows(describer, manifest, idx, n)
    dt = time.time() - t0
    flat = [d for r in res for d in r]
    ok = [d for d in flat if d.ok]

    def mean_tokens(attr: str) -> float | None:
        v = [getattr(d, attr) for d in ok if getattr(d, attr) >= 0]
        return float(np.mean(v)) if v else None

    pt, ct = mean_tokens("prompt_tokens"), mean_tokens("completion_tokens")
    total = len(manifest) * n
    return {
        "backend": describer.backend,
        "sample_images": len(idx),
        "sample_seconds": round(dt, 3),
        "images_per_second": round(len(idx) / max(dt, 1e-9), 3),
        "estimated_seconds": round(dt / len(idx) * len(manifest), 1),
        "descriptions": total,
        "failure_rate": round(1 - len(ok) / max(len(flat), 1), 3),
        "prompt_tokens_per_description": pt,
        "completion_tokens_per_description": ct,
        "estimated_prompt_tokens": round(pt * total) if pt is not None else None,
        "estimated_completion_tokens": round(ct * total) if ct is not None else None,
        "examples": [d.text for d in ok[:3]],
    }
