"""MODEL_CARD.md of an export: data, teachers, losses, metrics, size, FLOPs and measured CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd.describe.store import DescriptionStore
from vlmkd.errors import VlmkdError

NOT_MEASURED = "not measured"
HEADS = {"classifier": "classifier head", "zero_shot": "embedding head (cosine to the class texts)"}


def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs (a multiply-add counts 2) with `torch.utils.flop_counter.FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    # grad enabled on purpose: under no_grad, nn.MultiheadAttention takes a fused fast path that
    # FlopCounterMode does not see
    with FlopCounterMode(display=False) as fc:
        model(example)
    return int(fc.get_total_flops())


def median_latency(fn: Callable[[], Any], runs: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def measure_runtime_latency(
    runtime: Callable[[np.ndarray], Any],
    shape: tuple[int, int, int],
    batches: tuple[int, ...] = (1, 32),
    runs: int = 5,
) -> dict[str, float]:
    """{"batch1_ms": ..., "batch32_ms": ...}: median latency of one call of the runtime, on the CPU."""
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        out[f"batch{b}_ms"] = round(1000 * median_latency(lambda x=x: runtime(x), runs=runs), 3)
    return out


def _fmt_count(n: float | None, unit: str = "") -> str:
    if n is None:
        return NOT_MEASURED
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()


def _pct(x: Any) -> str:
    return NOT_MEASURED if x is None else f"{100 * float(x):.2f}%"


def _teachers(config: dict[str, Any]) -> list[str]:
    lines = []
    vt = (config.get("teacher") or {}).get("name")
    if vt:
        lines.append(f"vision teacher (KD): `{vt}` ({(config.get('teacher') or {}).get('mode', 'live')})")
    clip = (config.get("clip") or {}).get("name")
    if clip:
        lines.append(f"vision-language teacher: `{clip}`")
    return lines or ["none recorded (trained from labels only, or the run's config.yaml is missing)"]


def _store_describer(path: str | None) -> dict[str, Any] | None:
    """The describer recorded by the description store the run trained on (it, not the recipe, wrote the texts)."""

    try:
        return DescriptionStore(path).meta.get("describer") if path else None
    except (VlmkdError, OSError, ValueError):
        return None


def _describer(config: dict[str, Any]) -> str:
    text = config.get("text") or {}
    d = _store_describer(text.get("descriptions")) or config.get("describe") or {}
    if not (text.get("descriptions") or text.get("embeddings")):
        return "none (no per-image descriptions used)"
    model = d.get("model") or ("bundled attribute vocabulary" if d.get("backend") == "interrogate" else "?")
    emb = config.get("embed") or {}
    return (
        f"backend `{d.get('backend', '?')}`, model `{model}`; descriptions embedded with "
        f"`{emb.get('encoder', '?')}` `{emb.get('model') or 'bundled MiniLM'}`"
    )


def _losses(summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    losses = summary.get("losses")
    if not losses and config.get("losses"):
        losses = {k: v for k, v in config["losses"].items() if (v or {}).get("weight", 1)}
    if not losses:
        return ["not recorded"]
    return [
        f"`{k}`: {v.get('name')} x {v.get('weight', 1)}" + (f" {v['args']}" if v.get("args") else "")
        for k, v in losses.items()
    ]


def _metrics(summary: dict[str, Any], scored: str, exported: str) -> list[str]:
    """The run's metrics table. `scored`: the head the run was evaluated with (a model.head=both student's cosine
    head when it is trained against the class texts), `exported`: this export's; the card says when they differ."""
    splits = summary.get("splits") or {}
    if not splits:
        return ["Metrics: not measured (no summary.json in the run folder)."]
    rows = ["| split | overall | mean per class | Many | Medium | Few |", "|---|---|---|---|---|---|"]
    if scored != exported:
        rows[:0] = [
            f"Measured through the run's {HEADS[scored]}, the head `vlmkd eval` scores; this export's "
            f"{HEADS[exported]} was not scored.",
            "",
        ]
    for name, m in splits.items():
        rows.append(
            f"| {name} | "
            + " | ".join(_pct(m.get(k)) for k in ("overall", "mean_per_class", "many", "medium", "few"))
            + " |"
        )
    ood = splits.get("ood_test")
    novel = _pct(ood.get("overall")) if ood else NOT_MEASURED
    if ood and scored == "zero_shot" and exported == "classifier":  # a closed-set export names no new class
        novel = f"none from this closed-set export ({novel} through the embedding head: `--head zero_shot`)"
    elif ood and exported == "zero_shot":  # the run's figure; this export's own list: "This export's classes"
        novel = f"{novel} (split ood_test, among the novel names only, raw cosine)"
    rows += ["", f"Novel-class zero-shot accuracy: {novel}"]
    return rows


