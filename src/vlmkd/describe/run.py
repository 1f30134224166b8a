"""Running a describer over a manifest: content keys, resume, flushes, checks, merge, dry-run estimate.

Process I of N (`--shard I/N`, default: torch.distributed RANK/WORLD_SIZE) takes manifest rows i with
i % N == I, hashes them (`keys.py`), and describes the content it has no final row for, each distinct content
once. Finished rows go to the row log every `shard_size` images (or `FLUSH_S` seconds), so a kill loses at most
that much. When every (image, k) of the manifest has a final row, the manifest's view is written.

The run fails (exit 2, one line) when more than `max_failure_rate` of its descriptions failed; unreadable images
are never failures: under `data.on_bad_image=skip` they are "skipped" rows (counted and named), else the run stops
on the first one with an error naming the file (after saving the rows finished so far).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import inspect
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data.images import open_image
from vlmkd.data.manifest import Manifest
from vlmkd.describe.base import Description, build_describer
from vlmkd.describe.keys import MISSING, cache_folder, image_keys
from vlmkd.describe.store import MERGED, RowLog, write_view
from vlmkd.errors import BackendError, DataError, VlmkdError
from vlmkd.utils.dist import work_split
from vlmkd.utils.io import artifact_key, read_json
from vlmkd.utils.progress import progress

log = logging.getLogger("vlmkd")
FLUSH_S = 30.0  # also flush finished rows at least this often (a slow VLM at 64 images a part)


def description_key(manifest: Manifest, identity: dict[str, Any], n: int) -> str:
    return artifact_key({"manifest": manifest.key(), "describer": identity, "n_descriptions": int(n)})


def store_folder(output: str | Path, key: str) -> Path:
    return Path(output) / key[:16]


def rows_folder(output: str | Path, identity: dict[str, Any], n: int) -> Path:
    return Path(output) / f"rows-{artifact_key({'describer': identity, 'n_descriptions': int(n)})[:16]}"


def _class_name(manifest: Manifest, i: int) -> str:
    return manifest.class_names[int(manifest.labels[i])]


def row_keys(
    manifest: Manifest, idx: np.ndarray | None, identity: dict[str, Any], output: str | Path
) -> np.ndarray:
    """Content keys of rows `idx`; with a {class_name} prompt the class name is part of the key (the same
    picture under another label gets another description)."""
    idx = np.arange(len(manifest)) if idx is None else np.asarray(idx)
    keys = image_keys(manifest, idx, cache_folder(output, manifest))
    if "{class_name}" in str(identity.get("prompt") or ""):
        for j, i in enumerate(idx):
            if keys[j] != MISSING:
                keys[j] = hashlib.sha256(bytes(keys[j]) + b"\0" + _class_name(manifest, i).encode()).digest()
    return keys


def _load(manifest: Manifest, idx: list[int], max_side: int | None) -> list[Any]:
    def one(i: int):
        try:
            return open_image(manifest, i, max_side=max_side)
        except VlmkdError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, idx))


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)
    identical: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)

    def reason(self) -> str:
        if not self.errors:
            return "no reason recorded"
        text, count = self.errors.most_common(1)[0]
        return f"{text} ({count}x)"


def _reason(error: str | None) -> str:
    return (error or "?").split(" (after ")[0][:160]


def _sampling(identity: dict[str, Any]) -> bool:
    return bool((identity.get("decoding") or {}).get("do_sample"))


def describe_chunk(
    describer, manifest, idx, keys, images, n, on_bad_image, tally, on_done=None
) -> list[dict]:
    """Log rows for manifest rows `idx` (content `keys`, loaded `images` or the error of loading them)."""
    return start_chunk(describer, manifest, idx, keys, images, n, on_bad_image, tally, on_done)()


def start_chunk(describer, manifest, idx, keys, images, n, on_bad_image, tally, on_done=None):
    """Start describing a chunk; returns `finish() -> log rows`. Describers with `describe_async` (the HTTP one)
    work on it in the background, so the runner starts the next chunk before this one ends (no idle tail)."""
    identity = describer.identity()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    good = [j for j, im in enumerate(images) if not isinstance(im, Exception)]
    rows: list[dict] = []
    for j in (j for j, im in enumerate(images) if isinstance(im, Exception)):
        if on_bad_image != "skip":
            raise images[j]
        tally.skipped.append(str(images[j]))
        rows += [
            _row(keys[j], k, Description(None, str(images[j])), identity, "", now, "skipped")
            for k in range(n)
        ]
    if not good:
        return lambda: rows
    kw = (
        {"keys": [keys[j] for j in good]}
        if "keys" in inspect.signature(describer.describe).parameters
        else {}
    )
    names = [_class_name(manifest, idx[j]) for j in good]
    args = ([images[j] for j in good], names, n)
    if hasattr(describer, "describe_async"):
        wait = describer.describe_async(*args, on_done=on_done, **kw)
    else:
        res = describer.describe(*args, on_done=on_done, **kw)
        wait = lambda: res  # noqa: E731

    def finish() -> list[dict]:
        template = getattr(describer, "template", None) or identity.get("prompt", "")
        for j, descs, name in zip(good, wait(), names):
            prompt = template.replace("{class_name}", name.replace("_", " "))
            same = (
                n > 1
                and _sampling(identity)
                and all(d.ok for d in descs)
                and len({d.text for d in descs}) == 1
            )
            tally.identical += same
            for k, d in enumerate(descs):
                rows.append(_row(keys[j], k, d, identity, prompt, now, "ok" if d.ok else "failed", same))
                tally.ok += d.ok
                tally.failed += not d.ok
                if not d.ok:
                    tally.errors[_reason(d.error)] += 1
        return rows

    return finish


def _row(
    key, k, d: Description, identity, prompt: str, now: str, status: str, identical: bool = False
) -> dict:
    return {
        "image_key": bytes(key).ljust(32, b"\0"),
        "k": k,
        "text": d.text if status == "ok" else None,
        "status": status,
        "error": d.error,
        "model_id": str(identity.get("model")),
        "revision": identity.get("revision"),
        "prompt": prompt,
        "decoding": json.dumps(identity.get("decoding", {}), sort_keys=True),
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "created": now,
        "identical": identical,
    }


def _plan(
    manifest, rlog: RowLog, mine: np.ndarray, keys: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(manifest rows, their keys) to describe: content without a final row, each distinct content once."""
    todo = ~rlog.done(keys, n) & (keys != MISSING)
    _, first = np.unique(keys[todo], return_index=True)
    sel = np.sort(np.nonzero(todo)[0][first])
    return mine[sel], keys[sel]


