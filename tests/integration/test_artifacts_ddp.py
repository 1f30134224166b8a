"""Artifacts built once, in parallel: `teach` / `embed` / `classtext` split across torchrun ranks or `--shard I/N`
job arrays, and `train` under torchrun builds a missing teacher cache once (sharded), never on every rank."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_image_folder
from helpers_dist import torchrun
from helpers_embed_entry import EMBED_ROWS
from helpers_tiny_models import make_tiny_hf_clip
from vlmkd.cli import main
from vlmkd.describe import DescriptionStore
from vlmkd.text import EmbeddingStore, build_text_encoder, class_embedding_matrix
from vlmkd.text.classtext import load_class_texts
from vlmkd.text.store import description_ids
from vlmkd.utils.io import read_json

# vlmkd with shards of EMBED_ROWS texts
ENTRY = Path(__file__).resolve().parents[1] / "helpers_embed_entry.py"

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
    # each distinct text encoded once
    assert sorted(encoders[0].seen + encoders[1].seen) == sorted(set(texts))


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

    # a timm teacher for the cached-logits path (random weights, no download)
    ckpt = tmp_path / "kd_teacher.pt"
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


# ------------------------------------------------------------------ embed / classtext under torchrun (MiniLM, CPU)

SENTENCES = {  # 4 per class, one repeated: 12 class texts, 11 distinct -> shards of 5, 5, 1
    "cat": ["it has whiskers.", "it is small.", "it has whiskers.", "it purrs."],
    "dog": ["it has a tail.", "it barks.", "it is loyal.", "it runs."],
    "owl": ["it has feathers.", "it hoots.", "it flies at night.", "it has big eyes."],
}


@pytest.fixture(scope="module")
def texts_config(tiny, tmp_path_factory) -> Path:
    """Interrogate descriptions (2 per image: 48 texts, 16 distinct) and enriched class texts from a sentences
    file; `embed.output` / `classtext.output` are given per run."""
    base = tmp_path_factory.mktemp("texts")
    (base / "sentences.json").write_text(json.dumps(SENTENCES))
    path = config(
        base / "texts.yaml",
        tiny,
        base / "cache",
        describe={
            "backend": "interrogate",
            "n_descriptions": 2,
            "output": str(base / "desc"),
            "device": "cpu",
        },
        embed={"device": "cpu"},
        classtext={"enriched": True, "sentences_file": str(base / "sentences.json")},
    )
    assert main(["describe", str(path)]) == 0
    return path


def writes(stderr: str, name: str) -> list[str]:
    """The processes that wrote a JSON file called `name` (lines printed by helpers_embed_entry)."""
    return re.findall(rf"wrote {re.escape(name)} by process (\d)", stderr)


def assert_split_once(stderr: str, shards: int) -> None:
    """Every embed shard computed exactly once, by both ranks between them, and merged once by rank 0."""
    done = shard_lines(stderr, "embed")
    assert sorted(int(s) for s, _ in done) == list(range(1, shards + 1))
    assert {p for _, p in done} == {"0", "1"}
    assert writes(stderr, "meta.json") == ["0"]  # the merge (meta.json marks a complete store)


def assert_same_store(two: EmbeddingStore, one: EmbeddingStore) -> None:
    assert two.ids == one.ids and two.key == one.key and two.meta == one.meta
    # same shards of the same texts, so the same encoder batches: bitwise, not merely close
    assert np.array_equal(np.asarray(two.array), np.asarray(one.array))
    assert not (two.path / "shards").exists()
    assert read_json(two.path.parent / "LATEST") == {"key": two.key, "folder": two.key[:16]}
    leftovers = {p.name for p in two.path.parent.iterdir()} - {"LATEST", two.path.name}
    assert not leftovers  # no stray temporary files


def one_process(texts_config: Path, stage: str, out: Path) -> None:
    """`vlmkd STAGE` in this process, with the shards of EMBED_ROWS texts that torchrun's processes use."""
    import vlmkd.text.store as store

    with one_thread(), pytest.MonkeyPatch.context() as m:
        m.setattr(store, "EMBED_SHARD", EMBED_ROWS)
        assert main([stage, str(texts_config), f"{stage}.output={out}"]) == 0


