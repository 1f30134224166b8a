"""Data pipeline throughput vs the student's training consumption, measured side by side in one run.

    python benchmarks/data_throughput.py [--config configs/fmnist_lt_baseline.yaml] [--batches 30] [key=value ...]

Prints images/s of (a) the training DataLoader alone (decode + per-sample augmentation + collate), (b) training
steps alone on pre-loaded batches (forward, backward, optimizer), and the ratio a/b: above 1 means the data
pipeline keeps up with the model; below 1 means training is input-bound.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("VLMKD_NO_PROGRESS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/fmnist_lt_baseline.yaml")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from vlmkd.compose import build_run
    from vlmkd.config import load_config

    cfg = load_config(args.config, [*args.overrides, "train.tensorboard=false", "eval.every=0"])
    t = build_run(cfg, "/tmp/vlmkd-bench-data").trainer
    t.data.sampler.set_epoch(0)
    it = iter(t._loader_from(0))
    next(it)  # warm-up (worker start)
    start = time.perf_counter()
    batches = [next(it) for _ in range(args.batches)]
    data_s = time.perf_counter() - start
    n = sum(len(b["label"]) for b in batches)

    t.task.train()
    t._step(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches:
        t._step(b)
    step_s = time.perf_counter() - start

    data_ips, step_ips = n / data_s, n / step_s
    print(
        f"config {args.config}  model {cfg.model.name}  batch {cfg.data.batch_size}  workers {cfg.data.num_workers}"
        f"  torch threads {torch.get_num_threads()}"
    )
    print(f"{'data pipeline (load + augment + collate)':<45} {data_ips:10.0f} images/s")
    print(f"{'training steps (fwd + bwd + optimizer)':<45} {step_ips:10.0f} images/s")
    print(
        f"{'ratio data / training':<45} {data_ips / step_ips:10.2f}x "
        f"({'data keeps up' if data_ips >= step_ips else 'input-bound: raise data.num_workers'})"
    )


if __name__ == "__main__":
    main()