def _run(describer, manifest, idx, keys, n, rlog: RowLog, cfg, on_bad_image: str) -> Tally:
    tally, buffer, last = Tally(), [], time.monotonic()
    cs, max_side = max(1, int(describer.chunk_size)), describer.identity().get("max_side")
    chunks = [np.arange(c, min(c + cs, len(idx))) for c in range(0, len(idx), cs)]
    bar = progress(total=len(idx), desc=f"describe ({describer.backend})", unit="img")
    pending = None  # the chunk in flight: its rows are collected once the next one has started
    with ThreadPoolExecutor(1) as prefetch:  # the next chunk's images load while this one is described
        nxt = prefetch.submit(_load, manifest, idx[chunks[0]].tolist(), max_side) if chunks else None
        try:
            for c, ch in enumerate(chunks):
                images = nxt.result()
                if c + 1 < len(chunks):
                    nxt = prefetch.submit(_load, manifest, idx[chunks[c + 1]].tolist(), max_side)
                started = start_chunk(
                    describer,
                    manifest,
                    idx[ch].tolist(),
                    keys[ch],
                    images,
                    n,
                    on_bad_image,
                    tally,
                    bar.update,
                )
                bar.update(sum(isinstance(im, Exception) for im in images))
                if pending is not None:
                    buffer += pending()
                pending = started
                if len(buffer) >= int(cfg.shard_size) * n or time.monotonic() - last > FLUSH_S:
                    rlog.append(buffer)
                    buffer, last = [], time.monotonic()
            if pending is not None:
                buffer, pending = buffer + pending(), None
        finally:  # a failure or a kill signal keeps every row finished so far
            if pending is not None:
                with contextlib.suppress(Exception):  # the chunk in flight may fail the same way
                    buffer += pending()
            rlog.append(buffer)
            bar.close()
    return tally


