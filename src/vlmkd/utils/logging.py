"""JSON-lines metrics (always), TensorBoard when installed, Weights & Biases only when installed and asked for."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vlmkd.utils.dist import is_main
from vlmkd.utils.io import atomic_write

log = logging.getLogger("vlmkd")


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is emitted, not as it was when the handler was made: a
    redirected or captured stderr (pytest's capsys, notebooks) must not leave it writing to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = _CurrentStderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.setLevel(level)


class MetricsLogger:
    """Appends one JSON object per line to `metrics.jsonl`; only rank 0 writes."""

    def __init__(
        self, run_dir: str | Path | None, tensorboard: bool = True, wandb_project: str | None = None
    ):
        self.enabled = run_dir is not None and is_main()
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir else None
        self._tb = None
        self._tb_class = None  # the SummaryWriter class when tensorboard is on and installed
        self._tb_purge: int | None = None
        self._wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            self._tb_class = _summary_writer()
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, dir=str(run_dir))
            except ImportError:
                log.warning("wandb is not installed; logging to metrics.jsonl only")

    def rewind(self, step: int) -> None:
        """Forget records after optimizer step `step` (0: all): a resumed run writes them again from its
        checkpoint, and a restarted run writes everything again, so nothing appears twice.

        TensorBoard events are append-only files: the next writer opens with `purge_step`, which tells TensorBoard
        to drop the earlier files' events from that step on (torch's SummaryWriter, as timm and open_clip resume)."""
        if not self.enabled:
            return
        if self._tb_class is not None and any((self.path.parent / "tb").glob("events.*")):
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            self._tb_purge = step + 1 if step else 0
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and step and json.loads(line).get("step", 0) <= step
        ]

        atomic_write(self.path, lambda p: p.write_text("".join(x + "\n" for x in kept), encoding="utf-8"))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), **({"step": step} if step is not None else {}), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=float) + "\n")
        if self._tb_class is not None and step is not None:
            if self._tb is None:  # opened at the first scalar, after any rewind has set the purge step
                self._tb = self._tb_class(str(self.path.parent / "tb"), purge_step=self._tb_purge)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


_warned_tensorboard = False


def _summary_writer():
    """torch's SummaryWriter class, or None (with one warning per process) when tensorboard is not installed."""
    global _warned_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # absent (ImportError) or broken (a protobuf clash): JSON lines only, said once
        if not _warned_tensorboard:
            _warned_tensorboard = True
            why = (
                "not installed" if isinstance(e, ImportError) else f"not importable ({type(e).__name__}: {e})"
            )
            log.warning(
                "train.tensorboard is on but tensorboard is %s: logging to metrics.jsonl only; "
                "pip install 'vlmkd[tensorboard]' (or set train.tensorboard=false to silence this)",
                why,
            )
        return None
    return SummaryWriter


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out
