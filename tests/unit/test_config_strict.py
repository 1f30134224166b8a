"""Strict config: a recipe's `losses:` replaces the default terms; union-typed and list fields are checked with one
line; a run of no step is refused before it starts."""

from __future__ import annotations

import pytest

from vlmkd.config import load_config
from vlmkd.errors import ConfigError


def test_a_recipes_losses_replace_the_default_cls_term(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("losses:\n  vl: {name: vl_cls}\n")
    cfg = load_config(p)
    assert sorted(cfg.losses) == ["vl"]  # it used to train ce + vl_cls
    # dotted overrides still add or edit one term on top of the recipe's
    cfg = load_config(p, ["losses.kd.name=kd", "losses.vl.weight=0.5"])
    assert sorted(cfg.losses) == ["kd", "vl"] and cfg.losses["vl"].weight == 0.5
    assert sorted(load_config(None).losses) == ["cls"]  # without a losses: section the default stays


def test_a_base_chain_child_states_its_losses_whole(tmp_path):
    (tmp_path / "base.yaml").write_text("losses:\n  cls: {name: ce}\n  kd: {name: kd}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nlosses:\n  cls: {name: balanced_softmax}\n")
    (tmp_path / "keeps.yaml").write_text("base: base.yaml\ntrain: {epochs: 2}\n")
    assert sorted(load_config(tmp_path / "child.yaml").losses) == ["cls"]
    assert sorted(load_config(tmp_path / "keeps.yaml").losses) == ["cls", "kd"]


def test_an_unnamed_term_in_a_recipe_says_why(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("losses:\n  cls: {weight: 2.0}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: losses.cls has no name; a losses: section replaces") as e:
        load_config(p)
    assert "\n" not in str(e.value)
    p.write_text("losses:\n  {}\n")
    with pytest.raises(ConfigError, match="no loss term"):
        load_config(p)


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "data.split.novel_classes=[no,3]",
            r"data.split.novel_classes\[0\] must be an integer or a string, got "
            r"False \(YAML reads yes/no",
        ),
        ("data.split.novel_classes=[[1],3]", r"data.split.novel_classes\[0\] must be an integer or a string"),
        ("describe.base_url=[http://a, 3.5, true]", r"describe.base_url must be a string or a list, got"),
        ("describe.base_url=7", None),
        ("data.num_workers=yes", r"data.num_workers must be an integer or a string, got True"),
        ("data.mean=[0.5, off]", r"data.mean\[1\] must be a number, got False"),
        ("describe.model=no", r"describe.model must be a string, got False \(YAML reads"),
        ("train.epochs=-1", r"train.epochs must be at least 1, got -1"),
        ("train.epochs=0", r"train.epochs must be at least 1"),
        ("train.max_steps=0", r"train.max_steps must be at least 1"),
        ("train.checkpoint_every=-2", r"train.checkpoint_every must be >= 0"),
    ],
)
def test_union_list_and_range_errors_are_one_line(override, match):
    if match is None:
        assert load_config(None, [override]).describe.base_url == "7"
        return
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_union_items_keep_their_type():
    cfg = load_config(None, ["data.split.novel_classes=[sandal, 3, 'no']", "data.num_workers=auto"])
    assert cfg.data.split.novel_classes == ["sandal", 3, "no"] and isinstance(cfg.data.num_workers, int)
    assert load_config(None, ["describe.base_url=[http://a, http://b]"]).describe.base_url == [
        "http://a",
        "http://b",
    ]
