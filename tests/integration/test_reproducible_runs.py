"""Reproducible runs: a run records the keyed artifacts and model fingerprints it used (never a LATEST pointer);
`vlmkd train --like RUN` retrains on exactly those; a moved LATEST is reported in one line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from test_teach import hf_class_texts, short_run, tiny, write_config  # noqa: F401  (tiny: the module fixture)

from vlmkd.cli import main


def ood_config(tmp_path: Path, models: dict, **train) -> Path:
    cache = tmp_path / "cache"
    return write_config(
        tmp_path / "ood.yaml",
        models,
        cache,
        data={"split": {"num_novel": 1, "seed": 0}},
        model={"name": "cnn_tiny", "head": "embedding"},
        losses={"cls": {"name": "vl_cls", "weight": 1.0, "args": {}}, "mse": {"name": "mse", "weight": 1.0}},
        text={"class_embeddings": str(tmp_path / "ct")},  # the parent: read through its LATEST pointer
        optim={"name": "sgd", "lr": 0.05},
        train={**short_run(tmp_path, 2), **train},
        eval={"every": 0, "select_on": "id"},
    )


def record(run: Path) -> dict:
    return json.loads((run / "artifacts.json").read_text())


def test_run_records_keys_and_like_retrains_on_them(tmp_path, tiny, caplog, capsys):  # noqa: F811
    hf_class_texts(tmp_path, tiny, tmp_path / "cache", templates=["a photo of a {name}."])
    cfg = ood_config(tmp_path, tiny, name="ood")
    run = tmp_path / "runs" / "ood"
    assert main(["train", str(cfg)]) == 0
    rec = record(run)
    arts, models = rec["artifacts"], rec["models"]
    assert set(arts) == {"class_embeddings", "teacher_features"}
    ct = arts["class_embeddings"]
    assert "LATEST" not in ct["folder"] and Path(ct["folder"]).name == ct["key"][:16]  # the keyed folder
    assert json.loads((run / "summary.json").read_text())["artifacts"] == rec
    assert models["clip_teacher"]["id"].startswith(f"hf:{tiny['clip']}#")  # id with a content fingerprint
    assert len(models["class_text_encoder"]["fingerprint"]) == 64  # the local text tower's folder, hashed

    # new class texts move LATEST: rerunning the recipe says so, --like trains on the recorded texts
    hf_class_texts(tmp_path, tiny, tmp_path / "cache", templates=["a {name}", "itap of a {name}."])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlmkd"):
        assert main(["train", str(cfg)]) == 0
    moved = [r.getMessage() for r in caplog.records if "now names class_embeddings" in r.getMessage()]
    assert len(moved) == 1 and "--like" in moved[0] and "\n" not in moved[0]
    assert record(run)["artifacts"]["class_embeddings"]["key"] != ct["key"]
    shutil.copytree(tmp_path / "runs" / "ood", tmp_path / "ref")  # (the run folder gets rewritten below)
    like = tmp_path / "like"
    assert main(["train", "--like", str(tmp_path / "ref"), "--run-dir", str(like)]) == 0
    assert record(like)["artifacts"] == record(tmp_path / "ref")["artifacts"]
    first = tmp_path / "first"
    (first).mkdir()
    (first / "artifacts.json").write_text(json.dumps(rec))
    shutil.copy(run / "config.yaml", first / "config.yaml")
    assert main(["train", "--like", str(first), "--run-dir", str(tmp_path / "again")]) == 0
    assert record(tmp_path / "again")["artifacts"]["class_embeddings"]["key"] == ct["key"]

    # an artifact the run used is gone: one line, exit 2
    shutil.rmtree(arts["teacher_features"]["folder"])
    capsys.readouterr()
    assert main(["train", "--like", str(first), "--run-dir", str(tmp_path / "gone")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "teacher_features" in err[-1] and "missing" in err[-1]  # the one error line, after the log
