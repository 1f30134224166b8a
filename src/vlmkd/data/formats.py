"""Dataset formats -> manifests. Each builder returns {"train": Manifest, "test": Manifest[, "val": Manifest]}.

Registered formats: image_folder, split_list (ImageNet-LT / Places-LT lists), ood_lists (the OOD-distillation
paper's train / val_on_train / val lists, which also fix the base/novel split: it returns "train", "id", "ood",
"ood_test" instead), inat2018 (json annotations), cifar10, cifar100 (python-pickle folders), fashion_mnist (IDX
files), manifest (a saved vlmkd manifest).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np

from vlmkd.config import DataConfig
from vlmkd.data.images import confined_path, is_image_file
from vlmkd.data.manifest import Manifest
from vlmkd.errors import DataError
from vlmkd.registry import Registry

FORMATS = Registry("dataset format")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_DIRS = ["/usr/share/datasets/fashion-mnist", "~/.cache/vlmkd/fashion-mnist"]
# Per-format pixel statistics used when the config gives none.
FORMAT_STATS = {
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def list_formats() -> list[str]:
    return FORMATS.names()


def _require_dir(root: str | None, what: str) -> Path:
    if not root:
        raise DataError(f"data.root is not set; give the folder that holds the {what}")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DataError(f"dataset folder {str(p)!r} does not exist; check data.root")
    return p


# ------------------------------------------------------------------------------------------ array formats


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(
            f"cannot read IDX file {str(path)!r} ({e}); re-download or reinstall the dataset"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"IDX file {str(path)!r} is truncated ({body.size} of {int(np.prod(dims))} bytes)")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{stem}[.gz] not found in {str(root)!r}; is this a Fashion-MNIST folder?")


def fashion_mnist_root(root: str | None) -> Path:
    """The given folder, else Debian's dataset-fashion-mnist location, else torchvision's download."""
    candidates = [root] if root else FASHION_MNIST_DIRS
    for c in candidates:
        p = Path(c).expanduser()
        if p.is_dir() and any(p.glob("train-images-idx3-ubyte*")):
            return p
        if p.is_dir() and (p / "FashionMNIST" / "raw").is_dir():
            return p / "FashionMNIST" / "raw"
    if root:
        raise DataError(
            f"no Fashion-MNIST IDX files in {root!r}; point data.root at the folder with train-images-idx3-ubyte[.gz]"
        )
    dl = Path(FASHION_MNIST_DIRS[-1]).expanduser()
    try:  # only works where there is network; the offline path is Debian's package
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(dl), train=True, download=True)
        FashionMNIST(str(dl), train=False, download=True)
        return dl / "FashionMNIST" / "raw"
    except Exception:
        raise DataError(
            "Fashion-MNIST not found; install it with `apt-get install -y dataset-fashion-mnist` "
            "or set data.root to a folder with the IDX files"
        ) from None


def _cifar_batches(root: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for n in names:
        p = root / n
        if not p.is_file():
            raise DataError(
                f"CIFAR file {str(p)!r} not found; data.root must be the extracted cifar-*-python folder"
            )
        with open(p, "rb") as f:
            # CIFAR's official python batches are pickles; this is the dataset's own distribution format.
            d = pickle.load(f, encoding="latin1")  # noqa: S301
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


_CIFAR_FILES = {
    "cifar10": (
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
        "label_names",
    ),
    "cifar100": ({"train": ["train"], "test": ["test"]}, "meta", "fine_label_names"),
}


def load_array_source(fmt: str, root: str, split: str) -> np.ndarray:
    """The uint8 image array (N x H x W or N x H x W x 3) of an array-backed format's split."""
    if fmt == "fashion_mnist":
        prefix = "train" if split == "train" else "t10k"
        return _read_idx(_find_idx(Path(root), f"{prefix}-images-idx3-ubyte"))
    if fmt in _CIFAR_FILES:
        return _cifar_batches(Path(root), _CIFAR_FILES[fmt][0][split])[0]
    raise DataError(f"format {fmt!r} has no array source")


def _array_manifest(fmt: str, root: Path, split: str, labels: np.ndarray, classes: list[str]) -> Manifest:
    n = len(labels)
    return Manifest(
        ids=[f"{split}/{i:06d}" for i in range(n)],
        labels=labels,
        class_names=classes,
        root=str(root),
        indices=np.arange(n),
        source={"format": fmt, "root": str(root), "array_split": split},
        split=split,
    )


