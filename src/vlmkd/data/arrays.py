"""Array-backed datasets (Fashion-MNIST IDX files, CIFAR python batches): readers and their manifests.

Their pixels are read by `vlmkd.data.images.open_image` through `load_array_source`; nothing here imports the
format registry, so the image module can use it without an import cycle.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from vlmkd.config import DataConfig
from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import require_dir
from vlmkd.errors import DataError

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


def write_fashion_mnist_folder(
    root: Path,
    fmnist_root: Path,
    train_counts: list[int],
    test_per_class: int,
    names: list[str] | None = None,
    size: int | None = None,
) -> Path:
    """root/{train,test}/<class>/ image files from the real Fashion-MNIST IDX files under `fmnist_root`: the first
    `train_counts[c]` training images of class c and `test_per_class` test images per class, as the 28 px
    grayscale PNGs, or (with `size`) as RGB JPEG photos upsampled to size x size. A user-style folder for scripts
    and benchmarks; an existing root/test folder is reused as it is."""
    root = Path(root)
    if (root / "test").is_dir():
        return root
    names = names or [f"class_{c}" for c in range(10)]
    files = {"train": "train", "test": "t10k"}
    x = {s: _read_idx(_find_idx(Path(fmnist_root), f"{p}-images-idx3-ubyte")) for s, p in files.items()}
    y = {s: _read_idx(_find_idx(Path(fmnist_root), f"{p}-labels-idx1-ubyte")) for s, p in files.items()}
    for split, per in (("train", train_counts), ("test", [test_per_class] * 10)):
        for c in range(10):
            d = root / split / names[c]
            d.mkdir(parents=True, exist_ok=True)
            for j in np.flatnonzero(y[split] == c)[: per[c]]:
                im = Image.fromarray(x[split][j])
                if size:
                    im.convert("RGB").resize((size, size), Image.BICUBIC).save(d / f"{j}.jpg", quality=90)
                else:
                    im.save(d / f"{j}.png")
    return root


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


def fashion_mnist(cfg: DataConfig) -> dict[str, Manifest]:
    root = fashion_mnist_root(cfg.root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        out[split] = _array_manifest("fashion_mnist", root, split, labels, list(FASHION_MNIST_CLASSES))
    return out


def cifar(cfg: DataConfig, fmt: str) -> dict[str, Manifest]:
    root = require_dir(cfg.root, f"{fmt} python batches")
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
