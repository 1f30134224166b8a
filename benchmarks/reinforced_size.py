"""Bytes per sample of a reinforced dataset (stored views + teacher outputs + descriptions), written for real.

    python benchmarks/reinforced_size.py [--samples 16] [--views 10] [--dim 768] [--topk 10] [--descriptions 4]

Per sample, as vlmkd stores it: the K view parameters drawn by the training transform (int32, `vlmkd.data.views`),
the teacher's image features per view (float16 K x D, `vlmkd teach` with clip.view=replay), the teacher's top-k
probabilities per view (float16 values + int32 class indices, `vlmkd.teachers.replay.sparsify_topk`), the
descriptions (UTF-8 JSON) and their embeddings (float16 n x D), and a reference to the image (its path and label;
the image's own bytes are not counted). Two settings, side by side in one run:
  imagenet_lt   1,000 classes (ImageNet-LT-like)
  inat          8,142 classes (iNaturalist-2018-like)
Each sample is written as a WebDataset tar record (one member per field: 512-byte header + padding to 512 bytes),
the format a reinforced dataset ships in; the row stores' bytes (no tar overhead) and the bytes dense float16
logits would take are printed next to it. Goal: <= 40 KB per sample at K = 10 (DataCompDR: ~110 KB at 30 views).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmkd.config import DataConfig
from vlmkd.data.transforms import build_transform
from vlmkd.teachers.replay import sparsify_topk
from vlmkd.utils.rng import seeded_call

GOAL_BYTES = 40_000
DESCRIPTION = (
    "a photo of a small brown bird with a short curved beak, perched on a mossy branch in soft light"
)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def sample_record(i: int, args, num_classes: int, transform, image: Image.Image) -> dict[str, bytes]:
    """One sample's fields, each as the bytes of its tar member."""
    params = np.stack(
        [seeded_call(transform.draw, image, seed=i * 1000 + v)[1] for v in range(args.views)]
    ).astype(np.int32)
    gen = torch.Generator().manual_seed(i)
    features = torch.randn(args.views, args.dim, generator=gen).numpy().astype(np.float16)
    logits = torch.randn(args.views, num_classes, generator=gen) * 3  # a fairly confident teacher
    values, indices = sparsify_topk(logits, args.topk)
    texts = [f"{DESCRIPTION} ({k})" for k in range(args.descriptions)]
    text_emb = torch.randn(args.descriptions, args.dim, generator=gen).numpy().astype(np.float16)
    ref = {"path": f"train/n{i % num_classes:08d}/img_{i:08d}.jpg", "label": int(i % num_classes)}
    return {
        "json": json.dumps(ref).encode(),
        "params.npy": _npy(params),
        "features.npy": _npy(features),
        "topk_values.npy": _npy(values),
        "topk_indices.npy": _npy(indices),
        "descriptions.json": json.dumps(texts).encode(),
        "text_emb.npy": _npy(text_emb),
    }


def measure(args, num_classes: int, folder: Path) -> dict[str, float]:
    transform = build_transform(DataConfig(image_size=224, in_chans=3, augment="randaugment"), train=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    path = folder / f"shard_{num_classes}.tar"
    payload = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(args.samples):
            for ext, data in sample_record(i, args, num_classes, transform, image).items():
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                payload += len(data)
    # row stores (what `vlmkd teach` keeps): the arrays' raw bytes, no per-sample headers
    store = args.views * (9 * 4 + args.dim * 2 + args.topk * (2 + 4)) + args.descriptions * args.dim * 2
    return {
        "tar": path.stat().st_size / args.samples,
        "payload": payload / args.samples,
        "store": float(store),
        "dense_logits": float(args.views * num_classes * 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--descriptions", type=int, default=4)
    args = ap.parse_args()
    if min(args.samples, args.views, args.dim, args.topk, args.descriptions) < 1:
        sys.exit("reinforced_size.py: error: every count must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        lt, inat = measure(args, 1000, Path(tmp)), measure(args, 8142, Path(tmp))
    out = {
        "bytes_per_sample_imagenet_lt": round(lt["tar"]),
        "bytes_per_sample_inat": round(inat["tar"]),
        "goal_bytes": GOAL_BYTES,
        "ratio_to_goal_imagenet_lt": round(lt["tar"] / GOAL_BYTES, 3),
        "ratio_to_goal_inat": round(inat["tar"] / GOAL_BYTES, 3),
        "payload_bytes_per_sample_imagenet_lt": round(lt["payload"]),
        "store_bytes_per_sample_imagenet_lt": round(lt["store"]),
        "dense_logits_bytes_per_sample_imagenet_lt": round(lt["dense_logits"]),
        "dense_logits_bytes_per_sample_inat": round(inat["dense_logits"]),
        "settings": {
            "views": args.views,
            "dim": args.dim,
            "topk": args.topk,
            "descriptions": args.descriptions,
            "samples": args.samples,
            "image_bytes": "not counted (a reference)",
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
