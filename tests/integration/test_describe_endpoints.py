"""Many VLM servers: least-loaded dispatch, adaptive per-server concurrency, a server dying mid-run."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq

from describe_fixtures import png_manifest
from helpers_chat_server import ChatServer
from vlmkd.config import DescribeConfig
from vlmkd.describe import DescriptionStore, build_describer, describe_manifest
from vlmkd.describe.endpoints import EndpointPool


def _cfg(tmp_path, urls, **kw):
    base = dict(backend="openai", model="m", base_url=urls, concurrency=2, max_retries=3, timeout_s=2.0)
    return DescribeConfig(**{**base, "output": str(tmp_path / "desc"), **kw})


def test_server_killed_mid_run_store_completes_with_every_row_exactly_once(tmp_path, monkeypatch):
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
        folder = describe_manifest(m, cfg, build_describer(cfg))
        killer.join(timeout=5)
    assert b.dead and 10 <= b.answered < 60  # b did part of the work, then died
    t = DescriptionStore(folder).load(include_failed=True)
    assert t["sample_id"] == m.ids and all(s == "ok" for s in t["status"])
    log_rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "desc").glob("rows-*/parts/*.parquet"))
    assert log_rows == 60  # nothing lost, nothing described twice


def test_work_spreads_over_servers(tmp_path):
    m = png_manifest(tmp_path, n=40, size=8)
    with ChatServer(delay_s=0.02) as a, ChatServer(delay_s=0.02) as b:
        cfg = _cfg(tmp_path, [a.url, b.url])
        d = build_describer(cfg)
        assert d.concurrency == 4  # 2 per server
        describe_manifest(m, cfg, d)
    assert a.answered + b.answered == 40 and min(a.answered, b.answered) >= 12


def test_pool_least_loaded_adaptive_limit_and_backoff():
    pool = EndpointPool(["http://a/v1", "http://b/v1"], concurrency=4)
    pool.backoff_s = 0.2
    ea, _ = pool.acquire()
    eb, _ = pool.acquire()
    assert {ea.url, eb.url} == {"http://a/v1/chat/completions", "http://b/v1/chat/completions"}
    pool.release(ea, "timeout")  # too much in flight at a: its limit halves
    assert ea.limit == 2
    for _ in range(2):
        e, _ = pool.acquire()
        pool.release(e, "ok")
    pool.release(eb, "down")  # b is backed off: everything goes to a meanwhile
    got = [pool.acquire()[0] for _ in range(2)]
    assert all(e is ea for e in got) and ea.inflight == 2
    for e in got:
        pool.release(e, "ok")
    assert ea.limit >= 2 and ea.limit <= 4
    time.sleep(0.25)
    got = [pool.acquire() for _ in range(2)]  # b's backoff is over: used again
    assert {id(e) for e, _ in got} == {id(ea), id(eb)} and dict((e.url, lim) for e, lim in got)[eb.url] == 4


def test_class_sentence_llm_accepts_a_list_of_servers():
    from vlmkd.config import ClassTextConfig
    from vlmkd.text.classtext import sentences_openai

    with ChatServer(delay_s=0.05) as a, ChatServer(delay_s=0.05) as b:
        cfg = ClassTextConfig(
            sentences_backend="openai", llm_base_url=[a.url, b.url], llm_model="m", concurrency=4
        )
        out = sentences_openai(["cat", "dog", "owl", "bat", "eel", "yak"], cfg)
    assert len(out) == 6 and a.answered + b.answered == 6 and min(a.answered, b.answered) >= 2
