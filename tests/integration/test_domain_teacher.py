"""`vlmkd teacher train` / `eval`: the in-house CLIP-style teacher trained into the frozen MiniLM space."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import make_image_folder
from vlmkd.cli import main
from vlmkd.config import DataConfig
from vlmkd.teachers.base import VisionLanguageTeacher
from vlmkd.teachers.domain import AUTO_MAX_SIZE, DomainTrainSettings, load_domain_teacher, resolve_size

CLASSES = ("cat", "dog", "owl")


def teacher_config(tmp_path: Path, root: Path, **domain) -> Path:
    sentences = tmp_path / "sentences.json"
    sentences.write_text(json.dumps({c: [f"a {c} with {c}-like fur."] for c in CLASSES}))
    cfg = {
        "data": {"format": "image_folder", "root": str(root), "image_size": 16, "in_chans": 3},
        "classtext": {"sentences_file": str(sentences), "output": str(tmp_path / "classtext")},
        "domain": {
            "backbone": "cnn_tiny",
            "split": "train",
            "epochs": 15,
            "batch_size": 8,
            "lr": 0.01,
            "output": str(tmp_path / "teacher"),
            **domain,
        },
        "train": {"device": "cpu"},
    }
    p = tmp_path / "teacher.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture
def colours(tmp_path):
    return make_image_folder(tmp_path / "d", classes=CLASSES, per_class=(16, 16, 16), size=16)


def test_teacher_train_learns_reuses_and_loads(tmp_path, colours, capsys):
    cfg = teacher_config(tmp_path, colours)
    assert main(["teacher", "train", str(cfg)]) == 0
    folders = [p for p in (tmp_path / "teacher").iterdir() if (p / "teacher.json").is_file()]
    assert len(folders) == 1
    folder = folders[0]
    zs = json.loads((folder / "zero_shot_test.json").read_text())
    # Three colour-coded classes: a trained tower separates them far above chance (1/3).
    assert zs["enriched"]["overall"] >= 0.66, zs
    assert "plain" in zs
    records = [json.loads(x) for x in (tmp_path / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert sum("teacher_loss" in r for r in records) == 15

    # Same config again: the teacher is reused, not retrained.
    assert main(["teacher", "train", str(cfg)]) == 0
    records = [json.loads(x) for x in (tmp_path / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert sum("teacher_loss" in r for r in records) == 15
    assert any(r.get("event") == "domain_teacher_reused" for r in records)

    teacher = load_domain_teacher(folder)
    assert isinstance(teacher, VisionLanguageTeacher)
    img = teacher.encode_image(torch.rand(2, 3, 16, 16))
    txt = teacher.encode_text(["a photo of a cat."])
    assert img.shape == (2, teacher.embed_dim) and txt.shape == (1, teacher.embed_dim) == (1, 384)
    assert not any(p.requires_grad for p in teacher.parameters())

    assert main(["teacher", "eval", str(folder), str(cfg)]) == 0
    assert "zero-shot on test (enriched class texts)" in capsys.readouterr().out


def test_teacher_train_errors_are_one_line(tmp_path, colours, capsys):
    cfg = teacher_config(tmp_path, colours)
    assert main(["teacher", "train", str(cfg), "domain.split=pool"]) == 2
    assert "domain.split='pool' does not exist" in capsys.readouterr().err
    assert main(["teacher", "train", str(cfg), "classtext.sentences_file=null"]) == 2
    assert "domain.texts=templates" in capsys.readouterr().err


def test_teacher_train_refuses_torchrun(tmp_path, colours, capsys, monkeypatch):
    """Under torchrun every rank would train the same tower into the same folder: one line says what to do."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["teacher", "train", str(teacher_config(tmp_path, colours))]) == 2
    err = capsys.readouterr().err
    assert "runs in one process; run it without torchrun" in err and "clip.name=domain:DIR" in err
    assert not (tmp_path / "teacher").exists()


def _teacher_folders(tmp_path: Path) -> set[Path]:
    return {p for p in (tmp_path / "teacher").iterdir() if (p / "teacher.json").is_file()}


def test_teacher_has_its_own_input_size_in_its_key(tmp_path, colours, capsys):
    """The tower trains at domain.image_size (auto: the data's size, capped at 64 px) and saves it, so every later
    stage feeds it alike; the size is part of the teacher's key (a teacher trained at another size used to be
    reused silently, since the key held only its settings)."""
    cfg = teacher_config(tmp_path, colours)
    assert main(["teacher", "train", str(cfg)]) == 0
    (auto,) = _teacher_folders(tmp_path)
    assert load_domain_teacher(auto).preprocess_config()["image_size"] == 16  # auto: the data's 16 px
    assert main(["teacher", "train", str(cfg), "data.image_size=12"]) == 0
    (smaller,) = _teacher_folders(tmp_path) - {auto}
    assert load_domain_teacher(smaller).preprocess_config()["image_size"] == 12
    capsys.readouterr()
    assert main(["teacher", "train", str(cfg), "domain.image_size=8"]) == 0
    assert "3 classes, 8 px) ->" in capsys.readouterr().out
    (own,) = _teacher_folders(tmp_path) - {auto, smaller}
    teacher = load_domain_teacher(own)
    assert teacher.preprocess_config()["image_size"] == 8
    assert json.loads((own / "teacher.json").read_text())["settings"]["image_size"] == 8
    assert teacher.preprocess(Image.new("RGB", (40, 30))).shape == (3, 8, 8)
    capsys.readouterr()
    assert main(["teacher", "train", str(cfg), "domain.image_size=4"]) == 2
    assert "domain.image_size must be auto or an integer >= 8, got 4" in capsys.readouterr().err


def test_auto_size_is_capped():
    for data_size, want in ((28, 28), (64, 64), (224, AUTO_MAX_SIZE)):
        s, d = resolve_size(DomainTrainSettings(), DataConfig(image_size=data_size))
        assert s.image_size == d.image_size == want
    s, d = resolve_size(DomainTrainSettings(image_size=96), DataConfig(image_size=224))
    assert s.image_size == d.image_size == 96
