"""Training memory is bounded by the batch, not the dataset: peak RSS at 1M images vs 10k, 2 ranks sharing the
artifacts, and what each random row read of the stores brings in.

    python benchmarks/memory_scale.py [--sizes 10000,1000000] [--steps 5] [--workdir DIR] [--keep]

Builds synthetic artifacts in a temporary folder (under --workdir: the disk measured) for each size: 2 x 2 grey
images (an IDX array source) with saved manifests over 8,142 classes; 384-d description embeddings (the real
embedding-store writer, a seeded fake encoder); 2 x 768-d augmented teacher views (the real teacher-feature cache
layout and key, for a tiny 768-d CLIP); 8,142 x 768 class texts. Then trains a small student (cnn_tiny, text_nce +
zero-shot KD from the cached features + CE over 8,142 classes) for a few steps in a fresh subprocess per run, and
evaluates it (8,142 classes).

Prints one JSON line:
- rss_ratio_1m_10k: peak RSS (VmHWM) of the largest size / the smallest; target <= 1.2.
- rssfile_growth_frac: at the largest size, RssFile growth from just before the first step to the last step, over
  RssAnon at the last step; target < 0.1. `rss_steps_mb` lists [RssAnon, RssFile] (MB, /proc/self/status) before
  the first step and after each step, per size; `rssfile_bytes_per_row` is RssFile growth from step 1 to the last
  step per row read in those steps (the stores as built: warm in the page cache).
- store_bytes_per_row: bytes read from the disk per store row read (/proc/self/io read_bytes over the training
  steps of one more run at the largest size, its store files first evicted from the page cache with
  posix_fadvise(POSIX_FADV_DONTNEED): a cold store, as on a fresh machine or network storage); target <= 8192, two
  pages. A row read is one row of one array: a teacher-feature row (2 x 768), an index-map row, an embedding row.
- read_ahead_kb: of the block device holding --workdir (/sys/dev/block/MAJ:MIN), or "unknown".
- pss_ratio_2proc: summed peak PSS of a 2-process torchrun run at the largest size / a 1-process run, both after
  reading every row of the stores as a full epoch would; target <= 1.3 where the stores are memory-mapped (their
  pages then dominate PSS). Rows read by offset are never mapped, so each process holds only itself and the
  ratio nears 2 (two interpreters); what says whether ranks copy the stores is store_pss_frac_2proc: the PSS the
  two ranks keep after reading every row, summed, over the stores' size (a copy per rank 2.0, pages shared through
  the page cache 1.0, rows read into per-batch buffers about 0); target <= 1.3.
- summary_bytes_8142: summary.json size; target <= 1 MB. Then the raw numbers. Disk: about 3.9 GB at 1M.
The description index map (sample -> embedding row) is computed once at build time, as the first training run
would, so the measured runs see the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES, TEXT_DIM, TEACHER_DIM, VIEWS, TEST_N = 8142, 384, 768, 2, 2000


class FakeEncoder:
    """Seeded random unit vectors per batch: the stores only need rows of the right shape."""

    def __init__(self, dim: int, name: str):
        self.dim, self.encoder_id, self.calls = dim, f"fake:{name}", 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        x = np.random.default_rng(self.calls).standard_normal((len(texts), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_idx(path: Path, images: np.ndarray) -> None:
    header = bytes([0, 0, 8, images.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path.write_bytes(header + images.tobytes())


def build_manifests(folder: Path, n: int):
    from vlmkd.data.manifest import Manifest

    rng = np.random.default_rng(n)
    names = [f"species_{c:05d}" for c in range(CLASSES)]
    out = {}
    for split, count, prefix in (("train", n, "train"), ("test", TEST_N, "t10k")):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (count, 2, 2), dtype=np.uint8))
        labels = rng.integers(0, CLASSES, count)
        # every class gets an image where there are enough (training refuses classes it has no image of)
        labels[: min(count, CLASSES)] = np.arange(min(count, CLASSES))
        labels = rng.permutation(labels)
        m = Manifest(
            ids=[f"{split}/{i:07d}" for i in range(count)],
            labels=labels,
            class_names=names,
            root=str(folder),
            indices=np.arange(count),
            source={"format": "fashion_mnist", "root": str(folder), "array_split": split},
            split=split,
        )
        m.save(folder / f"{split}.json")
        out[split] = m
    return out


def build_text(folder: Path, manifest) -> tuple[Path, Path]:
    """A description store's keyed meta (the index map checks it) and the real embedding store of its texts."""
    from vlmkd.describe.store import set_pointer
    from vlmkd.text.store import embed_texts
    from vlmkd.utils.io import artifact_key, write_json

    key = artifact_key({"synthetic_descriptions": manifest.key()})
    write_json(folder / "desc" / key[:16] / "meta.json", {"key": key, "manifest_key": manifest.key(), "n": 1})
    set_pointer(folder / "desc", key)
    texts = [f"a synthetic description of image {i}" for i in range(len(manifest))]
    ids = [f"{s}#0" for s in manifest.ids]
    meta = {"source": "descriptions", "source_key": key, "manifest_key": manifest.key()}
    embed_texts(texts, FakeEncoder(TEXT_DIM, "text"), folder / "emb", ids, 4096, meta)
    return folder / "desc", folder / "emb"


