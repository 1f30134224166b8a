"""`vlmkd demo [--quick] [--seeds N] [--out DIR]`: the offline end-to-end demo on Fashion-MNIST.

The README's first command, so it does its own set-up: when Fashion-MNIST is not installed it installs Debian's
`dataset-fashion-mnist` package (with sudo when not root), saying what it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from vlmkd.errors import DataError

APT_PACKAGE = "dataset-fashion-mnist"
ELSEWHERE = (
    "on a machine with internet, `pip install torchvision` and vlmkd downloads it on first use; "
    "or pass --data-root FOLDER holding the IDX files (train-images-idx3-ubyte[.gz], ...)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="offline demo: VLM-KD + OOD distillation on Fashion-MNIST (in-house teacher)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a smaller, faster run (a few minutes on 2 CPU cores)"
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="student seeds per method (mean and std are reported)"
    )
    p.add_argument("--out", default="demo_out", help="output folder (summary.json, report.md, plots, runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--data-root",
        help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist, installed when missing)",
    )
    p.add_argument("--only", choices=["longtail", "ood", "combined"], help="run one part only")
    p.set_defaults(func=run)


def fashion_mnist_installed() -> bool:
    from vlmkd.data.arrays import FASHION_MNIST_DIRS

    for d in FASHION_MNIST_DIRS:
        p = Path(d).expanduser()
        if any(p.glob("train-images-idx3-ubyte*")) or (p / "FashionMNIST" / "raw").is_dir():
            return True
    return False


def _apt_prefix(apt: str) -> list[str]:
    """apt-get, behind sudo when not root."""
    if os.geteuid() == 0:
        return [apt]
    sudo = shutil.which("sudo")
    if sudo is None:
        raise DataError(
            f"Fashion-MNIST is not installed; as root run `apt-get install -y {APT_PACKAGE}`, or {ELSEWHERE}"
        )
    return [sudo, apt]


def _run_shown(cmd: list[str]) -> subprocess.CompletedProcess:
    print(f"vlmkd demo: Fashion-MNIST is missing; running: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def install_fashion_mnist(apt: str) -> None:
    """Install Debian's package, refreshing the package lists once when apt does not know it yet."""
    install = [*_apt_prefix(apt), "install", "-y", APT_PACKAGE]
    done = _run_shown(install)
    if done.returncode != 0:
        done = _run_shown([*_apt_prefix(apt), "update"])
        if done.returncode == 0:
            done = _run_shown(install)
    if done.returncode == 0 and fashion_mnist_installed():
        return
    why = (done.stderr or done.stdout or "").strip().splitlines()
    reason = why[-1] if why else f"exit {done.returncode}, but no IDX files appeared"
    raise DataError(f"could not install {APT_PACKAGE} ({reason}); install it yourself, or {ELSEWHERE}")


def ensure_fashion_mnist() -> None:
    """Debian/Ubuntu: apt-get installs it; elsewhere torchvision's download is tried (needs internet)."""
    if fashion_mnist_installed():
        return
    apt = shutil.which("apt-get")
    if apt is not None:
        install_fashion_mnist(apt)
        return
    from vlmkd.data.arrays import fashion_mnist_root

    print(
        "vlmkd demo: Fashion-MNIST is missing and there is no apt-get; trying torchvision's download",
        file=sys.stderr,
    )
    try:
        fashion_mnist_root(None)
    except DataError:
        raise DataError(
            f"Fashion-MNIST is not installed and this system has no apt-get: {ELSEWHERE}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from vlmkd.demo import run_demo
    from vlmkd.errors import ConfigError

    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if not args.data_root:
        ensure_fashion_mnist()
    parts = (args.only,) if args.only else ("longtail", "ood", "combined")
    run_demo(
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        device=args.device,
        data_root=args.data_root,
        parts=parts,
    )
    return 0
