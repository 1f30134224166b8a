"""Progress output: plain lines, no carriage-return redraws, when the stream is not a terminal (log files)."""

import io
import time

from vlmkd.utils.progress import progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_writes_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("VLMKD_PROGRESS_INTERVAL", "0.05")
    out = io.StringIO()
    for _ in progress(range(40), desc="eval x", unit="batch", disable=False, file=out):
        time.sleep(0.005)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # one line per interval (0.2 s of work / 0.05 s), not one per item, and the last one says it finished
    assert 2 <= len(lines) < 20, lines
    assert lines[-1].startswith("eval x") and "40/40" in lines[-1]


def test_progress_update_api_and_default_interval(monkeypatch):
    monkeypatch.delenv("VLMKD_PROGRESS_INTERVAL", raising=False)
    out = io.StringIO()
    bar = progress(total=1000, desc="train", unit="step", disable=False, file=out)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix(loss="0.1")
    bar.close()
    lines = out.getvalue().splitlines()
    # 30 s default interval: the opening line and the closing one only
    assert len(lines) == 2 and "1000/1000" in lines[-1] and "\r" not in out.getvalue()


def test_progress_redraws_on_a_terminal():
    out = Tty()
    for _ in progress(range(5), desc="tty", disable=False, file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()
