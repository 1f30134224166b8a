"""A describe run killed with SIGKILL mid-way and rerun ends with exactly one record per image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_image_folder
from helpers_chat_server import ChatServer
from vlmkd.describe import DescriptionStore

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_sigkill_then_resume(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(10, 8, 6))  # 24 images
    out = tmp_path / "desc"
    cfg = tmp_path / "c.yaml"
    with ChatServer(delay_s=0.15) as srv:
        cfg.write_text(
            f"data: {{format: image_folder, root: '{root}'}}\n"
            f"describe: {{backend: openai, model: m, base_url: '{srv.url}', concurrency: 2, shard_size: 4, "
            f"output: '{out}'}}\n"
        )
        env = {**os.environ, "PYTHONPATH": SRC, "VLMKD_NO_PROGRESS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlmkd", "describe", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 60
            while time.time() < deadline and len(list(out.glob("*/shards/*.parquet"))) < 2:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        shards = list(out.glob("*/shards/*.parquet"))
        assert 2 <= len(shards) < 6, "the run should have been killed part-way"
        asked_first = srv.count()
        r = subprocess.run(
            [sys.executable, "-m", "vlmkd", "describe", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert srv.count() - asked_first <= 24 - 4 * len(shards)  # finished shards were not redone
    t = DescriptionStore(out).load(include_failed=True)
    assert len(t["sample_id"]) == 24 and len(set(t["sample_id"])) == 24
    assert all(s == "ok" for s in t["status"])
