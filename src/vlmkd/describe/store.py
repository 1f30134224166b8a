"""The description store: Parquet shards with provenance, resumable, mergeable across processes.

Layout (one folder per key, so a changed manifest, model, revision, prompt or decoding never reuses old text)::

    <describe.output>/<key[:16]>/meta.json                 key + what it was computed from
    <describe.output>/<key[:16]>/shards/00003-of-00010.parquet   manifest rows [3*S, 4*S), written atomically
    <describe.output>/<key[:16]>/descriptions.parquet      the merged table (manifest order, one row per (id, k))
    <describe.output>/LATEST                               {"key": ..., "folder": ...} of the last merged store

Columns: sample_id, index (manifest row), k, text, status ("ok"/"failed"), error, model_id, revision, prompt,
decoding (JSON), prompt_tokens, completion_tokens, created (UTC ISO time).
`DescriptionStore(path)` accepts the keyed folder or its parent (then it follows LATEST).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError
from vlmkd.utils.io import atomic_path, read_json, write_json

COLUMNS = [
    "sample_id",
    "index",
    "k",
    "text",
    "status",
    "error",
    "model_id",
    "revision",
    "prompt",
    "decoding",
    "prompt_tokens",
    "completion_tokens",
    "created",
]
MERGED = "descriptions.parquet"
POINTER = "LATEST"


def _schema():
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = [s, i, pa.int32(), s, s, s, s, s, s, s, i, i, s]
    return pa.schema(list(zip(COLUMNS, types)))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with COLUMNS) as one Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=_schema())
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - any unreadable shard is reported the same way
        raise ArtifactError(
            f"shard {str(path)!r} is unreadable ({type(e).__name__}); delete it and rerun"
        ) from None


def shard_name(s: int, num_shards: int) -> str:
    return f"{s:05d}-of-{num_shards:05d}.parquet"


def set_pointer(parent: Path, key: str) -> None:
    write_json(parent / POINTER, {"key": key, "folder": key[:16]})


def resolve_store(path: str | Path, marker: str = "meta.json") -> Path:
    """A keyed store folder, or a parent holding a LATEST pointer (followed), or a folder with `embeddings/`."""
    p = Path(path)
    for _ in range(4):
        if (p / marker).is_file():
            return p
        if (p / POINTER).is_file():
            p = p / read_json(p / POINTER)["folder"]
        elif (p / "embeddings").is_dir():
            p = p / "embeddings"
        else:
            break
    raise ArtifactError(f"{str(path)!r} is not a vlmkd store (no {marker} or LATEST); run the stage first")


class DescriptionStore:
    def __init__(self, path: str | Path):
        self.path = resolve_store(path)
        self.meta = read_json(self.path / "meta.json")
        self.key = self.meta["key"]

    @property
    def merged(self) -> bool:
        return (self.path / MERGED).is_file()

    def load(self, include_failed: bool = False) -> dict[str, Any]:
        """The merged table as columns: sample_id (list), index (int64), k (int32), text (list), status (list)."""
        import pyarrow.parquet as pq

        if not self.merged:
            raise ArtifactError(
                f"descriptions in {str(self.path)!r} are not merged; finish all shards, then run "
                "`vlmkd describe CONFIG --merge`"
            )
        t = pq.read_table(self.path / MERGED, columns=["sample_id", "index", "k", "text", "status"])
        cols = t.to_pydict()
        if not include_failed:
            keep = [i for i, s in enumerate(cols["status"]) if s == "ok"]
            cols = {c: [v[i] for i in keep] for c, v in cols.items()}
        cols["index"] = np.asarray(cols["index"], dtype=np.int64)
        cols["k"] = np.asarray(cols["k"], dtype=np.int32)
        return cols

    def texts_by_id(self) -> dict[str, list[str]]:
        """sample id -> its successful descriptions, ordered by k."""
        d = self.load()
        out: dict[str, list[str]] = {}
        for sid, text in zip(d["sample_id"], d["text"]):
            out.setdefault(sid, []).append(text)
        return out

    def __len__(self) -> int:
        return int(self.meta.get("num_rows", 0))


def merge_shards(folder: Path, ids: list[str], n: int) -> dict[str, int]:
    """Check every (sample, k) is present exactly once across the shards; write the merged table in manifest order."""
    meta = read_json(folder / "meta.json")
    num_shards = int(meta["num_shards"])
    missing = [s for s in range(num_shards) if not (folder / "shards" / shard_name(s, num_shards)).is_file()]
    if missing:
        raise ArtifactError(
            f"{len(missing)} of {num_shards} description shards are missing (first: {missing[0]}); "
            "run the remaining `vlmkd describe CONFIG --shard I/N` processes, then --merge"
        )
    rows: list[dict[str, Any]] = []
    for s in range(num_shards):
        rows.extend(read_rows(folder / "shards" / shard_name(s, num_shards)))
    seen: set[tuple[int, int]] = set()
    for r in rows:
        key = (int(r["index"]), int(r["k"]))
        if key in seen:
            raise ArtifactError(
                f"duplicate description for sample {r['sample_id']!r} k={r['k']}; delete its shard"
            )
        if not (0 <= key[0] < len(ids)) or ids[key[0]] != r["sample_id"] or not (0 <= key[1] < n):
            raise ArtifactError(f"shard row {r['sample_id']!r} k={r['k']} does not match the manifest; rerun")
        seen.add(key)
    if len(seen) != len(ids) * n:
        raise ArtifactError(
            f"{len(ids) * n - len(seen)} descriptions are missing from the shards; rerun `vlmkd describe`"
        )
    rows.sort(key=lambda r: (r["index"], r["k"]))
    write_rows(folder / MERGED, rows)
    failed = sum(r["status"] != "ok" for r in rows)
    stats = {"num_rows": len(rows), "ok": len(rows) - failed, "failed": failed}
    write_json(folder / "meta.json", {**meta, **stats, "merged": True})
    set_pointer(folder.parent, meta["key"])
    return stats


def decoding_json(identity: dict[str, Any]) -> str:
    return json.dumps(identity.get("decoding", {}), sort_keys=True)
