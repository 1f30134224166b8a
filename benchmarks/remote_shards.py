"""Training-loader throughput from WebDataset shards on object storage (HTTP Range requests) vs on local disk.

Generates N JPEGs (400 x 300, 10 classes), packs them with `vlmkd data pack` (8 MB shards) and serves the shards
from a local HTTP server (tests/helpers_range_server.py, in its own process) that answers every request after a
fixed latency (`--latency-ms`, default 20: object storage's time to first byte). Times the ImageNet-LT recipe's
training loader (decode + RandomResizedCrop + flip at 224 px, W workers, a shuffled epoch; the `Loader` of
loader_throughput.py) over three sources, one warm-up epoch each, then R timed epochs interleaved:
- `local`: the shards on local disk (one pread per image);
- `http_serial`: the shards over HTTP, one image at a time (each worker waits a round trip per image: what vlmkd
  did before batches were fetched at once, and what any loader that reads by offset one sample at a time does);
- `http`: the shards over HTTP as vlmkd reads them now (`ManifestDataset.__getitems__`: a batch's images requested
  at once, fsspec `cat_ranges`).
One JSON line: img/s per source, `http_vs_serial` and `http_vs_local` (medians of side-by-side ratios), the
server's request count per image, and the seconds to index the shard list over HTTP from an empty cache, one shard
at a time vs `SCAN_THREADS` at once (`index_speedup`).

    python benchmarks/remote_shards.py [--n 2000] [--workers 2] [--latency-ms 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from helpers_range_server import RangeServer  # noqa: E402
from loader_throughput import RECIPE, Loader, make_jpegs  # noqa: E402
from vlmkd.config import load_config  # noqa: E402
from vlmkd.data import build_manifests, shards  # noqa: E402
from vlmkd.data.pack import pack  # noqa: E402
from vlmkd.data.sharded import expand_spec  # noqa: E402


class ItemByItem(Dataset):
    """The dataset without `__getitems__`: DataLoader then asks for one sample at a time."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i]

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)


def serve(root: str, latency_s: float, urls, stats) -> None:
    with RangeServer(root, latency_s) as srv:
        urls.put(srv.url)
        while True:
            time.sleep(0.2)
            stats.value = srv.requests


def index_time(spec: str, cache: Path, threads: int | None) -> float:
    """Seconds to index the shard list from an empty cache (a first run), with `threads` scanning at once."""
    os.environ["VLMKD_INDEX_CACHE"] = str(cache)
    keep = shards.SCAN_THREADS
    shards.SCAN_THREADS = threads or keep
    try:
        t0 = time.perf_counter()
        list(shards.shard_indexes(expand_spec(spec)))
        return time.perf_counter() - t0
    finally:
        shards.SCAN_THREADS = keep
        os.environ["VLMKD_INDEX_CACHE"] = str(cache.parent / "index_cache")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per source, interleaved")
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ["VLMKD_INDEX_CACHE"] = str(d / "index_cache")
        make_jpegs(d / "files", args.n)
        none = ["data.val_list=null", "data.test_list=null"]
        files = load_config(RECIPE, ["data.format=image_folder", f"data.root={d / 'files'}", *none])
        pack({"train": build_manifests(files.data)["train"]}, d / "shards", 8_000_000)
        shards = sorted(p.name for p in (d / "shards").glob("train-*.tar"))
        urls, stats = ctx.Queue(), ctx.Value("q", 0)
        server = ctx.Process(
            target=serve, args=(str(d / "shards"), args.latency_ms / 1000, urls, stats), daemon=True
        )
        server.start()
        try:
            url = urls.get(timeout=30)
            spec = f"{url}/train-{{000000..{len(shards) - 1:06d}}}.tar"
            index_s = {
                k: index_time(spec, d / f"index_{k}", threads) for k, threads in (("serial", 1), ("", None))
            }
            local = load_config(
                RECIPE, ["data.format=wds", f"data.root={d / 'shards'}", "data.train_list=null", *none]
            )
            remote = load_config(
                RECIPE, ["data.format=wds", "data.root=null", f"data.train_list={spec}", *none]
            )
            loaders = {
                "local": Loader(local, args.workers, args.batch),
                "http_serial": Loader(remote, args.workers, args.batch),
                "http": Loader(remote, args.workers, args.batch),
            }
            loaders["http_serial"].ds = ItemByItem(loaders["http_serial"].ds)
            for lo in loaders.values():
                lo.epoch(0)  # warm-up: page cache, shard index
            runs = {k: [] for k in loaders}
            requests = {k: 0 for k in loaders}
            for r in range(1, args.rounds + 1):
                for k, lo in loaders.items():
                    before = stats.value
                    runs[k].append(lo.epoch(r)[0])
                    time.sleep(0.3)  # the server publishes its count every 0.2 s
                    requests[k] += stats.value - before
        finally:
            server.terminate()

    def ratio(a: str, b: str) -> float:
        return float(np.median([x / y for x, y in zip(runs[a], runs[b])]))

    out = {
        "n_images": args.n,
        "workers": args.workers,
        "batch": args.batch,
        "latency_ms": args.latency_ms,
        "shards": len(shards),
        **{f"{k}_img_s": round(float(np.median(v)), 1) for k, v in runs.items()},
        "http_vs_serial": round(ratio("http", "http_serial"), 3),
        "http_vs_local": round(ratio("http", "local"), 3),
        "http_requests_per_image": round(requests["http"] / (args.n * args.rounds), 3),
        # indexing the shard list over HTTP from an empty cache: one shard at a time vs SCAN_THREADS at once
        "index_s_serial": round(index_s["serial"], 3),
        "index_s": round(index_s[""], 3),
        "index_speedup": round(index_s["serial"] / index_s[""], 2),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
