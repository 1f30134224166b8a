"""Progress bars with ETA (tqdm), silent on non-zero ranks and when disabled by VLMKD_NO_PROGRESS=1."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

from vlmkd.utils.dist import is_main


def progress(iterable=None, total=None, desc: str = "", unit: str = "it", disable: bool | None = None, **kw):
    if disable is None:
        disable = (not is_main()) or os.environ.get("VLMKD_NO_PROGRESS") == "1"
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        dynamic_ncols=True,
        file=sys.stderr,
        leave=False,
        **kw,
    )
