"""Evaluation of a student on the run's splits: metrics per split, the summary of a run, `vlmkd eval`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.eval.metrics import average_last_k, classification_metrics
from vlmkd.eval.predict import cosine_logits, student_outputs


def split_logits(outputs: dict[str, np.ndarray], split: str, eval_spec) -> np.ndarray:
    if eval_spec.mode == "logits":
        return outputs["logits"]
    key = split if split in eval_spec.class_text else "train"
    return cosine_logits(outputs["embedding"], eval_spec.class_text[key], eval_spec.temperature)


def evaluate_split(
    model: torch.nn.Module,
    manifests: dict[str, Manifest],
    split: str,
    cfg: Config,
    eval_spec,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    m = manifests[split]
    out = student_outputs(model, m, cfg.data, device, desc=f"eval {split}")
    logits = split_logits(out, split, eval_spec)
    # Long-tail buckets are defined by the training counts of the classes this split is scored on.
    counts = manifests["train"].class_counts() if m.class_names == manifests["train"].class_names else None
    return classification_metrics(
        logits.argmax(1),
        out["labels"],
        m.num_classes,
        counts,
        cfg.data.many_threshold,
        cfg.data.few_threshold,
        cfg.eval.tail_classes,
    )


def evaluate_run(
    model: torch.nn.Module,
    manifests: dict[str, Manifest],
    cfg: Config,
    eval_spec,
    device: torch.device | str = "cpu",
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    train = manifests["train"]
    summary: dict[str, Any] = {
        "dataset": cfg.data.format,
        "class_names": train.class_names,
        "train_counts": train.class_counts().tolist(),
        "model": cfg.model.name,
        "losses": {
            k: {"name": v.name, "weight": v.weight, **({"args": v.args} if v.args else {})}
            for k, v in cfg.losses.items()
            if v.weight
        },
        "splits": {},
    }
    for split in ("test", "val", "id", "ood_test"):
        if split in manifests and len(manifests[split]):
            if split.startswith("ood") and eval_spec.mode == "logits":
                continue  # a closed-set classifier cannot score novel classes
            summary["splits"][split] = evaluate_split(model, manifests, split, cfg, eval_spec, device)
    if cfg.eval.generalized:
        summary["splits"].update(evaluate_generalized(model, manifests, cfg, eval_spec, device))
    headline_split = "test" if "test" in summary["splits"] else next(iter(summary["splits"]), None)
    headline = summary["splits"].get(headline_split, {}) if headline_split else {}
    summary["headline_split"] = headline_split
    summary.update(
        {k: headline.get(k) for k in ("overall", "mean_per_class", "many", "medium", "few", "tail")}
    )
    if history:
        summary["history"] = history
        key, k = "mean_per_class", cfg.eval.last_k_average
        for split in dict.fromkeys(h.get("split", cfg.eval.select_on) for h in history):
            vals = [
                h[key]
                for h in history
                if h.get("split", cfg.eval.select_on) == split and h.get(key) is not None
            ]
            if vals:  # the OOD paper reports the mean of the last 5 epochs rather than one checkpoint
                summary[f"{split}_last{k}_{key}"] = average_last_k(vals, k)
    return summary


def evaluate_generalized(
    model: torch.nn.Module, manifests: dict[str, Manifest], cfg: Config, eval_spec, device="cpu"
) -> dict[str, dict[str, Any]]:
    """X_id and X_ood each scored among the base and novel class texts together (`<split>_generalized`)."""
    texts = eval_spec.class_text
    if eval_spec.mode != "cosine" or not {"train", "ood_test"} <= set(texts):
        return {}
    both = np.concatenate([texts["train"], texts["ood_test"]])
    offsets = {"id": 0, "ood_test": len(texts["train"])}
    out: dict[str, dict[str, Any]] = {}
    for split, offset in offsets.items():
        m = manifests.get(split)
        if m is None or not len(m):
            continue
        res = student_outputs(model, m, cfg.data, device, desc=f"eval {split} (generalized)")
        pred = cosine_logits(res["embedding"], both, eval_spec.temperature).argmax(1)
        labels = res["labels"] + offset
        per_class = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
        out[f"{split}_generalized"] = {
            "overall": float((pred == labels).mean()),
            "mean_per_class": float(np.mean(per_class)),
            "per_class": per_class,
            "classes_scored_among": len(both),
        }
    return out
