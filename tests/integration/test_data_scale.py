"""The same images as files, as WebDataset shards (`vlmkd data pack`) and as Parquet: the same training, evaluation,
descriptions, teacher features, resume, and 2-process run over shards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_image_folder
from helpers_range_server import RangeServer
from vlmkd.cli import main
from vlmkd.compose import build_run
from vlmkd.config import DescribeConfig, load_config
from vlmkd.data import build_manifests
from vlmkd.describe import DescriptionStore, describe_manifest
from vlmkd.describe.base import Description

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def index_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VLMKD_INDEX_CACHE", str(tmp_path_factory.getbasetemp() / "index_cache"))


def config(path: Path, data: dict, **sections) -> Path:
    cfg = {
        "data": {"image_size": 16, "in_chans": 3, "batch_size": 32, "eval_batch_size": 64, **data},
        "model": {"name": "cnn_tiny"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "max_steps": 4, "device": "cpu", "tensorboard": False, "log_every": 1},
        "eval": {"every": 0},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_parquet(files, out: Path) -> None:
    """The file manifests' bytes as Parquet (Hugging Face layout: Image struct, ClassLabel names in the schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    for split, m in files.items():
        root = Path(m.root)
        image = pa.array(
            [{"bytes": (root / p).read_bytes(), "path": Path(p).name} for p in m.paths],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
        t = pa.table({"path": pa.array(list(m.paths)), "image": image, "label": pa.array(m.labels)})
        hf = {"info": {"features": {"label": {"_type": "ClassLabel", "names": m.class_names}}}}
        pq.write_table(
            t.replace_schema_metadata({"huggingface": json.dumps(hf)}),
            out / f"{split}.parquet",
            row_group_size=64,
        )


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    """500 training images (+ 30 test) as a folder, as shards and as Parquet, with one config each."""
    base = tmp_path_factory.mktemp("scale")
    os.environ["VLMKD_INDEX_CACHE"] = str(tmp_path_factory.getbasetemp() / "index_cache")
    data = make_image_folder(base / "files", per_class=(200, 170, 130), size=16, test_per_class=10)
    files = config(base / "files.yaml", {"format": "image_folder", "root": str(data)})
    assert main(["data", "pack", str(files), str(base / "shards"), "--shard-size", "200KB"]) == 0
    write_parquet(build_manifests(load_config(files).data), base / "pq")
    pq = {
        "format": "parquet",
        "train_list": str(base / "pq/train.parquet"),
        "test_list": str(base / "pq/test.parquet"),
    }
    return {
        "base": base,
        "files": files,
        "wds": config(base / "wds.yaml", {"format": "wds", "root": str(base / "shards")}),
        "parquet": config(base / "pq.yaml", pq),
    }


def test_files_shards_and_parquet_train_and_evaluate_identically(sets):
    info = json.loads((sets["base"] / "shards/pack.json").read_text())
    assert len(info["splits"]["train"]["shards"]) >= 3
    runs = {}
    for name in ("files", "wds", "parquet"):
        run = sets["base"] / f"run_{name}"
        assert main(["train", str(sets[name]), "--run-dir", str(run)]) == 0
        runs[name] = (load_file(run / "student.safetensors"), json.loads((run / "summary.json").read_text()))
    ref_w, ref_s = runs["files"]
    for name in ("wds", "parquet"):
        w, s = runs[name]
        assert w.keys() == ref_w.keys()
        for k in w:
            assert torch.equal(w[k], ref_w[k]), (name, k)
        assert s["splits"] == ref_s["splits"], name


def test_shards_over_http_train_like_local_shards(sets):
    """Shards served over HTTP with Range requests (object storage's protocol), read by 2 forked loader workers
    that fetch each batch's images at once, train to the weights the local shards give."""
    pytest.importorskip("aiohttp")
    base = sets["base"]
    info = json.loads((base / "shards/pack.json").read_text())
    over = ["data.num_workers=2", "train.max_steps=3"]
    local = base / "run_local_shards"
    assert main(["train", str(sets["wds"]), "--run-dir", str(local), *over]) == 0
    with RangeServer(base / "shards", latency_s=0.005) as srv:
        lists = {
            f"data.{split}_list": f"{srv.url}/{split}-{{000000..{len(info['splits'][split]['shards']) - 1:06d}}}.tar"
            for split in ("train", "test")
        }
        remote = base / "run_http_shards"
        args = [f"{k}={v}" for k, v in lists.items()]
        assert (
            main(["train", str(sets["wds"]), "--run-dir", str(remote), *over, *args, "data.root=null"]) == 0
        )
        assert srv.range_requests > 0 and srv.max_in_flight > 1
    a, b = load_file(local / "student.safetensors"), load_file(remote / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (local, remote))
    assert sa["splits"] == sb["splits"]


class Counting:
    """A describer that records which images it was asked to describe."""

    backend = "fake"
    chunk_size = 8

    def __init__(self):
        self.calls = 0
        self.template = self.prompt = "p"

    def identity(self):
        return {"backend": "fake", "model": "m", "revision": None, "prompt": "p", "decoding": {}}

    def describe(self, images, class_names, n, on_done=None):
        self.calls += len(images)
        out = [
            [Description(f"{c} {im.getpixel((0, 0))}", None, 1, 1) for _ in range(n)]
            for im, c in zip(images, class_names)
        ]
        if on_done:
            on_done(len(images))
        return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """36 images in exactly 3 shards (for the resume, 2-process, describe and teach tests)."""
    base = tmp_path_factory.mktemp("small")
    os.environ["VLMKD_INDEX_CACHE"] = str(tmp_path_factory.getbasetemp() / "index_cache")
    data = make_image_folder(base / "files", per_class=(16, 12, 8), size=16)
    files = config(base / "files.yaml", {"format": "image_folder", "root": str(data)})
    sizes = [
        512 * 3 + math.ceil(p.stat().st_size / 512) * 512 + 512 * 2 for p in (data / "train").rglob("*.png")
    ]
    # what ShardWriter counts per sample; at most 3 shards, and at least 3 as no sample is that large
    cap = math.ceil(sum(sizes) / 3) + max(sizes)
    assert main(["data", "pack", str(files), str(base / "shards"), "--shard-size", str(cap)]) == 0
    assert len(json.loads((base / "shards/pack.json").read_text())["splits"]["train"]["shards"]) == 3
    return {
        "base": base,
        "files": files,
        "wds": config(base / "wds.yaml", {"format": "wds", "root": str(base / "shards")}),
    }


def test_descriptions_made_over_files_are_reused_over_shards(small, tmp_path):
    cfg = DescribeConfig(backend="fake", output=str(tmp_path / "desc"), n_descriptions=2)
    files = build_manifests(load_config(small["files"]).data)["train"]
    shards = build_manifests(load_config(small["wds"]).data)["train"]
    first, again = Counting(), Counting()
    a = describe_manifest(files, cfg, first)
    b = describe_manifest(shards, cfg, again)
    assert first.calls == 36 and again.calls == 0  # every shard sample found by its content key
    assert a == b and DescriptionStore(a).texts_by_id() == DescriptionStore(b).texts_by_id()


def test_teach_over_shards_writes_the_store_it_writes_over_files(small, tmp_path):
    from helpers_tiny_models import make_tiny_hf_clip
    from vlmkd.teachers.clip import load_clip_teacher
    from vlmkd.teachers.features import cache_folder

    clip = make_tiny_hf_clip(tmp_path / "clip")
    feats = {}
    for name in ("files", "wds"):
        cache = tmp_path / f"feats_{name}"
        over = [f"clip.name=hf:{clip}", f"clip.cache_dir={cache}", "clip.batch_size=8"]
        assert main(["teach", str(small[name]), *over, "--splits", "train"]) == 0
        cfg = load_config(small[name], over)
        folder = cache_folder(load_clip_teacher(cfg.clip.name), build_manifests(cfg.data)["train"], cfg.clip)
        feats[name] = (folder.name, np.load(folder / "features.npy"))
    assert feats["files"][0] == feats["wds"][0]  # the same key: a store built for the files serves the shards
    assert np.array_equal(feats["files"][1], feats["wds"][1])


def test_mid_epoch_kill_over_shards_resumes_exactly(small, tmp_path):
    over = [
        "train.epochs=2",
        "train.max_steps=null",
        "train.checkpoint_every=2",
        "data.num_workers=1",  # the shard reader inherited by a forked loader worker
        "data.batch_size=12",
    ]
    cfg = load_config(small["wds"], over)
    build_run(cfg, tmp_path / "full").fit()
    run = build_run(cfg, tmp_path / "cut")
    t = run.trainer
    calls, real_step = {"n": 0}, t._step

    def crashing_step(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # resumes from the step-4 checkpoint: 1 of epoch 2's 3 batches done
            raise KeyboardInterrupt
        return real_step(batch)

    t._step = crashing_step
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    build_run(cfg, tmp_path / "cut", resume=True).fit()
    a, b = load_file(tmp_path / "full/student.safetensors"), load_file(tmp_path / "cut/student.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(
        float((a[k].float() - b[k].float()).abs().max() / max(1.0, a[k].float().abs().max())) for k in a
    )


@pytest.mark.slow
def test_two_processes_over_three_shards_with_two_workers_equal_one(small, tmp_path):
    over = ["data.num_workers=2", "data.batch_size=8", "train.epochs=2", "train.max_steps=null"]
    assert main(["train", str(small["wds"]), "--run-dir", str(tmp_path / "one"), *over]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "VLMKD_NO_PROGRESS": "1"}
    port = str(29700 + os.getpid() % 1000)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    cmd += [
        "--master_port",
        port,
        "-m",
        "vlmkd",
        "train",
        str(small["wds"]),
        "--run-dir",
        str(tmp_path / "two"),
    ]
    r = subprocess.run([*cmd, *over], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (
        load_file(tmp_path / "one/student.safetensors"),
        load_file(tmp_path / "two/student.safetensors"),
    )
    assert max_diff(one, two) < 1e-5