def build_teacher_features(folder: Path, clip_dir: str, manifest, clip_cfg) -> None:
    """features.npy (N x 2 x 768 float16) + meta.json under the real cache key of the tiny 768-d CLIP."""
    from vlmkd.teachers.clip import load_clip_teacher
    from vlmkd.teachers.features import cache_folder, feature_key
    from vlmkd.utils.io import artifact_key, write_json

    teacher = load_clip_teacher(f"hf:{clip_dir}")
    key_obj = feature_key(teacher, manifest, clip_cfg)
    out = cache_folder(teacher, manifest, clip_cfg)
    out.mkdir(parents=True, exist_ok=True)
    n = len(manifest)
    arr = np.lib.format.open_memmap(out / "features.npy", "w+", np.float16, (n, VIEWS, TEACHER_DIM))
    rng = np.random.default_rng(0)
    for lo in range(0, n, 65536):
        arr[lo : lo + 65536] = rng.standard_normal((min(65536, n - lo), VIEWS, TEACHER_DIM)).astype(
            np.float16
        )
    arr.flush()
    del arr
    meta = {"key": artifact_key(key_obj), **key_obj, "shape": [n, VIEWS, TEACHER_DIM], "complete": True}
    write_json(out / "meta.json", meta)


def run_config(folder: Path, clip_dir: str, steps: int) -> dict:
    return {
        "data": {
            "format": "manifest",
            "train_list": str(folder / "train.json"),
            "test_list": str(folder / "test.json"),
            "image_size": 8,
            "in_chans": 1,
            "mean": [0.5],
            "std": [0.5],
            "augment": "none",
            "batch_size": 64,
            "eval_batch_size": 500,
        },
        "model": {"name": "cnn_tiny", "head": "both", "embed_dim": TEXT_DIM},
        "losses": {
            "cls": {"name": "ce"},
            "text": {"name": "text_nce"},
            "kd": {"name": "kd", "weight": 1.0},
        },
        "clip": {
            "name": f"hf:{clip_dir}",
            "view": "augmented_k",
            "num_views": VIEWS,
            "cache_dir": str(folder / "feats"),
        },
        "teacher": {"name": "clip", "mode": "cached", "zero_shot_temperature": 0.05},
        "describe": {"n_descriptions": 1},
        "text": {
            "descriptions": str(folder / "desc"),
            "embeddings": str(folder / "emb"),
            "class_embeddings": str(folder.parent / "classtext"),
            "multi": "sample",
        },
        "optim": {"name": "sgd", "lr": 0.01},
        "train": {"epochs": 1, "max_steps": steps, "device": "cpu", "tensorboard": False, "log_every": 1},
        "eval": {"every": 0},
    }


def build(folder: Path, n: int, clip_dir: str, steps: int) -> Path:
    import yaml

    from vlmkd.config import load_config
    from vlmkd.tasks.index_map import description_index_map

    folder.mkdir(parents=True)
    manifests = build_manifests(folder, n)
    build_text(folder, manifests["train"])
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(folder, clip_dir, steps)))
    cfg = load_config(path)
    build_teacher_features(folder, clip_dir, manifests["train"], cfg.clip)
    description_index_map(cfg, manifests["train"])  # once, as the first training run would
    return path


