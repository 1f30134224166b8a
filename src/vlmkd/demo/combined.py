"""The demo's `combined` section: one student that is long-tail robust on the base classes and names the novel
classes zero-shot, next to the best long-tail-only and the best OOD-only student trained on the same data.

The data: the demo's long-tailed student set (imbalance 100; the rarest classes include base classes: Sandal and
Bag) with the OOD section's novel classes removed (the students never see a novel-class image). All three students
are scored on the same base test images (overall / Many / Medium / Few / tail) and the same novel test images.
"""

from __future__ import annotations

import time
from typing import Any

from vlmkd.demo.methods import BSM, IM_CST, KD, LONGTAIL_METHODS, OOD_METHODS, TEXT

# The long-tail specialist is the demo's best long-tail method, the OOD specialist its best OOD method (both chosen
# on val); the combined student is one model.head=both student with every loss: balanced softmax and KD on the
# classifier, the description loss, vl_cls (balanced: the prior correction on the cosine logits, so the zero-shot
# head is not biased to the head classes) and im_cst on the embedding head. It is scored, and exported, through
# its embedding head alone.
LONGTAIL_SPECIALIST = "vlmkd"
OOD_SPECIALIST = "vl_cls+im_cst"
VL_BALANCED = [
    "losses.vl.name=vl_cls",
    "losses.vl.weight=1.0",
    "losses.vl.args={balanced: true}",
]
COMBINED_METHODS: dict[str, list[str]] = {
    f"longtail-only ({LONGTAIL_SPECIALIST})": LONGTAIL_METHODS[LONGTAIL_SPECIALIST],
    f"ood-only ({OOD_SPECIALIST})": OOD_METHODS[OOD_SPECIALIST],
    "combined": BSM + KD + TEXT + VL_BALANCED + IM_CST,
}
COMBINED_COLS = ["overall", "many", "medium", "few", "tail", "novel_zero_shot", "novel_5shot"]


def combined_rows(demo: Any) -> dict[str, list[dict[str, Any]]]:
    """Train the three students per seed on the long-tailed base-class set and score them on the same splits."""
    from vlmkd.eval.fewshot import few_shot_eval

    novel = "[" + ",".join(str(c) for c in demo.s.novel_classes) + "]"
    data = [
        f"data.split.novel_classes={novel}",
        f"data.split.id_fraction={demo.s.combined_id_fraction}",
        f"text.class_embeddings={demo.enriched_dir / 'embeddings'}",
        f"train.epochs={demo.s.combined_epochs}",
    ]
    t0 = time.time()
    data += demo.text_artifacts(*data)  # a description store belongs to one manifest: the base-class set's
    demo._time("describe_base_set", t0)
    res: dict[str, list[dict[str, Any]]] = {}
    for seed in range(demo.seeds):
        for method, ov in COMBINED_METHODS.items():
            t0 = time.time()
            name = "combined-" + method.split(" ")[0]
            trainer, summary = demo.train(name, data + ov, seed)
            splits = summary["splits"]
            row = {k: splits["test"].get(k) for k in ("overall", "many", "medium", "few", "tail")}
            row["val_overall"] = splits.get("val", {}).get("overall")
            zero_shot = trainer.eval_spec.mode == "cosine" and "ood_test" in splits
            row["novel_zero_shot"] = splits["ood_test"]["mean_per_class"] if zero_shot else None
            row["novel_5shot"] = None
            if zero_shot:
                fs = few_shot_eval(
                    trainer.task.student,
                    trainer.manifests,
                    trainer.eval_spec.class_text,
                    trainer.cfg.data,
                    demo.s.shots,
                    steps=demo.s.fewshot_steps,
                    seed=seed,
                    device=demo.device,
                )
                row["novel_5shot"] = fs["mean_per_class"]
            res.setdefault(method, []).append(row)
            demo._time(f"train/{name}/s{seed}", t0)
    return res
