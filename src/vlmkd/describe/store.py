"""The description store: a row log keyed by image content, and per-manifest views of it.

Layout under `describe.output`::

    rows-<id[:16]>/identity.json         the describer (model, revision, prompt, decoding) and n of these rows
    rows-<id[:16]>/parts/*.parquet       the row log: one part per `shard_size` images finished, written atomically
                                         by any process; a kill loses at most the part in progress
    <key[:16]>/descriptions.parquet      a view: one manifest's rows in manifest order (sample_id, index, k, ...)
    <key[:16]>/meta.json                 written last, once every (image, k) of the manifest has a final row
    image_hashes/<root>/*.parquet        cached file hashes (`keys.py`)
    LATEST                               {"key", "folder"} of the last complete view

A row is keyed by (content key of the image, k): adding or removing files re-describes only the new content; a
file that cannot be decoded is a "skipped" row (final, counted, named), a failed request a "failed" row (retried
by the next run). When the log holds several rows for one (image, k), "ok" beats "skipped" beats "failed", and
the oldest wins among equals, so a rerun never yields a duplicate. Keys are numpy `S32`/`S36` arrays and tables
stay Arrow columns: a store of a million rows opens without a Python object per row.
`DescriptionStore(path)` reads a view (the keyed folder, or a parent with LATEST).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.describe.keys import MISSING, _arrow_keys, _fixed
from vlmkd.errors import ArtifactError
from vlmkd.utils.io import POINTER, atomic_path, read_json, resolve_store, write_json

ROW_COLUMNS = [
    "image_key",
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
    "identical",
]
MERGED = "descriptions.parquet"
_RANK = {"ok": 0, "skipped": 1, "failed": 2}
_COMPACT_PARTS = 256


def _schema(view: bool = False):
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = [pa.binary(32), pa.int32(), s, s, s, s, s, s, s, i, i, s, pa.bool_()]
    fields = list(zip(ROW_COLUMNS, types))
    return pa.schema(([("sample_id", s), ("index", i)] if view else []) + fields)


def _write(path: Path, table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_rows(path: Path, rows: list[dict[str, Any]], view: bool = False) -> None:
    """Write rows (dicts with the columns of the log, or of a view) as one Parquet file, atomically."""
    import pyarrow as pa

    schema = _schema(view)
    _write(path, pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A Parquet file as a list of dicts (small files and tests; training reads columns)."""
    return _read(path).to_pylist()


