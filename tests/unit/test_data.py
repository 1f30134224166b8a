import json
import pickle

import numpy as np
import pytest
import torch

from conftest import needs_fmnist
from vlmkd.config import DataConfig, LongTailConfig, SplitConfig, load_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.longtail import base_novel_split, bucket_of_counts, exponential_profile, make_longtail
from vlmkd.data.samplers import build_sampler
from vlmkd.data.transforms import build_transform
from vlmkd.errors import ConfigError, DataError


def test_exponential_profile_golden():
    # n_i = floor(1000 * 100^(-i/4)): 1000, 316.2, 100, 31.6, 10
    assert exponential_profile(5, 1000, 100).tolist() == [1000, 316, 100, 31, 10]
    assert exponential_profile(1, 7, 10).tolist() == [7]
    with pytest.raises(ConfigError):
        exponential_profile(3, 10, 0.5)


def test_buckets():
    assert bucket_of_counts(np.array([101, 100, 20, 19])) == ["many", "medium", "medium", "few"]


def test_image_folder_and_longtail(image_folder):
    ms = build_manifests(DataConfig(format="image_folder", root=str(image_folder)))
    assert ms["train"].class_names == ["cat", "dog", "owl"]
    assert ms["train"].class_counts().tolist() == [6, 4, 2] and len(ms["test"]) == 9
    cfg = LongTailConfig(imbalance_factor=2, n_max=3, pool_per_class=1, seed=1)
    out = make_longtail(ms["train"], cfg)
    lt, pool = out["train"], out["pool"]
    assert pool.class_counts().tolist() == [1, 1, 1] and "val" not in out
    assert lt.class_counts().tolist() == [3, 2, 1]  # floor(3 * 2^(-i/2)) = 3, 2.12, 1.5
    assert not set(lt.ids) & set(pool.ids)  # the pool is disjoint
    # a balanced validation split from the leftovers: disjoint, and the student set is unchanged by it
    no_val = make_longtail(ms["train"], LongTailConfig(imbalance_factor=1, n_max=1, seed=1))
    cfg = LongTailConfig(imbalance_factor=1, n_max=1, val_per_class=1, seed=1)
    with_val = make_longtail(ms["train"], cfg)
    assert with_val["val"].class_counts().tolist() == [1, 1, 1]
    assert with_val["train"].ids == no_val["train"].ids
    assert not set(with_val["val"].ids) & set(with_val["train"].ids)
    cfg.val_per_class = 2  # owl has 2 images: the error names the class and the field
    with pytest.raises(DataError, match="owl.*val_per_class=2; lower it"):
        make_longtail(ms["train"], cfg)
    cfg.val_per_class, cfg.n_max = 1, 2
    with pytest.raises(DataError, match="lower data.longtail.n_max"):
        make_longtail(ms["train"], cfg)  # owl: 2 - 1 for val leaves 1 < the 2 asked for
    cfg.n_max = 1
    with pytest.raises(ConfigError, match="not both"):
        build_manifests(
            DataConfig(format="image_folder", root=str(image_folder), val_fraction=0.2, longtail=cfg)
        )


def _write_list(root, lines):
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return DataConfig(format="split_list", root=str(root), train_list="train.txt")


def test_split_list_errors(image_folder):
    ok = _write_list(image_folder, ["train/cat/cat_0.png 0", "train/dog/dog_0.png 1"])
    m = build_manifests(ok)["train"]
    assert m.class_names == ["cat", "dog"] and m.labels.tolist() == [0, 1]
    with pytest.raises(DataError, match="does not exist"):
        build_manifests(_write_list(image_folder, ["train/cat/missing.png 0"]))
    with pytest.raises(DataError, match="escapes the dataset root"):
        build_manifests(_write_list(image_folder, ["../../etc/passwd 0"]))
    with pytest.raises(DataError, match="escapes the dataset root"):
        build_manifests(_write_list(image_folder, ["/etc/passwd 0"]))
    (image_folder / "names.txt").write_text("cat\ndog\n")
    cfg = _write_list(image_folder, ["train/cat/cat_0.png 5"])
    cfg.class_names_file = "names.txt"
    with pytest.raises(DataError, match="out of range"):
        build_manifests(cfg)
    with pytest.raises(DataError, match="expected 'relative/path label'"):
        build_manifests(_write_list(image_folder, ["train/cat/cat_0.png"]))


