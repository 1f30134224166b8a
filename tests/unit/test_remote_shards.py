"""WebDataset shards over HTTP (a local Range server, as object storage answers): the same samples as the local
shards, a batch's images requested at once, and the bad-input policy unchanged."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
import torch
from test_shards import cfg_for, png, write_tar

from helpers_range_server import RangeServer
from vlmkd.data import build_manifests, shards
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.errors import DataError, StorageError
from vlmkd.teachers.features import TeacherViews
from vlmkd.teachers.replay import ReplayedViews

pytest.importorskip("aiohttp")  # fsspec's http(s) filesystem (vlmkd[remote])


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKD_INDEX_CACHE", str(tmp_path / "index_cache"))


def manifest(spec: str, **data):
    return build_manifests(cfg_for(None, format="wds", train_list=spec, **data).data)["train"]


def seeded(m, **kw) -> ManifestDataset:
    ds = ManifestDataset(m, transform=lambda im: torch.from_numpy(np.array(im)), **kw)
    ds.seed = 0
    return ds


def test_a_batch_over_http_is_requested_at_once_and_equals_the_local_items(tmp_path):
    for s in range(2):
        members = [
            (f"{s}{k:02d}.{ext}", b"%d" % (k % 3) if ext == "cls" else png(10 * s + k))
            for k in range(8)
            for ext in ("cls", "png")
        ]
        write_tar(tmp_path / f"s-{s}.tar", members)
    local = manifest(str(tmp_path / "s-{0..1}.tar"))
    with RangeServer(tmp_path, latency_s=0.02) as srv:
        remote = manifest(srv.url + "/s-{0..1}.tar")
        assert remote.key() == local.key() and list(remote.ids) == list(local.ids)
        ds, ref = seeded(remote), seeded(local)
        idx = [9, 3, 14, 0, 7, 7]  # across both shards, one repeated (samplers with replacement)
        srv.max_in_flight = 0
        one_by_one = [ds[i] for i in idx]
        assert srv.max_in_flight == 1  # item by item: one request after the other
        srv.max_in_flight, before = 0, srv.requests
        batch = ds.__getitems__(idx)
        assert srv.requests - before == len(idx) and srv.max_in_flight > 1  # the batch's requests overlapped
    for a, b, c in zip(batch, one_by_one, ref.__getitems__(idx)):
        assert a.keys() == b.keys() == c.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(c[k])), k


def test_bad_samples_in_a_batch_over_http_follow_the_policy(tmp_path):
    write_tar(
        tmp_path / "s.tar",
        [
            ("a.cls", b"0"),
            ("a.png", png(5)),
            ("b.cls", b"1"),
            ("c.cls", b"1"),
            ("c.jpg", b"not a jpeg"),
            ("d.cls", b"0"),
            ("d.png", png(6)),
        ],
    )
    with RangeServer(tmp_path) as srv:
        m = manifest(srv.url + "/s.tar")
        with pytest.raises(DataError, match=r"'b' in shard .*s\.tar.* has no image member"):
            seeded(m).__getitems__([0, 1, 2])
        with pytest.raises(DataError, match=r"s\.tar:c.* corrupt or truncated"):
            seeded(m).__getitems__([0, 2])
        ds = seeded(m, on_bad_image="skip", replace_bad=True)
        batch = collate_skip(ds.__getitems__([0, 1, 2, 3]))
        ref = collate_skip([ds[i] for i in range(4)])
    assert batch["skipped"] == ref["skipped"] == 2 and batch["skipped_files"] == ref["skipped_files"] == [
        "b",
        "c",
    ]
    assert torch.equal(batch["image"], ref["image"]) and batch["index"].tolist() == [0, 3, 3, 3]


def test_a_missing_shard_over_http_is_one_line(tmp_path):
    write_tar(tmp_path / "s-0.tar", [("a.cls", b"0"), ("a.png", png(5))])
    with (
        RangeServer(tmp_path) as srv,
        pytest.raises(DataError, match=r"s-1\.tar' does not exist or cannot be"),
    ):
        manifest(srv.url + "/s-{0..1}.tar")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_protocol_without_its_package_is_one_line():
    with pytest.raises(
        DataError, match=r"reading 's3://bucket/[^']+': Install s3fs to access S3; pip install"
    ):
        manifest("s3://bucket/s-{0..0}.tar")


def test_shards_over_http_are_indexed_in_parallel_and_each_once(tmp_path, monkeypatch):
    """Two builders at once (the ranks of a node share the index cache) over 8 shards: each shard is scanned once,
    in parallel threads, and the indexes equal the local shards' offsets and keys."""
    for s in range(8):
        write_tar(
            tmp_path / f"s-{s}.tar",
            [(f"{s}{k}.cls", b"0") for k in range(3)] + [(f"{s}{k}.png", png(k)) for k in range(3)],
        )
    scanned, lock = [], threading.Lock()
    scan = shards.scan_shard

    def counting(url):
        with lock:
            scanned.append(url)
        return scan(url)

    monkeypatch.setattr(shards, "scan_shard", counting)
    local = [shards.shard_index(str(tmp_path / f"s-{s}.tar")) for s in range(8)]
    scanned.clear()
    with RangeServer(tmp_path, latency_s=0.02) as srv:
        urls = [f"{srv.url}/s-{s}.tar" for s in range(8)]
        start, results = threading.Barrier(2), [None, None]

        def build(k):
            start.wait()
            results[k] = list(shards.shard_indexes(urls))

        threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.max_in_flight > 1
    assert sorted(scanned) == sorted(urls)  # each once, though two builders wanted every one
    for got in results:
        assert [i["samples"] for i in got] == [i["samples"] for i in local]


