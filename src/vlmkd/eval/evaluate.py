"""Evaluation of a student on the run's splits: metrics per split, the summary of a run, `vlmkd eval`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlmkd.config import Config
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ArtifactError
from vlmkd.eval.generalized import CalibrationSpec, student_generalized
from vlmkd.eval.metrics import average_last_k, classification_metrics
from vlmkd.eval.predict import cosine_logits, student_predictions
from vlmkd.utils.dist import all_gather_objects, get_info


def split_logits(
    outputs: dict[str, np.ndarray], split: str, eval_spec, manifests: dict[str, Manifest] | None = None
) -> np.ndarray:
    if eval_spec.mode == "logits":
        return outputs["logits"]
    key = split if split in eval_spec.class_text else "train"
    m = (manifests or {}).get(split)
    if key != split and m is not None and m.class_names != manifests["train"].class_names:
        # scoring these images among the training classes would give labels of another class list
        raise ArtifactError(
            f"the {split} split's classes ({', '.join(m.class_names[:5])}) have no class texts in the run's "
            "text.class_embeddings; rerun `vlmkd classtext` (it covers every class) and point the run at it"
        )
    return cosine_logits(outputs["embedding"], eval_spec.class_text[key], eval_spec.temperature)


def evaluate_split(
    model: torch.nn.Module,
    manifests: dict[str, Manifest],
    split: str,
    cfg: Config,
    eval_spec,
    device: torch.device | str = "cpu",
    shard: bool = False,
) -> dict[str, Any]:
    """Metrics of `model` on one split. With `shard` (every rank of a process group calls it), each rank scores
    every world-th image and the predictions are gathered, so no rank waits idle through a whole evaluation."""
    m = manifests[split]
    info = get_info()
    part = m.subset(np.arange(info.rank, len(m), info.world_size)) if shard and info.enabled else m
    # streamed: each batch is scored and only its argmax kept, so no N x C logits at 8,142 classes
    out = student_predictions(
        model, part, cfg.data, lambda o: split_logits(o, split, eval_spec, manifests), device, f"eval {split}"
    )
    if part is not m:
        parts = all_gather_objects(out)
        out = {k: np.concatenate([p[k] for p in parts]) for k in ("pred", "labels")}
    # Long-tail buckets are defined by the training counts of the classes this split is scored on.
    counts = manifests["train"].class_counts() if m.class_names == manifests["train"].class_names else None
    return classification_metrics(
        out["pred"],
        out["labels"],
        m.num_classes,
        counts,
        cfg.data.many_threshold,
        cfg.data.few_threshold,
        cfg.eval.tail_classes,
        with_confusion=cfg.eval.confusion,
    )


def evaluate_run(
    model: torch.nn.Module,
    manifests: dict[str, Manifest],
    cfg: Config,
    eval_spec,
    device: torch.device | str = "cpu",
    history: list[dict[str, Any]] | None = None,
    shard: bool = False,
) -> dict[str, Any]:
    """Every split's metrics (and the generalized zero-shot evaluation) for a run's summary. With `shard`, every
    rank calls it and every evaluation is sharded over the ranks, the generalized one included."""
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
            summary["splits"][split] = evaluate_split(model, manifests, split, cfg, eval_spec, device, shard)
    if cfg.eval.generalized:
        gen = evaluate_generalized(model, manifests, cfg, eval_spec, device, shard)
        if gen is not None:
            summary["generalized"] = gen
            summary["splits"].update(generalized_split_entries(gen))
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
    model: torch.nn.Module,
    manifests: dict[str, Manifest],
    cfg: Config,
    eval_spec,
    device="cpu",
    shard: bool = False,
) -> dict[str, Any] | None:
    """Generalized zero-shot (X_id and X_ood among base + novel names, raw and calibrated; see
    `vlmkd.eval.generalized`), or None when the student or the run cannot be scored that way."""
    if eval_spec.mode != "cosine":
        return None
    spec = CalibrationSpec.from_config(cfg.eval)
    return student_generalized(model, manifests, eval_spec.class_text, cfg.data, device, spec, shard)


def generalized_split_entries(gen: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`id_generalized` / `ood_test_generalized` rows for the per-split tables (raw, then calibrated)."""
    return {
        f"{split}_generalized": {
            "mean_per_class": gen[key],
            "calibrated_mean_per_class": gen["calibrated"][key],
            "classes_scored_among": gen["classes_scored_among"],
        }
        for split, key in (("id", "base"), ("ood_test", "novel"))
    }
