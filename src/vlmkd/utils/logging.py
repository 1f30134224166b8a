"""JSON-lines metrics (always), TensorBoard when installed, Weights & Biases only when installed and asked for."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vlmkd.utils.dist import is_main

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
        self._wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard is optional: absent means JSON lines only
                self._tb = None
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, dir=str(run_dir))
            except ImportError:
                log.warning("wandb is not installed; logging to metrics.jsonl only")

    def rewind(self, step: int) -> None:
        """Forget records after optimizer step `step` (0: all): a resumed run writes them again from its
        checkpoint, and a restarted run writes everything again, so nothing appears twice."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and step and json.loads(line).get("step", 0) <= step
        ]
        from vlmkd.utils.io import atomic_write

        atomic_write(self.path, lambda p: p.write_text("".join(x + "\n" for x in kept), encoding="utf-8"))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), **({"step": step} if step is not None else {}), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=float) + "\n")
        if self._tb is not None and step is not None:
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
