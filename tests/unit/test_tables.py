"""CSV / TSV / JSONL manifests (data/tables.py): columns, class names or indices, splits, one-line row errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.config import DataConfig
from vlmkd.data import build_manifests
from vlmkd.errors import DataError

CLASSES = ("T-shirt/top", "ankle boot", "bag")


def _images(root: Path, n: int = 12) -> list[str]:
    """n small images in nested folders that do not encode the label."""
    rels = []
    for i in range(n):
        rel = f"photos/{2020 + i % 3}/img_{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 20 * i % 255, dtype=np.uint8)).save(root / rel)
        rels.append(rel)
    return rels


def _csv(path: Path, rows: list[list[str]], sep: str = ",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=sep).writerows(rows)
    return path


def _cfg(root: Path, fmt: str, train: Path, **kw) -> DataConfig:
    return DataConfig(format=fmt, root=str(root), train_list=str(train), **kw)


def test_csv_with_class_names_split_column_and_extra_columns(tmp_path):
    rels = _images(tmp_path)
    split = ["train"] * 9 + ["val", "test", "test"]
    rows = [["path", "label", "split", "photographer"]]
    rows += [[r, CLASSES[i % 3], s, "ann"] for i, (r, s) in enumerate(zip(rels, split))]
    ms = build_manifests(_cfg(tmp_path, "csv", _csv(tmp_path / "labels.csv", rows)))
    assert sorted(ms) == ["test", "train", "val"]
    assert ms["train"].class_names == sorted(CLASSES)  # sorted distinct names of the training rows
    assert [len(ms[k]) for k in ("train", "val", "test")] == [9, 1, 2]
    t = ms["train"]
    assert [t.class_names[c] for c in t.labels] == [CLASSES[i % 3] for i in range(9)]
    assert list(t.paths) == rels[:9] and list(t.ids) == rels[:9]


def test_tsv_and_jsonl_read_the_same_manifest_as_csv(tmp_path):
    rels = _images(tmp_path, 9)
    rows = [["path", "label"]] + [[r, CLASSES[i % 3]] for i, r in enumerate(rels)]
    csv_m = build_manifests(_cfg(tmp_path, "csv", _csv(tmp_path / "a.csv", rows)))["train"]
    tsv_m = build_manifests(_cfg(tmp_path, "tsv", _csv(tmp_path / "a.tsv", rows, "\t")))["train"]
    jl = tmp_path / "a.jsonl"
    jl.write_text(
        "".join(json.dumps({"path": r, "label": CLASSES[i % 3], "x": 1}) + "\n" for i, r in enumerate(rels))
    )
    jsonl_m = build_manifests(_cfg(tmp_path, "jsonl", jl))["train"]
    assert csv_m.key() == tsv_m.key() == jsonl_m.key()


def test_integer_labels_index_the_class_names_file(tmp_path):
    rels = _images(tmp_path, 6)
    (tmp_path / "names.txt").write_text("\n".join(CLASSES) + "\n")
    rows = [["Path", " Label "]] + [[r, str(i % 3) if i % 2 else CLASSES[i % 3]] for i, r in enumerate(rels)]
    m = build_manifests(_cfg(tmp_path, "csv", _csv(tmp_path / "l.csv", rows), class_names_file="names.txt"))
    assert m["train"].class_names == list(CLASSES) and m["train"].labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_separate_val_and_test_tables(tmp_path):
    rels = _images(tmp_path, 9)

    def mk(name, sel):
        return _csv(tmp_path / name, [["path", "label"]] + [[rels[i], CLASSES[i % 3]] for i in sel])

    cfg = _cfg(
        tmp_path,
        "csv",
        mk("tr.csv", range(6)),
        val_list=str(mk("va.csv", [6])),
        test_list=str(mk("te.csv", [7, 8])),
    )
    ms = build_manifests(cfg)
    assert [len(ms[k]) for k in ("train", "val", "test")] == [6, 1, 2]
    both = _csv(
        tmp_path / "both.csv",
        [["path", "label", "split"], [rels[0], CLASSES[0], "train"], [rels[6], CLASSES[0], "val"]],
    )
    with pytest.raises(DataError, match="val rows come from both both.csv and va.csv; keep one"):
        build_manifests(_cfg(tmp_path, "csv", both, val_list=str(tmp_path / "va.csv")))


@pytest.mark.parametrize(
    "rows, match",
    [
        ([["file", "label"], ["x.png", "bag"]], r"labels.csv:1: .*no 'path' column"),
        ([["path", "label"], ["photos/2020/img_000.png", ""]], r"labels.csv:2: label '' is not"),
        (
            [["path", "label"], ["photos/2020/img_000.png", "bag"], ["nope.png", "bag"]],
            r"labels.csv:3: file 'nope.png' does not exist",
        ),
        ([["path", "label"], ["../outside.png", "bag"]], r"labels.csv:2: path '../outside.png' escapes"),
        (
            [["path", "label", "split"], ["photos/2020/img_000.png", "bag", "training"]],
            r"labels.csv:2: split 'training' is not one of train, val, test",
        ),
        (
            [["path", "label"], ["photos/2020/img_000.png", "bag"], ["./photos/2020/img_000.png", "bag"]],
            r"labels.csv:3: 'photos/2020/img_000.png' is listed again \(first at labels.csv:2\)",
        ),
        (
            [["path", "label"], ["photos/2020/img_000.png", "bag"], ["photos/2021/img_001.png", "1"]],
            r"labels.csv:3: label '1' is an integer but other labels are class names",
        ),
        (
            [
                ["path", "label", "split"],
                ["photos/2020/img_000.png", "bag", "train"],
                ["photos/2021/img_001.png", "shoe", "test"],
            ],
            r"labels.csv:3: class 'shoe' has no training row",
        ),
        (
            [["path", "label"], ["photos/2020/img_000.png", "bag", "extra"], ["photos/2021/img_001.png"]],
            r"labels.csv:3: 1 columns, the header has 2",
        ),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path, rows, match):
    _images(tmp_path, 3)
    (tmp_path.parent / "outside.png").write_bytes(b"x")
    with pytest.raises(DataError, match=match) as e:
        build_manifests(_cfg(tmp_path, "csv", _csv(tmp_path / "labels.csv", rows)))
    assert "\n" not in str(e.value)


def test_bad_jsonl_lines_and_names_file_typos(tmp_path):
    rels = _images(tmp_path, 2)
    jl = tmp_path / "l.jsonl"
    jl.write_text(json.dumps({"path": rels[0], "label": "bag"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"l.jsonl:2: not valid JSON"):
        build_manifests(_cfg(tmp_path, "jsonl", jl))
    jl.write_text(json.dumps({"path": rels[0], "label": True}) + "\n")
    with pytest.raises(DataError, match=r"l.jsonl:1: label True is not a class name or an integer"):
        build_manifests(_cfg(tmp_path, "jsonl", jl))
    (tmp_path / "names.txt").write_text("\n".join(CLASSES) + "\n")
    jl.write_text(json.dumps({"path": rels[0], "label": "T-shirt/tops"}) + "\n")
    with pytest.raises(DataError, match=r'l.jsonl:1: label .* not a class name .*did you mean "T-shirt/top"'):
        build_manifests(_cfg(tmp_path, "jsonl", jl, class_names_file="names.txt"))
    jl.write_text(json.dumps({"path": rels[0], "label": 3}) + "\n")
    with pytest.raises(DataError, match=r"l.jsonl:1: label 3 is not an index .*\(0..2\)"):
        build_manifests(_cfg(tmp_path, "jsonl", jl, class_names_file="names.txt"))


def test_symlinks_that_leave_the_root_are_refused_and_inner_ones_work(tmp_path):
    root = tmp_path / "root"
    rels = _images(root, 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(outside / "x.png")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "photos" / "linked.png").symlink_to(outside / "x.png")
    (root / "photos" / "inner.png").symlink_to(root / rels[0])
    for bad in (
        "linked_dir/x.png",
        "photos/linked.png",
        str(outside / "x.png"),
        "photos/../../outside/x.png",
    ):
        table = _csv(root / "l.csv", [["path", "label"], [rels[1], "bag"], [bad, "bag"]])
        with pytest.raises(DataError, match=r"l.csv:3: path .* escapes the dataset root"):
            build_manifests(_cfg(root, "csv", table))
    table = _csv(root / "l.csv", [["path", "label"], ["photos/inner.png", "bag"], ["photos/2020", "bag"]])
    with pytest.raises(
        DataError, match=r"l.csv:3: file 'photos/2020' does not exist"
    ):  # a folder, not a file
        build_manifests(_cfg(root, "csv", table))
    table = _csv(root / "l.csv", [["path", "label"], ["photos/inner.png", "bag"], [rels[1], "bag"]])
    assert list(build_manifests(_cfg(root, "csv", table))["train"].paths) == ["photos/inner.png", rels[1]]
