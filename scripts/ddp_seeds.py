"""1 process vs `torchrun --nproc_per_node 2` on a ResNet-18 recipe over real long-tailed Fashion-MNIST, N seeds:
final test accuracy (mean, std) of each, and the weight difference of each seed next to the recipe's float-order
noise floor (1 process at 1 vs 2 threads, seed 0).

    python scripts/ddp_seeds.py --seeds 3 --out /tmp/ddp_seeds [--epochs 3 --head 400 --tail 8 --size 64]

Prints one JSON line. The recipe (a long-tailed folder, ResNet-18, balanced softmax, SGD lr 0.1, cosine) is the
shape of issue 19's trial; tests/integration/test_ddp_resnet18.py runs a smaller one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from safetensors.torch import load_file

FMNIST = Path(os.environ.get("VLMKD_FMNIST", "/usr/share/datasets/fashion-mnist"))


def fmnist_folder(root: Path, head: int = 48, tail: int = 5, test_per_class: int = 20) -> Path:
    """root/{train,test}/class_<c>/*.png from the real Fashion-MNIST files, train counts decaying head -> tail."""
    from vlmkd.data.arrays import write_fashion_mnist_folder

    counts = np.round(head * (tail / head) ** (np.arange(10) / 9)).astype(int)
    if (root / "train").is_dir():
        return root
    return write_fashion_mnist_folder(root, FMNIST, list(counts), test_per_class)


def recipe(out: Path, data: Path, seed: int, epochs: int = 2, size: int = 32, batch: int = 32) -> Path:
    cfg = {
        "data": {
            "format": "image_folder",
            "root": str(data),
            "image_size": size,
            "in_chans": 1,
            "batch_size": batch,
            "eval_batch_size": 100,
            "val_fraction": 0.15,
            "num_workers": 0,
        },
        "model": {"name": "resnet18"},
        "losses": {"cls": {"name": "balanced_softmax"}},
        "optim": {"name": "sgd", "lr": 0.1, "schedule": "cosine"},
        "train": {"epochs": epochs, "seed": seed, "device": "cpu", "tensorboard": False, "log_every": 1},
        "eval": {"every": 1, "select_on": "val"},
    }
    path = out / f"resnet18_s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def env(threads: int) -> dict[str, str]:
    src = Path(__file__).resolve().parents[1] / "src"
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads), "VLMKD_NO_PROGRESS": "1"}


def train(
    config: Path, run: Path, nproc: int = 1, threads: int = 1, overrides: list[str] | None = None
) -> dict:
    cmd = [sys.executable, "-m", "vlmkd", "train", str(config), "--run-dir", str(run), *(overrides or [])]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(29500 + os.getpid() % 1000),
            *cmd[1:],
        ]
    r = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads((run / "summary.json").read_text())


def rel_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "student.safetensors"), load_file(b / "student.safetensors")
    return max(
        float((x[k].float() - y[k].float()).abs().max() / max(1.0, x[k].float().abs().max())) for k in x
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vlmkd-ddp-seeds"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--head", type=int, default=48)
    ap.add_argument("--tail", type=int, default=5)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    data = fmnist_folder(args.out / "data", args.head, args.tail)
    acc: dict[str, list[float]] = {"1": [], "2": []}
    diffs = []
    for seed in range(args.seeds):
        config = recipe(args.out, data, seed, args.epochs, args.size)
        one = train(config, args.out / f"p1_s{seed}")
        two = train(config, args.out / f"p2_s{seed}", nproc=2)
        acc["1"].append(one["splits"]["test"]["overall"])
        acc["2"].append(two["splits"]["test"]["overall"])
        diffs.append(rel_diff(args.out / f"p1_s{seed}", args.out / f"p2_s{seed}"))
    config = recipe(args.out, data, 0, args.epochs, args.size)
    train(config, args.out / "t2_s0", threads=2)
    floor = rel_diff(args.out / "p1_s0", args.out / "t2_s0")
    res = {
        "seeds": args.seeds,
        "test_overall_1proc": [round(100 * np.mean(acc["1"]), 2), round(100 * np.std(acc["1"]), 2)],
        "test_overall_2proc": [round(100 * np.mean(acc["2"]), 2), round(100 * np.std(acc["2"]), 2)],
        "weights_1v2_proc": [float(f"{d:.3g}") for d in diffs],
        "weights_1v2_threads_seed0": float(f"{floor:.3g}"),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
