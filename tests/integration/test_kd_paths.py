"""Live-teacher KD and cached-teacher KD are the same loss when the student sees the teacher's (clean) view."""

import json

import pytest
import torch
from test_train import tiny_config

from conftest import make_image_folder
from vlmkd.cli import main
from vlmkd.compose.train import teacher_check
from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.transforms import build_transform
from vlmkd.tasks.build import build_task

VAL = "data.val_fraction=0.3"  # a val split (held out by a hash of the path: the same images in every run)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd")
    data = make_image_folder(tmp / "d", per_class=(12, 8, 6), size=16)
    teacher_run = tmp / "teacher"
    args = ["train", str(tiny_config(tmp, data)), "--run-dir", str(teacher_run), "train.epochs=1", VAL]
    assert main(args) == 0
    return tmp, data, teacher_run


def kd_overrides(teacher_run, mode, cache):
    return [
        "losses.cls.name=balanced_softmax",
        "losses.kd.name=kd",
        "losses.kd.weight=1.0",
        "losses.kd.args={temperature: 2.0, logit_adjust: true}",
        f"teacher.name={teacher_run}",
        f"teacher.mode={mode}",
        f"teacher.cache_dir={cache}",
        "data.augment=none",  # the student sees the clean view, as the cache does
    ]


def test_live_and_cached_kd_give_the_same_loss(setup):
    tmp, data, teacher_run = setup
    losses = {}
    for mode in ("live", "cached"):
        cfg = load_config(tiny_config(tmp, data), kd_overrides(teacher_run, mode, tmp / "cache"))
        ms = build_manifests(cfg.data)
        torch.manual_seed(0)
        task, extras, _ = build_task(cfg, ms, torch.device("cpu"))
        assert ("teacher_logits" in extras) == (mode == "cached")
        ds = ManifestDataset(ms["train"], build_transform(cfg.data, train=True), extras)
        batch = collate_skip([ds[i] for i in range(8)])
        task.train()
        losses[mode] = {k: float(v.detach()) for k, v in task(batch).items() if k.startswith("loss")}
    assert losses["live"]["loss/kd"] > 0
    for k in losses["live"]:  # cached logits are stored as float16: equal up to that rounding
        assert losses["cached"][k] == pytest.approx(losses["live"][k], rel=2e-3, abs=1e-4)


def test_training_steps_with_live_and_cached_teacher(setup):
    tmp, data, teacher_run = setup
    first = {}
    for mode in ("live", "cached"):
        run = tmp / f"student_{mode}"
        args = ["train", str(tiny_config(tmp, data)), "--run-dir", str(run), "train.max_steps=3"]
        assert main([*args, *kd_overrides(teacher_run, mode, tmp / "cache2")]) == 0
        rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss/kd"' in x]
        assert len(rec) >= 3
        first[mode] = rec[0]
    assert first["cached"]["loss/kd"] == pytest.approx(first["live"]["loss/kd"], rel=2e-3, abs=1e-4)


def test_run_reports_its_kd_teacher_next_to_the_student(setup, caplog):
    """The summary scores the KD teacher on the selection split exactly as the teacher's own run scored itself,
    next to the student, and warns only when the student ends above it."""
    tmp, data, teacher_run = setup
    run = tmp / "student_report"
    args = ["train", str(tiny_config(tmp, data)), "--run-dir", str(run), "train.max_steps=2", VAL]
    assert main([*args, *kd_overrides(teacher_run, "cached", tmp / "cache3")]) == 0
    summary = json.loads((run / "summary.json").read_text())
    own = json.loads((teacher_run / "summary.json").read_text())["splits"]["val"]
    kd = summary["kd_teacher"]
    assert kd["split"] == "val" and kd["teacher"].startswith("vlmkd:")
    assert kd["teacher_score"] == pytest.approx(own["mean_per_class"], abs=1e-12)
    assert kd["student_score"] == summary["splits"]["val"]["mean_per_class"]
    assert kd["weaker_than_student"] == (kd["teacher_score"] < kd["student_score"])
    assert "KD teacher `vlmkd:" in (run / "report.md").read_text()

    cfg = load_config(run / "config.yaml")
    ms = build_manifests(cfg.data)
    for student, weaker in ((kd["teacher_score"] + 0.01, True), (kd["teacher_score"], False)):
        caplog.clear()
        check = teacher_check(cfg, ms, torch.device("cpu"), {"splits": {"val": {"mean_per_class": student}}})
        assert check["weaker_than_student"] is weaker
        assert ("below the student it taught" in caplog.text) is weaker

    off = tmp / "student_no_report"
    args = ["train", str(tiny_config(tmp, data)), "--run-dir", str(off), "train.max_steps=1", VAL]
    assert (
        main([*args, *kd_overrides(teacher_run, "cached", tmp / "cache3"), "eval.teacher_accuracy=false"])
        == 0
    )
    assert "kd_teacher" not in json.loads((off / "summary.json").read_text())


def test_no_teacher_report_without_kd(setup):
    tmp, data, _ = setup
    run = tmp / "plain"
    assert main(["train", str(tiny_config(tmp, data)), "--run-dir", str(run), "train.max_steps=1", VAL]) == 0
    assert "val" in json.loads((run / "summary.json").read_text())["splits"]
    assert "kd_teacher" not in json.loads((run / "summary.json").read_text())