class _Teacher:
    """What TeacherViews reads of a teacher: its preprocessing (a plain 8 px tensor transform here)."""

    def preprocess_config(self) -> dict:
        return {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}

    def preprocess(self, im):
        return torch.from_numpy(np.array(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def test_teach_datasets_over_http_request_a_batch_at_once(tmp_path):
    """`vlmkd teach`'s datasets (the clean teacher views, the replayed augmented views) fetch like training."""
    members = [
        (f"{k:02d}.{ext}", b"0" if ext == "cls" else png(k)) for k in range(8) for ext in ("cls", "png")
    ]
    write_tar(tmp_path / "s-0.tar", members)
    with RangeServer(tmp_path, latency_s=0.02) as srv:
        spec = srv.url + "/s-{0..0}.tar"
        cfg = cfg_for(None, format="wds", train_list=spec, image_size=8)
        m = build_manifests(cfg.data)["train"]
        for ds in (TeacherViews(_Teacher(), m, "clean"), ReplayedViews(m, cfg.data, num_views=2)):
            one_by_one = [ds[i] for i in range(8)]
            srv.max_in_flight = 0
            batch = ds.__getitems__(list(range(8)))
            assert srv.max_in_flight > 1, type(ds).__name__
            for a, b in zip(batch, one_by_one):
                assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_a_shard_gone_from_storage_is_one_line_and_never_skipped(tmp_path):
    """A storage failure is not a bad image: one line naming shard and key, even under data.on_bad_image=skip."""
    write_tar(tmp_path / "s-0.tar", [("a.cls", b"0"), ("a.png", png(5)), ("b.cls", b"0"), ("b.png", png(6))])
    with RangeServer(tmp_path) as srv:
        m = manifest(srv.url + "/s-{0..0}.tar")
        (tmp_path / "s-0.tar").unlink()  # deleted from the bucket after indexing: every read is a 404
        ds = seeded(m, on_bad_image="skip", replace_bad=True)
        for read in (lambda: ds[0], lambda: ds.__getitems__([0, 1])):
            with pytest.raises(
                StorageError, match=r"reading sample 'a' from shard .*s-0\.tar' failed \(.*\); check"
            ):
                read()
