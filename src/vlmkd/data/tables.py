"""Manifests people keep: CSV or TSV with a header row, and JSON lines (formats `csv`, `tsv`, `jsonl`).

Columns (JSON keys), matched case-insensitively:
  path   the image file, relative to data.root (confined to it: no absolute paths, no `..` out of it)
  label  the class name (e.g. `T-shirt/top`) or its integer index (into data.class_names_file when given)
  split  optional: train | val | test; without it every row of data.train_list is a training row
Any other column is ignored (kept in the file for you, not read). data.train_list names the table; data.val_list
and data.test_list may name more tables of the same kind. Every bad row stops the build with one line naming the
file and line.

Class names: with data.class_names_file, its names in its order (a label that equals a name is that name, else an
integer label is an index). Without it: the sorted distinct names of the training rows, or `class_<i>` when every
label is an integer. A class must have training rows; a name only in val/test rows is an error.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkd.config import DataConfig
from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import read_class_names, require_dir
from vlmkd.errors import DataError
from vlmkd.registry import suggest

SPLITS = ("train", "val", "test")
DELIMITERS = {"csv": ",", "tsv": "\t"}


@dataclass
class Row:
    where: str  # "file:line", for error messages
    path: str
    label: str | int  # an int only from JSON lines; CSV cells are strings
    split: str


def _where(file: Path, line: int) -> str:
    return f"{file.name}:{line}"


def _split_of(value: object, default: str, where: str) -> str:
    if value is None:
        return default
    s = str(value).strip().lower()
    if s not in SPLITS:
        raise DataError(f"{where}: split {value!r} is not one of {', '.join(SPLITS)}")
    return s


def _row(file: Path, line: int, rec: dict, default_split: str) -> Row:
    where = _where(file, line)
    path, label = rec.get("path"), rec.get("label")
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{where}: no path; each row needs a 'path' relative to data.root")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise DataError(f"{where}: label {label!r} is not a class name or an integer index")
    return Row(
        where,
        path.strip(),
        label.strip() if isinstance(label, str) else label,
        _split_of(rec.get("split"), default_split, where),
    )


def read_delimited(file: Path, delimiter: str, default_split: str) -> list[Row]:
    """Rows of a CSV/TSV file with a header (`path`, `label`, optional `split`; other columns ignored)."""
    rows = []
    # utf-8-sig: spreadsheet exports often start with a byte-order mark, which would end up in the first header
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{_where(file, 1)}: the file is empty; the first line is the header path,label[,split]"
            )
        cols = [h.strip().lower() for h in header]
        missing = [c for c in ("path", "label") if c not in cols]
        if missing:
            sep = "," if delimiter == "," else "<tab>"
            raise DataError(
                f"{_where(file, 1)}: the header {header!r} has no {' or '.join(map(repr, missing))} column; "
                f"the first line must name the columns, e.g. path{sep}label{sep}split"
            )
        dup = sorted({c for c in cols if cols.count(c) > 1 and c in ("path", "label", "split")})
        if dup:
            raise DataError(f"{_where(file, 1)}: column {dup[0]!r} appears twice in the header")
        index = {c: cols.index(c) for c in ("path", "label", "split") if c in cols}
        for cells in reader:
            line = reader.line_num  # the physical line the row ends on (quoted cells may span lines)
            if not any(c.strip() for c in cells):
                continue
            if len(cells) <= max(index.values()):
                raise DataError(
                    f"{_where(file, line)}: {len(cells)} columns, the header has {len(cols)}; "
                    f"a path containing {delimiter!r} must be quoted"
                )
            rec = {k: cells[i] for k, i in index.items()}
            rows.append(_row(file, line, rec, default_split))
    return rows


def read_jsonl(file: Path, default_split: str) -> list[Row]:
    """Rows of a JSON-lines file: one object per line with `path`, `label` and optional `split`."""
    rows = []
    with open(file, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{_where(file, line)}: not valid JSON ({e.msg}); one object per line"
                ) from None
            if not isinstance(rec, dict):
                raise DataError(f"{_where(file, line)}: expected a JSON object with path and label")
            rows.append(_row(file, line, {str(k).lower(): v for k, v in rec.items()}, default_split))
    return rows


def _is_index(label: str | int) -> bool:
    return isinstance(label, int) or label.isdigit()


def class_names_of(rows: list[Row], names: list[str] | None) -> tuple[list[str], np.ndarray]:
    """(class names, label index per row), resolved as the module docstring says."""
    if names is not None:
        lookup = {n: i for i, n in enumerate(names)}
        labels = []
        for r in rows:
            if isinstance(r.label, str) and r.label in lookup:
                labels.append(lookup[r.label])
            elif _is_index(r.label) and int(r.label) < len(names):
                labels.append(int(r.label))
            else:
                what = "an index" if _is_index(r.label) else "a class name"
                hint = suggest(str(r.label), names) if what == "a class name" else f" (0..{len(names) - 1})"
                raise DataError(f"{r.where}: label {r.label!r} is not {what} of data.class_names_file{hint}")
        return list(names), np.asarray(labels, dtype=np.int64)
    train = [r for r in rows if r.split == "train"]
    as_index = [_is_index(r.label) for r in train]
    if train and all(as_index):
        n = max(int(r.label) for r in train) + 1
        names = [f"class_{i}" for i in range(n)]
    else:
        if any(as_index):
            r = train[as_index.index(True)]
            raise DataError(
                f"{r.where}: label {r.label!r} is an integer but other labels are class names; use one kind, "
                "or give data.class_names_file (one name per line, in index order) to say which names exist"
            )
        names = sorted({str(r.label) for r in train})
        known = set(names)
        unseen = [r for r in rows if r.split != "train" and str(r.label) not in known]
        if unseen:
            r = unseen[0]
            raise DataError(f"{r.where}: class {r.label!r} has no training row; add training images of it")
    return class_names_of(rows, names) if names else ([], np.zeros(0, dtype=np.int64))


class _Confiner:
    """`paths.confined_path` + "is a file" for many rows at about one lstat each: each folder's real path is
    resolved once (symlinked folders that leave the root are caught there), and a file that is itself a symlink is
    resolved in full. 20k rows: 181 us/row through confined_path (pathlib), about 30 us/row here."""

    def __init__(self, root: Path):
        self.root, self.real_root = root, os.path.realpath(root)
        self.folders: dict[str, str | None] = {}

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def check(self, rel: str) -> str | None:
        """The reason `rel` is not a file under the root, or None."""
        escapes = f"path {rel!r} escapes the dataset root {str(self.root)!r}; list files must name files under the root"
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            return escapes
        folder, name = os.path.split(norm)
        if folder not in self.folders:
            real = os.path.realpath(os.path.join(self.real_root, folder))
            self.folders[folder] = real if self._inside(real) else None
        if self.folders[folder] is None:
            return escapes
        full = os.path.join(self.folders[folder], name)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(full)
                if not self._inside(real):
                    return escapes
                st = os.stat(real)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            return f"file {rel!r} does not exist under {str(self.root)!r}"
        return None


def _check_paths(rows: list[Row], root: Path) -> list[str]:
    """Normalised paths, each confined to the root, existing, and listed once."""
    out, first, confiner = [], {}, _Confiner(root)
    for r in rows:
        problem = confiner.check(r.path)
        if problem:
            raise DataError(f"{r.where}: {problem}")
        # the listed path, normalised ("./a//b.jpg" -> "a/b.jpg"): the sample's id, stable as the folder grows
        rel = os.path.normpath(r.path).replace(os.sep, "/")
        if rel in first:
            raise DataError(
                f"{r.where}: {rel!r} is listed again (first at {first[rel]}); list each image once"
            )
        first[rel] = r.where
        out.append(rel)
    return out


def read_tables(cfg: DataConfig, kind: str) -> dict[str, Manifest]:
    """The manifests of a `csv`, `tsv` or `jsonl` dataset (see the module docstring)."""
    root = require_dir(cfg.root, "images the table lists")
    if not cfg.train_list:
        raise DataError(f"data.train_list is not set; give the {kind} file that lists path and label")
    rows: list[Row] = []
    source_of: dict[str, str] = {}
    for default, table in (("train", cfg.train_list), ("val", cfg.val_list), ("test", cfg.test_list)):
        if not table:
            continue
        file = Path(table)
        if not file.is_absolute() and not file.is_file():
            file = root / file
        if not file.is_file():
            raise DataError(f"data.{default}_list {str(table)!r} not found; give the path to the {kind} file")
        got = (
            read_jsonl(file, default) if kind == "jsonl" else read_delimited(file, DELIMITERS[kind], default)
        )
        for split in sorted({r.split for r in got}):
            if split in source_of and source_of[split] != file.name:
                raise DataError(f"{split} rows come from both {source_of[split]} and {file.name}; keep one")
            source_of[split] = file.name
        rows += got
    names = read_class_names(cfg.class_names_file, root) if cfg.class_names_file else None
    class_names, labels = class_names_of(rows, names)
    paths = _check_paths(rows, root)
    out = {}
    for split in SPLITS:
        idx = [i for i, r in enumerate(rows) if r.split == split]
        if idx or split == "train":
            sel = [paths[i] for i in idx]
            out[split] = Manifest(
                ids=sel,
                labels=labels[idx],
                class_names=list(class_names),
                root=str(root),
                paths=sel,
                split=split,
            )
    return out
