"""A zero-shot CLIP teacher must score against class texts of its own text tower, checked by more than width."""

from __future__ import annotations

import pytest
import torch
from test_teach import hf_class_texts, tiny, write_config  # noqa: F401 (tiny is a fixture)

from helpers_tiny_models import make_tiny_hf_clip
from vlmkd.cli import main
from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.errors import ConfigError
from vlmkd.tasks.build import build_task


@pytest.mark.parametrize("mode", ["live", "cached"])
def test_class_texts_of_another_tower_of_the_same_width_are_refused(tmp_path, tiny, mode):  # noqa: F811
    other = make_tiny_hf_clip(tmp_path / "other_clip", seed=1)  # 16-d, like the teacher: widths agree
    classtext = hf_class_texts(tmp_path, {**tiny, "clip": other}, tmp_path / "cache")
    cfg = load_config(
        write_config(
            tmp_path / "kd.yaml",
            tiny,
            tmp_path / "cache",
            model={"name": "cnn_tiny"},
            losses={"cls": {"name": "ce"}, "kd": {"name": "kd", "weight": 1.0}},
            teacher={"name": "clip", "mode": mode},
            text={"class_embeddings": str(classtext)},
        )
    )
    with pytest.raises(ConfigError, match=r"were embedded by hf_clip:.*other_clip.*not by the teacher hf:"):
        build_task(cfg, build_manifests(cfg.data), torch.device("cpu"))


def test_eval_teacher_scores_the_stored_class_texts_kd_uses(tmp_path, tiny, capsys):  # noqa: F811
    """`vlmkd eval --teacher` reports the teacher KD used: the stored class-text rows (once re-encoded with the
    teacher's tower, so another tower's texts silently reported a different teacher)."""
    run, own_dir, foreign_dir = tmp_path / "run", tmp_path / "own", tmp_path / "foreign"
    for d in (run, own_dir, foreign_dir):
        d.mkdir()
    own = hf_class_texts(own_dir, tiny, tmp_path / "cache")
    write_config(run / "config.yaml", tiny, tmp_path / "cache", text={"class_embeddings": str(own)})
    assert main(["eval", str(run), "--teacher", "--out", str(tmp_path / "t.json")]) == 0
    other = make_tiny_hf_clip(tmp_path / "other_clip", seed=1)
    foreign = hf_class_texts(foreign_dir, {**tiny, "clip": other}, tmp_path / "cache")
    capsys.readouterr()
    assert main(["eval", str(run), "--teacher", f"text.class_embeddings={foreign}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vlmkd eval: error:") and "not by the teacher" in err[-1]  # after progress bars
