from pathlib import Path

import pytest

from vlmkd.config import Config, load_config, save_config
from vlmkd.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_and_yaml_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\nlosses:\n  cls:\n    name: balanced_softmax\n")
    cfg = load_config(p, ["optim.lr=0.01", "data.longtail.imbalance_factor=50"])
    assert cfg.train.epochs == 3
    assert cfg.losses["cls"].name == "balanced_softmax" and cfg.losses["cls"].weight == 1.0
    assert cfg.optim.lr == 0.01 and cfg.data.longtail.imbalance_factor == 50.0
    assert cfg.train.seed == Config().train.seed


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match='did you mean "epochs"'):
        load_config(None, ["train.epoch=3"])
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p)


def test_type_errors_are_one_line():
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config(None, ["train.amp=3"])


def test_new_loss_term_via_override():
    cfg = load_config(None, ["losses.kd.name=kd", "losses.kd.weight=0.5", "losses.kd.args={temperature: 4}"])
    assert cfg.losses["kd"].args == {"temperature": 4} and cfg.losses["cls"].name == "ce"


def test_base_chain_and_roundtrip(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.seed) == (2, 3)
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


def test_loss_typo_is_an_error_naming_the_closest_term(tmp_path):
    """`losses.txt.weight=0` once created a new `ce` term of weight 0 and left `text` on."""
    p = tmp_path / "c.yaml"
    p.write_text("losses:\n  text:\n    name: ce\n    weight: 1.0\n")
    with pytest.raises(ConfigError, match=r'losses.txt.weight.*did you mean "losses.text".*losses.txt.name='):
        load_config(p, ["losses.txt.weight=0"])
    p.write_text("losses:\n  clss:\n    weight: 2.0\n")  # the same typo inside a YAML file
    with pytest.raises(ConfigError, match='did you mean "losses.cls"'):
        load_config(p)
    assert load_config(None, ["losses.cls.weight=0.5"]).losses["cls"].weight == 0.5


def test_num_workers_auto_stays_within_the_cpu_count(monkeypatch):
    import vlmkd.config.data as data_cfg

    monkeypatch.setattr(data_cfg.os, "cpu_count", lambda: 2)
    assert load_config(RECIPES / "custom" / "image_folder.yaml").data.num_workers == 2  # the recipe says auto
    monkeypatch.setattr(data_cfg.os, "cpu_count", lambda: 64)
    assert load_config(None, ["data.num_workers=auto"]).data.num_workers == 8
    with pytest.raises(ConfigError, match="data.num_workers must be an integer >= 0 or auto"):
        load_config(None, ["data.num_workers=-1"])