@FORMATS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> dict[str, Manifest]:
    root = fashion_mnist_root(cfg.root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        out[split] = _array_manifest("fashion_mnist", root, split, labels, list(FASHION_MNIST_CLASSES))
    return out


def _cifar(cfg: DataConfig, fmt: str) -> dict[str, Manifest]:
    root = _require_dir(cfg.root, f"{fmt} python batches")
    files, meta_name, key = _CIFAR_FILES[fmt]
    meta_path = root / meta_name
    if not meta_path.is_file():
        raise DataError(f"{str(meta_path)!r} not found; data.root must be the extracted {fmt} python folder")
    with open(meta_path, "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")[key])  # noqa: S301
    out = {}
    for split in ("train", "test"):
        _, labels = _cifar_batches(root, files[split])
        out[split] = _array_manifest(fmt, root, split, labels, classes)
    return out


FORMATS.register("cifar10", lambda cfg: _cifar(cfg, "cifar10"))
FORMATS.register("cifar100", lambda cfg: _cifar(cfg, "cifar100"))


# ------------------------------------------------------------------------------------------- file formats


def read_class_names(path: str | Path, root: Path | None = None) -> list[str]:
    p = Path(path)
    if not p.is_absolute() and root is not None and not p.is_file():
        p = root / p
    if not p.is_file():
        raise DataError(f"class names file {str(path)!r} not found")
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]


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
    root = _require_dir(cfg.root, "images named by the split lists")
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


OOD_LIST_DEFAULTS = {"train": "train_data.txt", "id": "val_on_train_data.txt", "ood": "val_data.txt"}


def _ood_list_path(given: str | None, default: str, root: Path, list_root: str | None) -> Path:
    p = Path(given or default).expanduser()
    if not p.is_absolute():
        if list_root:
            p = Path(list_root).expanduser() / p
        elif not p.is_file():
            p = root / p
    if not p.is_file():
        where = "data.list_root" if list_root else "data.root"
        raise DataError(
            f"split list {str(p)!r} not found; give the list files (absolute, or relative to {where})"
        )
    return p


def _sun_class_dirs(root: Path) -> dict[str, str]:
    """SUN397's `ClassName.txt` ("/a/apartment_building/outdoor"): flattened folder name -> real sub-path."""
    p = root / "ClassName.txt"
    if not p.is_file():
        return {}
    out = {}
    for ln in p.read_text(encoding="utf-8").splitlines():
        sub = ln.strip().strip("/")
        if sub.count("/") >= 1:
            out[sub.split("/", 1)[1].replace("/", "_")] = sub
    return out


