"""`vlmkd prepare`: manifests for the standard long-tail benchmarks from the user's original files and the
published split lists, with their sizes checked against the published counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmkd.config import DataConfig, LongTailConfig
from vlmkd.data import build_manifests
from vlmkd.data.manifest import Manifest
from vlmkd.errors import DataError


@dataclass
class Benchmark:
    format: str
    lists: dict[str, str]  # split -> list/annotation file name, relative to --lists or --root
    counts: dict[str, int]  # published number of images per split
    num_classes: int
    longtail: LongTailConfig = field(default_factory=LongTailConfig)


BENCHMARKS = {
    # OLTR split lists (Liu et al. 2019): "path label" lines relative to the ImageNet folder.
    "imagenet_lt": Benchmark(
        "split_list",
        {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"},
        {"train": 115846, "val": 20000, "test": 50000},
        1000,
    ),
    "places_lt": Benchmark(
        "split_list",
        {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"},
        # OLTR lists: 62,500 train lines (4,980 max, 5 min per class); the "184.5K" often quoted
        # is the size of the Places subset the lists are drawn from.
        {"train": 62500, "val": 7300, "test": 36500},
        365,
    ),
    "inat2018": Benchmark(
        "inat2018", {"train": "train2018.json", "val": "val2018.json"}, {"train": 437513, "val": 24426}, 8142
    ),
    # CIFAR-100-LT: the exponential profile with IF 100 over the official python batches (Cao et al. 2019).
    "cifar100_lt": Benchmark(
        "cifar100", {}, {"train": 10847, "test": 10000}, 100, LongTailConfig(imbalance_factor=100, n_max=500)
    ),
    "cifar10_lt": Benchmark(
        "cifar10", {}, {"train": 12406, "test": 10000}, 10, LongTailConfig(imbalance_factor=100, n_max=5000)
    ),
}


def prepare(name: str, root: str, lists_dir: str | None = None, check: bool = True) -> dict[str, Manifest]:
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    b = BENCHMARKS[name]
    lists = {}
    for split, fn in b.lists.items():
        p = Path(lists_dir or root) / fn
        if not p.is_file():
            raise DataError(
                f"{fn} not found in {str(p.parent)!r}; download the published split lists and pass --lists"
            )
        lists[split] = str(p)
    cfg = DataConfig(
        format=b.format,
        root=root,
        train_list=lists.get("train"),
        val_list=lists.get("val"),
        test_list=lists.get("test"),
        longtail=b.longtail,
    )
    ms = build_manifests(cfg)
    if check:
        for split, expected in b.counts.items():
            got = len(ms.get(split, []))
            if got != expected:
                raise DataError(
                    f"{name} {split}: {got} images, the published split has {expected}; "
                    "check the root and the lists (or pass --no-check for a custom variant)"
                )
        if ms["train"].num_classes != b.num_classes:
            raise DataError(f"{name}: {ms['train'].num_classes} classes, expected {b.num_classes}")
    return ms
