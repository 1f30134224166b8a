"""The domain teacher before and after its own input size (`domain.image_size`), side by side in one run.

Before: the tower trained at the run's `data.image_size` (what it did until 2026-12-07; the open-vocabulary and
KD folder recipes default to 224 px, where cnn_small runs its first convolutions at full resolution). After: the
default `domain.image_size=auto` (min(data.image_size, 64)). Same folder as benchmarks/cpu_routes.py (10
Fashion-MNIST classes as 128 px RGB JPEG photos, 400 -> 8 training images per class, 40 test images per class),
same recipe (configs/custom/open_vocab_folder.yaml, every class, template texts), same seed and epochs; each size
is trained through the library's `train_domain_teacher` and scored zero-shot on the test folder.

    python benchmarks/domain_teacher.py --out /tmp/domain_teacher [--data-size 224] [--sizes 224 auto] [--epochs 5]

Prints one JSON line per size (seconds per epoch, zero-shot test top-1) and a last one with `speedup` (seconds
per epoch before / after) and `top1_delta` (after - before, points). Caveat: Fashion-MNIST has no detail above
28 px, so this folder cannot show what a larger size buys on photos whose classes differ in fine detail.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.teachers.domain import resolve_size, settings_from_config, train_domain_teacher, zero_shot_eval
from vlmkd.text.classtext import build_class_texts, load_class_texts
from vlmkd.text.encoders import build_text_encoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_routes import build_folder  # noqa: E402  (the same folder as the CPU-route benchmark)

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "custom" / "open_vocab_folder.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--data-size", type=int, default=224, help="data.image_size of the run (the recipe's 224)"
    )
    ap.add_argument("--sizes", nargs="+", default=None, help="domain.image_size values; first is 'before'")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    sizes = args.sizes or [str(args.data_size), "auto"]
    root = build_folder(args.out / "folder")
    cfg = load_config(
        str(RECIPE),
        [
            f"data.root={root}",
            "data.split.novel_classes=null",
            f"data.image_size={args.data_size}",
            f"classtext.output={args.out / 'classtext'}",
        ],
    )
    manifests = build_manifests(cfg.data)
    encoder = build_text_encoder(cfg.embed.encoder, cfg.embed.model, cfg.embed.revision, cfg.embed.device)
    names = manifests["train"].class_names
    texts = load_class_texts(build_class_texts(names, cfg.classtext, encoder=encoder))["texts"]
    rows = []
    for size in sizes:
        settings = settings_from_config(
            cfg.domain,
            epochs=args.epochs,
            batch_size=args.batch_size,
            image_size=size if size == "auto" else int(size),
        )
        t0 = time.time()
        teacher = train_domain_teacher(manifests["train"], texts, encoder, cfg.data, settings)
        seconds = time.time() - t0
        top1 = zero_shot_eval(teacher, manifests["test"], {"plain": texts})["plain"]["overall"]
        row = {
            "domain_image_size": size,
            "tower_input_px": resolve_size(settings, cfg.data)[0].image_size,
            "data_image_size": args.data_size,
            "train_images": len(manifests["train"]),
            "epochs": args.epochs,
            "seconds_per_epoch": round(seconds / args.epochs, 2),
            "test_top1": round(100 * top1, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    before, after = rows[0], rows[-1]
    print(
        json.dumps(
            {
                "before": before["domain_image_size"],
                "after": after["domain_image_size"],
                "speedup": round(before["seconds_per_epoch"] / after["seconds_per_epoch"], 2),
                "top1_delta": round(after["test_top1"] - before["test_top1"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