def _generalized(calibration: dict[str, Any] | None) -> list[str]:
    """The run's generalized zero-shot result, as `vlmkd eval` recorded it with the calibration this export applies."""
    res = (calibration or {}).get("result")
    if not res:
        return []

    def trio(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {_pct(d.get(k))}" for k in ("base", "novel", "harmonic"))

    return [
        f"Generalized zero-shot, measured by `vlmkd eval` with base (split id) and novel (split ood_test) images "
        f"among the run's {res.get('classes_scored_among')} class names (mean per-class accuracy; harmonic = their "
        "harmonic mean): "
        f"raw cosine {trio(res)}; with the run's calibration ({calibration.get('scores', 'cosine')} scores, gamma "
        f"{float(calibration.get('gamma') or 0):.3f}) {trio(res.get('calibrated') or {})}."
    ]


def model_card(
    *,
    name: str,
    export: dict[str, Any],
    meta: dict[str, Any],
    summary: dict[str, Any],
    config: dict[str, Any],
    params: int,
    flops: int | None,
    latency: dict[str, float] | None,
    class_names: list[str],
    encoder: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    class_list: dict[str, Any] | None = None,
) -> str:
    """The card. `class_list`: a zero-shot export's names, seen flags and measured accuracy
    (`vlmkd.eval.class_list.class_list_accuracy`, or {"names", "seen", "error"}), in its own replaceable block."""
    pre = meta.get("preprocess", {})
    spec = meta.get("spec", {})
    trained = list(meta.get("class_names") or summary.get("class_names") or class_names)
    scored_mode = (meta.get("eval") or {}).get("mode", "logits")
    counts = meta.get("train_counts") or summary.get("train_counts")
    data = config.get("data") or {}
    lines = [
        f"# Model card: {name}",
        "",
        f"A `{spec.get('name')}` student distilled with vlmkd, exported as **{export['format']}** "
        f"(`{export['model_file']}`), head **{export['head']}**, outputs {', '.join(export['outputs'])}.",
        "",
        "## Intended use",
        "",
        "Image classification with a small, CPU-friendly student. Inputs are preprocessed as `preprocess.json` "
        f"says: {pre.get('in_chans')} channel(s), resize {pre.get('resize')}, center crop {pre.get('image_size')}, "
        f"normalise with mean {pre.get('mean')} and std {pre.get('std')}.",
    ]
    if export["head"] == "zero_shot":
        lines += [
            "",
            "Zero-shot head: logits = L2-normalised `embedding` @ `class_text.npy`.T / "
            f'{export.get("temperature")}. Add classes with `vlmkd classes add DIR "name"` (text encoder '
            f"`{(encoder or {}).get('id')}`).",
        ]
        if export.get("scores") == "standardized":
            lines.append(
                "Standardized scores: before the division each class's cosine becomes (cosine - w.m) / "
                "sqrt(w'Sw) * scale, with m, S the class-balanced mean unit embedding and covariance of held-out "
                "images of the run's classes (`score_norm.safetensors`, `scale` in classes.json), so that names "
                "seen and unseen in training share one scale."
            )
        if export.get("gamma"):
            lines.append(
                f"Calibrated stacking: {export['gamma']:.3f} is subtracted from the score of every class the "
                "student was trained on (`seen` in classes.json) before the division, so that new names compete "
                "fairly (gamma from `vlmkd eval RUN eval.generalized=true`)."
            )
        if export.get("scores") == "standardized" or export.get("gamma"):
            lines.append(
                "The export applies this calibration only while its class names mix trained and zero-shot ones; "
                'a list of one kind scores raw cosine (see "This export\'s classes" under Data).'
            )
        lines += _generalized(calibration)
    lines += [
        "",
        "## Data",
        "",
        f"- dataset: `{summary.get('dataset') or data.get('format') or 'not recorded'}`"
        + (f" at `{data.get('root')}`" if data.get("root") else ""),
        f"- trained on {len(trained)} classes: {_names(trained)}",
    ]
    if counts:
        lines.append(
            f"- training images: {sum(counts)} of those {len(trained)} classes (per class min {min(counts)}, "
            f"max {max(counts)}, imbalance {max(counts) / max(1, min(counts)):.1f})"
        )
    if export["head"] == "zero_shot":  # which names are trained and zero-shot, the test split, the accuracy
        lines += ["", *class_list_block(class_list or {}, export.get("source") or "RUN")[:-1]]
    lines += [
        "",
        "## Teachers",
        "",
        *[f"- {t}" for t in _teachers(config)],
        f"- describer: {_describer(config)}",
        "",
        "## Losses",
        "",
        *[f"- {s}" for s in _losses(summary, config)],
        "",
        "## Metrics",
        "",
        *_metrics(summary, "zero_shot" if scored_mode == "cosine" else "classifier", export["head"]),
        "",
        "## Size and speed",
        "",
        f"- parameters: {_fmt_count(params)} ({params:,})",
        f"- FLOPs at batch 1: {_fmt_count(flops, 'FLOP')} (torch FlopCounterMode, a multiply-add = 2)",
    ]
    if latency:
        lines.append(
            f"- CPU latency ({export['format']} runtime, {torch.get_num_threads()} threads, median): "
            + ", ".join(f"{k.replace('_ms', '')} {v:.2f} ms" for k, v in latency.items())
        )
    else:
        lines.append(f"- CPU latency: {NOT_MEASURED}")
    lines += [
        "",
        "## Limitations",
        "",
        "Accuracy outside the training distribution is not measured unless a novel-class split is listed "
        "above. Rare classes (Few) are usually much less accurate than frequent ones.",
        "",
    ]
    return "\n".join(lines)


def _names(names: list[str], limit: int = 50) -> str:
    return (", ".join(names[:limit]) + (" ..." if len(names) > limit else "")) or "none"


BLOCK_START, BLOCK_END = "<!-- vlmkd:class-list -->", "<!-- /vlmkd:class-list -->"


def class_list_block(res: dict[str, Any], run: str = "RUN") -> list[str]:
    """The Data section's "This export's classes": which names were trained and which are zero-shot, the score
    form this list gets, and its accuracy on the run's test images as `vlmkd eval RUN --classes` reports it.
    Between markers, so that `vlmkd classes add|remove` rewrite it for the new list."""
    names, seen = list(res.get("names") or []), [bool(x) for x in res.get("seen") or []]
    trained = [n for n, s in zip(names, seen) if s]
    new = [n for n, s in zip(names, seen) if not s]
    lines = [
        BLOCK_START,
        "### This export's classes",
        "",
        f"- {len(names)} class names: {len(trained)} trained on ({_names(trained)}), {len(new)} zero-shot, "
        f"never trained on ({_names(new)})",
    ]
    scores = res.get("scores")
    if scores:
        if trained and new:
            why = "trained and untrained names compete, so the run's calibration applies" + (
                "; it recorded none" if scores == "cosine" else ""
            )
        else:
            why = "the names are all of one kind (all trained or all zero-shot), so no calibration applies"
        lines.append(f"- scores: {scores}; {why}")
    if res.get("error"):
        lines.append(f"- accuracy with this class list: {NOT_MEASURED} ({res['error']})")
    elif res.get("overall") is None:
        lines.append(
            f"- accuracy with this class list: {NOT_MEASURED} (the run's data has no test image of a listed class)"
        )
    else:
        where = "; ".join(
            f"split {s} under `{v.get('root')}`: {v['images']} images of {_names(v['classes'])}"
            for s, v in (res.get("splits") or {}).items()
        )
        lines.append(
            f"- accuracy with this class list, measured on the run's test images of the "
            f"{res['classes_with_images']} listed classes it has ({res['images']} images; {where}): overall "
            f"{_pct(res['overall'])}, mean per class {_pct(res['mean_per_class'])}. "
            f"`vlmkd eval {run} --classes NAME ...` with these names reports the same figure."
        )
    return [*lines, BLOCK_END, ""]


def replace_class_list_block(card: str, res: dict[str, Any], run: str = "RUN") -> str:
    """`card` with its class-list block replaced (appended when an older card has none)."""
    block = "\n".join(class_list_block(res, run))
    start, end = card.find(BLOCK_START), card.find(BLOCK_END)
    if start < 0 or end < start:
        return card.rstrip("\n") + "\n\n" + block
    tail = card[end + len(BLOCK_END) :].lstrip("\n")
    return card[:start] + block + ("\n" + tail if tail else "")


def read_run_info(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary.json, config.yaml as a plain dict) of a run folder; empty dicts where absent."""
    import json

    import yaml

    summary, config = {}, {}
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            summary = {}
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            config = {}
    return summary, config