def _read_ood_list(lp: Path, root: Path, strip: int, sun_dirs: dict[str, str]) -> tuple[list[str], list[str]]:
    """(paths relative to root, class folder names) of one of the paper's lists (`train/<class>/<file>`).

    A file is looked up as root/<class>/<file>, then (SUN397, flattened class names) root/<letter>/<sub/path>/<file>
    via ClassName.txt, then root/<file> (flat layouts: Flowers `jpg/`, Cars `cars_train/`), the order of the
    paper's split_dataset.py. The class is always the list's folder name, never the raw dataset's labels."""
    paths, classes = [], []
    for lineno, line in enumerate(lp.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("/")[strip:]
        if len(parts) < 2 or not parts[-2] or not parts[-1]:
            raise DataError(
                f"{lp.name}:{lineno}: expected '<class>/<file>' after dropping {strip} leading "
                f"path components (data.strip_components), got {line!r}"
            )
        cls, name = parts[-2], parts[-1]
        candidates = ["/".join(parts)]
        if cls in sun_dirs:
            candidates.append(f"{sun_dirs[cls]}/{name}")
        candidates.append(name)
        for rel in candidates:
            if confined_path(root, rel).is_file():
                break
        else:
            raise DataError(f"{lp.name}:{lineno}: file {candidates[0]!r} does not exist under {str(root)!r}")
        paths.append(rel)
        classes.append(cls)
    return paths, classes


def _ood_class_names(cfg: DataConfig, root: Path, folders: list[str]) -> list[str]:
    """Names for the sorted class folders: the folders themselves, or data.class_names_file as either the
    paper's `label2text.txt` ("<folder> <running id> <natural_name>", matched by folder) or one name per line
    in sorted-folder order."""
    if not cfg.class_names_file:
        return list(folders)
    lines = read_class_names(
        cfg.class_names_file, Path(cfg.list_root).expanduser() if cfg.list_root else root
    )
    table = {}
    for ln in lines:
        parts = ln.split(maxsplit=2)
        if len(parts) >= 2:
            table[parts[0]] = parts[2] if len(parts) == 3 and parts[1].isdigit() else " ".join(parts[1:])
    if set(folders) <= set(table):
        return [table[f] for f in folders]
    if len(lines) != len(folders):
        raise DataError(
            f"class names file {cfg.class_names_file!r} has {len(lines)} names for {len(folders)} class "
            "folders, and is not a label2text file naming every folder"
        )
    return lines


@FORMATS.register("ood_lists")
def ood_lists(cfg: DataConfig) -> dict[str, Manifest]:
    """The OOD-distillation paper's own split lists read in place, no images copied.

    data.root: the raw image folder (e.g. CUB_200_2011/images, holding <class folder>/<file>). data.train_list
    (train_data.txt, X_train), data.val_list (val_on_train_data.txt, X_id) and data.test_list (val_data.txt,
    X_ood: every image of the novel classes), relative to data.list_root (default data.root) or absolute.
    Base classes are those of the train list, novel those of the val list; each is numbered by its position in
    the sorted class-folder names, as the paper's ImageFolder loaders did. Returns "train" and "id" over the base
    classes and "ood" / "ood_test" (both X_ood: the few-shot support is drawn from it and removed from the test).
    """
    root = _require_dir(cfg.root, "class folders named by the split lists")
    if cfg.strip_components < 0:
        raise DataError(f"data.strip_components must be >= 0, got {cfg.strip_components}")
    sun_dirs = _sun_class_dirs(root)
    read = {}
    for key, given in (("train", cfg.train_list), ("id", cfg.val_list), ("ood", cfg.test_list)):
        lp = _ood_list_path(given, OOD_LIST_DEFAULTS[key], root, cfg.list_root)
        read[key] = (lp, *_read_ood_list(lp, root, cfg.strip_components, sun_dirs))
    base = sorted(set(read["train"][2]))
    novel = sorted(set(read["ood"][2]))
    both = sorted(set(base) & set(novel))
    if both:
        raise DataError(
            f"class {both[0]!r} is in both {read['train'][0].name} (base) and {read['ood'][0].name} (novel); "
            "base and novel classes must be disjoint"
        )
    unknown = sorted(set(read["id"][2]) - set(base))
    if unknown:
        raise DataError(
            f"{read['id'][0].name}: class {unknown[0]!r} is not a training class in {read['train'][0].name}; "
            "X_id must hold base-class images only"
        )
    shared = sorted(set(read["train"][1]) & set(read["id"][1]))
    if shared:
        raise DataError(
            f"image {shared[0]!r} is in both {read['train'][0].name} and {read['id'][0].name}; "
            "X_train and X_id must be disjoint"
        )
    folders = sorted(base + novel)
    names = dict(zip(folders, _ood_class_names(cfg, root, folders)))
    if len(set(names.values())) < len(folders):
        dup = sorted(n for n in names.values() if list(names.values()).count(n) > 1)[0]
        raise DataError(f"class name {dup!r} is given to two class folders; class names must be unique")
    source = {
        "format": "ood_lists",
        "all_classes": [names[f] for f in folders],
        "base_classes": [folders.index(f) for f in base],
        "novel_classes": [folders.index(f) for f in novel],
    }

    def manifest(key: str, split: str, classes: list[str]) -> Manifest:
        _, paths, cls = read[key]
        index = {c: i for i, c in enumerate(classes)}
        return Manifest(
            ids=list(paths),
            labels=[index[c] for c in cls],
            class_names=[names[c] for c in classes],
            root=str(root),
            paths=list(paths),
            source=dict(source) if split == "train" else {},
            split=split,
        )

    return {
        "train": manifest("train", "train", base),
        "id": manifest("id", "id", base),
        "ood": manifest("ood", "ood", novel),
        "ood_test": manifest("ood", "ood_test", novel),
    }


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
    root = _require_dir(cfg.root, "class folders")
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
    root = _require_dir(cfg.root, "iNaturalist-2018 images and json files")
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
