"""One demo method over more seeds, to tell a real change from seed noise (e.g. before and after a refactor).

Reuses (or builds) the demo's artifacts under --out and trains the method for each seed of --seeds, exactly as
`vlmkd demo` trains it; prints one JSON line per seed and a mean / std line. To compare two trees, run the same
command with each tree first on the path:

    PYTHONPATH=/path/to/old/src python scripts/demo_seeds.py --out /tmp/demo_old --method balanced_softmax+kd --seeds 0:9
    PYTHONPATH=src python scripts/demo_seeds.py --out /tmp/demo_new --method vl_cls+mse --seeds 0:8

Long-tail methods report test overall and tail accuracy; OOD methods X_id, zero-shot and 5-shot X_ood accuracy,
and (trees that score it) generalized base accuracy and harmonic mean among all names, raw and calibrated.
Only the standard library and the demo's own API are used here, so the script runs against older trees too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import vlmkd
import vlmkd.demo.run as demo_run
from vlmkd.demo.methods import LONGTAIL_METHODS, OOD_METHODS


def seed_range(text: str) -> range:
    lo, _, hi = text.partition(":")
    return range(int(lo), int(hi)) if hi else range(int(lo))


def longtail_rows(demo, method: str, seeds: range) -> list[dict[str, float]]:
    base = [
        f"text.class_embeddings={demo.enriched_dir / 'embeddings'}",
        f"train.epochs={demo.s.student_epochs}",
    ]
    rows = []
    for seed in seeds:
        _, summary = demo.train(method, base + LONGTAIL_METHODS[method], seed)
        test = summary["splits"]["test"]
        rows.append({"seed": seed, "overall": test["overall"], "tail": test["tail"]})
        print(json.dumps({"method": method, **rows[-1]}), flush=True)
    return rows


def ood_rows(demo, method: str, seeds: range) -> list[dict[str, float]]:
    # Demo.ood() trains seeds 0..N-1 of every method in OOD_METHODS: narrow both to what was asked
    demo_run.OOD_METHODS = {method: OOD_METHODS[method]}
    demo.seeds = seeds.stop
    rows = []
    for seed, r in enumerate(demo.ood()[method]):
        if seed in seeds:
            rows.append({"seed": seed, **{k: r[k] for k in ("id", "ood_zero_shot", "ood_5shot")}})
            g = r.get("generalized")  # among all names (trees that score it)
            if g:
                rows[-1].update(
                    gen_base=g["base"],
                    gen_H=g["harmonic"],
                    gen_calibrated_base=g["calibrated"]["base"],
                    gen_calibrated_H=g["calibrated"]["harmonic"],
                )
            print(json.dumps({"method": method, **rows[-1]}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="demo folder (its artifacts are reused when present)")
    ap.add_argument("--method", required=True, choices=[*LONGTAIL_METHODS, *OOD_METHODS])
    ap.add_argument("--seeds", default="0:3", help="LO:HI (seeds LO..HI-1) or N (0..N-1)")
    args = ap.parse_args()

    demo = demo_run.Demo(args.out, demo_run.FULL, seeds=1)
    demo.build_artifacts()
    seeds = seed_range(args.seeds)
    if args.method in LONGTAIL_METHODS:
        rows = longtail_rows(demo, args.method, seeds)
    else:
        rows = ood_rows(demo, args.method, seeds)
    keys = [k for k in rows[0] if k != "seed"]
    stats = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in keys}
    print(
        json.dumps(
            {"tree": vlmkd.__file__, "method": args.method, "seeds": [r["seed"] for r in rows]}
            | {k: {"mean": m, "std": s} for k, (m, s) in stats.items()}
        )
    )


if __name__ == "__main__":
    main()
