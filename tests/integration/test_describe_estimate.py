"""describe: the dry-run estimate is one figure per server count, and a server that dies mid-run is named."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from describe_fixtures import png_manifest
from helpers_chat_server import ChatServer
from vlmkd.config import DescribeConfig
from vlmkd.describe import build_describer, describe_manifest, estimate_cost


def _cfg(tmp_path, urls, **kw):
    base = dict(backend="openai", model="m", base_url=urls, concurrency=2, max_retries=3, timeout_s=2.0)
    return DescribeConfig(**{**base, "output": str(tmp_path / "desc"), **kw})


def test_dry_run_gives_one_estimate_per_server_count(tmp_path):
    m = png_manifest(tmp_path, n=40, size=8)
    with ChatServer(delay_s=0.05) as a, ChatServer(delay_s=0.05) as b:
        est = estimate_cost(
            m, _cfg(tmp_path, [a.url, b.url]), build_describer(_cfg(tmp_path, [a.url, b.url])), 8
        )
        served = a.count() + b.count()
    by = est["estimated_seconds_by_servers"]
    assert est["servers_measured"] == 2 and sorted(by, key=int) == ["1", "2", "4", "8"]
    # the configured count's entry is the headline figure (they once said 71.9 s and 2.13 s side by side)
    assert by["2"] == est["estimated_seconds"]
    read = est["estimated_read_seconds"]  # the client's part: as long with any number of servers
    assert by["1"] - read == pytest.approx(2 * (by["2"] - read), abs=0.02)
    assert by["4"] - read == pytest.approx((by["2"] - read) / 2, abs=0.01)
    assert served == 8 + 1  # the sample plus one untimed warm-up request
    assert not (tmp_path / "desc").exists()


def test_a_server_dying_mid_run_is_warned_once_and_named_at_the_end(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("vlmkd.describe.http.ChatClient._delay", lambda self, a, r: 0.01)
    m = png_manifest(tmp_path, n=60, size=8)
    with ChatServer(delay_s=0.02) as a, ChatServer(delay_s=0.02) as b:

        def kill_b():
            while b.answered < 10:
                time.sleep(0.002)
            b.kill()

        killer = threading.Thread(target=kill_b, daemon=True)
        killer.start()
        cfg = _cfg(tmp_path, [a.url, b.url], shard_size=8)
        with caplog.at_level(logging.INFO, logger="vlmkd"):
            describe_manifest(m, cfg, build_describer(cfg))
        killer.join(timeout=5)
    said = [r.getMessage() for r in caplog.records if b.url in r.getMessage()]
    live = [s for s in said if "stopped accepting connections; its requests go to the 1 other server" in s]
    final = [s for s in said if "stopped accepting connections 1 time(s) during this run" in s]
    assert len(live) == 1 and len(final) == 1, said  # it was never mentioned before
    assert all(r.levelno == logging.WARNING for r in caplog.records if "stopped accepting" in r.getMessage())