@contextlib.contextmanager
def one_thread():
    """One thread, as torchrun's processes have (helpers_dist): bitwise equality needs the same summation order
    as well as the same encoder batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embedded(texts_config) -> EmbeddingStore:
    one_process(texts_config, "embed", texts_config.parent / "one")
    return EmbeddingStore(texts_config.parent / "one")


@pytest.mark.slow
def test_two_process_embed_equals_one_process(tmp_path, texts_config, embedded):
    r = torchrun(2, ["embed", str(texts_config), f"embed.output={tmp_path / 'two'}"], entry=ENTRY)
    assert_split_once(r.stderr, shards=4)  # 16 distinct descriptions in shards of 5
    assert writes(r.stderr, "LATEST") == ["0"]
    assert r.stdout.count("48 texts (16 distinct) x 384") == 1  # reported by rank 0 only
    assert_same_store(EmbeddingStore(tmp_path / "two"), embedded)
    # and each row is its own text's embedding (an order error shared by 1 and 2 processes passes the above)
    desc = DescriptionStore(texts_config.parent / "desc").load()
    rows = embedded.lookup(description_ids(desc["sample_id"], desc["k"])).astype(np.float32)
    encoder = build_text_encoder("sentence_transformers", None, None, "cpu", 256)
    assert np.allclose(rows, encoder.encode(list(desc["text"])), atol=2e-3)  # float16 rows, other batches


def test_classtext_job_array_points_latest_at_the_merged_store(
    tmp_path, texts_config, monkeypatch, capsys, caplog
):
    import vlmkd.text.store as store

    monkeypatch.setattr(store, "EMBED_SHARD", EMBED_ROWS)  # 11 distinct class texts: 3 shards
    args = ["classtext", str(texts_config), f"classtext.output={tmp_path}"]
    assert main([*args, "--merge"]) == 2  # nothing written yet: a merge computes nothing
    assert "run every `--shard I/N` first" in capsys.readouterr().err
    assert main([*args, "--shard", "1/2"]) == 0
    assert "or run `vlmkd classtext CONFIG --merge` when all are done" in caplog.text  # not `vlmkd embed`
    assert not (tmp_path / "LATEST").exists()  # the class texts' pointer waits for their embeddings
    assert main([*args, "--shard", "0/2"]) == 0  # the last one to finish merges
    (folder,) = tmp_path.glob("*/classtexts.json")
    assert read_json(tmp_path / "LATEST")["folder"] == folder.parent.name
    assert len(EmbeddingStore(folder.parent / "embeddings")) == 12
    assert main([*args, "--merge"]) == 0  # the explicit merge step removes the shards the jobs kept
    assert not list(folder.parent.glob("embeddings/*/shards/*.npy"))


@pytest.mark.slow
def test_two_process_classtext_equals_one_process(tmp_path, texts_config):
    one_process(texts_config, "classtext", tmp_path / "one")
    r = torchrun(2, ["classtext", str(texts_config), f"classtext.output={tmp_path / 'two'}"], entry=ENTRY)
    assert_split_once(r.stderr, shards=3)
    assert writes(r.stderr, "classtexts.json") == ["0"]
    assert writes(r.stderr, "LATEST") == ["0", "0"]  # the embedding store's pointer, then the classtext one
    assert r.stdout.count("3 classes, 12 texts") == 1
    one, two = load_class_texts(tmp_path / "one"), load_class_texts(tmp_path / "two")
    assert two == one and [len(t) for t in two["texts"]] == [4, 4, 4]
    (folder,) = (tmp_path / "two").glob("*/classtexts.json")
    emb = EmbeddingStore(folder.parent / "embeddings")
    assert_same_store(emb, EmbeddingStore(next((tmp_path / "one").glob("*/embeddings"))))
    assert class_embedding_matrix(emb, 3).shape == (3, 384)  # raises if a class has no text


@pytest.mark.slow
def test_two_process_embed_resumes_from_the_shards_of_a_killed_run(
    tmp_path, texts_config, embedded, monkeypatch
):
    import vlmkd.text.store as store

    monkeypatch.setattr(store, "EMBED_SHARD", EMBED_ROWS)
    args = ["embed", str(texts_config), f"embed.output={tmp_path / 'emb'}"]
    with one_thread():
        assert main([*args, "--shard", "1/2"]) == 0  # process 1's shards (2 and 4) are written, then
    (parts,) = (tmp_path / "emb").glob("*/shards")
    (parts / "shard_00003.npy").unlink()  # its last one is lost, as if killed before writing it
    r = torchrun(2, args, entry=ENTRY)
    done = shard_lines(r.stderr, "embed")
    assert sorted(done) == [("1", "0"), ("3", "0"), ("4", "1")]  # only the missing shards, each once
    assert_same_store(EmbeddingStore(tmp_path / "emb"), embedded)
