"""Config sections for the dataset: format, long-tail profile, base/novel split, loading."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vlmkd.errors import ConfigError


@dataclass
class LongTailConfig:
    """Long-tail subsampling of the training split. imbalance_factor 1 keeps the split as it is."""

    imbalance_factor: float = 1.0
    profile: str = "exp"  # exp: n_i = n_max * IF^(-i/(C-1)); step: half the classes get n_max/IF
    n_max: int | None = None  # None: the largest count available after the pool is taken out
    pool_per_class: int = 0  # images per class moved to a disjoint, balanced "pretraining pool"
    val_per_class: int = 0  # balanced validation split from images neither the student set nor the pool uses
    class_order: str = "index"  # index | shuffled (which classes become the head)
    seed: int = 0


@dataclass
class SplitConfig:
    """Base/novel class split for open-vocabulary (OOD) experiments; num_novel 0 disables it."""

    num_novel: int = 0
    # explicit list wins over num_novel: class names (e.g. [sandal, boot]) or ids; ids follow the dataset's class
    # order (image folders: sorted folder names); `vlmkd data stats` prints both
    novel_classes: list[int | str] | None = None
    id_fraction: float = 0.3  # fraction of base-class training images held out as X_id
    # how X_id is drawn: hash (by a hash of each image's id, like val: adding images moves no other one), stratified
    # (exactly id_fraction of each class by a seeded shuffle; positions move when the data grows), auto: stratified
    # for the fixed array datasets (fashion_mnist, cifar*), hash for everything read from files, lists or shards
    id_holdout: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.id_holdout not in ("auto", "hash", "stratified"):
            raise ConfigError(
                f"data.split.id_holdout must be auto, hash or stratified, got {self.id_holdout!r}"
            )


@dataclass
class DataConfig:
    format: str = "fashion_mnist"  # see `vlmkd.data.list_formats()`
    root: str | None = None
    # split_list: "relative/path label" per line; wds: a shard list ('train-{000..009}.tar', fsspec URLs);
    # parquet: a Parquet file, folder or glob; hf: a `datasets` save_to_disk folder;
    # csv / tsv / jsonl: a table with path, label and an optional split column (vlmkd.data.tables)
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    class_names_file: str | None = None  # optional: one class name per line, in label order
    # parquet / hf formats: the image-bytes and label columns (None: image/img/jpg/png/webp, label/labels/cls)
    image_column: str | None = None
    label_column: str | None = None
    # ood_lists format: folder holding relative train/val/test lists (default: data.root; absolute lists work too)
    list_root: str | None = None
    strip_components: int = 1  # ood_lists: leading list-path components dropped (the paper's split folder)
    # hold out about this fraction of train as val when the format gives no val split (folders and lists alike); an
    # image is in val by a hash of its id (seeded by longtail.seed), so adding images never moves another one
    val_fraction: float = 0.0
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 28
    in_chans: int = 1
    mean: list[float] | None = None  # None: the format's own statistics
    std: list[float] | None = None
    augment: str = "basic"  # none | basic | randaugment
    # shorter: resize the shorter side, then crop (torchvision's convention); squash: resize every image to
    # R x R first, aspect ratio not kept (the OOD paper's code, R = 256 for 224 crops). R = image_size / 0.875
    resize_mode: str = "shorter"
    sampler: str = "instance"  # instance | class_balanced | sqrt
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int | str = 0  # loader processes; "auto" = min(8, CPU cores), resolved when loaded
    on_bad_image: str = "error"  # error | skip (counted and reported)
    # files whose header declares more pixels are refused before decoding (decompression bombs)
    max_image_pixels: int = 89_478_485
    many_threshold: int = 100  # Many: > many_threshold training images
    few_threshold: int = 20  # Few: < few_threshold training images

    def __post_init__(self) -> None:
        self.num_workers = resolve_num_workers(self.num_workers)


def resolve_num_workers(value: int | str) -> int:
    """The value "auto" becomes min(8, CPU cores): a recipe written for a server must not oversubscribe a laptop."""
    if value == "auto":
        return min(8, os.cpu_count() or 1)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"data.num_workers must be an integer >= 0 or auto, got {value!r}")
