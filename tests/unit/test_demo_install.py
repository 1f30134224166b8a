"""`vlmkd demo` installs Fashion-MNIST itself on Debian/Ubuntu, and says what to do elsewhere (apt is faked)."""

from __future__ import annotations

import subprocess

import pytest

import vlmkd.commands.demo as demo_cmd
import vlmkd.data.arrays as arrays
from vlmkd.cli import main
from vlmkd.errors import DataError


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """No Fashion-MNIST; `apt-get install` puts the IDX files in place unless told the package is unknown."""
    target = tmp_path / "fashion-mnist"
    monkeypatch.setattr(arrays, "FASHION_MNIST_DIRS", [str(target)])
    state = {"calls": [], "known": True, "root": True, "apt": "/usr/bin/apt-get"}

    def run(cmd, **kw):
        state["calls"].append(cmd)
        if cmd[-1] == "update":
            state["known"] = True
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if not state["known"]:
            return subprocess.CompletedProcess(
                cmd, 100, "", "E: Unable to locate package dataset-fashion-mnist"
            )
        target.mkdir(exist_ok=True)
        (target / "train-images-idx3-ubyte.gz").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(demo_cmd.subprocess, "run", run)
    monkeypatch.setattr(demo_cmd.os, "geteuid", lambda: 0 if state["root"] else 1000)
    tools = {"apt-get": lambda: state["apt"], "sudo": lambda: "/usr/bin/sudo" if state.get("sudo") else None}
    monkeypatch.setattr(demo_cmd.shutil, "which", lambda name: tools[name]())
    return state


def test_installs_with_apt_as_root_and_says_so(fake_system, capsys):
    demo_cmd.ensure_fashion_mnist()
    assert fake_system["calls"] == [["/usr/bin/apt-get", "install", "-y", "dataset-fashion-mnist"]]
    assert "running: /usr/bin/apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    demo_cmd.ensure_fashion_mnist()  # installed now: nothing runs
    assert len(fake_system["calls"]) == 1


def test_refreshes_package_lists_once_and_uses_sudo_when_not_root(fake_system):
    fake_system.update(known=False, root=False, sudo=True)
    demo_cmd.ensure_fashion_mnist()
    assert [c[2:] for c in fake_system["calls"]] == [
        ["install", "-y", "dataset-fashion-mnist"],
        ["update"],
        ["install", "-y", "dataset-fashion-mnist"],
    ]
    assert all(c[0] == "/usr/bin/sudo" for c in fake_system["calls"])


def test_not_root_without_sudo_and_no_apt_are_one_line_errors(fake_system, monkeypatch, capsys):
    fake_system.update(root=False, sudo=False)
    with pytest.raises(DataError, match="as root run `apt-get install -y dataset-fashion-mnist`"):
        demo_cmd.ensure_fashion_mnist()

    def no_download(root):
        raise DataError("offline")

    fake_system["apt"] = None
    monkeypatch.setattr(arrays, "fashion_mnist_root", no_download)
    assert main(["demo", "--quick", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no apt-get" in err[-1] and "torchvision" in err[-1] and "--data-root" in err[-1]
    assert fake_system["calls"] == []
