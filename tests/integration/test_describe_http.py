"""The openai describer against a local chat-completions server with injected 429, 500, timeouts and bad bodies."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pytest

from describe_fixtures import png_manifest
from helpers_chat_server import ChatServer
from vlmkd.config import DescribeConfig
from vlmkd.data.images import open_image
from vlmkd.describe import DescriptionStore, build_describer, describe_manifest, estimate_cost
from vlmkd.describe.http import AuthError, FailFast, image_data_url
from vlmkd.describe.store import read_rows
from vlmkd.errors import BackendError


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


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr("vlmkd.describe.http.ChatClient._delay", lambda self, a, r: 0.01)


def test_faults_retried_in_run_failures_over_threshold_exit_then_rerun_retries_only_them(
    tmp_path, fast_retries
):
    m = png_manifest(tmp_path, n=10)
    dg = _digests(m)
    faults = {
        dg[0]: ["429", "429"],  # recovers within the retries
        dg[1]: ["500"],
        dg[2]: ["slow"],  # one timeout, then fine
        dg[3]: ["malformed"],  # retried within the run
        dg[4]: ["empty"],
        dg[5]: ["500", "500", "500"],  # exhausts max_retries=2
        dg[6]: ["nochoices"],
        dg[7]: ["truncated"],  # the body cut short (IncompleteRead): retried
    }
    with ChatServer(faults=faults, slow_s=1.5) as srv:
        cfg = _cfg(tmp_path, srv.url)
        with pytest.raises(BackendError, match=r"1 of 10 descriptions failed .*max_failure_rate.*HTTP 500"):
            describe_manifest(m, cfg, build_describer(cfg))
        folder = DescriptionStore(tmp_path / "desc").path
        t = DescriptionStore(folder).load(include_failed=True)
        assert t["sample_id"] == m.ids  # one row per image, nothing duplicated
        assert [s for s, st in zip(t["sample_id"], t["status"]) if st == "failed"] == [m.ids[5]]
        rows = {r["sample_id"]: r for r in read_rows(folder / "descriptions.parquet")}
        assert "HTTP 500" in rows[m.ids[5]]["error"] and rows[m.ids[5]]["text"] is None
        assert rows[m.ids[0]]["text"] == f"a description of image {dg[0]}"
        assert rows[m.ids[3]]["text"] == f"a description of image {dg[3]}"
        assert rows[m.ids[0]]["prompt_tokens"] == 12
        before = srv.count()
        describe_manifest(m, cfg, build_describer(cfg))  # rerun: only the failure is asked again
        assert [r["digest"] for r in srv.requests[before:]] == [dg[5]]
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
            f"output: {tmp_path / 'desc'}, shard_size: 2, max_retries: 1}}\n"
        )
        from vlmkd.cli import main

        with caplog.at_level(logging.DEBUG):
            assert main(["describe", str(yaml_cfg)]) == 0
        assert all(r["auth"] == f"Bearer {key}" for r in srv.requests)
        cfg = _cfg(tmp_path, srv.url, api_key_env="VLMKD_TEST_KEY", output=str(tmp_path / "desc2"))
        describe_manifest(m, cfg, build_describer(cfg))
    assert key not in caplog.text
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.suffix in (".parquet", ".json", ".yaml", ""):
            assert key.encode() not in p.read_bytes(), p


def test_wrong_key_stops_at_once_naming_the_variable_not_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLMKD_TEST_KEY", "sk-wrong-777")
    m = png_manifest(tmp_path, n=40)
    with ChatServer(require_key="sk-right") as srv:
        cfg = _cfg(tmp_path, srv.url, api_key_env="VLMKD_TEST_KEY", concurrency=2)
        with pytest.raises(AuthError, match=r"HTTP 401.*\$VLMKD_TEST_KEY") as e:
            describe_manifest(m, cfg, build_describer(cfg))
    assert "sk-wrong-777" not in str(e.value)
    assert srv.count() <= 2  # the requests already in flight, nothing after them


def test_wrong_model_name_fails_fast_and_cli_exits_2(tmp_path, fast_retries, capsys):
    from conftest import make_image_folder
    from vlmkd.cli import main

    root = make_image_folder(tmp_path / "data", per_class=(10, 10, 10))
    with ChatServer(fault_fn=lambda i, d: "500text") as srv:  # "no such model", as plain text
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"data: {{format: image_folder, root: '{root}'}}\n"
            f"describe: {{backend: openai, model: nope, base_url: '{srv.url}', concurrency: 2, "
            f"fail_fast_after: 4, output: '{tmp_path / 'desc'}'}}\n"
        )
        assert main(["describe", str(cfg)]) == 2
        assert srv.count() <= 4 + 2  # not 6 tries for each of 30 images
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            "first 4 requests all failed the same way: HTTP 500" in err[-1]
        )  # the one error line, after the log
        assert main(["describe", str(cfg), "--dry-run", "--sample", "3", "describe.fail_fast_after=0"]) == 2
        out, err = capsys.readouterr()
        assert json.loads(out[: out.rindex("}") + 1])["failure_reasons"][0].startswith("HTTP 500")
        assert "every request failed: HTTP 500" in err


def test_redirect_to_another_origin_drops_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKD_TEST_KEY", "sk-redirected")
    m = png_manifest(tmp_path, n=2)
    with ChatServer() as other, ChatServer(redirect_to=other.url) as first:
        cfg = _cfg(tmp_path, first.url, api_key_env="VLMKD_TEST_KEY")
        describe_manifest(m, cfg, build_describer(cfg))
    assert first.requests and all(r["auth"] == "Bearer sk-redirected" for r in first.requests)
    assert other.answered == 2 and all(r["auth"] == "" for r in other.requests)


def test_identical_samples_reported_and_flagged(tmp_path, caplog):
    m = png_manifest(tmp_path, n=3)
    with ChatServer() as srv:  # answers ignore temperature and seed: both samples are the same
        cfg = _cfg(tmp_path, srv.url, do_sample=True, temperature=0.8, n_descriptions=2)
        with caplog.at_level(logging.WARNING):
            folder = describe_manifest(m, cfg, build_describer(cfg))
    rows = read_rows(folder / "descriptions.parquet")
    assert len(rows) == 6 and all(r["identical"] for r in rows)
    assert DescriptionStore(folder).meta["identical"] == 6
    assert "3 images got identical descriptions although sampling was asked for" in caplog.text


def test_time_queued_at_a_busy_server_is_not_a_failed_attempt(tmp_path, fast_retries):
    m = png_manifest(tmp_path, n=6)
    # one request at a time, 0.2 s each: with 4 in flight the last ones wait past the 0.5 s timeout
    with ChatServer(delay_s=0.2, serial=True) as srv:
        cfg = _cfg(tmp_path, srv.url, concurrency=4, max_retries=0, timeout_s=0.5)
        folder = describe_manifest(m, cfg, build_describer(cfg))
    assert DescriptionStore(folder).meta["ok"] == 6 and srv.count() == 6  # no request timed out


def test_dry_run_estimates_tokens_and_wall_time_per_server_count(tmp_path):
    m = png_manifest(tmp_path, n=20)
    with ChatServer(delay_s=0.05) as srv:
        cfg = _cfg(tmp_path, srv.url)
        est = estimate_cost(m, cfg, build_describer(cfg), sample=4)
    assert est["sample_images"] >= 4 and est["estimated_prompt_tokens"] == 12 * 20
    assert est["estimated_completion_tokens"] == 6 * 20 and est["estimated_seconds"] >= 0
    by = est["estimated_seconds_by_servers"]
    read = est["estimated_read_seconds"]  # the client's part does not shrink with more servers
    assert est["per_request_latency_s"] >= 0.05 and by["1"] - read == pytest.approx(
        2 * (by["2"] - read), abs=0.02
    )
    assert not (tmp_path / "desc").exists()  # a dry run stores nothing


def test_connections_are_kept_alive(tmp_path):
    m = png_manifest(tmp_path, n=20, size=8)
    with ChatServer() as srv:
        cfg = _cfg(tmp_path, srv.url, concurrency=2)
        describe_manifest(m, cfg, build_describer(cfg))
    assert srv.count() == 20 and len({r["port"] for r in srv.requests}) <= 4  # not one connection per request


def test_cli_skips_unreadable_images_under_skip_and_names_them(tmp_path, capsys):
    from conftest import make_image_folder
    from vlmkd.cli import main

    root = make_image_folder(tmp_path / "data", per_class=(3, 2, 2))
    (root / "train" / "cat" / "cat_0.png").write_bytes(b"")
    (root / "train" / "dog" / "dog_1.png").write_bytes(b"not an image at all")
    with ChatServer() as srv:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"data: {{format: image_folder, root: '{root}'}}\n"
            f"describe: {{backend: openai, model: m, base_url: '{srv.url}', output: '{tmp_path / 'desc'}'}}\n"
        )
        assert main(["describe", str(cfg)]) == 2  # on_bad_image=error: one line naming the file
        err = capsys.readouterr().err.strip().splitlines()
        assert "cat_0.png" in err[-1] or "dog_1.png" in err[-1]  # the one error line, after the log
        assert main(["describe", str(cfg), "data.on_bad_image=skip"]) == 0
        out = capsys.readouterr().out
        assert "5 descriptions ok, 0 failed, 2 skipped" in out and "cat_0.png" in out and "dog_1.png" in out
        asked = srv.count()
        assert main(["describe", str(cfg), "data.on_bad_image=skip"]) == 0
        assert srv.count() == asked  # skipped images are not retried


@pytest.mark.parametrize("fail_fast_after", [8, 0])
def test_server_down_stops_the_run_with_the_reason(tmp_path, fast_retries, monkeypatch, fail_fast_after):
    import socket

    from vlmkd.describe.endpoints import AllServersDown, EndpointPool

    monkeypatch.setattr(EndpointPool, "BACKOFF_S", 0.05)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    m = png_manifest(tmp_path, n=30, size=8)
    cfg = _cfg(tmp_path, url, concurrency=4, fail_fast_after=fail_fast_after)
    t0 = time.monotonic()
    with pytest.raises((FailFast, AllServersDown), match="cannot connect|no server accepts connections"):
        describe_manifest(m, cfg, build_describer(cfg))
    assert time.monotonic() - t0 < 10
