"""A live domain teacher is named in the run's record, and config.yaml stores its folder absolute."""

from __future__ import annotations

import yaml

from conftest import make_image_folder
from helpers_tiny_models import make_tiny_hf_clip
from vlmkd.config import DataConfig, load_config, save_config
from vlmkd.teachers.clip import load_clip_teacher
from vlmkd.teachers.domain import DomainTeacher, _tower
from vlmkd.text.encoders import build_text_encoder
from vlmkd.utils import provenance


def test_live_domain_teacher_is_recorded_and_its_path_saved_absolute(tmp_path, monkeypatch):
    hf_dir = make_tiny_hf_clip(tmp_path / "tiny_clip")
    data = DataConfig(format="image_folder", root=str(make_image_folder(tmp_path / "d")), image_size=16)
    spec = {
        "backbone": "cnn_tiny",
        "embed_dim": 16,
        "key": "k" * 64,
        "text_encoder": {"name": "hf_clip", "model": hf_dir},
    }
    enc = build_text_encoder("hf_clip", model=hf_dir)
    DomainTeacher(_tower("cnn_tiny", 1, 16), enc, data, 2.0, spec).requires_grad_(False).save(tmp_path / "dt")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["clip.name=domain:dt", "teacher.name=clip", "teacher.mode=live"])
    assert cfg.clip.name == f"domain:{tmp_path / 'dt'}"  # it was stored as `domain:dt`, relative to the cwd
    save_config(cfg, tmp_path / "config.yaml")
    assert (
        yaml.safe_load((tmp_path / "config.yaml").read_text())["clip"]["name"] == f"domain:{tmp_path / 'dt'}"
    )
    provenance.start_run()
    load_clip_teacher(cfg.clip.name)  # what a live KD teacher does: no feature cache records it
    assert provenance.snapshot()["models"]["clip_teacher"]["id"] == "domain:" + "k" * 16
