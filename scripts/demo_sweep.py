"""Choose the demo's long-tail settings on its validation split, never on the test set.

Reuses (or builds) the demo's artifacts under --out, trains each candidate for every seed and prints the balanced
validation split's overall and tail accuracy next to the test numbers. Pick on the val columns.

    python scripts/demo_sweep.py --out /tmp/demo_sweep --seeds 3 \
        --candidate "bsm=losses.cls.name=balanced_softmax" \
        --candidate "vlmkd=@vlmkd" \
        --candidate "vlmkd_kd4=@vlmkd losses.kd.weight=4.0"

A candidate is NAME=OVERRIDES, split as a shell would (quote overrides with spaces); "@method" expands to that
demo method's overrides. A candidate with describe.* overrides gets its own descriptions, e.g. the
label-conditioned ablation: "cond=@balanced_softmax+text describe.prompt='a photo of a {class_name}'".
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vlmkd.demo.methods import LONGTAIL_METHODS
from vlmkd.demo.run import FULL, QUICK, Demo
from vlmkd.utils.io import write_json


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    overrides: list[str] = []
    for tok in shlex.split(rest):
        overrides += LONGTAIL_METHODS[tok[1:]] if tok.startswith("@") else [tok]
    return name, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_sweep")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--candidate", action="append", required=True, help="NAME=OVERRIDES (see above)")
    args = ap.parse_args()

    demo = Demo(args.out, replace(QUICK if args.quick else FULL), seeds=args.seeds)
    demo.build_artifacts()
    lt = [
        f"text.class_embeddings={demo.enriched_dir / 'embeddings'}",
        f"train.epochs={demo.s.student_epochs}",
    ]
    rows: dict[str, dict[str, list[float]]] = {}
    for spec in args.candidate:
        name, overrides = parse_candidate(spec)
        describe = [o for o in overrides if o.startswith("describe.")]
        if describe:  # e.g. the label-conditioned ablation: its own descriptions and embeddings
            overrides += demo.text_artifacts(*describe)
        for seed in range(args.seeds):
            t0 = time.time()
            _, summary = demo.train(f"sweep-{name}", lt + overrides, seed)
            r = rows.setdefault(name, {})
            for split in ("val", "test"):
                for k in ("overall", "tail"):
                    r.setdefault(f"{split}_{k}", []).append(summary["splits"][split][k])
            r.setdefault("seconds", []).append(time.time() - t0)
        write_json(Path(args.out) / "sweep.json", rows)

    cols = ["val_overall", "val_tail", "test_overall", "test_tail", "seconds"]
    print(f"{'candidate':32s} " + " ".join(f"{c:>14s}" for c in cols))
    for name, r in rows.items():
        cells = [
            f"{100 * np.mean(r[c]):6.1f}±{100 * np.std(r[c]):4.1f}"
            if c != "seconds"
            else f"{np.mean(r[c]):14.0f}"
            for c in cols
        ]
        print(f"{name:32s} " + " ".join(f"{c:>14s}" for c in cells))
    print(json.dumps({"seeds": args.seeds, "candidates": args.candidate}))


if __name__ == "__main__":
    main()
