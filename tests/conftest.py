"""Shared fixtures. Tests never touch the network: the hub is forced offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLMKD_NO_PROGRESS", "1")

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    # .ci/run sets VLMKD_REQUIRE_FMNIST: there a missing dataset fails these tests instead of skipping them
    not any(FMNIST_DIR.glob("train-images-idx3-ubyte*")) and not os.environ.get("VLMKD_REQUIRE_FMNIST"),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def make_image_folder(
    root: Path, classes=("cat", "dog", "owl"), per_class=(6, 4, 2), size=16, seed=0, test_per_class=3
) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png with class-dependent colours."""
    rng = np.random.default_rng(seed)
    for split, counts in (("train", per_class), ("test", (test_per_class,) * len(classes))):
        for c, (name, n) in enumerate(zip(classes, counts)):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # grey levels 40/120/200 for the first three classes; later ones shift the green channel
                level = [40 + 80 * (c % 3), 40 + 80 * ((c % 3 + c // 3) % 3), 40 + 80 * (c % 3)]
                arr = np.broadcast_to(np.array(level, dtype=np.uint8), (size, size, 3)).copy()
                arr = np.clip(arr + rng.integers(0, 30, arr.shape), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{name}_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")
