"""The combined recipe and the demo's combined student are the same losses; the report shows the section."""

from __future__ import annotations

from pathlib import Path

from vlmkd.config import load_config
from vlmkd.demo.combined import COMBINED_COLS, COMBINED_METHODS
from vlmkd.demo.report import combined_lines
from vlmkd.demo.run import base_recipe

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "combined" / "fmnist_combined.yaml"


def test_recipe_matches_the_demo_combined_student():
    demo = load_config(None, COMBINED_METHODS["combined"], base=base_recipe())
    recipe = load_config(RECIPE)
    assert {k: (v.name, v.weight, v.args) for k, v in demo.losses.items()} == {
        k: (v.name, v.weight, v.args) for k, v in recipe.losses.items()
    }
    assert recipe.model.head == demo.model.head == "both"
    assert recipe.teacher.zero_shot_temperature == demo.teacher.zero_shot_temperature
    assert recipe.losses["vl"].args == {"balanced": True}
    # the embedding head carries only the OOD specialist's terms; the description loss acts on the backbone
    assert recipe.losses["text"].args == {"input": "features"}
    # chosen on val for the combined student (4 in the long-tail one)
    assert recipe.losses["kd"].weight == 1.0


def test_combined_table():
    row = dict.fromkeys([*COMBINED_COLS, "val_overall"], 0.5)
    summary = {
        "ood_setup": {"novel_classes": ["Coat", "Shirt"]},
        "combined": {
            "combined": {**row, "std": {}},
            "longtail-only (vlmkd)": {**row, "novel_zero_shot": None, "std": {}},
        },
    }
    lines = combined_lines(summary)
    assert any("Coat, Shirt" in line for line in lines)
    assert "| combined | 50.0 |" in "\n".join(lines)
    assert any(line.startswith("| longtail-only (vlmkd) |") and "| - |" in line for line in lines)
    assert combined_lines({"combined": {}}) == []


def test_zero_shot_head_temperature_is_vl_cls_not_kd():
    # the combined student lists KD (T=2) before vl_cls (tau=0.07): its exported zero-shot head must use 0.07
    import vlmkd.losses as L
    from vlmkd.tasks.build import _temperature
    from vlmkd.tasks.distill import LossSpec

    terms = [
        LossSpec("kd", 4.0, L.build("kd", temperature=2.0)),
        LossSpec("text", 2.0, L.build("text_rkd", temperature=0.1)),
        LossSpec("vl", 1.0, L.build("vl_cls", temperature=0.07)),
    ]
    assert _temperature(terms) == 0.07
    assert _temperature(terms[:2]) == 2.0  # no cosine head term: the first temperature, as before


def test_text_rkd_on_features():
    import pytest
    import torch

    import vlmkd.losses as L
    from vlmkd.errors import ConfigError

    loss = L.build("text_rkd", input="features")
    assert loss.inputs == loss.batch_coupled == ("features", "text_emb")
    assert L.build("text_rkd").inputs == ("proj", "text_emb")
    x = torch.randn(5, 8)
    assert loss(x, x).item() == pytest.approx(L.build("text_rkd")(x, x).item())  # same value, other input
    with pytest.raises(ConfigError, match="input must be proj or features"):
        L.build("text_rkd", input="logits")
