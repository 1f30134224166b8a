"""Wall time of the two custom recipes' CPU routes, stage by stage, through the real CLI on this machine.

The collection is issue 19's trial shape: 10 classes, long-tailed from 400 training images down to 8 (1,120 in
all), plus 40 test images per class, made from the real Fashion-MNIST files as 128 px RGB JPEG photos in
root/{train,test}/<class>/. Both routes run fully offline with the shrink settings the recipes' headers and the
walkthrough document for a CPU:

- kd: configs/custom/image_folder_kd.yaml (balanced softmax + KD + text): classtext, teacher train, describe (the
  interrogate describer ranking phrases with the domain teacher; a VLM server in real use), embed, teach, train;
- ood: configs/custom/open_vocab_folder.yaml (vl_cls + im_cst + vlprox, 3 classes held out): classtext, teacher
  train, teach, train (with the generalized evaluation), eval --few-shot 5.

    python benchmarks/cpu_routes.py --out /tmp/cpu_routes [--routes kd ood] [--size 64]

Prints one JSON line per route: seconds per stage, the total, and the run's headline numbers (so a faster
setting that learns nothing shows). Run it on an otherwise idle machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path(os.environ.get("VLMKD_FMNIST", "/usr/share/datasets/fashion-mnist"))
NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]

# The CPU shrink settings (documented in the recipes' headers, the walkthrough and the README)
SHRINK = [
    "data.image_size=64",
    "data.batch_size=32",
    "train.epochs=10",
    "eval.every=5",
    "domain.epochs=5",
    "domain.batch_size=64",
]
CPU = {"kd": SHRINK, "ood": SHRINK}


def build_folder(root: Path, head: int = 400, tail: int = 8, test_per_class: int = 40) -> Path:
    from vlmkd.data.arrays import write_fashion_mnist_folder

    counts = np.round(head * (tail / head) ** (np.arange(10) / 9)).astype(int)
    return write_fashion_mnist_folder(root, FMNIST, list(counts), test_per_class, NAMES, size=128)


def vlmkd(*args: str) -> float:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "vlmkd", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"vlmkd {' '.join(args[:2])} failed:\n{r.stderr[-3000:]}")
    return round(time.time() - t0, 1)


def teacher_dir(art: Path) -> str:
    return str(next(p for p in (art / "domain").iterdir() if (p / "teacher.json").is_file()))


def artifact_args(data: Path, art: Path, route: str) -> list[str]:
    """Every artifact of a route under `art` (the recipes' defaults write under artifacts/)."""
    return [
        f"data.root={data}",
        f"classtext.output={art / 'classtext'}",
        f"text.class_embeddings={art / 'classtext'}",
        f"domain.output={art / 'domain'}",
        f"clip.cache_dir={art / 'features'}",
        "train.tensorboard=false",
        *CPU[route],
    ]


def route_kd(data: Path, out: Path, extra: list[str]) -> dict:
    recipe = str(ROOT / "configs/custom/image_folder_kd.yaml")
    art = out / "kd_artifacts"
    common = [
        *artifact_args(data, art, "kd"),
        f"describe.output={art / 'descriptions'}",
        f"text.descriptions={art / 'descriptions'}",
        f"embed.output={art / 'embeddings'}",
        f"text.embeddings={art / 'embeddings'}",
        "describe.backend=interrogate",
        "describe.n_descriptions=2",
        *extra,
    ]
    t = {"classtext": vlmkd("classtext", recipe, *common)}
    t["teacher_train"] = vlmkd("teacher", "train", recipe, *common)
    clip = f"clip.name=domain:{teacher_dir(art)}"
    t["describe"] = vlmkd("describe", recipe, *common, clip)
    t["embed"] = vlmkd("embed", recipe, *common, clip)
    t["teach"] = vlmkd("teach", recipe, *common, clip)
    run = out / "kd_run"
    t["train"] = vlmkd("train", recipe, "--run-dir", str(run), *common, clip)
    s = json.loads((run / "summary.json").read_text())
    return {
        "route": "kd",
        "seconds": t,
        "total_s": round(sum(t.values()), 1),
        "test_overall": s["overall"],
        "test_mean_per_class": s["mean_per_class"],
        "kd_teacher": s.get("kd_teacher"),
    }


def route_ood(data: Path, out: Path, extra: list[str]) -> dict:
    recipe = str(ROOT / "configs/custom/open_vocab_folder.yaml")
    art = out / "ood_artifacts"
    novel = "data.split.novel_classes=[sandal,sneaker,bag]"
    common = [*artifact_args(data, art, "ood"), *extra]
    t = {"classtext": vlmkd("classtext", recipe, *common, novel)}
    t["teacher_train"] = vlmkd("teacher", "train", recipe, *common, "data.split.novel_classes=null")
    clip = f"clip.name=domain:{teacher_dir(art)}"
    t["teach"] = vlmkd("teach", recipe, *common, novel, clip)
    run = out / "ood_run"
    t["train"] = vlmkd("train", recipe, "--run-dir", str(run), *common, novel, clip)
    t["few_shot"] = vlmkd("eval", str(run), "--few-shot", "5", "--out", str(out / "ood_fewshot.json"))
    s = json.loads((run / "summary.json").read_text())
    g = s.get("generalized", {})
    return {
        "route": "ood",
        "seconds": t,
        "total_s": round(sum(t.values()), 1),
        "id": s["splits"]["id"]["mean_per_class"],
        "ood_zero_shot": s["splits"]["ood_test"]["mean_per_class"],
        "generalized_H": g.get("harmonic"),
        "calibrated_H": g.get("calibrated", {}).get("harmonic"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="cpu_routes")
    ap.add_argument("--routes", nargs="+", default=["kd", "ood"], choices=["kd", "ood"])
    ap.add_argument("--override", action="append", default=[], help="extra dotted override for every stage")
    args = ap.parse_args()
    out = Path(args.out)
    data = build_folder(out / "collection")
    for name in args.routes:
        res = (route_kd if name == "kd" else route_ood)(data, out, args.override)
        res["cores"] = os.cpu_count()
        res["load_avg"] = os.getloadavg()
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
