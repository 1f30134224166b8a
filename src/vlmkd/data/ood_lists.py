"""The OOD-distillation paper's split lists (train / val_on_train / val) read in place: format `ood_lists`."""

from __future__ import annotations

from pathlib import Path

from vlmkd.config import DataConfig
from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import confined_path, read_class_names, require_dir
from vlmkd.errors import DataError

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


def ood_lists(cfg: DataConfig) -> dict[str, Manifest]:
    """The OOD-distillation paper's own split lists read in place, no images copied.

    data.root: the raw image folder (e.g. CUB_200_2011/images, holding <class folder>/<file>). data.train_list
    (train_data.txt, X_train), data.val_list (val_on_train_data.txt, X_id) and data.test_list (val_data.txt,
    X_ood: every image of the novel classes), relative to data.list_root (default data.root) or absolute.
    Base classes are those of the train list, novel those of the val list; each is numbered by its position in
    the sorted class-folder names, as the paper's ImageFolder loaders did. Returns "train" and "id" over the base
    classes and "ood" / "ood_test" (both X_ood: the few-shot support is drawn from it and removed from the test).
    """
    root = require_dir(cfg.root, "class folders named by the split lists")
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
