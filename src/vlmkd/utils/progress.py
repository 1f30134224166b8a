"""Progress bars with ETA (tqdm), silent on non-zero ranks and when disabled by VLMKD_NO_PROGRESS=1.

On a terminal: the usual redrawn bar. Anywhere else (a log file, a pipe, a job scheduler's capture): plain lines,
one per VLMKD_PROGRESS_INTERVAL seconds (default 30) plus a last one at the end, never `\\r` redraws, so a log
keeps a readable timeline instead of thousands of carriage-return updates.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _std_tqdm

from vlmkd.utils.dist import is_main

DEFAULT_INTERVAL_S = 30.0


class LineProgress(_std_tqdm):
    """tqdm that writes each refresh as its own line, at most one per `mininterval` seconds (set_postfix and
    refresh included, which tqdm would otherwise draw at once)."""

    _last_line_t = float("-inf")

    def display(self, msg: str | None = None, pos: int | None = None, force: bool = False) -> bool:
        text = (self.__str__() if msg is None else msg).strip()
        if not text:  # tqdm clears with an empty message (then writes "\r"); a log needs no clearing
            return False
        now = time.monotonic()
        if not force and now - self._last_line_t < self.mininterval:
            return True
        self._last_line_t = now
        self.fp.write(text + "\n")
        self.fp.flush()
        return True

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        # no forced line: during iteration tqdm syncs the count only at its own refreshes, so a forced one
        # would print a stale count; the postfix shows on the next timed line
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def close(self) -> None:
        if not self.disable and self.n:
            self.display(force=True)  # the final count and elapsed time, whatever the interval
        super().close()


def interval_s() -> float:
    try:
        return float(os.environ.get("VLMKD_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress(iterable=None, total=None, desc: str = "", unit: str = "it", disable: bool | None = None, **kw):
    if disable is None:
        disable = (not is_main()) or os.environ.get("VLMKD_NO_PROGRESS") == "1"
    stream = kw.pop("file", sys.stderr)
    common = {"total": total, "desc": desc, "unit": unit, "disable": disable, "file": stream, "leave": False}
    if hasattr(stream, "isatty") and stream.isatty():
        return _auto_tqdm(iterable, dynamic_ncols=True, **common, **kw)
    kw.setdefault("mininterval", interval_s())
    return LineProgress(iterable, ncols=100, ascii=True, **common, **kw)
