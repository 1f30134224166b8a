"""`describe --dry-run`'s estimate against the measured run it predicts, side by side in one run.

Two fake OpenAI-compatible servers (tests/helpers_chat_server.py, in a separate process) of two kinds: "parallel"
(every request answered after a fixed latency, as a server that batches freely) and "serial" (one request at a
time, as a server that generates one sequence at a time: requests queue). For each kind: the dry-run estimate
(`estimate_cost`, 16-image sample, 2 servers, concurrency 4 each), then the real `describe_manifest` over the whole
split, timed. Prints one JSON line: per kind, the estimate, the measured seconds, their ratio (1.0 = exact), and
the old per-request-latency formula (total x latency / (servers x concurrency)) for contrast.

    PYTHONPATH=src python benchmarks/describe_estimate.py [--images 240]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("VLMKD_NO_PROGRESS", "1")

KINDS = {"parallel": {"delay_s": 0.1}, "serial": {"delay_s": 0.02, "serial": True}}


def serve(kwargs: dict, ports, stop) -> None:
    from helpers_chat_server import ChatServer

    servers = [ChatServer(**kwargs).__enter__() for _ in range(2)]
    ports.put([s.url for s in servers])
    stop.wait()
    for s in servers:
        s.__exit__(None, None, None)


def measure(urls: list[str], images: int, out: Path) -> dict:
    from describe_fixtures import png_manifest
    from vlmkd.config import DescribeConfig
    from vlmkd.describe import build_describer, describe_manifest, estimate_cost

    m = png_manifest(out / "data", n=images, size=16, seed=0)
    cfg = DescribeConfig(backend="openai", model="m", base_url=urls, concurrency=4, output=str(out / "desc"))
    est = estimate_cost(m, cfg, build_describer(cfg), sample=16)
    old = images * est["per_request_latency_s"] / (2 * 4)
    describer = build_describer(cfg)
    t = time.perf_counter()
    describe_manifest(m, cfg, describer)
    real = time.perf_counter() - t
    return {
        "estimated_seconds": est["estimated_seconds"],
        "estimated_seconds_by_servers": est["estimated_seconds_by_servers"],
        "measured_seconds": round(real, 2),
        "ratio_estimate_to_measured": round(est["estimated_seconds"] / real, 3),
        "old_latency_formula_seconds": round(old, 2),
        "ratio_old_formula_to_measured": round(old / real, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=240)
    args = ap.parse_args()
    logging.getLogger("vlmkd").setLevel(logging.WARNING)
    ctx = mp.get_context("spawn")
    res = {}
    for kind, kwargs in KINDS.items():
        ports, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=serve, args=(kwargs, ports, stop), daemon=True)
        proc.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                res[kind] = measure(ports.get(timeout=60), args.images, Path(tmp))
        finally:
            stop.set()
            proc.join(timeout=10)
    print(json.dumps({"images": args.images, "servers": 2, "concurrency_per_server": 4, **res}))


if __name__ == "__main__":
    main()
