"""Choose the demo's combined student on validation data, never on the test set or on a novel-class label.

Reuses (or builds) the demo's artifacts under --out, trains each candidate for every seed on the combined
section's data (the long-tailed base-class set) and prints the val columns (base val overall / tail, and the
teacher alignment of the embedding on base val images) next to the test columns. Pick on the val columns.

    python scripts/combined_sweep.py --out /tmp/demo3c --seeds 1 \
        --candidate "current=@combined" \
        --candidate "no_text=@combined losses.text.weight=0"

A candidate is NAME=OVERRIDES, split as a shell would; "@NAME" expands to the overrides of the section's student
whose name starts with NAME (combined, longtail-only, ood-only).
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np

from vlmkd.demo.combined import COMBINED_COLS, COMBINED_METHODS, VAL_COLS, combined_rows
from vlmkd.demo.run import FULL, QUICK, Demo
from vlmkd.utils.io import write_json


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    overrides: list[str] = []
    for tok in shlex.split(rest):
        if tok.startswith("@"):
            overrides += next(ov for m, ov in COMBINED_METHODS.items() if m.startswith(tok[1:]))
        else:
            overrides.append(tok)
    return name, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", action="append", required=True, help="NAME=OVERRIDES (see above)")
    ap.add_argument("--out", default="combined_sweep", help="the demo folder whose artifacts are reused")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    candidates = dict(parse_candidate(c) for c in args.candidate)  # a typo fails here, before any training

    demo = Demo(args.out, replace(QUICK if args.quick else FULL), seeds=args.seeds)
    demo.build_artifacts()
    rows = combined_rows(demo, candidates, prefix="sweep")
    write_json(Path(args.out) / "combined_sweep.json", rows)
    cols = [*VAL_COLS, *COMBINED_COLS]
    print("| candidate | " + " | ".join(cols) + " |")
    for name, rs in rows.items():
        cells = []
        for c in cols:
            v = [r[c] for r in rs if r.get(c) is not None]
            scale = 1 if c == "val_teacher_cos" else 100
            cells.append(f"{scale * np.mean(v):.3g} ± {scale * np.std(v):.2g}" if v else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps({"seeds": args.seeds, "candidates": args.candidate}))


if __name__ == "__main__":
    main()
