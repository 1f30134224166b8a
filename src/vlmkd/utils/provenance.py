"""What a training run used, so that it can be repeated: the resolved artifact keys and the models' fingerprints.

The stages' readers call `record_artifact` / `record_model` as they resolve a store (after following any `LATEST`
pointer), so the record names keyed folders, never a pointer. The trainer writes `artifacts.json` (and the same
dict under "artifacts" in summary.json). `vlmkd train --like RUN` pins the next run to RUN's record: stores by their
keyed folders, computed caches by `expect` (a different key is an error, not a rebuild).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlmkd.errors import ArtifactError
from vlmkd.utils.io import read_json, resolve_store, write_json

log = logging.getLogger("vlmkd")

FILE = "artifacts.json"
# config field of each store a run reads through a path that may be a LATEST pointer
STORE_FIELDS = {
    "descriptions": "descriptions",
    "embeddings": "embeddings",
    "class_embeddings": "class_embeddings",
}
CACHES = ("teacher_features", "teacher_logits")  # keyed by their inputs: pinned by expectation

_ARTIFACTS: dict[str, dict[str, Any]] = {}
_MODELS: dict[str, dict[str, Any]] = {}
_EXPECT: dict[str, str] = {}


def start_run() -> None:
    """Forget what an earlier run in this process used (expectations set by --like stay)."""
    _ARTIFACTS.clear()
    _MODELS.clear()


def expect(keys: dict[str, str]) -> None:
    """Make the next run fail (one line) if it resolves one of these artifacts to another key."""
    _EXPECT.clear()
    _EXPECT.update(keys)


def record_artifact(kind: str, key: str, folder: str | Path, **extra: Any) -> None:
    want = _EXPECT.get(kind)
    if want and want != key:
        raise ArtifactError(
            f"--like: this config resolves {kind} to {key[:16]}, the reference run used {want[:16]}; "
            "train with the reference run's config (omit CONFIG) or without --like"
        )
    _ARTIFACTS[kind] = {"key": key, "folder": str(Path(folder).resolve()), **extra}


def record_model(kind: str, model_id: str, fingerprint: str | None = None) -> None:
    _MODELS[kind] = {"id": model_id, "fingerprint": fingerprint}


def snapshot() -> dict[str, Any]:
    return {"artifacts": dict(sorted(_ARTIFACTS.items())), "models": dict(sorted(_MODELS.items()))}


def read_record(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise ArtifactError(
            f"{str(run_dir)!r} has no {FILE} (not a run folder, or trained before runs recorded artifacts)"
        )
    return read_json(path)


def _folder_key(folder: Path) -> str | None:
    for meta in (folder / "meta.json", folder / "classtexts.json"):
        if meta.is_file():
            return read_json(meta).get("key")
    return None


def pin_overrides(run_dir: str | Path) -> list[str]:
    """Config overrides that point a new run at exactly the artifacts `run_dir` used; sets expectations for the
    computed caches. One-line error when an artifact is gone."""
    record = read_record(run_dir)["artifacts"]
    overrides, keys = [], {}
    for kind, entry in record.items():
        folder = Path(entry["folder"])
        if _folder_key(folder) != entry["key"]:
            raise ArtifactError(
                f"--like {run_dir}: the {kind} it used ({entry['key'][:16]}, {str(folder)!r}) is missing or "
                "was replaced; rebuild it or train without --like"
            )
        if kind in STORE_FIELDS:
            overrides.append(f"text.{STORE_FIELDS[kind]}={folder}")
        keys[kind] = entry["key"]
    expect(keys)
    return overrides


def previous_record(run_dir: Path, stem: str) -> tuple[Path, dict[str, Any]] | None:
    """The latest earlier run of the same name: the run folder itself (train.name) or its `<stem>-*` siblings."""
    candidates = [run_dir] if (run_dir / FILE).is_file() else []
    if run_dir.parent.is_dir():
        candidates += [p for p in run_dir.parent.glob(f"{stem}-*") if p != run_dir and (p / FILE).is_file()]
    if not candidates:
        return None
    latest = max(candidates, key=lambda p: (p / FILE).stat().st_mtime)
    return latest, read_record(latest)


def warn_if_moved(text_cfg: Any, run_dir: Path, stem: str) -> list[str]:
    """One warning line per store whose configured path now resolves to another artifact than the previous run of
    this name used (a LATEST pointer that moved); returns the lines."""

    prev = previous_record(run_dir, stem)
    if prev is None:
        return []
    prev_dir, record = prev
    lines = []
    for kind, field in STORE_FIELDS.items():
        path, old = getattr(text_cfg, field, None), record["artifacts"].get(kind)
        if not path or not old:
            continue
        try:
            now = _folder_key(resolve_store(path))
        except ArtifactError:
            continue  # missing: training itself reports it
        if now and now != old["key"]:
            lines.append(
                f"text.{field}={path} now names {kind} {now[:16]}; the previous run {prev_dir.name} used "
                f"{old['key'][:16]} (retrain on those with: vlmkd train --like {prev_dir})"
            )
    for line in lines:
        log.warning(line)
    return lines


def finish_run(run_dir: str | Path, text_cfg: Any) -> dict[str, Any]:
    """Write `<run_dir>/artifacts.json` (main process) and return it. The description store is named here: the
    trainer reads it only through the embeddings made from it (their `source_key`)."""

    emb = _ARTIFACTS.get("embeddings")
    if emb and getattr(text_cfg, "descriptions", None):
        folder = resolve_store(text_cfg.descriptions)
        key = _folder_key(folder)
        if key == emb.get("source_key"):
            record_artifact("descriptions", key, folder)
    out = snapshot()
    write_json(Path(run_dir) / FILE, out)
    return out