def test_missing_dataset_folder():
    with pytest.raises(DataError, match="does not exist"):
        build_manifests(DataConfig(format="image_folder", root="/nonexistent/folder"))


def test_corrupt_image_error_and_skip(image_folder):
    bad = image_folder / "train" / "cat" / "cat_0.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    m = build_manifests(DataConfig(format="image_folder", root=str(image_folder)))["train"]
    i = m.paths.index("train/cat/cat_0.png")
    tf = build_transform(DataConfig(image_size=16, in_chans=3), train=False)
    with pytest.raises(DataError, match="corrupt or truncated"):
        ManifestDataset(m, tf)[i]
    ds = ManifestDataset(m, tf, on_bad_image="skip")
    batch = collate_skip([ds[j] for j in range(len(ds))])
    assert batch["skipped"] == 1 and batch["image"].shape[0] == len(ds) - 1


def test_cifar_and_inat_formats(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 1]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird"]}, f)
    ms = build_manifests(DataConfig(format="cifar10", root=str(root), in_chans=3, image_size=32))
    assert len(ms["train"]) == 20 and ms["train"].class_names[2] == "bird"
    ds = ManifestDataset(
        ms["train"], build_transform(DataConfig(format="cifar10", in_chans=3, image_size=32), True)
    )
    assert ds[0]["image"].shape == (3, 32, 32)

    inat = tmp_path / "inat"
    (inat / "train_val2018" / "a").mkdir(parents=True)
    ann = {
        "images": [{"id": 1, "file_name": "train_val2018/a/1.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 7}],
        "categories": [{"id": 7, "name": "Aves"}, {"id": 3, "name": "Plantae"}],
    }
    (inat / "train2018.json").write_text(json.dumps(ann))
    # a category without images is refused by train; the format itself keeps it (data stats reports it)
    m = build_manifests(DataConfig(format="inat2018", root=str(inat)), every_class_trained=False)["train"]
    assert m.class_names == ["Plantae", "Aves"] and m.labels.tolist() == [1]


@needs_fmnist
def test_fashion_mnist_longtail_and_pool():
    cfg = load_config(None, ["data.longtail.imbalance_factor=100", "data.longtail.pool_per_class=1000"])
    ms = build_manifests(cfg.data)
    counts = ms["train"].class_counts()
    assert counts[0] == 5000 and counts[-1] == 50 and len(ms["test"]) == 10000
    assert ms["pool"].class_counts().tolist() == [1000] * 10
    assert not set(ms["pool"].indices.tolist()) & set(ms["train"].indices.tolist())
    # same seed -> same split; another seed -> another split
    assert build_manifests(cfg.data)["train"].key() == ms["train"].key()
    cfg.data.longtail.seed = 1
    assert build_manifests(cfg.data)["train"].key() != ms["train"].key()


def test_base_novel_split():
    base, novel = base_novel_split(10, SplitConfig(num_novel=5, seed=0))
    assert len(novel) == 5 and sorted(base + novel) == list(range(10))
    assert base_novel_split(10, SplitConfig(num_novel=5, seed=0)) == (base, novel)
    with pytest.raises(ConfigError):
        base_novel_split(10, SplitConfig(num_novel=10))


@pytest.mark.parametrize("name", ["instance", "class_balanced", "sqrt"])
def test_samplers_split_one_epoch_across_ranks(name):
    labels = np.array([0] * 50 + [1] * 10 + [2] * 4)
    one = list(build_sampler(name, labels, 1, 0, seed=3))
    parts = [list(build_sampler(name, labels, 2, r, seed=3)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 32
    interleaved = [x for pair in zip(*parts) for x in pair]
    assert interleaved == one  # rank r takes the strided share of the same global list
    s = build_sampler(name, labels, 1, 0, seed=3)
    s.set_epoch(1)
    assert list(s) != one


def test_class_balanced_sampler_balances():
    labels = np.array([0] * 1000 + [1] * 10)
    s = build_sampler("class_balanced", labels, seed=0)
    counts = np.bincount(labels[list(s)])
    assert abs(counts[0] - counts[1]) < 0.1 * len(labels)


def test_per_sample_augmentation(image_folder):
    m = build_manifests(DataConfig(format="image_folder", root=str(image_folder)))["train"]
    ds = ManifestDataset(m, build_transform(DataConfig(image_size=16, in_chans=3), train=True))
    ds.seed = 0
    a, b = ds[0]["image"], ds[0]["image"]
    assert torch.equal(a, b)  # a function of (seed, epoch, index)
    others = []
    for epoch in range(1, 4):
        ds.set_epoch(epoch)
        others.append(ds[0]["image"])
    assert any(not torch.equal(a, o) for o in others)  # a new draw every epoch, per sample


def _fake_cifar100(root, per_class):
    root.mkdir(parents=True)
    labels = [c for c in range(100) for _ in range(per_class)]
    rng = np.random.default_rng(0)
    for name, labs in (("train", labels), ("test", labels[:200])):
        with open(root / name, "wb") as f:
            pickle.dump(
                {"data": rng.integers(0, 255, (len(labs), 3072), dtype=np.uint8), "fine_labels": labs}, f
            )
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return root


def test_prepare_checks_published_counts(tmp_path):
    from vlmkd.cli import main
    from vlmkd.data.manifest import Manifest

    root = _fake_cifar100(tmp_path / "cifar-100-python", per_class=500)
    with pytest.raises(DataError, match="the published split has 10000"):
        from vlmkd.data.prepare import prepare

        prepare("cifar100_lt", str(root))  # train matches (10847), the fake test split does not
    out = tmp_path / "m"
    assert main(["prepare", "cifar100_lt", "--root", str(root), "--out", str(out), "--no-check"]) == 0
    train = Manifest.load(out / "train.json")
    assert len(train) == 10847 and train.class_counts()[0] == 500 and train.class_counts()[-1] == 5
    ms = build_manifests(DataConfig(format="manifest", train_list=str(out / "train.json")))
    assert ms["train"].key() == train.key()


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("train", [False, True])
def test_small_image_fast_path_matches_pil_pipeline(in_chans, train):
    """The tensor fast path must give the PIL pipeline's exact pixels and random draws, from arrays and PIL."""
    from PIL import Image

    from vlmkd.config import DataConfig
    from vlmkd.data.transforms import SmallImageTransform, _pil_transform, build_transform

    cfg = DataConfig(image_size=16, in_chans=in_chans)
    fast, slow = build_transform(cfg, train), _pil_transform(cfg, train)
    assert isinstance(fast, SmallImageTransform)
    rng = np.random.default_rng(0)
    for shape in [(16, 16, 3), (16, 16), (20, 24, 3)]:  # the last one goes through the resizing PIL path
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        for inp in (arr, Image.fromarray(arr)):
            torch.manual_seed(7)
            a = fast(inp)
            torch.manual_seed(7)
            b = slow(Image.fromarray(arr))
            assert a.shape == b.shape == (in_chans, 16, 16)
            assert torch.allclose(a, b, atol=1e-6)


def _folder_with_broken_files(image_folder):
    from helpers_messy_images import broken_files

    bad = broken_files(image_folder / "train" / "cat")
    return {str(p.relative_to(image_folder)) for p in bad.values()}


def test_training_dataset_replaces_bad_images_so_every_rank_takes_every_step(image_folder):
    bad = _folder_with_broken_files(image_folder)
    m = build_manifests(DataConfig(format="image_folder", root=str(image_folder)))["train"]
    tf = build_transform(DataConfig(image_size=16, in_chans=3), train=True)
    ds = ManifestDataset(m, tf, on_bad_image="skip", replace_bad=True)
    i = m.paths.index(sorted(bad)[0])
    item = ds[i]  # a readable stand-in of the same class, named as a skip
    assert item["label"] == m.labels[i] and m.paths[item["index"]] not in bad
    # two ranks; rank 1 gets only unreadable files in its first batch: both ranks still see full batches
    bad_idx = [m.paths.index(p) for p in sorted(bad)]
    good_idx = [j for j in range(len(m)) if j not in bad_idx]
    orders = [good_idx[:8], bad_idx + good_idx[8:12]]  # rank 1's first batch: four unreadable files
    ranks = [[collate_skip([ds[j] for j in order[k : k + 4]]) for k in (0, 4)] for order in orders]
    assert len(ranks[0]) == len(ranks[1])
    assert all(b["image"].shape[0] == 4 for batches in ranks for b in batches)
    first = ranks[1][0]
    assert first["skipped"] == 4 and set(first["skipped_files"]) == bad


def test_eval_dataset_drops_and_names_bad_images(image_folder, caplog):
    bad = _folder_with_broken_files(image_folder)
    m = build_manifests(DataConfig(format="image_folder", root=str(image_folder)))["train"]
    ds = ManifestDataset(
        m, build_transform(DataConfig(image_size=16, in_chans=3), train=False), on_bad_image="skip"
    )
    batch = collate_skip([ds[j] for j in range(len(ds))])
    assert batch["skipped"] == 4 and set(batch["skipped_files"]) == bad
    assert batch["image"].shape[0] == len(ds) - 4
    assert all(p.split("/")[-1] in caplog.text for p in bad)  # the log names every skipped file


def test_data_stats_does_not_count_unreadable_files(image_folder, capsys):
    from vlmkd.cli import main

    bad = _folder_with_broken_files(image_folder)
    cfg = image_folder / "c.yaml"
    cfg.write_text(f"data: {{format: image_folder, root: {image_folder}}}\n")
    assert main(["data", "stats", str(cfg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # cat has 6 readable files; the truncated PNG passes the header check (its pixel data is cut)
    header_bad = bad - {"train/cat/truncated.png"}
    assert set(info["unreadable"]["files"]) == header_bad and info["unreadable"]["count"] == 3
    assert info["classes"][0]["train"] == 6 + 1 and info["splits"]["train"] == 12 + 1
    assert main(["data", "stats", str(cfg), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "unreadable: 4 files" in out and all(p in out for p in bad)
    assert "    0  cat        6" in out


def test_dataset_decodes_big_files_small_and_applies_the_pixel_cap(tmp_path, monkeypatch):
    from PIL import Image

    import vlmkd.data.images as images
    from vlmkd.data.manifest import Manifest

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1600, 2000, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    m = Manifest(ids=["big.jpg"], labels=[0], class_names=["c"], root=str(tmp_path), paths=["big.jpg"])
    sizes = []
    real = images.load_image
    monkeypatch.setattr(
        images, "load_image", lambda *a, **k: sizes.append(real(*a, **k).size) or real(*a, **k)
    )
    cfg = DataConfig(image_size=32, in_chans=3)
    assert ManifestDataset(m, build_transform(cfg, train=True))[0]["image"].shape == (3, 32, 32)
    assert sizes[0] == (250, 200)  # decoded at 1/8 scale (4 x 32 = 128 asked), not 2000 x 1600 every epoch
    capped = build_transform(DataConfig(image_size=32, in_chans=3, max_image_pixels=1_000_000), train=False)
    with pytest.raises(DataError, match="above data.max_image_pixels=1,000,000"):
        ManifestDataset(m, capped)[0]
