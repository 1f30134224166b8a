"""Describe throughput, measured side by side in one run (CPU, no network):

1. transformers backend: a tiny random-weight VLM (LLaVA-style and BLIP-style, built in-process) generating for
   batches of 16 images vs one image at a time (target: >= 3x);
2. openai backend: a local chat-completions server that answers after 100 ms, concurrency 16 vs 1 (target: >= 8x).

    PYTHONPATH=src python benchmarks/describe_throughput.py [--images 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers_chat_server import ChatServer  # noqa: E402
from helpers_tiny_models import make_tiny_blip, make_tiny_llava  # noqa: E402
from vlmkd.config import DescribeConfig  # noqa: E402
from vlmkd.describe import build_describer  # noqa: E402


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def rate(describer, ims, chunk: int) -> float:
    names = ["thing"] * len(ims)
    describer.describe(ims[:2], names[:2], 1)  # warm-up
    t = time.perf_counter()
    for s in range(0, len(ims), chunk):
        describer.describe(ims[s : s + chunk], names[s : s + chunk], 1)
    return len(ims) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--http-images", type=int, default=128)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    ims = images(args.images)
    print(f"{'case':44s} {'img/s':>9s} {'ratio':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, maker, prompt in (
            ("llava-tiny", make_tiny_llava, "Describe the image."),
            ("blip-tiny", make_tiny_blip, "a photo of"),
        ):
            folder = maker(Path(tmp) / name)
            cfg = DescribeConfig(
                backend="transformers",
                model=folder,
                device="cpu",
                max_new_tokens=16,
                prompt=prompt,
                batch_size=16,
            )
            d = build_describer(cfg)
            one = rate(d, ims, 1)
            batched = rate(d, ims, 16)
            print(f"{name + ' one image at a time':44s} {one:9.1f}")
            print(f"{name + ' batch 16':44s} {batched:9.1f} {batched / one:6.1f}x  (target >= 3x)")
    hims = images(args.http_images)
    with ChatServer(delay_s=0.1) as srv:
        res = {}
        for conc in (1, 16):
            cfg = DescribeConfig(backend="openai", model="m", base_url=srv.url, concurrency=conc)
            d = build_describer(cfg)
            n = (
                hims if conc == 16 else hims[: max(8, len(hims) // 4)]
            )  # the serial case is slow: fewer images
            res[conc] = rate(d, n, len(n))
            print(
                f"{f'openai (100 ms server) concurrency {conc}':44s} {res[conc]:9.1f}"
                + (f" {res[16] / res[1]:6.1f}x  (target >= 8x)" if conc == 16 else "")
            )


if __name__ == "__main__":
    main()