def describe_manifest(
    manifest: Manifest,
    cfg: Any,
    describer: Any = None,
    teacher: Any = None,
    shard: str | tuple[int, int] | None = None,
    merge: bool = True,
    on_bad_image: str = "error",
) -> Path:
    """Describe every image of `manifest` (this process's rows), resume-safe; returns the view folder.

    The view is written when every row of the manifest is in the log and `merge` is true; read it with
    `DescriptionStore(folder)`. Raises BackendError when the failure rate passes `cfg.max_failure_rate`.
    """

    describer = describer or build_describer(cfg, teacher)
    n, identity = int(cfg.n_descriptions), describer.identity()
    folder = store_folder(cfg.output, description_key(manifest, identity, n))
    rlog = RowLog(rows_folder(cfg.output, identity, n), identity, n)
    split = work_split(shard)
    rank, world = split.rank, split.world
    mine = np.arange(rank, len(manifest), world)
    keys = row_keys(manifest, mine, identity, cfg.output)
    missing = mine[keys == MISSING]
    if len(missing) and on_bad_image != "skip":
        open_image(manifest, int(missing[0]))  # raises the one-line error naming the file
        raise DataError(
            f"image {manifest.paths[int(missing[0])]!r} cannot be read; set data.on_bad_image=skip"
        )
    idx, todo_keys = _plan(manifest, rlog, mine, keys, n)
    log.info(
        "describe: %d of %d images to do (process %d/%d) -> %s", len(idx), len(mine), rank, world, folder
    )
    t0 = time.time()
    tally = _run(describer, manifest, idx, todo_keys, n, rlog, cfg, on_bad_image)
    _report(tally, len(idx), time.time() - t0, len(missing))
    _report_servers(describer)
    split.barrier()
    if merge and (rank == 0 or not split.collective):
        merge_view(manifest, cfg, identity, n, keys if world == 1 else None)
    total = tally.ok + tally.failed
    if total and tally.failed / total > float(cfg.max_failure_rate):
        raise BackendError(
            f"describe: {tally.failed} of {total} descriptions failed ({tally.failed / total:.0%} > "
            f"describe.max_failure_rate={cfg.max_failure_rate:g}); main reason: {tally.reason()}; "
            "finished rows are kept, rerun to retry the failures"
        )
    return folder


def _report(tally: Tally, todo: int, seconds: float, unreadable: int) -> None:
    if todo:
        log.info(
            "describe: %d images in %.1f s (%.2f img/s), %d descriptions failed",
            todo,
            seconds,
            todo / max(seconds, 1e-9),
            tally.failed,
        )
    if tally.skipped or unreadable:
        log.warning(
            "describe: %d unreadable images skipped (data.on_bad_image=skip), e.g. %s",
            len(tally.skipped) + unreadable,
            tally.skipped[0] if tally.skipped else "a missing file",
        )
    if tally.identical:
        log.warning(
            "describe: %d images got identical descriptions although sampling was asked for (do_sample=true); "
            "the server may ignore sampling parameters (stored with identical=true)",
            tally.identical,
        )
    if tally.failed:
        log.warning(
            "describe: %d descriptions failed (%s); rerun to retry them", tally.failed, tally.reason()
        )


def _report_servers(describer: Any) -> None:
    """Name every server that stopped answering during the run (the warning at the time may have scrolled by)."""
    pool = getattr(getattr(describer, "client", None), "pool", None)
    for s in pool.summary() if pool is not None else []:
        if s["down_events"]:
            log.warning(
                "describe: server %s stopped accepting connections %d time(s) during this run; %d requests "
                "were sent to it, the other servers took the rest",
                s["url"],
                s["down_events"],
                s["requests"],
            )


def merge_view(
    manifest: Manifest, cfg: Any, identity: dict[str, Any], n: int, keys: np.ndarray | None = None
):
    """Write the manifest's view when the row log covers it; returns its stats, or None when rows are missing."""
    key = description_key(manifest, identity, n)
    folder = store_folder(cfg.output, key)
    rlog = RowLog(rows_folder(cfg.output, identity, n))
    keys = row_keys(manifest, None, identity, cfg.output) if keys is None else keys
    _, found = rlog.lookup(keys, n)
    if not (found | (keys == MISSING)[:, None]).all():
        log.info(
            "describe: rows of other processes are still missing; run `vlmkd describe CONFIG --merge` later"
        )
        return None
    parts = rlog.parts()
    meta_file = folder / "meta.json"
    newest = max((p.stat().st_mtime for p in parts), default=0.0)
    if (folder / MERGED).is_file() and meta_file.is_file() and newest <= meta_file.stat().st_mtime:
        log.info("describe: up to date (%s)", folder)
        return read_json(meta_file)
    rlog.compact()
    meta = {
        "key": key,
        "kind": "descriptions",
        "manifest_key": manifest.key(),
        "split": manifest.split,
        "num_samples": len(manifest),
        "n_descriptions": n,
        "describer": identity,
        **{k: identity.get(k) for k in ("backend", "model", "revision", "prompt")},
        "rows": rlog.folder.name,
    }
    return write_view(folder, manifest, keys, rlog, meta)
