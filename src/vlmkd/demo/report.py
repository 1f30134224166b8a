"""The demo's results table (stdout), report.md and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkd.demo.combined import COMBINED_COLS, VAL_COLS
from vlmkd.eval.generalized import generalized_table_lines


def _p(x: Any, s: Any = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" ± {100 * s:.1f}" if s else "")


LT_COLS = ["overall", "mean_per_class", "many", "medium", "few", "tail"]
OOD_COLS = ["id", "ood_zero_shot", "ood_5shot"]


def table_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if summary["methods"]:
        tail = summary["methods"][next(iter(summary["methods"]))].get("tail_classes")
        names = [summary["class_names"][c] for c in tail] if tail else []
        lines += [
            "## VLM-KD on Fashion-MNIST-LT (imbalance 100), test accuracy (%)",
            "",
            f"Many > {summary['buckets']['many_threshold']} > Medium >= {summary['buckets']['few_threshold']} "
            f"> Few training images; tail = the 3 rarest classes ({', '.join(names)}).",
            "",
            "The val columns are the balanced validation split the demo's settings were chosen on.",
            "",
            "| method | " + " | ".join(LT_COLS) + " | val overall | val tail |",
            "|---" * (len(LT_COLS) + 3) + "|",
        ]
        for m, r in summary["methods"].items():
            val = r.get("val") or {}
            cells = [_p(r[c], r["std"].get(c)) for c in LT_COLS]
            cells += [_p(val.get(c), (val.get("std") or {}).get(c)) for c in ("overall", "tail")]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary["ood"]:
        lines += [
            "",
            f"## OOD distillation: novel classes {', '.join(summary['ood_setup']['novel_classes'])} "
            "(mean per-class accuracy, %)",
            "",
            "| method | X_id (base texts) | X_ood zero-shot | X_ood 5-shot |",
            "|---|---|---|---|",
        ]
        for m, r in summary["ood"].items():
            lines.append(f"| {m} | " + " | ".join(_p(r[c], r["std"].get(c)) for c in OOD_COLS) + " |")
        lines += generalized_table_lines(summary["ood"])  # computed in vlmkd.eval.generalized
    lines += combined_lines(summary)
    zs = summary["teacher"]["zero_shot"]
    lines += [
        "",
        "## Domain teacher zero-shot (mean per-class accuracy on the test set, %)",
        "",
        f"plain class names {_p(zs['plain'])}, enriched class sentences {_p(zs['enriched'])}, "
        f"novel classes only (enriched) {_p(zs['novel_classes_enriched'])}",
    ]
    return lines


def combined_lines(summary: dict[str, Any]) -> list[str]:
    rows = summary.get("combined") or {}
    if not rows:
        return []

    novel = ", ".join(summary["ood_setup"]["novel_classes"])
    lines = [
        "",
        "## Combined: one student, long-tailed base classes + zero-shot novel classes (test, %)",
        "",
        f"Trained on the long-tailed student set without the novel classes ({novel}): base columns are accuracy "
        "on the base test images (Many / Medium / Few by training count, tail = the 3 rarest base classes), "
        "novel columns mean per-class accuracy on the novel test images. The combined student and the OOD "
        "specialist are scored through their embedding head; the long-tail specialist has no zero-shot head.",
        "",
        "| student | " + " | ".join(COMBINED_COLS) + " | val overall | val tail | val teacher cos |",
        "|---" * (len(COMBINED_COLS) + 4) + "|",
    ]
    for m, r in rows.items():
        cells = [_p(r.get(c), r["std"].get(c)) for c in [*COMBINED_COLS, *VAL_COLS[:2]]]
        cos = r.get("val_teacher_cos")  # a cosine, not a percentage
        cells.append("-" if cos is None else f"{cos:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The recipe was chosen on val only: base val overall / tail, and `val teacher cos`, the mean cosine between "
        "the student's embedding and the teacher's image embedding on base val images (the zero-shot head "
        "inherits the teacher's alignment only as far as the embedding sits in the teacher's space; no novel "
        "image or label is used).",
    ]
    return lines


def print_tables(summary: dict[str, Any]) -> None:
    print("\n".join(table_lines(summary)))
    print(
        f"\nseeds: {next(iter(summary['methods'].values()), {}).get('seeds', '-')}, "
        f"total time {summary['timings'].get('total')} s"
    )


def plot_per_class(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    counts = summary["train_counts"]
    for m, r in summary["methods"].items():
        pts = sorted((c, a) for c, a in zip(counts, r["per_class"]) if a is not None)
        ax.plot([c for c, _ in pts], [100 * a for _, a in pts], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST-LT: per-class accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ood(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(summary["ood"])
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, col in enumerate(OOD_COLS):
        ax.bar(x + (i - 1) * 0.27, [100 * (summary["ood"][m][col] or 0) for m in methods], 0.27, label=col)
    ax.set_xticks(x, methods, rotation=20, fontsize=8)
    ax.set_ylabel("mean per-class accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_demo_report(out: Path, summary: dict[str, Any]) -> None:
    lines = ["# vlmkd offline demo", "", f"> {summary['note']}", "", *table_lines(summary)]
    if summary["methods"]:
        plot_per_class(out / "per_class_accuracy.png", summary)
        lines += ["", "![per-class accuracy](per_class_accuracy.png)"]
    if summary["ood"]:
        plot_ood(out / "ood.png", summary)
        lines += ["", "![OOD distillation](ood.png)"]
    ex = summary.get("artifacts", {}).get("examples") or []
    if ex:
        lines += ["", "## Example descriptions (interrogate describer)", "", *[f"- {e}" for e in ex]]
    lines += [
        "",
        "## Timings (s)",
        "",
        *[f"- {k}: {v}" for k, v in summary["timings"].items()],
        "",
        "## The same commands with real models",
        "",
        "```bash",
        "vlmkd describe cfg.yaml describe.backend=openai describe.base_url=http://localhost:8000/v1 \\",
        "    describe.model=llava-hf/llava-v1.6-mistral-7b-hf describe.api_key_env=OPENAI_API_KEY",
        "vlmkd embed cfg.yaml embed.encoder=open_clip embed.model=ViT-L-14/openai",
        "vlmkd teach cfg.yaml clip.name=open_clip:ViT-L-14/openai",
        "vlmkd train cfg.yaml",
        "```",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
