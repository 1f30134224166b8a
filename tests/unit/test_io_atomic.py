"""Atomic writes (umask permissions, no temp file left, stale temps of killed writers removed) and content
fingerprints (weights, not mtimes, enter the keys of local encoder folders and teacher checkpoints)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from vlmkd.teachers.clip import fingerprint
from vlmkd.text.store import embedding_key, encoder_weights
from vlmkd.utils.io import atomic_path, write_json


@pytest.fixture(autouse=True)
def fingerprint_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKD_CACHE_DIR", str(tmp_path / "fp_cache"))


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0o600
    assert os.listdir(tmp_path) == ["a.json"]


def test_files_replaced_by_their_writer_follow_the_umask_too(tmp_path):
    """safetensors replaces the temp file it is given with an owner-only one (student.safetensors was 0o600)."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        with atomic_path(tmp_path / "r.bin") as tmp:  # a writer that removes and recreates the file
            tmp.unlink()
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    finally:
        os.umask(old)
    for name in ("w.safetensors", "r.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_failed_write_leaves_no_temp_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.npy") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_temp_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".c.json.{host}.{int(dead.stdout)}.abc123.tmp"  # its writer was SIGKILLed mid-write
    live = tmp_path / f".c.json.{host}.{os.getppid()}.def456.tmp"  # a concurrent writer still at work
    stale.write_text("{")
    live.write_text("{")
    write_json(tmp_path / "c.json", [1])
    assert sorted(os.listdir(tmp_path)) == sorted(["c.json", live.name])


def test_local_encoder_key_follows_weights_not_mtime(tmp_path):
    folder = tmp_path / "encoder"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights-v1")
    (folder / "config.json").write_text("{}")
    enc_id = f"sentence_transformers:{folder}"
    key = embedding_key(enc_id, ["a"], ["0"], encoder_weights(enc_id))
    clip_fp = fingerprint(folder)
    os.utime(weights, ns=(1, 1))  # touched (or copied elsewhere with new mtimes): same contents, same key
    assert embedding_key(enc_id, ["a"], ["0"], encoder_weights(enc_id)) == key
    assert fingerprint(folder) == clip_fp
    weights.write_bytes(b"weights-v2")  # retrained and saved to the same folder: a new key
    os.utime(weights, ns=(1, 1))  # same size, old mtime restored: still seen as changed
    assert embedding_key(enc_id, ["a"], ["0"], encoder_weights(enc_id)) != key
    assert fingerprint(folder) != clip_fp
    assert encoder_weights("sentence_transformers:sentence-transformers/all-MiniLM-L6-v2") is None  # a hub id


def test_vision_teacher_id_follows_checkpoint_bytes_not_mtime(tmp_path):
    import timm
    import torch

    from vlmkd.config import VisionTeacherConfig
    from vlmkd.teachers.vision import load_vision_teacher

    ckpt = tmp_path / "teacher.pt"
    torch.save(timm.create_model("test_convnext", num_classes=3).state_dict(), ckpt)
    cfg = VisionTeacherConfig(name="test_convnext", checkpoint=str(ckpt))
    _, first = load_vision_teacher(cfg, 3, 3, torch.device("cpu"))
    os.utime(ckpt, ns=(1, 1))
    assert load_vision_teacher(cfg, 3, 3, torch.device("cpu"))[1] == first  # touched: the same teacher
    torch.save(timm.create_model("test_convnext", num_classes=3).state_dict(), ckpt)  # new random weights
    assert load_vision_teacher(cfg, 3, 3, torch.device("cpu"))[1] != first