def _read(path: Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ArtifactError(
            f"{str(path)!r} is unreadable ({type(e).__name__}); delete it and rerun"
        ) from None


def combined(keys: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """(image key, k) as one sortable S36 value."""
    keys = np.ascontiguousarray(keys, dtype="S32")
    out = np.zeros((len(keys), 36), dtype=np.uint8)
    out[:, :32] = keys.view(np.uint8).reshape(-1, 32)
    out[:, 32:] = np.asarray(ks, dtype=">u4").view(np.uint8).reshape(-1, 4)
    return out.view("S36").ravel()


class RowLog:
    """The append-only row log of one describer identity."""

    def __init__(self, folder: Path, identity: dict[str, Any] | None = None, n: int | None = None):
        self.folder = Path(folder)
        if identity is not None and not (self.folder / "identity.json").is_file():
            write_json(self.folder / "identity.json", {"describer": identity, "n_descriptions": n})
        self._final = None

    def parts(self) -> list[Path]:
        d = self.folder / "parts"
        return sorted(d.glob("*.parquet")) if d.is_dir() else []

    def append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            write_rows(self.folder / "parts" / name, rows)
            self._final = None

    def _all(self):
        import pyarrow as pa

        tables = []
        for p in self.parts():
            try:
                tables.append(_read(p))
            except FileNotFoundError:  # compacted away by another process after we listed it
                continue
        return pa.concat_tables(tables) if tables else _schema().empty_table()

    def final(self):
        """(sorted S36 keys of (image, k), the final row of each, in that order) as an Arrow table."""
        if self._final is None:
            t = self._all()
            ck = combined(_fixed(t["image_key"]), t["k"].to_numpy())
            order = np.lexsort((np.arange(len(ck)), status_codes(t["status"]), ck))
            first = np.ones(len(order), bool)
            first[1:] = ck[order][1:] != ck[order][:-1]
            sel = order[first]
            self._final = (ck[sel], t.take(sel))
        return self._final

    def lookup(self, keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Row of the final table for each (image, k) (len(keys) x n) and whether it exists."""
        ck_final, _ = self.final()
        q = combined(np.repeat(keys, n), np.tile(np.arange(n), len(keys)))
        pos = np.searchsorted(ck_final, q).clip(0, max(len(ck_final) - 1, 0))
        found = (ck_final[pos] == q) if len(ck_final) else np.zeros(len(q), bool)
        return pos.reshape(len(keys), n), found.reshape(len(keys), n)

    def done(self, keys: np.ndarray, n: int) -> np.ndarray:
        """Per image: every k has an "ok" or "skipped" row (nothing to describe again)."""
        pos, found = self.lookup(keys, n)
        _, table = self.final()
        if not len(table):
            return np.zeros(len(keys), bool)
        return (found & (status_codes(table["status"])[pos] != _RANK["failed"])).all(1)

    def compact(self) -> None:
        """Many small parts -> one (the final rows); only the parts read are removed."""
        parts = self.parts()
        if len(parts) <= _COMPACT_PARTS:
            return
        self._final = None
        _, table = self.final()
        _write(self.folder / "parts" / f"{time.time_ns():020d}-compact.parquet", table)
        for p in parts:
            p.unlink(missing_ok=True)


def write_view(
    folder: Path, manifest: Any, keys: np.ndarray, log: RowLog, meta: dict[str, Any]
) -> dict[str, int]:
    """The manifest's rows in manifest order -> `folder`; returns counts. Raises when rows are still missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = int(meta["n_descriptions"])
    pos, found = log.lookup(keys, n)
    unreadable = keys == MISSING  # a file that could not even be read: skipped without a log row
    found |= unreadable[:, None]
    if not found.all():
        raise ArtifactError(
            f"{int((~found).sum())} descriptions are missing from the row log; run the remaining "
            "`vlmkd describe CONFIG --shard I/N` processes (or rerun `vlmkd describe`)"
        )
    _, final = log.final()
    if len(final):
        table = final.take(pa.array(pos.ravel()))
    else:  # nothing in the log: every file was unreadable
        table = pa.table({f.name: pa.nulls(pos.size, f.type) for f in _schema()})
    if unreadable.any():
        table = _mark_unreadable(table, manifest, np.repeat(unreadable, n), n)
    idx = np.repeat(np.arange(len(manifest)), n)
    ids = pa.array(manifest.ids, pa.string()).take(pa.array(idx))
    table = table.set_column(1, "k", pa.array(np.tile(np.arange(n), len(manifest)), pa.int32()))
    view = pa.table([ids, pa.array(idx), *table.columns], schema=_schema(view=True))
    _write(folder / MERGED, view)
    codes = status_codes(view["status"])
    stats = {s: int((codes == c).sum()) for s, c in _RANK.items()}
    stats["identical"] = int(pc.sum(view["identical"]).as_py() or 0)
    skipped = np.nonzero(codes == _RANK["skipped"])[0][: 20 * n]
    names = [f"{manifest.ids[idx[j]]}: {view['error'][int(j)].as_py()}" for j in skipped[::n]]
    write_json(
        folder / "meta.json", {**meta, "num_rows": len(view), **stats, "skipped_files": names, "merged": True}
    )
    set_pointer(folder.parent, meta["key"])
    return stats


def _mark_unreadable(table, manifest: Any, mask: np.ndarray, n: int):
    """Rows of files that could not be read (no content key): status "skipped", the error names the file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = np.nonzero(mask)[0]
    where = [manifest.paths[r // n] if manifest.paths is not None else manifest.ids[r // n] for r in rows]
    m = pa.array(mask)
    new = {
        "image_key": _arrow_keys(np.full(len(rows), MISSING, dtype="S32")),
        "status": pa.array(["skipped"] * len(rows)),
        "error": pa.array([f"image {w!r} is missing or unreadable" for w in where]),
        "text": pa.nulls(len(rows), pa.string()),
        "identical": pa.array([False] * len(rows)),
    }
    for name, values in new.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.replace_with_mask(table[name].combine_chunks(), m, values))
    return table


def status_codes(col) -> np.ndarray:
    """A status column as int8 codes (ok 0, skipped 1, failed 2), without a Python object per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = pc.index_in(col, value_set=pa.array(list(_RANK)))
    return pc.fill_null(codes, _RANK["failed"]).to_numpy(zero_copy_only=False).astype(np.int8)


def set_pointer(parent: Path, key: str) -> None:
    write_json(parent / POINTER, {"key": key, "folder": key[:16]})


class DescriptionStore:
    """One manifest's descriptions (a view), in manifest order."""

    def __init__(self, path: str | Path):
        self.path = resolve_store(path)
        self.meta = read_json(self.path / "meta.json")
        self.key = self.meta["key"]

    @property
    def merged(self) -> bool:
        return (self.path / MERGED).is_file()

    def table(self, columns: list[str] | None = None):
        """The view as an Arrow table (columns, no Python object per row)."""
        if not self.merged:
            raise ArtifactError(
                f"descriptions in {str(self.path)!r} are not complete; finish all processes, then run "
                "`vlmkd describe CONFIG --merge`"
            )
        return _read(self.path / MERGED, columns)

    def load(self, include_failed: bool = False) -> dict[str, Any]:
        """Columns: sample_id (list), index (int64), k (int32), text (list), status (list); "ok" rows only unless
        include_failed (then failed and skipped rows too)."""
        import pyarrow.compute as pc

        t = self.table(["sample_id", "index", "k", "text", "status"])
        if not include_failed:
            t = t.filter(pc.equal(t["status"], "ok"))
        cols = {c: t[c].to_pylist() for c in ("sample_id", "text", "status")}
        cols["index"] = t["index"].to_numpy().astype(np.int64)
        cols["k"] = t["k"].to_numpy().astype(np.int32)
        return cols

    def skipped_mask(self) -> np.ndarray:
        """Per manifest row: true where the image was skipped as unreadable (data.on_bad_image=skip)."""
        t = self.table(["index", "status"])
        out = np.zeros(int(self.meta.get("num_samples", 0)), bool)
        skipped = status_codes(t["status"]) == _RANK["skipped"]
        out[t["index"].to_numpy()[skipped]] = True
        return out

    def texts_by_id(self) -> dict[str, list[str]]:
        """sample id -> its successful descriptions, ordered by k."""
        d = self.load()
        out: dict[str, list[str]] = {}
        for sid, text in zip(d["sample_id"], d["text"]):
            out.setdefault(sid, []).append(text)
        return out

    def __len__(self) -> int:
        return int(self.meta.get("num_rows", 0))
