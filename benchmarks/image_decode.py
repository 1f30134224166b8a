"""Decode time of a 12-megapixel JPEG photo: full size vs the reduced-scale decode training asks for.

`build_transform` asks ManifestDataset for images no smaller than 4x its size (`shorter_side`), so a JPEG is
decoded by libjpeg at 1/2 .. 1/8 scale instead of full size every epoch. Prints one JSON line of milliseconds per
image and the speed-ups, measured side by side in this process.

    python benchmarks/image_decode.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmkd.data.decode import load_image


def ms_per_image(path: Path, repeats: int, **kw) -> tuple[float, tuple[int, int]]:
    size = load_image(path, **kw).size  # warm the file cache
    t0 = time.perf_counter()
    for _ in range(repeats):
        load_image(path, **kw)
    return (time.perf_counter() - t0) / repeats * 1000, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "photo.jpg"
        texture = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(texture).resize((4000, 3000), Image.Resampling.BILINEAR).save(path, quality=90)
        full, _ = ms_per_image(path, args.repeats)
        out = {"full_ms": round(full, 1)}
        for image_size, side in ((224, 4 * 256), (32, 4 * 32)):  # what build_transform asks for at that size
            ms, size = ms_per_image(path, args.repeats, shorter_side=side)
            out[f"image_size_{image_size}"] = {
                "decoded": size,
                "ms": round(ms, 1),
                "speedup": round(full / ms, 2),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
