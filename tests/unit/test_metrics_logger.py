"""MetricsLogger: a resumed run rewinds TensorBoard too (purge_step), and a missing tensorboard is said once."""

from __future__ import annotations

import logging
import sys

import pytest

import vlmkd.utils.logging as vlog
from vlmkd.utils.logging import MetricsLogger, read_metrics


def _scalars(tb_dir) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, round(e.value, 3)) for e in acc.Scalars("loss")]


def test_resume_rewinds_tensorboard_events_and_json_lines(tmp_path):
    pytest.importorskip("tensorboard")
    first = MetricsLogger(tmp_path)
    for step in range(1, 11):  # the run that was killed after step 10; its checkpoint is at step 5
        first.log({"loss": float(step)}, step=step)
    first.close()
    resumed = MetricsLogger(tmp_path)
    resumed.rewind(5)
    for step in range(6, 9):
        resumed.log({"loss": 100.0 + step}, step=step)
    resumed.close()
    expected = [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]
    assert _scalars(tmp_path / "tb") == expected  # without purge_step, steps 6..10 of the killed run stay
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == expected


def test_restart_from_scratch_drops_every_earlier_event(tmp_path):
    pytest.importorskip("tensorboard")
    first = MetricsLogger(tmp_path)
    for step in (1, 2, 3):
        first.log({"loss": 1.0}, step=step)
    first.close()
    again = MetricsLogger(tmp_path)
    again.rewind(0)
    again.log({"loss": 2.0}, step=1)
    again.close()
    assert _scalars(tmp_path / "tb") == [(1, 2.0)]


def test_tensorboard_missing_is_one_warning_with_the_install_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    monkeypatch.setattr(vlog, "_warned_tensorboard", False)
    with caplog.at_level(logging.WARNING, logger="vlmkd"):
        for run in ("a", "b"):  # two runs in one process (the demo): still one warning
            m = MetricsLogger(tmp_path / run, tensorboard=True)
            m.log({"loss": 1.0}, step=1)
            m.close()
        MetricsLogger(tmp_path / "c", tensorboard=False).close()
    warnings = [r.getMessage() for r in caplog.records if "tensorboard" in r.getMessage()]
    assert len(warnings) == 1 and "pip install 'vlmkd[tensorboard]'" in warnings[0]
    assert "train.tensorboard=false" in warnings[0]
    assert not (tmp_path / "a" / "tb").exists() and read_metrics(tmp_path / "a" / "metrics.jsonl")
