"""The `ood_lists` format: the OOD-distillation paper's train / val_on_train / val lists read in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.config import DataConfig, load_config
from vlmkd.data import build_manifests
from vlmkd.data.images import confined_path, open_image
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError, DataError
from vlmkd.eval.fewshot import few_shot_eval, without_support

CLASSES = [
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
]
BASE = ["002.Laysan_Albatross", "004.Groove_billed_Ani"]  # in train_data.txt / val_on_train_data.txt
NOVEL = ["001.Black_footed_Albatross", "003.Sooty_Albatross"]  # in val_data.txt


def _jpg(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(path)


def _file(cls: str, i: int) -> str:
    return f"{cls.split('.', 1)[1]}_{i:04d}.jpg"


@pytest.fixture
def raw(tmp_path: Path) -> dict:
    """A raw CUB-like folder (<class>/<file>, 6 images a class + one unlisted) and the three original lists."""
    root = tmp_path / "CUB_200_2011" / "images"
    for c, cls in enumerate(CLASSES):
        for i in range(7):
            _jpg(root / cls / _file(cls, i), 30 + 50 * c)
    lists = tmp_path / "lists"
    lists.mkdir()
    train = [f"train/{c}/{_file(c, i)}" for c in BASE for i in range(4)]
    val_on_train = [f"val_on_train/{c}/{_file(c, i)}" for c in BASE for i in range(4, 6)]
    val = [f"val/{c}/{_file(c, i)}" for c in NOVEL for i in range(6)]
    for name, lines in (
        ("train_data.txt", train),
        ("val_on_train_data.txt", val_on_train),
        ("val_data.txt", val),
    ):
        (lists / name).write_text("\n".join(lines) + "\n")
    return {"root": root, "lists": lists}


def _cfg(raw: dict, **kw) -> DataConfig:
    return DataConfig(format="ood_lists", root=str(raw["root"]), list_root=str(raw["lists"]), **kw)


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_splits_labels_and_paths(raw):
    before = _files(raw["root"].parent)
    ms = build_manifests(_cfg(raw))  # the lists' default names under data.list_root
    assert set(ms) == {"train", "id", "ood", "ood_test"}
    assert {k: len(v) for k, v in ms.items()} == {"train": 8, "id": 4, "ood": 12, "ood_test": 12}
    # base classes 0..B-1 and novel classes 0..N-1, each in sorted class-folder order
    for k in ("train", "id"):
        assert ms[k].class_names == BASE
        assert ms[k].split == k
    for k in ("ood", "ood_test"):
        assert ms[k].class_names == NOVEL
        assert ms[k].split == k
    assert ms["train"].labels.tolist() == [0] * 4 + [1] * 4
    assert ms["id"].labels.tolist() == [0, 0, 1, 1]
    assert ms["ood"].labels.tolist() == [0] * 6 + [1] * 6
    assert ms["ood"].ids == ms["ood_test"].ids  # X_ood serves as both the support pool and the test set
    src = ms["train"].source
    assert src["base_classes"] == [1, 3] and src["novel_classes"] == [0, 2] and src["all_classes"] == CLASSES
    # paths are the raw files, relative to data.root, with the split prefix dropped; nothing is copied
    root = raw["root"]
    for m in ms.values():
        assert Path(m.root) == root
        assert all(confined_path(root, p).is_file() for p in m.paths)
        assert not any(p.startswith(("train/", "val/", "val_on_train/")) for p in m.paths)
    assert ms["train"].paths[0] == f"{BASE[0]}/{_file(BASE[0], 0)}"
    assert not set(ms["train"].ids) & set(ms["id"].ids)
    assert np.asarray(open_image(ms["ood_test"], 0)).shape == (8, 8, 3)
    assert _files(raw["root"].parent) == before


def test_load_config_absolute_lists_and_label2text(raw):
    lists = raw["lists"]
    (lists / "label2text.txt").write_text(
        "".join(f"{c} {i + 1} {c.split('.', 1)[1]}\n" for i, c in enumerate(CLASSES))
    )
    cfg = load_config(
        None,
        [
            "data.format=ood_lists",
            f"data.root={raw['root']}",
            f"data.train_list={lists / 'train_data.txt'}",
            f"data.val_list={lists / 'val_on_train_data.txt'}",
            f"data.test_list={lists / 'val_data.txt'}",
            f"data.class_names_file={lists / 'label2text.txt'}",
        ],
    ).data
    assert cfg.list_root is None and cfg.strip_components == 1
    ms = build_manifests(cfg)
    assert ms["train"].class_names == ["Laysan_Albatross", "Groove_billed_Ani"]
    assert ms["ood_test"].class_names == ["Black_footed_Albatross", "Sooty_Albatross"]
    # a plain names file: one name per line, in sorted class-folder order
    (lists / "names.txt").write_text("".join(f"bird {i}\n" for i in range(4)))
    ms = build_manifests(_cfg(raw, class_names_file="names.txt"))
    assert ms["id"].class_names == ["bird 1", "bird 3"] and ms["ood"].class_names == ["bird 0", "bird 2"]
    (lists / "names.txt").write_text("bird 0\nbird 1\n")
    with pytest.raises(DataError, match="2 names for 4 class folders"):
        build_manifests(_cfg(raw, class_names_file="names.txt"))


def test_lists_under_root_and_strip_components(raw):
    root = raw["root"]
    for name in ("train_data.txt", "val_on_train_data.txt", "val_data.txt"):
        lines = (raw["lists"] / name).read_text().splitlines()
        (root / name).write_text("\n".join(ln.split("/", 1)[1] for ln in lines) + "\n")  # no split prefix
    cfg = DataConfig(format="ood_lists", root=str(root), strip_components=0)
    ms = build_manifests(cfg)
    assert len(ms["train"]) == 8 and ms["ood"].class_names == NOVEL
    cfg.strip_components = 1  # would drop the class folder: a clear error, not a silent mislabel
    with pytest.raises(DataError, match="data.strip_components"):
        build_manifests(cfg)


def test_flat_layout_and_sun397_class_paths(tmp_path):
    # Flowers / Cars: the raw folder is flat; the class comes from the list only
    flat = tmp_path / "jpg"
    for i in range(6):
        _jpg(flat / f"image_{i:05d}.jpg", 40 * i)
    lines = {
        "train_data.txt": ["train/rose/image_00000.jpg", "train/rose/image_00001.jpg"],
        "val_on_train_data.txt": ["val_on_train/rose/image_00002.jpg"],
        "val_data.txt": ["val/watercress/image_00003.jpg", "val/watercress/image_00004.jpg"],
    }
    for name, ls in lines.items():
        (flat / name).write_text("\n".join(ls) + "\n")
    ms = build_manifests(DataConfig(format="ood_lists", root=str(flat)))
    assert ms["train"].paths == ["image_00000.jpg", "image_00001.jpg"]
    assert ms["train"].class_names == ["rose"] and ms["ood"].class_names == ["watercress"]
    # SUN397: list folders are flattened ("apartment_building_outdoor"); ClassName.txt maps them back
    sun = tmp_path / "SUN397"
    (sun / "ClassName.txt").parent.mkdir()
    (sun / "ClassName.txt").write_text("/a/abbey\n/a/apartment_building/outdoor\n")
    _jpg(sun / "a" / "abbey" / "sun_a.jpg", 10)
    _jpg(sun / "a" / "abbey" / "sun_b.jpg", 20)
    _jpg(sun / "a" / "apartment_building" / "outdoor" / "sun_c.jpg", 30)
    lines = {
        "train_data.txt": ["train/abbey/sun_a.jpg"],
        "val_on_train_data.txt": ["val_on_train/abbey/sun_b.jpg"],
        "val_data.txt": ["val/apartment_building_outdoor/sun_c.jpg"],
    }
    for name, ls in lines.items():
        (sun / name).write_text("\n".join(ls) + "\n")
    ms = build_manifests(DataConfig(format="ood_lists", root=str(sun)))
    assert ms["train"].paths == ["a/abbey/sun_a.jpg"]
    assert ms["ood_test"].paths == ["a/apartment_building/outdoor/sun_c.jpg"]
    assert ms["ood_test"].class_names == ["apartment_building_outdoor"]


def _rewrite(raw: dict, name: str, extra: str) -> None:
    p = raw["lists"] / name
    p.write_text(p.read_text() + extra + "\n")


BAD_LINES = {  # list, appended line, the error it must raise
    "missing file": (
        "val_data.txt",
        f"val/{NOVEL[0]}/missing.jpg",
        r"val_data.txt:13: file .*missing.jpg' does not exist under",
    ),
    "escape": ("train_data.txt", "train/../../../outside.jpg", "escapes the dataset root"),
    "X_id class not in train": (
        "val_on_train_data.txt",
        f"val_on_train/{NOVEL[0]}/{_file(NOVEL[0], 6)}",
        "is not a training class",
    ),
    "base/novel overlap": (
        "val_data.txt",
        f"val/{BASE[0]}/{_file(BASE[0], 6)}",
        "base and novel classes must be disjoint",
    ),
    "X_train/X_id overlap": (
        "val_on_train_data.txt",
        f"val_on_train/{BASE[0]}/{_file(BASE[0], 0)}",
        "X_train and X_id must be disjoint",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_list_line_is_refused(raw, case):
    name, line, message = BAD_LINES[case]
    _rewrite(raw, name, line)
    with pytest.raises(DataError, match=message):
        build_manifests(_cfg(raw))


def test_missing_list_and_seeded_split_refused(raw):
    (raw["lists"] / "val_on_train_data.txt").unlink()
    with pytest.raises(DataError, match="val_on_train_data.txt' not found"):
        build_manifests(_cfg(raw))
    with pytest.raises(DataError, match="not found"):
        build_manifests(_cfg(raw, val_list="nope.txt"))
    (raw["lists"] / "val_on_train_data.txt").write_text(f"val_on_train/{BASE[0]}/{_file(BASE[0], 5)}\n")
    cfg = _cfg(raw)
    cfg.split.num_novel = 1
    with pytest.raises(ConfigError, match="takes its base/novel classes from the lists"):
        build_manifests(cfg)


def test_without_support_matches_ids():
    def m(ids, split):
        return Manifest(ids=ids, labels=[0] * len(ids), class_names=["a"], paths=ids, split=split)

    test = m(["x/1.jpg", "x/2.jpg", "x/3.jpg"], "ood_test")
    out = without_support(test, m(["x/2.jpg"], "support"))
    assert out.ids == ["x/1.jpg", "x/3.jpg"] and out.split == "ood_test"
    assert without_support(test, m(["y/2.jpg"], "support")) is test  # seeded split: disjoint, untouched


def test_few_shot_eval_excludes_support_from_x_ood(raw, monkeypatch):
    import vlmkd.eval.fewshot as fewshot

    ms = build_manifests(_cfg(raw))
    seen: list[Manifest] = []

    def fake_outputs(model, manifest, data_cfg, device="cpu", desc=""):
        seen.append(manifest)
        rng = np.random.default_rng(len(seen))
        n = len(manifest)
        return {"embedding": rng.normal(size=(n, 4)), "labels": manifest.labels, "index": np.arange(n)}

    monkeypatch.setattr(fewshot, "student_outputs", fake_outputs)
    texts = {"train": np.eye(4)[:2], "ood_test": np.eye(4)[2:]}
    res = few_shot_eval(None, ms, texts, _cfg(raw), shots=2, method="tip_adapter")
    queries, support = seen
    assert len(support) == 4 and support.class_counts().tolist() == [2, 2]
    assert len(queries) == 12 - 4 and not set(queries.ids) & set(support.ids)
    assert set(queries.ids) | set(support.ids) == set(ms["ood_test"].ids)
    assert res["shots"] == 2


def test_generalized_calibrates_on_the_few_shot_support_and_never_scores_it(raw, monkeypatch):
    import vlmkd.eval.predict as predict
    from vlmkd.eval.fewshot import draw_support
    from vlmkd.eval.generalized import CalibrationSpec, student_generalized

    ms = build_manifests(_cfg(raw))
    seen: dict[str, Manifest] = {}

    def fake_outputs(model, manifest, data_cfg, device="cpu", desc=""):
        seen[manifest.split] = manifest
        n = len(manifest)
        emb = np.random.default_rng(len(seen)).normal(size=(n, 4))
        return {"embedding": emb, "labels": manifest.labels, "index": np.arange(n)}

    monkeypatch.setattr(predict, "student_outputs", fake_outputs)
    texts = {"train": np.eye(4)[:2], "ood_test": np.eye(4)[2:]}
    res = student_generalized(None, ms, texts, _cfg(raw), spec=CalibrationSpec(shots=2, seed=3))
    support = seen["support"]
    assert list(support.ids) == list(draw_support(ms["ood"], 2, 3).ids)  # the 2-shot evaluation's support
    # X_ood lists share train and test: the support images chose gamma, so they are not scored
    assert not set(seen["ood_test"].ids) & set(support.ids) and res["novel_images"] == len(ms["ood_test"]) - 4
    assert res["calibration"]["support"] == {"split": "ood", "shots": 2, "seed": 3, "images": 4}
