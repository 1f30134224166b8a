"""scripts/demo_sweep.py: candidates expand demo methods and keep quoted overrides whole."""

import importlib.util
from pathlib import Path

from vlmkd.config import load_config
from vlmkd.demo.methods import LONGTAIL_METHODS
from vlmkd.demo.run import base_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_sweep.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_sweep", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_candidate_parsing():
    sweep = load_script()
    name, ov = sweep.parse_candidate(
        "kd4_T4=@vlmkd losses.kd.weight=4.0 'losses.kd.args={temperature: 4.0, logit_adjust: true}'"
    )
    assert name == "kd4_T4" and ov[: len(LONGTAIL_METHODS["vlmkd"])] == LONGTAIL_METHODS["vlmkd"]
    cfg = load_config(None, ov, base=base_recipe())  # later overrides win
    assert cfg.losses["kd"].weight == 4.0 and cfg.losses["kd"].args["temperature"] == 4.0
    assert cfg.losses["text"].name == "text_rkd"
