"""`vlmkd teach` with 2 processes (torchrun, gloo) vs 1 process, same images, teacher and machine.

    python benchmarks/teach_scaling.py [--teacher open_clip:ViT-S-32] [--images 2000] [--size 64] [--rounds 1]

Writes a folder of random PNG images and one recipe per run to a temporary directory, then times, interleaved:
  1proc   `python -m vlmkd teach CONFIG`
  2proc   `torchrun --nproc_per_node 2 -m vlmkd teach CONFIG` (each rank computes every other shard, rank 0 merges)
Each run gets its own empty cache folder. Fairness: every process runs with ONE torch thread (OMP_NUM_THREADS=1,
MKL_NUM_THREADS=1), so the 1-process run uses one core and the 2-process run two; without that, one process would
already use both cores through intra-op threads and the comparison would measure thread scaling instead.
The teacher defaults to open_clip's ViT-S-32 with random weights (the compute of the pretrained one, no download),
big enough that the feature computation, not interpreter start-up, dominates.

Prints ONE JSON line:
  speedup_2proc       stage time 1proc / stage time 2proc: the time from the start of the feature computation to
                      the merged cache (`seconds_last_run` in the cache's meta.json; on rank 0 this includes waiting
                      for rank 1 at the barrier), median over rounds. Target on 2 CPU cores: >= 1.7.
  speedup_2proc_wall  the same for the whole command (start-up, model load and torchrun's launcher included).
plus the times, the image count and the machine's load average before and after (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_images(root: Path, n: int, size: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")


def write_config(tmp: Path, name: str, teacher: str, shard_size: int) -> Path:
    cfg = {
        "data": {"format": "image_folder", "root": str(tmp / "data"), "in_chans": 3, "num_workers": 0},
        "clip": {
            "name": teacher,
            "batch_size": 32,
            "cache_dir": str(tmp / f"cache_{name}"),
            "shard_size": shard_size,
        },
        "train": {"device": "cpu"},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_teach(cfg: Path, procs: int) -> tuple[float, float]:
    """(stage seconds from the cache's meta.json, whole-command wall seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "VLMKD_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    launch = [sys.executable, "-m", "vlmkd"]
    if procs > 1:
        port = str(29500 + os.getpid() % 2000)
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        launch += ["--master_port", port, "-m", "vlmkd"]
    t0 = time.perf_counter()
    r = subprocess.run([*launch, "teach", str(cfg)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"teach ({procs} proc) failed:\n{r.stderr[-3000:]}")
    cache = yaml.safe_load(cfg.read_text())["clip"]["cache_dir"]
    (meta,) = Path(cache).glob("*/meta.json")
    return float(json.loads(meta.read_text())["seconds_last_run"]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="open_clip:ViT-S-32")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="side of the random source images")
    ap.add_argument("--shard-size", type=int, default=128, help="clip.shard_size (rows per shard)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    load_before = os.getloadavg()
    times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_images(tmp / "data", args.images, args.size)
        for r in range(args.rounds):
            for procs in (1, 2):
                cfg = write_config(tmp, f"p{procs}_r{r}", args.teacher, args.shard_size)
                times[procs].append(run_teach(cfg, procs))
    stage = {p: statistics.median(t[0] for t in v) for p, v in times.items()}
    wall = {p: statistics.median(t[1] for t in v) for p, v in times.items()}
    print(
        json.dumps(
            {
                "speedup_2proc": round(stage[1] / stage[2], 3),
                "speedup_2proc_wall": round(wall[1] / wall[2], 3),
                "stage_s_1proc": round(stage[1], 1),
                "stage_s_2proc": round(stage[2], 1),
                "wall_s_1proc": round(wall[1], 1),
                "wall_s_2proc": round(wall[2], 1),
                "images": args.images,
                "teacher": args.teacher,
                "rounds": args.rounds,
                "cpu_count": os.cpu_count(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
