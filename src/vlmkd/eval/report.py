"""report.md and PNG plots of a run (per-class accuracy against training count; training curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkd.utils.io import atomic_write, write_json
from vlmkd.utils.logging import read_metrics


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def plot_per_class(path: Path, train_counts: list[int], per_class: list[float | None], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(c, a) for c, a in zip(train_counts, per_class) if a is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([c for c, _ in pts], [100 * a for _, a in pts], s=18)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, records: list[dict[str, Any]]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    val = [(r["step"], v) for r in records for k, v in r.items() if k.endswith("/mean_per_class")]
    if not loss:
        return False
    fig, ax = plt.subplots(1, 2 if val else 1, figsize=(9 if val else 5, 3.5), squeeze=False)
    ax[0][0].plot(*zip(*loss))
    ax[0][0].set_xlabel("step")
    ax[0][0].set_ylabel("training loss")
    if val:
        ax[0][1].plot(*zip(*val), marker="o")
        ax[0][1].set_xlabel("step")
        ax[0][1].set_ylabel("val mean per-class accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """summary.json, kept small whatever the class count: confusion matrices (C x C, 66M cells at 8,142 classes)
    move to confusion.npz (compressed, one int array per split), per-class accuracies are rounded to 4 decimals."""
    import numpy as np

    run_dir = Path(run_dir)
    confusion = {}
    for split, m in summary.get("splits", {}).items():
        if isinstance(m, dict) and "confusion" in m:
            confusion[split] = np.asarray(m.pop("confusion"), dtype=np.int32)
        if isinstance(m, dict) and isinstance(m.get("per_class"), list):
            m["per_class"] = [None if a is None else round(float(a), 4) for a in m["per_class"]]
    if confusion:

        def _w(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez_compressed(f, **confusion)

        atomic_write(run_dir / "confusion.npz", _w)
        summary["confusion_file"] = "confusion.npz"
    path = run_dir / "summary.json"
    write_json(path, summary)
    return path


def write_report(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    terms = ", ".join(f"{k}={v['name']} x{v['weight']}" for k, v in summary.get("losses", {}).items())
    lines = [
        f"# vlmkd run: {run_dir.name}",
        "",
        f"Dataset `{summary.get('dataset')}`, student `{summary.get('model')}`, losses: {terms}.",
        "",
        "| split | overall | mean per class | many | medium | few | tail |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, m in summary.get("splits", {}).items():
        lines.append(
            f"| {split} | {_pct(m.get('overall'))} | {_pct(m.get('mean_per_class'))} | {_pct(m.get('many'))} | "
            f"{_pct(m.get('medium'))} | {_pct(m.get('few'))} | {_pct(m.get('tail'))} |"
        )
    kd = summary.get("kd_teacher")
    if kd:
        lines += [
            "",
            f"KD teacher `{kd['teacher']}` on {kd['split']}: {_pct(kd['teacher_score'])} {kd['metric']} "
            f"(student {_pct(kd['student_score'])})."
            + (
                " The student ends above its teacher: compare with the labels-only run (losses.kd.weight=0)."
                if kd["weaker_than_student"]
                else ""
            ),
        ]
    test = summary.get("splits", {}).get("test")
    if test and test.get("per_class"):
        names = summary.get("class_names", [])
        lines += ["", "## Per class (test)", "", "| class | train images | accuracy |", "|---|---|---|"]
        for c, (n, a) in enumerate(zip(summary["train_counts"], test["per_class"])):
            lines.append(f"| {names[c] if c < len(names) else c} | {n} | {_pct(a)} |")
        plot_per_class(
            run_dir / "per_class_accuracy.png",
            summary["train_counts"],
            test["per_class"],
            "per-class accuracy vs training count",
        )
        lines += ["", "![per-class accuracy](per_class_accuracy.png)"]
    if plot_curves(run_dir / "training_curves.png", read_metrics(run_dir / "metrics.jsonl")):
        lines += ["", "![training curves](training_curves.png)"]
    t = summary.get("timings")
    if t:
        lines += ["", f"Training took {t.get('train_s')} s for {t.get('steps')} steps."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
