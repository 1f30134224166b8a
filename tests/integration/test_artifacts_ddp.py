"""Artifacts built once, in parallel: `teach` / `embed` split across torchrun ranks or `--shard I/N` job arrays,
and `train` under torchrun builds a missing teacher cache once (sharded), never on every rank."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_image_folder
from helpers_dist import torchrun
from helpers_tiny_models import make_tiny_hf_clip
from vlmkd.cli import main

SHARDS = 5  # 24 images in shards of 5 rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("artifacts")
    clip = make_tiny_hf_clip(base / "clip")
    data = make_image_folder(base / "data", per_class=(8, 8, 8), size=16)
    return {"clip": Path(clip), "data": data}


def config(path: Path, tiny: dict, cache: Path, **sections) -> Path:
    cfg = {
        "data": {
            "format": "image_folder",
            "root": str(tiny["data"]),
            "image_size": 16,
            "in_chans": 3,
            "batch_size": 8,
        },
        "clip": {"name": f"hf:{tiny['clip']}", "batch_size": 4, "cache_dir": str(cache), "shard_size": 5},
        "train": {"device": "cpu"},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path


def features(cache: Path) -> np.ndarray:
    (path,) = cache.glob("*/features.npy")
    return np.load(path)


def test_job_array_shards_merge_to_the_one_process_cache(tmp_path, tiny, capsys):
    one = config(tmp_path / "one.yaml", tiny, tmp_path / "one")
    assert main(["teach", str(one)]) == 0
    arr = config(tmp_path / "arr.yaml", tiny, tmp_path / "arr")
    assert main(["teach", str(arr), "--merge"]) == 2  # nothing computed yet: one line saying what is missing
    assert "shards are missing" in capsys.readouterr().err
    assert main(["teach", str(arr), "--shard", "1/2"]) == 0
    assert "shards of process 1/2 written" in capsys.readouterr().out
    assert not list((tmp_path / "arr").glob("*/features.npy"))
    assert main(["teach", str(arr), "--shard", "0/2"]) == 0  # the last one to finish merges
    assert np.array_equal(features(tmp_path / "arr"), features(tmp_path / "one"))
    # a job-array merge keeps the shards (another job may be merging too); the explicit --merge step removes them
    assert len(list((tmp_path / "arr").glob("*/shard_*.npy"))) == SHARDS
    assert main(["teach", str(arr), "--merge"]) == 0
    assert not list((tmp_path / "arr").glob("*/shard_*.npy"))


class HashEncoder:
    """A deterministic fake text encoder: counts the texts it encodes."""

    encoder_id, dim = "fake:hash", 8

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += list(texts)
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])


def test_embed_job_array_equals_one_process(tmp_path, monkeypatch):
    import vlmkd.text.store as store

    monkeypatch.setattr(store, "EMBED_SHARD", 3)
    texts = [f"text {i % 7}" for i in range(20)]  # 7 distinct texts: shards of 3, 3, 1
    one = store.embed_texts(texts, HashEncoder(), tmp_path / "one")
    encoders = [HashEncoder(), HashEncoder()]
    assert store.embed_texts(texts, encoders[1], tmp_path / "arr", shard=(1, 2)) is None
    merged = store.embed_texts(texts, encoders[0], tmp_path / "arr", shard=(0, 2))
    assert np.array_equal(np.asarray(merged.array), np.asarray(one.array)) and merged.ids == one.ids
    assert sorted(encoders[0].seen + encoders[1].seen) == sorted(
        set(texts)
    )  # each distinct text encoded once


def shard_lines(stderr: str, what: str) -> list[str]:
    return re.findall(rf"{what}: shard (\d+)/\d+ \(rows [^)]*\) computed by process (\d)/2", stderr)


@pytest.mark.slow
def test_two_process_teach_equals_one_process(tmp_path, tiny):
    one = config(tmp_path / "one.yaml", tiny, tmp_path / "one")
    assert main(["teach", str(one)]) == 0
    two = config(tmp_path / "two.yaml", tiny, tmp_path / "two")
    r = torchrun(2, ["teach", str(two)])
    done = shard_lines(r.stderr, "teacher features")
    assert sorted(int(s) for s, _ in done) == list(range(1, SHARDS + 1))  # every shard once
    assert {p for _, p in done} == {"0", "1"}  # by both ranks
    assert r.stderr.count("teacher features: merged") == 1
    assert np.array_equal(features(tmp_path / "two"), features(tmp_path / "one"))
    assert not list((tmp_path / "two").glob("*/shard_*.npy"))


@pytest.mark.slow
def test_two_process_train_builds_missing_teacher_caches_once(tmp_path, tiny):
    import timm
    import torch

    ckpt = (
        tmp_path / "kd_teacher.pt"
    )  # a timm teacher for the cached-logits path (random weights, no download)
    torch.save(timm.create_model("test_efficientnet", num_classes=3).state_dict(), ckpt)
    cfg = config(
        tmp_path / "train.yaml",
        tiny,
        tmp_path / "cache",
        model={"name": "cnn_tiny", "head": "both"},
        losses={
            "cls": {"name": "balanced_softmax"},
            "mse": {"name": "mse", "weight": 1.0},
            "kd": {"name": "kd", "weight": 1.0},
        },
        teacher={
            "name": "test_efficientnet",
            "checkpoint": str(ckpt),
            "mode": "cached",
            "cache_dir": str(tmp_path / "logits"),
        },
        train={"epochs": 1, "max_steps": 2, "tensorboard": False, "output_dir": str(tmp_path / "runs")},
        eval={"every": 0},
    )
    r = torchrun(2, ["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    done = shard_lines(r.stderr, "teacher features")
    assert sorted(int(s) for s, _ in done) == list(range(1, SHARDS + 1))  # built once, split over the ranks
    assert r.stderr.count("teacher features: merged") == 1
    assert features(tmp_path / "cache").shape == (24, 16)
    assert len(shard_lines(r.stderr, "teacher logits")) == 1  # one shard of 24 rows: one rank, not both
    (logits,) = (tmp_path / "logits").glob("*/logits.npy")
    assert np.load(logits).shape == (24, 3) and not list((tmp_path / "logits").glob("*/shards/*"))
    assert (tmp_path / "run" / "student.safetensors").is_file()