def build_class_texts(folder: Path) -> None:
    from vlmkd.text.store import embed_texts

    names = [f"species_{c:05d}" for c in range(CLASSES)]
    texts = [f"a photo of a {n}." for n in names]
    ids = [f"{c}#0" for c in range(CLASSES)]
    embed_texts(texts, FakeEncoder(TEACHER_DIM, "classtext"), folder, ids, 4096, {"class_names": names})


# --------------------------------------------------------------------------------------------- measured runs


def child(config: str, run_dir: str, out: str) -> None:
    """One training run (one rank under torchrun): peak RSS and PSS (sampled every 50 ms), RssAnon / RssFile and
    read_bytes after every step, and the store rows read."""
    import psutil
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from vlmkd.compose import build_run
    from vlmkd.config import load_config

    proc, peak = psutil.Process(), {"pss": 0}

    def sample():
        while True:
            peak["pss"] = max(peak["pss"], proc.memory_full_info().pss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()
    run = build_run(load_config(config), run_dir)
    sources = list(run.trainer.data.dataset.extras.values())
    store_mb = sum(os.path.getsize(p) for p in store_files(sources)) / 2**20
    touch_mb = None
    if os.environ.get("MEMSCALE_TOUCH"):
        before = proc.memory_full_info().pss
        touch(sources)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # both ranks have read everything: shared pages split between them
        touch_mb = (proc.memory_full_info().pss - before) / 2**20  # what this rank keeps of what it read
    if os.environ.get("MEMSCALE_COLD"):
        evict(sources)
    rows, steps = count_row_reads(), [proc_status()]
    register_optimizer_step_post_hook(lambda *_: steps.append({**proc_status(), "rows": rows["n"]}))
    run.fit()
    peak["pss"] = max(peak["pss"], proc.memory_full_info().pss)
    rank = os.environ.get("RANK", "0")
    rec = {
        "rss_peak_mb": peak_rss_mb(),
        "pss_peak_mb": peak["pss"] / 2**20,
        "steps": steps,
        "store_mb": store_mb,
        "touch_pss_mb": touch_mb,
        "wall_s": round(time.time() - t0, 1),
    }
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(rec))


def count_row_reads() -> dict:
    """Counts the rows a StoreRows reads: its index-map row (if any) and the store rows it names, or one store
    row (all views of a sample) without a map."""
    from vlmkd.tasks.rows import StoreRows

    counter, block = {"n": 0}, StoreRows.block

    def counted(self, i):
        got = block(self, i)
        mapped = self.index_path is not None or self._index is not None
        counter["n"] += 1 + len(got) if mapped else 1
        return got

    StoreRows.block = counted
    return counter


def store_files(row_sources) -> list[str]:
    return [
        p
        for rows in row_sources
        for p in (getattr(rows, "path", None), getattr(rows, "index_path", None))
        if p
    ]


def evict(row_sources) -> None:
    """Drop the stores' pages from the page cache (clean pages no process maps), so the steps read them cold."""
    for path in store_files(row_sources):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def proc_status() -> dict:
    """RssAnon and RssFile (MB) from /proc/self/status, read_bytes (bytes from storage) from /proc/self/io."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            out["read_bytes"] = int(line.split()[1])
    return out


def touch(row_sources) -> None:
    """Read every row of the stores, as a full epoch would: a rank that kept what it read (a copy, or mapped pages
    it does not share) would show in PSS."""
    for rows in row_sources:
        for arr in (getattr(rows, "array", None), getattr(rows, "index", None)):
            if arr is not None and hasattr(arr, "shape"):
                for lo in range(0, len(arr), 4096):
                    float(np.asarray(arr[lo : lo + 4096], dtype=np.float32).sum())


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from the parent
    through fork and exec, so a child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def read_ahead_kb(path: Path) -> int | str:
    """read_ahead_kb of the block device holding `path` (its disk's, for a partition); "unknown" if none."""
    st = os.stat(path)
    dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    try:
        dev = dev.resolve(strict=True)
    except OSError:
        return "unknown"  # no block device (tmpfs, overlay, network file system) or not Linux
    for folder in (dev, dev.parent):
        f = folder / "queue" / "read_ahead_kb"
        if f.is_file():
            return int(f.read_text())
    return "unknown"


def measure(
    config: Path, run_dir: Path, nproc: int, touch_all: bool = False, cold: bool = False
) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "VLMKD_NO_PROGRESS": "1"}
    if touch_all:
        env["MEMSCALE_TOUCH"] = "1"
    if cold:
        env["MEMSCALE_COLD"] = "1"
    out = run_dir.parent / f"{run_dir.name}.mem"
    me = [str(Path(__file__).resolve()), "--child", str(config), str(run_dir), str(out)]
    if nproc == 1:
        cmd = [sys.executable, *me]
    else:
        port = str(29700 + os.getpid() % 1000)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", port, *me]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"memory_scale: training run failed:\n{r.stderr[-3000:]}")
    return [json.loads(Path(f"{out}.rank{i}.json").read_text()) for i in range(nproc)]


