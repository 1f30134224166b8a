"""Training-loader throughput from files vs WebDataset shards vs Parquet, on the same JPEGs.

Generates N JPEGs (default 5,000, 400 x 300, 10 classes) as an image folder, packs them with `vlmkd data pack`
(8 MB shards) and writes them as Parquet (Hugging Face layout: Image struct column, 100-row row groups), then
times the training loader of the ImageNet-LT recipe (configs/vlmkd/imagenet_lt.yaml: decode + RandomResizedCrop
+ flip at 224 px, `ManifestDataset` + `DataLoader` with W workers, a shuffled epoch) over each. Each source gets
one warm-up epoch first (page cache, shard index, Parquet's one-time Arrow copy), then R timed epochs each,
interleaved (files, wds, parquet, files, ...) so a change in the machine's load hits all three alike.
A fourth source, `plain_wds`, is the loop open_clip and timm users write by hand over the same shards (webdataset's
streaming pipeline with a 1,000-sample shuffle buffer, PIL decode, the same torchvision transform): vlmkd's shard
loader against it is `wds_vs_plain_wds`, the loader part of `benchmarks/train_throughput.py`'s GPU comparison.
Prints one JSON line: median img/s per source and per worker, CPU ms per image (main process + workers: the
measure that holds on a shared machine), and `wds_vs_files` / `parquet_vs_files` / `wds_vs_plain_wds` (medians of
the side-by-side wall-time ratios) with their CPU-time counterparts.

    python benchmarks/loader_throughput.py [--n 5000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.pack import pack
from vlmkd.data.transforms import build_transform

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "vlmkd" / "imagenet_lt.yaml"


def make_jpegs(root: Path, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % classes
        d = root / "train" / f"class_{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth texture upscaled: compresses like a photo (about 20-40 KB at quality 90), unlike pure noise
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((400, 300), Image.Resampling.BICUBIC).save(
            d / f"{i:05d}.jpg", quality=90
        )


def write_parquet(manifest, out: Path, row_group: int = 100) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(manifest.root)
    image = pa.array(
        [{"bytes": (root / p).read_bytes(), "path": Path(p).name} for p in manifest.paths],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    t = pa.table({"path": pa.array(list(manifest.paths)), "image": image, "label": pa.array(manifest.labels)})
    pq.write_table(t, out, row_group_size=row_group)


class Loader:
    """One source's training loader; `epoch()` returns (img/s of wall time, CPU ms per image over the main
    process and its workers: robust to other load on the machine, which wall time is not)."""

    def __init__(self, cfg, workers: int, batch: int):
        manifest = build_manifests(cfg.data)["train"]
        self.ds = ManifestDataset(manifest, build_transform(cfg.data, train=True), on_bad_image="error")
        self.ds.seed, self.workers, self.batch = 0, workers, batch

    def epoch(self, epoch: int) -> tuple[float, float]:
        self.ds.set_epoch(epoch)
        sampler = RandomSampler(self.ds, generator=torch.Generator().manual_seed(epoch))
        loader = DataLoader(
            self.ds, self.batch, sampler=sampler, num_workers=self.workers, collate_fn=collate_skip
        )
        cpu0, t0, n = _cpu_s(), time.perf_counter(), 0
        for b in loader:
            n += len(b["label"])
        del loader  # workers exit and are reaped: their CPU time is counted
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        return n / wall, cpu / n * 1000


class PlainLoader:
    """The loop open_clip and timm users write by hand over the same shards: webdataset's streaming pipeline
    (shuffle buffer, PIL decode, the torchvision transform the recipe uses), batched in the workers."""

    def __init__(self, shards: list[str], workers: int, batch: int):
        import torchvision.transforms as T

        self.shards, self.workers, self.batch = shards, workers, batch
        self.tf = T.Compose(
            [
                T.RandomResizedCrop(224),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def epoch(self, epoch: int) -> tuple[float, float]:
        import webdataset as wds

        ds = (
            wds.WebDataset(self.shards, shardshuffle=len(self.shards), seed=epoch, empty_check=False)
            .shuffle(1000)
            .decode("pil")
            .to_tuple("jpg", "cls")
            .map_tuple(self.tf, int)
            .batched(self.batch, partial=True)
        )
        loader = wds.WebLoader(ds, batch_size=None, num_workers=self.workers)
        cpu0, t0, n = _cpu_s(), time.perf_counter(), 0
        for _, y in loader:
            n += len(y)
        del loader
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        return n / wall, cpu / n * 1000


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed epochs per source, interleaved (after a warm-up)"
    )
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ["VLMKD_INDEX_CACHE"] = str(d / "index_cache")
        make_jpegs(d / "files", args.n)
        common = [f"data.num_workers={args.workers}", "data.val_list=null", "data.test_list=null"]
        files = load_config(RECIPE, ["data.format=image_folder", f"data.root={d / 'files'}", *common])
        manifest = build_manifests(files.data)["train"]
        # 8 MB shards: the plain streaming loop gives each worker whole shards (webdataset issue 188)
        pack({"train": manifest}, d / "shards", 8_000_000)
        write_parquet(manifest, d / "train.parquet")
        sources = {
            "files": files,
            "wds": load_config(
                RECIPE, ["data.format=wds", f"data.root={d / 'shards'}", "data.train_list=null", *common]
            ),
            "parquet": load_config(
                RECIPE, ["data.format=parquet", f"data.train_list={d / 'train.parquet'}", *common]
            ),
        }
        loaders = {k: Loader(cfg, args.workers, args.batch) for k, cfg in sources.items()}
        shards = sorted(str(p) for p in (d / "shards").glob("*.tar"))
        loaders["plain_wds"] = PlainLoader(shards, args.workers, args.batch)
        for lo in loaders.values():
            lo.epoch(0)  # warm-up: page cache, shard index, Parquet's Arrow copy
        runs = {k: [] for k in loaders}
        for r in range(1, args.rounds + 1):  # interleaved: a change in the machine's load hits every source
            for k, lo in loaders.items():
                runs[k].append(lo.epoch(r))
    rate = {k: float(np.median([x[0] for x in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([x[1] for x in v])) for k, v in runs.items()}

    def ratio(k: str, base: str = "files") -> float:  # median over rounds of side-by-side ratios
        return float(np.median([a[0] / b[0] for a, b in zip(runs[k], runs[base])]))

    per = max(args.workers, 1)
    out = {
        "n_images": args.n,
        "image": "400x300 JPEG q90",
        "transform": "imagenet_lt recipe train transform, 224 px",
        "workers": args.workers,
        "rounds": args.rounds,
        **{f"{k}_img_s": round(v, 1) for k, v in rate.items()},
        **{f"{k}_img_s_per_worker": round(v / per, 1) for k, v in rate.items()},
        **{f"{k}_cpu_ms_per_img": round(v, 2) for k, v in cpu.items()},
        "wds_vs_files": round(ratio("wds"), 3),
        "parquet_vs_files": round(ratio("parquet"), 3),
        "wds_vs_files_cpu": round(cpu["files"] / cpu["wds"], 3),
        "parquet_vs_files_cpu": round(cpu["files"] / cpu["parquet"], 3),
        "wds_vs_plain_wds": round(ratio("wds", "plain_wds"), 3),
        "wds_vs_plain_wds_cpu": round(cpu["plain_wds"] / cpu["wds"], 3),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
