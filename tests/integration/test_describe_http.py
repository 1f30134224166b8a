"""The openai describer against a local chat-completions server with injected 429, 500, timeouts and bad bodies."""

from __future__ import annotations

import hashlib
import logging

from describe_fixtures import png_manifest
from helpers_chat_server import ChatServer
from vlmkd.config import DescribeConfig
from vlmkd.data.images import open_image
from vlmkd.describe import DescriptionStore, build_describer, describe_manifest, estimate_cost
from vlmkd.describe.http import image_data_url
from vlmkd.describe.store import read_rows


def _digests(m):
    return [hashlib.sha1(image_data_url(open_image(m, i)).encode()).hexdigest()[:12] for i in range(len(m))]


def _cfg(tmp_path, url, **kw):
    base = dict(
        backend="openai",
        model="tiny-vlm",
        base_url=url,
        concurrency=4,
        max_retries=2,
        timeout_s=0.5,
        shard_size=4,
        output=str(tmp_path / "desc"),
    )
    return DescribeConfig(**{**base, **kw})


def test_faults_retried_failures_recorded_then_rerun_retries_only_failures(tmp_path, monkeypatch):
    monkeypatch.setattr("vlmkd.describe.http.ChatClient._delay", lambda self, a, r: 0.01)
    m = png_manifest(tmp_path, n=10)
    dg = _digests(m)
    faults = {
        dg[0]: ["429", "429"],  # recovers within the retries
        dg[1]: ["500"],
        dg[2]: ["slow"],  # one timeout, then fine
        dg[3]: ["malformed"],  # not retried in-run: recorded as failed
        dg[4]: ["empty"],
        dg[5]: ["500", "500", "500"],  # exhausts max_retries=2
    }
    with ChatServer(faults=faults, slow_s=1.5) as srv:
        cfg = _cfg(tmp_path, srv.url)
        folder = describe_manifest(m, cfg, build_describer(cfg))
        st = DescriptionStore(folder)
        t = st.load(include_failed=True)
        assert t["sample_id"] == m.ids  # one row per image, nothing duplicated
        failed = {s for s, status in zip(t["sample_id"], t["status"]) if status == "failed"}
        assert failed == {m.ids[3], m.ids[4], m.ids[5]}
        rows = {r["sample_id"]: r for r in read_rows(folder / "descriptions.parquet")}
        assert "malformed" in rows[m.ids[3]]["error"] and rows[m.ids[3]]["text"] is None
        assert "HTTP 500" in rows[m.ids[5]]["error"]
        assert rows[m.ids[0]]["text"] == f"a description of image {dg[0]}"
        assert rows[m.ids[0]]["prompt_tokens"] == 12
        before = srv.count()
        describe_manifest(m, cfg, build_describer(cfg))  # rerun: only the three failures are asked again
        asked = [r["digest"] for r in srv.requests[before:]]
        assert sorted(asked) == sorted([dg[3], dg[4], dg[5]])
        t = DescriptionStore(folder).load()
        assert t["sample_id"] == m.ids and all(s == "ok" for s in t["status"])


def test_api_key_never_stored_or_logged(tmp_path, monkeypatch, caplog):
    key = "sk-test-SECRET-12345"
    monkeypatch.setenv("VLMKD_TEST_KEY", key)
    m = png_manifest(tmp_path, n=4)
    dg = _digests(m)
    with ChatServer(faults={dg[0]: ["malformed"]}, require_key=key) as srv:
        yaml_cfg = tmp_path / "c.yaml"
        root = tmp_path / "data"
        from conftest import make_image_folder

        make_image_folder(root, per_class=(2, 1, 1))
        yaml_cfg.write_text(
            f"data: {{format: image_folder, root: {root}}}\n"
            f"describe: {{backend: openai, model: m, base_url: '{srv.url}', api_key_env: VLMKD_TEST_KEY, "
            f"output: {tmp_path / 'desc'}, shard_size: 2, max_retries: 0}}\n"
        )
        from vlmkd.cli import main

        with caplog.at_level(logging.DEBUG):
            assert main(["describe", str(yaml_cfg)]) == 0
        assert all(r["auth"] == f"Bearer {key}" for r in srv.requests)
        cfg = _cfg(
            tmp_path, srv.url, api_key_env="VLMKD_TEST_KEY", output=str(tmp_path / "desc2"), max_retries=0
        )
        describe_manifest(m, cfg, build_describer(cfg))
    assert key not in caplog.text
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.suffix in (".parquet", ".json", ".yaml", ""):
            assert key.encode() not in p.read_bytes(), p


def test_wrong_key_is_a_recorded_failure_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKD_TEST_KEY", "sk-wrong-777")
    m = png_manifest(tmp_path, n=2)
    with ChatServer(require_key="sk-right") as srv:
        cfg = _cfg(tmp_path, srv.url, api_key_env="VLMKD_TEST_KEY")
        folder = describe_manifest(m, cfg, build_describer(cfg))
    rows = read_rows(folder / "descriptions.parquet")
    assert all(r["status"] == "failed" and "HTTP 401" in r["error"] for r in rows)
    assert srv.count() == 2  # 401 is not retried
    assert all("sk-wrong-777" not in r["error"] for r in rows)


def test_dry_run_estimates_tokens(tmp_path):
    m = png_manifest(tmp_path, n=20)
    with ChatServer() as srv:
        cfg = _cfg(tmp_path, srv.url)
        est = estimate_cost(m, cfg, build_describer(cfg), sample=4)
    assert est["sample_images"] >= 4 and est["estimated_prompt_tokens"] == 12 * 20
    assert est["estimated_completion_tokens"] == 6 * 20 and est["estimated_seconds"] >= 0
    assert not (tmp_path / "desc").exists()  # a dry run stores nothing
