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
