"""Epoch time of OOD distillation with cached teacher features vs a live CLIP teacher, same student and images.

    python benchmarks/teacher_cache.py [--teacher open_clip:ViT-B-32] [--student cnn_small] [--images 96]
                                       [--size 32] [--batch 32] [--rounds 2]

Side by side in one run, on a folder of random images written to a temporary directory:
  cached   student + cross-entropy + L_mse against teacher features read from the `vlmkd teach` cache
           (memory-mapped float16 rows, what `vlmkd train` does with clip.view=clean)
  live     the same with the CLIP teacher run on every batch (its own preprocessing of the same images)
The teacher defaults to open_clip's ViT-B-32 with random weights (same compute as the pretrained one, no download);
any clip.name works (`hf:DIR`, `open_clip:ARCH/CKPT`). Prints the one-time cache build, the median epoch time of
each over interleaved rounds, and the ratio cached/live.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vlmkd.config import ClipTeacherConfig, DataConfig
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.images import open_image
from vlmkd.data.transforms import build_transform
from vlmkd.losses import build
from vlmkd.students import create_student
from vlmkd.tasks.distill import DistillTask, LossSpec
from vlmkd.teachers.clip import load_clip_teacher
from vlmkd.teachers.features import cache_folder, teacher_features


class LiveViews(ManifestDataset):
    """The student's augmented view plus the teacher's clean view of the same image (for the live teacher)."""

    def __init__(self, manifest, transform, teacher):
        super().__init__(manifest, transform)
        self.teacher = teacher

    def __getitem__(self, i: int) -> dict:
        img = open_image(self.manifest, i)
        return {
            "image": self._transform(img, i),
            "label": int(self.manifest.labels[i]),
            "index": i,
            "teacher_image": self.teacher.preprocess(img),
        }


def write_images(root: Path, n: int, classes: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")


def time_epoch(task: DistillTask, loader: DataLoader) -> float:
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.01, momentum=0.9)
    task.train()
    start = time.perf_counter()
    for batch in loader:
        out = task(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="open_clip:ViT-B-32", help="a clip.name; default random ViT-B/32")
    ap.add_argument("--revision", default=None)
    ap.add_argument("--student", default="cnn_small")
    ap.add_argument("--images", type=int, default=96, help="more (e.g. 512) for a steadier estimate")
    ap.add_argument("--image-size", type=int, default=96, help="size of the random source images")
    ap.add_argument("--size", type=int, default=32, help="student input size")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlmkd_teacher_cache_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    torch.manual_seed(0)
    write_images(tmp / "data", args.images, args.classes, args.image_size)
    data = DataConfig(
        format="image_folder",
        root=str(tmp / "data"),
        image_size=args.size,
        in_chans=3,
        batch_size=args.batch,
        num_workers=args.workers,
    )
    manifest = build_manifests(data)["train"]
    teacher = load_clip_teacher(args.teacher, args.revision)
    clip = ClipTeacherConfig(name=args.teacher, batch_size=args.batch, cache_dir=str(tmp / "cache"))

    t0 = time.perf_counter()
    feats = teacher_features(teacher, manifest, clip, data_cfg=data)  # the one-time `vlmkd teach` pass
    t_build = time.perf_counter() - t0
    feats = teacher_features(teacher, manifest, clip)  # as training opens it: memory-mapped, no forward

    def task(live: bool) -> DistillTask:
        torch.manual_seed(0)
        student = create_student(
            args.student, num_classes=args.classes, head="both", embed_dim=teacher.embed_dim
        )
        terms = [LossSpec("cls", 1.0, build("ce")), LossSpec("mse", 1.0, build("mse"))]
        return DistillTask(student, terms, clip_teacher=teacher if live else None)

    transform = build_transform(data, train=True)
    loader = {
        "cached": DataLoader(
            ManifestDataset(manifest, transform, {"teacher_features": feats}),
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            collate_fn=collate_skip,
            drop_last=True,
        ),
        "live": DataLoader(
            LiveViews(manifest, transform, teacher),
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            collate_fn=collate_skip,
            drop_last=True,
        ),
    }
    tasks = {"cached": task(False), "live": task(True)}
    time_epoch(
        tasks["cached"], loader["cached"]
    )  # warm-up (allocator, kernels); the live epoch is long enough

    # Interleaved rounds, median per variant: background load affects both alike.
    rounds: dict[str, list[float]] = {"cached": [], "live": []}
    for _ in range(args.rounds):
        for name in ("cached", "live"):
            rounds[name].append(time_epoch(tasks[name], loader[name]))
    t_cached, t_live = statistics.median(rounds["cached"]), statistics.median(rounds["live"])
    n = len(loader["cached"]) * args.batch
    print(
        f"teacher {teacher.teacher_id} ({teacher.preprocess_config()['image_size']} px, {teacher.embed_dim}-d), "
        f"student {args.student} at {args.size} px, {n} images/epoch, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, rounds {args.rounds}"
    )
    size = (cache_folder(teacher, manifest, clip) / "features.npy").stat().st_size
    print(f"cache build (one teacher pass, once): {t_build:.2f} s, {size / 1024:.0f} KiB float16 features")
    print(f"{'variant':<10}{'epoch s':>10}{'img/s':>10}")
    for name, t in (("cached", t_cached), ("live", t_live)):
        print(f"{name:<10}{t:>10.2f}{n / t:>10.1f}")
    print(f"ratio cached/live {t_cached / t_live:.3f} (live/cached {t_live / t_cached:.1f}x)")


if __name__ == "__main__":
    main()
