"""The val and X_id carve-outs stay put (membership is a hash of each image's own id), and a class without a training image
is refused by the manifests train builds and reported by `data stats`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from vlmkd.cli import main
from vlmkd.config import DataConfig
from vlmkd.config.data import SplitConfig
from vlmkd.data import _id_holdout, build_manifests
from vlmkd.data.longtail import hashed_holdout, key_fraction
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError, DataError


def _split_of(ms: dict) -> dict[str, str]:
    return {p: k for k in ("train", "val") for p in ms[k].paths}


def test_adding_ten_images_moves_no_other_image_between_train_and_val(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=(40, 30, 20), size=8)
    cfg = DataConfig(format="image_folder", root=str(root), val_fraction=0.2)
    before = _split_of(build_manifests(cfg))
    assert 0 < sum(v == "val" for v in before.values()) < len(before)
    for i in range(10):  # ten new training images of one class
        Image.fromarray(np.full((8, 8, 3), 7 * i, dtype=np.uint8)).save(
            root / "train" / "dog" / f"new_{i}.png"
        )
    after = _split_of(build_manifests(cfg))
    assert len(after) == len(before) + 10
    moved = [p for p, side in before.items() if after[p] != side]
    assert moved == []  # the list-position carve-out it replaces moved 13 of these 90


def test_hashed_holdout_fraction_seed_and_at_least_one_per_class():
    ids = [f"img/{i}.png" for i in range(4000)]
    labels = np.arange(4000) % 4
    m = Manifest(ids=ids, labels=labels, class_names=list("abcd"), paths=ids)
    rest, held = hashed_holdout(m, 0.25, seed=0, split_name="val")
    assert abs(len(held) / len(m) - 0.25) < 0.03 and held.split == "val"
    assert set(rest.ids).isdisjoint(held.ids) and len(rest) + len(held) == len(m)
    other = hashed_holdout(m, 0.25, seed=1, split_name="val")[1]
    assert set(other.ids) != set(held.ids)  # the seed changes the draw
    u = key_fraction(ids, 0)
    assert np.array_equal(np.sort(np.nonzero(u < 0.25)[0]), np.sort([ids.index(i) for i in held.ids]))
    # a class whose every image hashes under the fraction keeps its largest-hash image in train
    one = Manifest(ids=["a.png", "b.png"], labels=[0, 1], class_names=["x", "y"], paths=["a.png", "b.png"])
    rest, held = hashed_holdout(one, 0.999, seed=0, split_name="val")
    assert sorted(rest.labels.tolist()) == [0, 1] and len(held) == 0
    with pytest.raises(ConfigError, match=r"val fraction \(data.val_fraction\) must be in \[0, 1\), got 1.0"):
        hashed_holdout(one, 1.0, seed=0, split_name="val")


def test_a_class_without_training_images_is_refused_by_train_and_reported_by_stats(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", per_class=(4, 3, 2), size=8)
    (root / "names.txt").write_text("bag\ncat\ndog\nowl\n")
    table = tmp_path / "labels.csv"
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted((root / "train").rglob("*.png"))]
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    cfg = DataConfig(format="csv", root=str(root), train_list=str(table), class_names_file="names.txt")
    with pytest.raises(DataError, match=r"class 'bag' has no training image \(1 of 4 classes"):
        build_manifests(cfg)
    (tmp_path / "c.yaml").write_text(
        f"data: {{format: csv, root: '{root}', train_list: '{table}', class_names_file: names.txt}}\n"
    )
    assert main(["data", "stats", str(tmp_path / "c.yaml")]) == 0
    err = capsys.readouterr().err
    assert "1 classes have no readable training image ('bag')" in err
    assert main(["train", str(tmp_path / "c.yaml"), "train.device=cpu"]) == 2
    assert "class 'bag' has no training image" in capsys.readouterr().err


def _id_split_of(ms: dict) -> dict[str, str]:
    return {p: k for k in ("train", "id") for p in ms[k].paths}


def test_adding_images_moves_no_other_image_between_train_and_x_id(tmp_path):
    """The open-vocabulary X_id hold-out of a folder is drawn like val, by a hash of each image's id (it was a
    seeded per-class shuffle: positions moved when a class grew)."""
    root = make_image_folder(tmp_path / "d", per_class=(30, 20, 12), size=8)
    cfg = DataConfig(format="image_folder", root=str(root), split=SplitConfig(novel_classes=["owl"]))
    before = _id_split_of(build_manifests(cfg))
    assert 0 < sum(v == "id" for v in before.values()) < len(before)
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), 9 * i, dtype=np.uint8)).save(
            root / "train" / "cat" / f"new_{i}.png"
        )
    after = _id_split_of(build_manifests(cfg))
    assert len(after) == len(before) + 10
    assert [p for p, side in before.items() if after[p] != side] == []
    ids = [p for p, side in before.items() if side == "id"]
    assert np.all(key_fraction(ids, cfg.split.seed) < cfg.split.id_fraction)
    with pytest.raises(ConfigError, match="id_holdout must be auto, hash or stratified, got 'random'"):
        SplitConfig(id_holdout="random")


def test_x_id_of_a_fixed_array_dataset_stays_exactly_stratified():
    """auto keeps the exact per-class fraction for array datasets (they never grow), which the demo measures on;
    id_holdout=hash draws the same way as for files."""
    n = 200
    m = Manifest(
        ids=[f"train/{i}" for i in range(n)],
        labels=np.arange(n) % 2,
        class_names=["a", "b"],
        indices=np.arange(n),
    )
    cfg = DataConfig(split=SplitConfig(id_fraction=0.3))
    rest, held = _id_holdout(m, cfg)
    assert np.bincount(held.labels).tolist() == [30, 30] and len(rest) == n - 60
    cfg.split.id_holdout = "hash"
    rest, held = _id_holdout(m, cfg)
    assert np.array_equal(np.sort(held.ids), np.sort(np.array(m.ids)[key_fraction(m.ids, 0) < 0.3]))