def step_numbers(steps: list[dict]) -> dict:
    """From [before the first step, after step 1, ..., after the last]: the growth figures of the JSON line."""
    before, first, last = steps[0], steps[1], steps[-1]
    rows = last["rows"] - first["rows"]
    return {
        "rssfile_growth_frac": round((last["RssFile"] - before["RssFile"]) / last["RssAnon"], 4),
        "rssfile_bytes_per_row": round((last["RssFile"] - first["RssFile"]) * 2**20 / max(rows, 1)),
        "disk_bytes_per_row": round((last["read_bytes"] - before["read_bytes"]) / max(last["rows"], 1)),
        "rows": last["rows"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_tiny_models import make_tiny_hf_clip

    t0 = time.time()
    base = Path(tempfile.mkdtemp(prefix="vlmkd-memscale-", dir=args.workdir))
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        clip_dir = make_tiny_hf_clip(base / "clip", dim=TEACHER_DIM)
        build_class_texts(base / "classtext")
        runs, build_s = {}, {}
        for n in sizes:
            tb = time.time()
            config = build(base / f"n{n}", n, clip_dir, args.steps)
            build_s[n] = round(time.time() - tb, 1)
            runs[n] = measure(config, base / f"n{n}" / "run1", 1)[0]
        big, small = max(sizes), min(sizes)
        cold = measure(base / f"n{big}" / "run.yaml", base / f"n{big}" / "cold", 1, cold=True)[0]
        # PSS: both runs first read all of the largest size's stores (the steady state of a full epoch)
        one = measure(base / f"n{big}" / "run.yaml", base / f"n{big}" / "pss1", 1, touch_all=True)
        two = measure(base / f"n{big}" / "run.yaml", base / f"n{big}" / "pss2", 2, touch_all=True)
        summary = base / f"n{small}" / "run1" / "summary.json"
        warm = step_numbers(runs[big]["steps"])
        result = {
            "rss_ratio_1m_10k": round(runs[big]["rss_peak_mb"] / runs[small]["rss_peak_mb"], 3),
            "rssfile_growth_frac": warm["rssfile_growth_frac"],
            "store_bytes_per_row": step_numbers(cold["steps"])["disk_bytes_per_row"],
            "read_ahead_kb": read_ahead_kb(base),
            "pss_ratio_2proc": round(sum(r["pss_peak_mb"] for r in two) / one[0]["pss_peak_mb"], 3),
            "store_pss_frac_2proc": round(sum(r["touch_pss_mb"] for r in two) / two[0]["store_mb"], 3),
            "store_pss_frac_1proc": round(one[0]["touch_pss_mb"] / one[0]["store_mb"], 3),
            "store_mb": round(one[0]["store_mb"], 1),
            "summary_bytes_8142": summary.stat().st_size,
            "sizes": sizes,
            "peak_rss_mb": {str(n): round(runs[n]["rss_peak_mb"], 1) for n in sizes},
            "rss_steps_mb": {
                str(n): [[round(s["RssAnon"], 1), round(s["RssFile"], 1)] for s in runs[n]["steps"]]
                for n in sizes
            },
            "rssfile_bytes_per_row": warm["rssfile_bytes_per_row"],
            "rows_read": warm["rows"],
            "cold_rss_steps_mb": [[round(s["RssAnon"], 1), round(s["RssFile"], 1)] for s in cold["steps"]],
            "peak_pss_mb_1proc": round(one[0]["pss_peak_mb"], 1),
            "peak_pss_mb_2proc": [round(r["pss_peak_mb"], 1) for r in two],
            "build_s": {str(n): s for n, s in build_s.items()},
            "run_s": {str(n): runs[n]["wall_s"] for n in sizes},
            "wall_s": round(time.time() - t0, 1),
        }
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
