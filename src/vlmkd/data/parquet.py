"""Parquet files (`data.format=parquet`) and `datasets` folders saved with `save_to_disk` (`data.format=hf`) as
map-style datasets: an image-bytes column, a label column, and optionally a key column.

A sample is (file, row). An Arrow file from `save_to_disk` is memory-mapped and a row is read in place (what
`datasets` itself does, so `datasets` need not be installed to read one); a Parquet file's image column is copied
once into such an Arrow file in the index cache (see `ParquetReader`).

The sample key (manifest `paths`) is the key column ("path", "id", "__key__", "key") when there is one, else
"<file name>/<row>"; class names come from data.class_names_file, else the Hugging Face `ClassLabel` feature
stored with the data, else class_<i>.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import read_class_names
from vlmkd.data.sharded import (
    HINT,
    KeyIndex,
    absolute_spec,
    container_root,
    file_fingerprint,
    fsspec_fs,
    index_cache_dir,
    is_remote,
    reader,
    register_reader,
)
from vlmkd.data.strings import StrArray
from vlmkd.errors import DataError
from vlmkd.utils.io import artifact_key, atomic_path

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes")
LABEL_COLUMNS = ("label", "labels", "cls", "fine_label", "class")
KEY_COLUMNS = ("path", "id", "__key__", "key", "image_id")


def _pick(
    names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str
) -> str | None:
    if wanted:
        if wanted not in names:
            raise DataError(
                f"{where} has no column {wanted!r} (columns: {', '.join(names)}); fix data.{what}"
            )
        return wanted
    return next((c for c in candidates if c in names), None)


def _spec_parts(spec: str) -> tuple[str, dict[str, str]]:
    """ "files#image=img;key=path" -> ("files", {"image": "img", "key": "path"})."""
    files, _, opts = spec.partition("#")
    return files, dict(kv.split("=", 1) for kv in opts.split(";") if "=" in kv)


def _with_opts(files: str, **opts: str | None) -> str:
    extra = ";".join(f"{k}={v}" for k, v in opts.items() if v)
    return f"{files}#{extra}" if extra else files


def _cell_bytes(value: Any, where: str) -> bytes:
    """A cell of the image column as bytes: binary, or a Hugging Face Image struct {bytes, path}."""
    if isinstance(value, dict):
        if value.get("bytes") is None:
            raise DataError(f"{where} holds no image bytes (only a path {value.get('path')!r}); {HINT}")
        value = value["bytes"]
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DataError(f"{where}: the image column holds {type(value).__name__}, not image bytes; {HINT}")
    return bytes(value)


class _Table:
    """Shared part of the Parquet and Arrow readers: rows in file order, their keys, and the lookup."""

    kind = ""

    def _finish(self, keys: list[str], where: str) -> None:
        self.keys = StrArray(keys)  # one buffer, not an object per row (1M rows: ~70 MB less per process)
        self.index = KeyIndex(self.keys, where)

    def where(self, path: str) -> str:
        f, _ = self._locate(self._position(path))
        return f"{self.files[f]}:{path}"

    def _position(self, path: str) -> int:
        j = self.index.position(path)
        if j < 0:
            raise DataError(f"sample {path!r} is not in the {self.kind} data; rebuild the manifest from it")
        return j

    def read(self, path: str) -> tuple[bytes, str]:
        j = self._position(path)
        f, _ = self._locate(j)
        name = f"{self.files[f]}:{path}"
        return _cell_bytes(self._cell(j), f"row {path!r} of {self.files[f]!r}"), name


# ------------------------------------------------------------------------------------------ Parquet


def parquet_files(spec: str) -> list[str]:
    """A file, a folder (every *.parquet under it) or a glob; several joined by "::"."""
    out = []
    for part in (p.strip() for p in spec.split("::")):
        if not part:
            continue
        if is_remote(part):
            fs, path = fsspec_fs(part)
            proto = part.split("://", 1)[0]
            found = sorted(fs.glob(path)) if glob.has_magic(path) else [path]
            out += [f"{proto}://{p}" for p in found]
        elif os.path.isdir(part):
            out += sorted(str(p) for p in Path(part).rglob("*.parquet"))
        else:
            out += sorted(glob.glob(part)) if glob.has_magic(part) else [part]
    if not out:
        raise DataError(f"no Parquet files match {spec!r}; give a .parquet file, a folder or a glob")
    for f in out:
        if not is_remote(f) and not os.path.isfile(f):
            raise DataError(f"Parquet file {f!r} does not exist; check data.train_list / test_list")
    return out


def _parquet_file(url: str):
    import pyarrow.parquet as pq

    try:
        if is_remote(url):
            fs, path = fsspec_fs(url)
            return pq.ParquetFile(fs.open(path, "rb"))
        return pq.ParquetFile(url)
    except (OSError, ValueError) as e:
        raise DataError(f"{url!r} is not a readable Parquet file ({str(e)[:80]}); {HINT}") from None


class ParquetReader(_Table):
    """Rows of Parquet files. Each file's image column is copied once, row group by row group, into an Arrow file
    in the index cache (keyed by the file's URL, size and mtime) and memory-mapped, as `datasets` does: a random
    row then costs one cell read, where reading it from Parquet would decode its whole row group (about 100
    images in the Hub's layout) for every sample a shuffled epoch asks for."""

    kind = "Parquet"

    def __init__(self, spec: str):
        files, opts = _spec_parts(spec)
        self.files = parquet_files(files)
        self.image_col, key_col = opts.get("image"), opts.get("key")
        self.tables, keys, starts = [], [], []
        for url in self.files:
            pf = _parquet_file(url)
            starts.append(len(keys))
            self.tables.append(_arrow_copy(url, pf, self.image_col))
            values = pf.read(columns=[key_col]).column(0).to_pylist() if key_col else None
            keys += _keys(values, pf.metadata.num_rows, Path(url).name)
        self.starts = np.asarray(starts, dtype=np.int64)
        self._finish(keys, f"Parquet data {files!r}")

    def _locate(self, j: int) -> tuple[int, int]:
        f = int(np.searchsorted(self.starts, j, side="right")) - 1
        return f, f

    def _cell(self, j: int) -> Any:
        f, _ = self._locate(j)
        return self.tables[f].column(0)[j - int(self.starts[f])].as_py()


def _arrow_copy(url: str, pf, column: str):
    """The memory-mapped Arrow copy of one Parquet file's `column` (written on first use, atomically)."""
    import pyarrow as pa

    fp = file_fingerprint(url)
    path = Path(index_cache_dir()) / "parquet" / f"{artifact_key({'column': column, **fp})[:32]}.arrow"
    if not path.is_file():
        schema = pa.schema([pf.schema_arrow.field(column)])
        with atomic_path(path) as tmp, pa.ipc.new_file(str(tmp), schema) as writer:
            for g in range(pf.metadata.num_row_groups):
                writer.write_table(pf.read_row_group(g, columns=[column]))
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _keys(key_values: list | None, n: int, stem: str) -> list[str]:
    """The key column's values, else "<file name>/<row>"."""
    if key_values is not None:
        return [str(v) for v in key_values]
    return [f"{stem}/{i:08d}" for i in range(n)]


def _hf_class_names(features: dict[str, Any], label_col: str) -> list[str] | None:
    feat = features.get(label_col) or {}
    names = feat.get("names") if feat.get("_type") == "ClassLabel" or "names" in feat else None
    return [str(n) for n in names] if names else None


def _parquet_table_info(url: str, image: str | None, label: str | None) -> tuple[str, str, str | None, dict]:
    pf = _parquet_file(url)
    names = pf.schema_arrow.names
    img = _pick(names, image, IMAGE_COLUMNS, "image_column", repr(url))
    lab = _pick(names, label, LABEL_COLUMNS, "label_column", repr(url))
    if img is None or lab is None:
        missing = "image" if img is None else "label"
        raise DataError(
            f"{url!r} has no {missing} column (columns: {', '.join(names)}); set data.{missing}_column"
        )
    meta = (pf.schema_arrow.metadata or {}).get(b"huggingface")
    features = json.loads(meta).get("info", {}).get("features", {}) if meta else {}
    return img, lab, _pick(names, None, KEY_COLUMNS, "", ""), features


def parquet_manifest(spec: str, split: str, names: list[str] | None, cfg) -> Manifest:
    files = parquet_files(spec)
    img, lab, key, features = _parquet_table_info(files[0], cfg.image_column, cfg.label_column)
    labels = []
    for url in files:
        labels += _parquet_file(url).read(columns=[lab]).column(0).to_pylist()
    root = container_root("parquet", _with_opts(spec, image=img, key=key))
    keys = reader(root).keys
    return _manifest(keys, labels, names or _hf_class_names(features, lab), root, split)


def _manifest(keys: list[str], labels: list, names: list[str] | None, root: str, split: str) -> Manifest:
    if any(x is None for x in labels):
        raise DataError(f"{root}: a row has no label; fill the label column")
    labels_a = np.asarray(labels, dtype=np.int64)
    if names is None:
        n = int(labels_a.max()) + 1 if len(labels_a) else 0
        names = [f"class_{c}" for c in range(n)]
    return Manifest(ids=list(keys), labels=labels_a, class_names=names, root=root, paths=keys, split=split)


def _split_lists(cfg, fmt: str) -> dict[str, str]:
    lists = {
        s: v for s, v in (("train", cfg.train_list), ("val", cfg.val_list), ("test", cfg.test_list)) if v
    }
    if "train" not in lists:
        raise DataError(
            f"data.train_list must name the training data for format {fmt} "
            f"({'a Parquet file, folder or glob' if fmt == 'parquet' else 'a save_to_disk folder'})"
        )
    return {s: absolute_spec(v, cfg.root) for s, v in lists.items()}


def parquet(cfg) -> dict[str, Manifest]:
    """`data.format=parquet`: data.train_list / val_list / test_list name Parquet files, folders or globs."""
    names = read_class_names(cfg.class_names_file, None) if cfg.class_names_file else None
    out = {}
    for split, spec in _split_lists(cfg, "parquet").items():
        out[split] = parquet_manifest(spec, split, names, cfg)
        names = names or out[split].class_names
    return out


register_reader("parquet", ParquetReader)


# ------------------------------------------------------------------------------------------ save_to_disk


def _arrow_files(folder: str) -> list[str]:
    state = Path(folder) / "state.json"
    if not state.is_file():
        raise DataError(f"{folder!r} is not a `datasets` save_to_disk folder (no state.json)")
    files = [d["filename"] for d in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
    return [str(Path(folder) / f) for f in files]


def _features(folder: str) -> dict[str, Any]:
    info = Path(folder) / "dataset_info.json"
    return json.loads(info.read_text(encoding="utf-8")).get("features", {}) if info.is_file() else {}


class ArrowReader(_Table):
    """Rows of a `save_to_disk` folder, memory-mapped (the Arrow stream files are read in place)."""

    kind = "datasets"

    def __init__(self, spec: str):
        import pyarrow as pa

        folder, opts = _spec_parts(spec)
        self.files = _arrow_files(folder)
        self.image_col = opts.get("image")
        self.tables, keys, starts = [], [], []
        for url in self.files:
            try:
                t = pa.ipc.open_stream(pa.memory_map(url, "r")).read_all()
            except (OSError, pa.ArrowInvalid) as e:
                raise DataError(f"{url!r} is not a readable Arrow file ({str(e)[:80]}); {HINT}") from None
            starts.append(len(keys))
            self.tables.append(t)
            key_col = opts.get("key")
            keys += _keys(t.column(key_col).to_pylist() if key_col else None, t.num_rows, Path(url).name)
        self.starts = np.asarray(starts, dtype=np.int64)
        self._finish(keys, f"datasets folder {folder!r}")

    def _locate(self, j: int) -> tuple[int, int]:
        f = int(np.searchsorted(self.starts, j, side="right")) - 1
        return f, f

    def _cell(self, j: int) -> Any:
        f, _ = self._locate(j)
        return self.tables[f].column(self.image_col)[j - int(self.starts[f])].as_py()


register_reader("hf", ArrowReader)


def hf_manifest(folder: str, split: str, names: list[str] | None, cfg) -> Manifest:
    import pyarrow as pa

    files = _arrow_files(folder)
    features = _features(folder)
    schema = pa.ipc.open_stream(pa.memory_map(files[0], "r")).schema
    img = _pick(schema.names, cfg.image_column, IMAGE_COLUMNS, "image_column", repr(folder))
    lab = _pick(schema.names, cfg.label_column, LABEL_COLUMNS, "label_column", repr(folder))
    if img is None or lab is None:
        missing = "image" if img is None else "label"
        raise DataError(
            f"{folder!r} has no {missing} column (columns: {', '.join(schema.names)}); "
            f"set data.{missing}_column"
        )
    key = _pick(schema.names, None, KEY_COLUMNS, "", "")
    root = container_root("hf", _with_opts(folder, image=img, key=key))
    r = reader(root)
    labels = [x for t in r.tables for x in t.column(lab).to_pylist()]
    return _manifest(r.keys, labels, names or _hf_class_names(features, lab), root, split)


def hf(cfg) -> dict[str, Manifest]:
    """`data.format=hf`: data.root a `DatasetDict.save_to_disk` folder (splits train / validation / test), or
    data.train_list / val_list / test_list `Dataset.save_to_disk` folders."""
    if not cfg.train_list and cfg.root and (Path(cfg.root).expanduser() / "dataset_dict.json").is_file():
        root = Path(cfg.root).expanduser()
        saved = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        lists = {("val" if s == "validation" else s): str(root / s) for s in saved}
        lists = {s: v for s, v in lists.items() if s in ("train", "val", "test")}
    else:
        lists = _split_lists(cfg, "hf")
    if "train" not in lists:
        raise DataError(f"no train split in {cfg.root!r}; set data.train_list to a save_to_disk folder")
    names = read_class_names(cfg.class_names_file, None) if cfg.class_names_file else None
    out = {}
    for split, folder in lists.items():
        out[split] = hf_manifest(folder, split, names, cfg)
        names = names or out[split].class_names
    return out
