""".ci/run fails (before installing anything) when Fashion-MNIST cannot be installed: CI never skips the demo path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("apt", ["missing", "failing"])
def test_ci_fails_without_the_dataset(tmp_path, apt):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if apt == "failing":  # apt-get that knows no such package (a fake sudo passes the call through)
        for name, body in (("apt-get", "echo 'E: Unable to locate package' >&2; exit 100"), ("sudo", '"$@"')):
            (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
            (bin_dir / name).chmod(0o755)
    done = subprocess.run(
        [shutil.which("bash"), str(ROOT / ".ci" / "run")],
        env={**os.environ, "PATH": str(bin_dir), "VLMKD_CI_VENV": str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "dataset-fashion-mnist" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "venv").exists()  # stopped before creating the environment
