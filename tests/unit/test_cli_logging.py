"""The console log follows sys.stderr: a handler made under one (captured, then closed) stream must not keep it."""

from __future__ import annotations

import io
import sys

from vlmkd.utils.logging import log, setup_console_logging


def test_console_log_writes_to_the_current_stderr(monkeypatch):
    monkeypatch.setattr(log, "handlers", [])
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_console_logging()
    first.close()  # e.g. the stream pytest captured an earlier test's output into
    monkeypatch.setattr(sys, "stderr", second)
    log.warning("hello from a later command")
    assert "hello from a later command" in second.getvalue()
