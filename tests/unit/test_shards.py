"""WebDataset shards, Parquet and save_to_disk folders as map-style inputs: brace lists, member index, bad shards,
fsspec URLs, `vlmkd data pack`."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import make_image_folder
from vlmkd.cli import main
from vlmkd.config import load_config
from vlmkd.data import build_manifests, shards
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.images import open_image, unreadable_files
from vlmkd.data.pack import parse_size
from vlmkd.data.sharded import absolute_spec, expand_braces, expand_spec
from vlmkd.describe.keys import MISSING, image_keys
from vlmkd.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKD_INDEX_CACHE", str(tmp_path / "index_cache"))


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def cfg_for(tmp_path: Path, **data) -> object:
    return load_config(None, [f"data.{k}={v}" for k, v in {"in_chans": 3, **data}.items()])


def test_brace_expansion_follows_braceexpand():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert expand_braces("s-{8..10}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar"]
    assert expand_spec("a-{0..1}.tar::b.tar") == ["a-0.tar", "a-1.tar", "b.tar"]
    with pytest.raises(DataError, match="names no shards"):
        expand_spec(" :: ")


def test_relative_shard_lists_resolve_from_the_working_directory_then_data_root(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "a-0.tar").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("here/a-{0..1}.tar", "/data") == f"{tmp_path}/here/a-{{0..1}}.tar"
    assert absolute_spec("b-{0..1}.tar", "/data") == "/data/b-{0..1}.tar"
    assert absolute_spec("s3://bucket/b-{0..1}.tar", "/data") == "s3://bucket/b-{0..1}.tar"


def test_webdataset_conventions_cls_json_and_key(tmp_path):
    """Keys up to the first dot of the basename; label from .cls, class name and id from .json."""
    write_tar(
        tmp_path / "s-0.tar",
        [
            ("dir/a.cls", b"1"),
            ("dir/a.seg.png", png(10)),  # multi-dot extension: still sample "dir/a", but not an image field
            ("dir/a.png", png(20)),
            ("b.json", json.dumps({"label": 0, "class": "zero", "id": "orig/b.jpg"}).encode()),
            ("b.jpg", png(30)),  # the bytes decide the format, not the extension
        ],
    )
    ms = build_manifests(cfg_for(tmp_path, format="wds", train_list=str(tmp_path / "s-{0..0}.tar")).data)
    m = ms["train"]
    assert list(m.ids) == ["dir/a", "orig/b.jpg"] and m.labels.tolist() == [1, 0]
    assert m.class_names == ["zero", "class_1"]
    assert np.asarray(open_image(m, 0))[0, 0].tolist() == [20, 20, 20]
    assert np.asarray(open_image(m, 1))[0, 0].tolist() == [30, 30, 30]


def packed(tmp_path: Path, size: str = "2KB") -> tuple[Path, Path]:
    data = make_image_folder(tmp_path / "d", per_class=(4, 3, 2), size=8)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "image_folder", "root": str(data), "in_chans": 3}}))
    assert main(["data", "pack", str(cfg), str(tmp_path / "shards"), "--shard-size", size]) == 0
    return cfg, tmp_path / "shards"


def test_pack_keeps_manifest_key_content_keys_and_pixels(tmp_path):
    cfg, out = packed(tmp_path)
    files = build_manifests(load_config(cfg).data)
    shards = build_manifests(load_config(cfg, ["data.format=wds", f"data.root={out}"]).data)
    info = json.loads((out / "pack.json").read_text())
    assert len(info["splits"]["train"]["shards"]) > 1  # size-targeted: 9 images of ~300 B in 2 KB shards
    for split in ("train", "test"):
        assert shards[split].key() == files[split].key() == info["splits"][split]["source_manifest_key"]
        assert (image_keys(shards[split]) == image_keys(files[split])).all()
        for i in range(len(files[split])):
            assert np.array_equal(
                np.asarray(open_image(files[split], i)), np.asarray(open_image(shards[split], i))
            )
    # the manifest written next to the shards reads them too
    again = build_manifests(
        load_config(cfg, ["data.format=manifest", f"data.train_list={out / 'train.json'}"]).data
    )
    assert again["train"].key() == files["train"].key()
    assert np.array_equal(
        np.asarray(open_image(again["train"], 3)), np.asarray(open_image(files["train"], 3))
    )


def test_repacking_shards_keeps_keys_and_formats(tmp_path):
    cfg, out = packed(tmp_path)
    shard_cfg = load_config(cfg, ["data.format=wds", f"data.root={out}"])
    assert (
        main(["data", "pack", str(cfg), str(tmp_path / "again"), "data.format=wds", f"data.root={out}"]) == 0
    )
    again = build_manifests(load_config(cfg, ["data.format=wds", f"data.root={tmp_path / 'again'}"]).data)
    first = build_manifests(shard_cfg.data)
    assert again["train"].key() == first["train"].key()
    assert (image_keys(again["train"]) == image_keys(first["train"])).all()
    with tarfile.open(tmp_path / "again" / "train-000000.tar") as tf:
        assert tf.getnames()[:3] == ["000000000.cls", "000000000.json", "000000000.png"]


def test_parse_size():
    assert parse_size("256MB") == 256_000_000 and parse_size("1GiB") == 1 << 30 and parse_size(4096) == 4096
    with pytest.raises(ConfigError, match="256MB"):
        parse_size("lots")


def test_truncated_shard_errors_naming_shard_and_key_or_skips(tmp_path):
    cfg, out = packed(tmp_path, size="100MB")
    shard = out / "train-000000.tar"
    whole = shard.read_bytes()
    with tarfile.open(shard) as tf:
        last = max(m.offset_data for m in tf.getmembers())
    # cut inside the last sample's image (its .cls and .json are before it)
    shard.write_bytes(whole[: last + 20])
    args = ["data.format=wds", f"data.root={out}"]
    with pytest.raises(DataError, match=r"train-000000\.tar.* truncated after sample '000000008'"):
        build_manifests(load_config(cfg, args).data)
    m = build_manifests(load_config(cfg, [*args, "data.on_bad_image=skip"]).data)["train"]
    assert len(m) == 9  # the cut sample keeps its label: it is skipped when read, counted and named
    with pytest.raises(DataError, match=r"'000000008' in shard .*train-000000\.tar.* truncated"):
        open_image(m, 8)
    ds = ManifestDataset(m, transform=np.array, on_bad_image="skip")
    batch = collate_skip([ds[i] for i in range(len(m))])
    assert batch["skipped"] == 1 and batch["skipped_files"] == [m.paths[8]]
    assert list(unreadable_files({"train": m})) == [m.paths[8]]
    # describe's content keys: the cut sample has none (MISSING), the others their sha256
    assert (image_keys(m) == MISSING).tolist() == [False] * 8 + [True]


def test_content_keys_hash_a_shard_once_then_come_from_the_cache(tmp_path, monkeypatch):
    cfg, out = packed(tmp_path)
    m = build_manifests(load_config(cfg, ["data.format=wds", f"data.root={out}"]).data)["train"]
    first = image_keys(m)
    assert len(list((tmp_path / "index_cache").glob("*.sha256.npy"))) == len(list(out.glob("train-*.tar")))

    def no_read(url):
        raise AssertionError(f"{url} read again")

    monkeypatch.setattr(shards, "_open", no_read)
    assert (image_keys(m) == first).all()


def test_sample_without_image_and_undecodable_image(tmp_path):
    write_tar(
        tmp_path / "s.tar",
        [("a.cls", b"0"), ("a.png", png(5)), ("b.cls", b"1"), ("c.cls", b"1"), ("c.jpg", b"not a jpeg")],
    )
    m = build_manifests(cfg_for(tmp_path, format="wds", train_list=str(tmp_path / "s.tar")).data)["train"]
    with pytest.raises(DataError, match=r"'b' in shard .*s\.tar.* has no image member \(fields: cls\)"):
        open_image(m, 1)
    with pytest.raises(DataError, match=r"s\.tar:c.* corrupt or truncated"):
        open_image(m, 2)
    ds = ManifestDataset(m, transform=np.array, on_bad_image="skip", replace_bad=True)
    batch = collate_skip([ds[i] for i in range(3)])
    assert batch["skipped"] == 2 and batch["skipped_files"] == ["b", "c"] and len(batch["image"]) == 3


def test_sample_without_label_is_refused_or_skipped(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.cls", b"0"), ("a.png", png(5)), ("b.png", png(6))])
    with pytest.raises(DataError, match=r"'b' in shard .*s\.tar.* has no label"):
        build_manifests(cfg_for(tmp_path, format="wds", train_list=str(tmp_path / "s.tar")).data)
    cfg = cfg_for(tmp_path, format="wds", train_list=str(tmp_path / "s.tar"), on_bad_image="skip")
    assert list(build_manifests(cfg.data)["train"].ids) == ["a"]


def test_keys_restarting_in_every_shard_are_qualified_by_shard(tmp_path):
    for s in range(2):
        write_tar(tmp_path / f"s-{s}.tar", [("000.cls", b"0"), ("000.png", png(40 + s))])
    m = build_manifests(cfg_for(tmp_path, format="wds", train_list=str(tmp_path / "s-{0..1}.tar")).data)[
        "train"
    ]
    assert list(m.paths) == list(m.ids) == ["s-0.tar/000", "s-1.tar/000"]
    assert int(np.asarray(open_image(m, 1))[0, 0, 0]) == 41


def test_not_a_tar_is_one_line(tmp_path):
    (tmp_path / "s.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match=r"s\.tar' is not a readable tar file"):
        build_manifests(cfg_for(tmp_path, format="wds", train_list=str(tmp_path / "s.tar")).data)


def test_fsspec_url(tmp_path):
    """Any fsspec URL: the index is built from a ranged file object, images read with ranged reads."""
    fsspec = pytest.importorskip("fsspec")
    local = write_tar(
        tmp_path / "s.tar", [("a.cls", b"0"), ("a.png", png(7)), ("b.cls", b"0"), ("b.png", png(9))]
    )
    with fsspec.open("memory://bucket/s-0.tar", "wb") as f:
        f.write(local.read_bytes())
    m = build_manifests(cfg_for(tmp_path, format="wds", train_list="memory://bucket/s-{0..0}.tar").data)[
        "train"
    ]
    assert m.root == "wds:memory://bucket/s-{0..0}.tar"
    assert np.asarray(open_image(m, 1))[0, 0].tolist() == [9, 9, 9]


def test_parquet_over_fsspec_url(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    write_parquet(tmp_path / "t.parquet", [3, 4], [0, 1], ["a", "b"])
    with fsspec.open("memory://bucket/pq/train.parquet", "wb") as f:
        f.write((tmp_path / "t.parquet").read_bytes())
    m = build_manifests(cfg_for(tmp_path, format="parquet", train_list="memory://bucket/pq/*.parquet").data)[
        "train"
    ]
    assert m.class_names == ["a", "b"] and int(np.asarray(open_image(m, 1))[0, 0, 0]) == 4


def write_parquet(path: Path, values: list[int], labels: list[int], names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.array(
        [{"bytes": png(v), "path": f"{v}.png"} for v in values],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    hf = {"info": {"features": {"label": {"_type": "ClassLabel", "names": names}}}}
    t = pa.table({"image": image, "label": pa.array(labels, pa.int64())})
    t = t.replace_schema_metadata({"huggingface": json.dumps(hf)})
    pq.write_table(t, path, row_group_size=2)


def test_parquet_rows_by_row_group_and_class_label_names(tmp_path):
    (tmp_path / "pq").mkdir()
    write_parquet(tmp_path / "pq" / "train-0.parquet", [1, 2, 3], [0, 1, 1], ["a", "b"])
    write_parquet(tmp_path / "pq" / "train-1.parquet", [4, 5], [1, 0], ["a", "b"])
    m = build_manifests(cfg_for(tmp_path, format="parquet", train_list=str(tmp_path / "pq")).data)["train"]
    assert m.class_names == ["a", "b"] and m.labels.tolist() == [0, 1, 1, 1, 0]
    assert m.paths[3] == "train-1.parquet/00000000"
    assert [int(np.asarray(open_image(m, i))[0, 0, 0]) for i in (4, 0, 2, 3)] == [5, 1, 3, 4]
    with pytest.raises(DataError, match="no column 'pixels'"):
        build_manifests(
            cfg_for(tmp_path, format="parquet", train_list=str(tmp_path / "pq"), image_column="pixels").data
        )


def test_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    images = [Image.fromarray(np.full((8, 8, 3), v, dtype=np.uint8)) for v in (11, 22, 33)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [1, 0, 1]}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(tmp_path / "hf"))
    ms = build_manifests(cfg_for(tmp_path, format="hf", root=str(tmp_path / "hf")).data)
    assert ms["train"].class_names == ["x", "y"] and ms["train"].labels.tolist() == [1, 0, 1]
    assert len(ms["test"]) == 1 and int(np.asarray(open_image(ms["test"], 0))[0, 0, 0]) == 33
    assert int(np.asarray(open_image(ms["train"], 1))[0, 0, 0]) == 22
