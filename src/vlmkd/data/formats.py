"""Dataset formats -> manifests. Each builder returns {"train": Manifest, "test": Manifest[, "val": Manifest]}.

Registered formats: image_folder, split_list (ImageNet-LT / Places-LT lists), ood_lists (the OOD-distillation
paper's train / val_on_train / val lists, which also fix the base/novel split: it returns "train", "id", "ood",
"ood_test" instead), inat2018 (json annotations), cifar10, cifar100 (python-pickle folders), fashion_mnist (IDX
files), manifest (a saved vlmkd manifest), csv / tsv / jsonl (path,label[,split] tables: data/tables.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vlmkd.config import DataConfig
from vlmkd.data.arrays import (  # noqa: F401  (re-exported: older imports name them here)
    FASHION_MNIST_CLASSES,
    _find_idx,
    _read_idx,
    cifar,
    fashion_mnist,
    fashion_mnist_root,
    load_array_source,
)
from vlmkd.data.manifest import Manifest
from vlmkd.data.ood_lists import ood_lists
from vlmkd.data.parquet import hf, parquet
from vlmkd.data.paths import confined_path, is_image_file, read_class_names, require_dir
from vlmkd.data.shards import wds
from vlmkd.data.tables import read_tables
from vlmkd.errors import DataError
from vlmkd.registry import Registry

FORMATS = Registry("dataset format")
# Per-format pixel statistics used when the config gives none.
FORMAT_STATS = {
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def list_formats() -> list[str]:
    return FORMATS.names()


FORMATS.register("fashion_mnist", fashion_mnist)
FORMATS.register("cifar10", lambda cfg: cifar(cfg, "cifar10"))
FORMATS.register("cifar100", lambda cfg: cifar(cfg, "cifar100"))
FORMATS.register("ood_lists", ood_lists)
FORMATS.register("wds", wds)  # WebDataset tar shards (vlmkd.data.shards)
FORMATS.register("parquet", parquet)  # Parquet with an image-bytes column (vlmkd.data.parquet)
FORMATS.register("hf", hf)  # a `datasets` save_to_disk folder
FORMATS.register("csv", lambda cfg: read_tables(cfg, "csv"))  # path,label[,split] tables: data/tables.py
FORMATS.register("tsv", lambda cfg: read_tables(cfg, "tsv"))
FORMATS.register("jsonl", lambda cfg: read_tables(cfg, "jsonl"))


def read_split_list(list_path: str | Path, root: Path, split: str, class_names: list[str] | None) -> Manifest:
    """ImageNet-LT / Places-LT style list: `relative/path label` per line, paths confined to `root`."""
    lp = Path(list_path)
    if not lp.is_absolute() and not lp.is_file():
        lp = root / lp
    if not lp.is_file():
        raise DataError(f"split list {str(list_path)!r} not found; give a path to the list file")
    paths, labels = [], []
    for lineno, line in enumerate(lp.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{lp.name}:{lineno}: expected 'relative/path label', got {line!r}")
        rel, lab = parts[0], int(parts[1])
        full = confined_path(root, rel)
        if not full.is_file():
            raise DataError(f"{lp.name}:{lineno}: file {rel!r} does not exist under {str(root)!r}")
        paths.append(rel)
        labels.append(lab)
    labels_a = np.asarray(labels, dtype=np.int64)
    if class_names is None:
        n = int(labels_a.max()) + 1 if len(labels_a) else 0
        class_names = [f"class_{i}" for i in range(n)]
        for rel, lab in zip(paths, labels):  # the class folder name is the best name a list gives
            parent = Path(rel).parent.name
            if lab >= 0 and class_names[lab].startswith("class_") and parent:
                class_names[lab] = parent
    elif len(labels_a) and (labels_a.min() < 0 or labels_a.max() >= len(class_names)):
        bad = [(i, x) for i, x in enumerate(labels) if x < 0 or x >= len(class_names)][0]
        raise DataError(f"{lp.name}: label {bad[1]} is out of range for {len(class_names)} classes")
    return Manifest(
        ids=list(paths), labels=labels_a, class_names=class_names, root=str(root), paths=paths, split=split
    )


@FORMATS.register("split_list")
def split_list(cfg: DataConfig) -> dict[str, Manifest]:
    root = require_dir(cfg.root, "images named by the split lists")
    if not cfg.train_list:
        raise DataError(
            "data.train_list is not set; give the training list file (lines 'relative/path label')"
        )
    names = read_class_names(cfg.class_names_file, root) if cfg.class_names_file else None
    out = {"train": read_split_list(cfg.train_list, root, "train", names)}
    names = names or out["train"].class_names
    for split, lst in (("val", cfg.val_list), ("test", cfg.test_list)):
        if lst:
            out[split] = read_split_list(lst, root, split, names)
    return out


def _scan_folder(split_dir: Path, root: Path, classes: list[str], split: str) -> Manifest:
    paths, labels = [], []
    for c, name in enumerate(classes):
        cdir = split_dir / name
        if not cdir.is_dir():
            continue
        for dirpath, _, files in os.walk(cdir, followlinks=False):
            for fn in sorted(files):
                if is_image_file(fn):
                    paths.append(str((Path(dirpath) / fn).relative_to(root)))
                    labels.append(c)
    return Manifest(
        ids=list(paths), labels=labels, class_names=list(classes), root=str(root), paths=paths, split=split
    )


@FORMATS.register("image_folder")
def image_folder(cfg: DataConfig) -> dict[str, Manifest]:
    """`root/train/<class>/*.jpg` (+ `val/`, `test/`), or `root/<class>/*.jpg` as the training split alone."""
    root = require_dir(cfg.root, "class folders")
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if train_dir == root:
        classes = [c for c in classes if c not in ("val", "test")]
    if not classes:
        raise DataError(
            f"no class folders in {str(train_dir)!r}; expected {train_dir}/<class_name>/<image files>"
        )
    if cfg.class_names_file:
        names = read_class_names(cfg.class_names_file, root)
        if len(names) != len(classes):
            raise DataError(f"class names file has {len(names)} names but {len(classes)} class folders exist")
    out = {"train": _scan_folder(train_dir, root, classes, "train")}
    for split in ("val", "test"):
        if (root / split).is_dir():
            out[split] = _scan_folder(root / split, root, classes, split)
    if cfg.class_names_file:
        for m in out.values():
            m.class_names = list(names)
    return out


@FORMATS.register("inat2018")
def inat2018(cfg: DataConfig) -> dict[str, Manifest]:
    """iNaturalist-2018 json annotations (COCO-like: images, annotations, categories); paths under root."""
    root = require_dir(cfg.root, "iNaturalist-2018 images and json files")
    files = {"train": cfg.train_list or "train2018.json", "val": cfg.val_list or "val2018.json"}
    out, classes, cat_index = {}, None, None
    for split, fn in files.items():
        p = Path(fn) if Path(fn).is_absolute() else root / fn
        if not p.is_file():
            if split == "train":
                raise DataError(f"{str(p)!r} not found; set data.train_list to the iNaturalist train json")
            continue
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if cat_index is None:
                cats = sorted(d["categories"], key=lambda c: c["id"])
                cat_index = {c["id"]: i for i, c in enumerate(cats)}
                classes = [c.get("name", str(c["id"])) for c in cats]
            img_path = {im["id"]: im["file_name"] for im in d["images"]}
            pairs = [(img_path[a["image_id"]], cat_index[a["category_id"]]) for a in d["annotations"]]
        except (KeyError, json.JSONDecodeError) as e:
            raise DataError(
                f"{p.name}: not an iNaturalist annotation file ({type(e).__name__}: {e})"
            ) from None
        for rel, _ in pairs[:1]:
            confined_path(root, rel)
        out[split] = Manifest(
            ids=[r for r, _ in pairs],
            labels=[c for _, c in pairs],
            class_names=classes,
            root=str(root),
            paths=[r for r, _ in pairs],
            split=split,
        )
    return out


@FORMATS.register("manifest")
def saved_manifest(cfg: DataConfig) -> dict[str, Manifest]:
    """Saved vlmkd manifests: data.train_list / val_list / test_list name manifest JSON files."""
    out = {}
    for split, p in (("train", cfg.train_list), ("val", cfg.val_list), ("test", cfg.test_list)):
        if p:
            if not Path(p).is_file():
                raise DataError(f"manifest {p!r} not found")
            out[split] = Manifest.load(p)
    if "train" not in out:
        raise DataError("data.train_list must name a saved manifest JSON for format 'manifest'")
    return out
