"""Launch `vlmkd` under torchrun from tests (gloo on CPU, one thread per process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "VLMKD_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def torchrun_cmd(
    nproc: int, args: list[str], launcher: list[str] | None = None, entry: Path | None = None
) -> list[str]:
    """`entry`: a script run in place of `-m vlmkd` (one that patches a module constant, then calls the CLI)."""
    launch = launcher or ["--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    program = [str(entry)] if entry else ["-m", "vlmkd"]
    return [sys.executable, "-m", "torch.distributed.run", *launch, *program, *args]


def torchrun(
    nproc: int, args: list[str], timeout: int = 300, entry: Path | None = None
) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m vlmkd ARGS`; fails the test with the tail of stderr on a non-zero exit."""
    r = subprocess.run(
        torchrun_cmd(nproc, args, entry=entry),
        env=dist_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r
