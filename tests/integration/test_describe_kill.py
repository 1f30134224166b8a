"""A describe run killed with SIGKILL half-way keeps its finished rows; the rerun ends with one row per image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from conftest import make_image_folder
from helpers_chat_server import ChatServer
from vlmkd.describe import DescriptionStore

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _rows_in_log(out: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in out.glob("rows-*/parts/*.parquet"))


def test_sigkill_at_half_keeps_most_rows_then_resume(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(150, 150, 100), size=8)  # 400 images
    out = tmp_path / "desc"
    cfg = tmp_path / "c.yaml"
    with ChatServer(delay_s=0.01) as srv:
        cfg.write_text(
            f"data: {{format: image_folder, root: '{root}'}}\n"
            f"describe: {{backend: openai, model: m, base_url: '{srv.url}', concurrency: 2, output: '{out}'}}\n"
        )  # the default shard_size: parts of 64 images
        env = {**os.environ, "PYTHONPATH": SRC, "VLMKD_NO_PROGRESS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlmkd", "describe", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 120
            while time.time() < deadline and srv.answered < 200 and proc.poll() is None:
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert 200 <= srv.answered < 300, "the run should have been killed half-way"
        kept = _rows_in_log(out)
        assert kept >= 160, f"a kill at 50% kept only {kept} of 400 rows"
        asked_first = srv.count()
        r = subprocess.run(
            [sys.executable, "-m", "vlmkd", "describe", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stderr
        assert srv.count() - asked_first == 400 - kept  # finished rows were not redone
    assert not list(out.rglob("*.tmp*"))
    t = DescriptionStore(out).load(include_failed=True)
    assert len(t["sample_id"]) == 400 and len(set(t["sample_id"])) == 400
    assert all(s == "ok" for s in t["status"])
    assert _rows_in_log(out) == 400  # no row described twice
