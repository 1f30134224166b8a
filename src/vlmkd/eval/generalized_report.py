"""Generalized zero-shot results as text: one console line, the mean over seeds, the demo's table rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmkd.eval.calibration import SUPPORT_NOTE, rule_text


def format_generalized(gen: dict[str, Any]) -> str:
    """One line for the console: raw and calibrated base / novel / harmonic mean (percent)."""

    def pct(d):
        return " ".join(
            f"{k}={'-' if d[k] is None else f'{100 * d[k]:.2f}'}" for k in ("base", "novel", "harmonic")
        )

    cal = gen["calibration"]
    src = cal["split"] + (f" + {cal['support']['shots']}-shot support" if cal.get("support") else "")
    return (
        f"generalized (among all {gen['classes_scored_among']} names): {pct(gen)} | calibrated "
        f"({gen.get('scores', 'cosine')} scores, gamma={gen['gamma']:.3f}, rule {cal['rule']} on {src}): "
        f"{pct(gen['calibrated'])}"
    )


def mean_generalized(results: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Seed mean (and std) of generalized results: {"base", "novel", "harmonic", "gamma", "calibrated": {...},
    "std": {...}} as summary.json's OOD methods carry it."""
    rows = [r for r in results if r]
    if not rows:
        return None

    def stats(get) -> tuple[float | None, float | None]:
        vals = [get(r) for r in rows if get(r) is not None]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)

    out: dict[str, Any] = {"calibrated": {}, "std": {"calibrated": {}}}
    for k in ("base", "novel", "harmonic", "gamma"):
        out[k], out["std"][k] = stats(lambda r, k=k: r[k])
    for k in ("base", "novel", "harmonic"):
        out["calibrated"][k], out["std"]["calibrated"][k] = stats(lambda r, k=k: r["calibrated"][k])
    out["classes_scored_among"] = rows[0]["classes_scored_among"]
    out["scores"] = [r.get("scores", "cosine") for r in rows]  # each seed's form: auto may pick differently
    out["calibration"] = cal = dict(rows[0]["calibration"])
    cal.pop("forms_compared", None)  # seed 0's comparison; each seed compared its own
    cal["scores"] = out["scores"][0] if len(set(out["scores"])) == 1 else "per seed"
    rules = {r["calibration"]["rule"] for r in rows}
    if cal.get("support") and len(rules) == 1:  # each seed's own support (drawn with the seed of its run)
        seeds = [r["calibration"]["support"]["seed"] for r in rows if r["calibration"].get("support")]
        cal["support"] = {**cal["support"], "seed": seeds}
    cal["description"] = rule_text(cal)
    if len(rules) > 1:  # e.g. one seed fell back: say so rather than describe the first seed's rule
        cal["rule"] = "mixed: " + ", ".join(sorted(rules))
        cal["description"] += f"; not every seed could use it (rules: {cal['rule'][7:]})"
    return out


def _table_rule(rows: dict[str, dict[str, Any]]) -> str:
    """The calibration rule in words for a table of methods: the first's, with the score form left to the
    table's column when the methods or seeds kept different ones."""
    cal = next(iter(rows.values()))["calibration"]
    forms = {f for g in rows.values() for f in (g.get("scores") or ["cosine"])}
    if len(forms) == 1 or cal["rule"].startswith("mixed"):
        return cal["description"]
    return rule_text({**cal, "scores": "per seed"})


def _forms_cell(forms: list[str]) -> str:
    counts = {f: forms.count(f) for f in dict.fromkeys(forms)}
    return ", ".join(f if len(counts) == 1 else f"{f} x{n}" for f, n in counts.items())


def generalized_table_lines(ood: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown table of the OOD methods' generalized scores (the demo's report and console)."""
    rows = {m: r["generalized"] for m, r in ood.items() if r.get("generalized")}
    if not rows:
        return []
    first = next(iter(rows.values()))

    def cell(value, std) -> str:
        return "-" if value is None else f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std else "")

    lines = [
        "",
        f"## Generalized zero-shot: base and novel test images among all {first['classes_scored_among']} names "
        "(mean per-class accuracy, %)",
        "",
        "Raw: cosine scores. Calibrated: gamma subtracted from the base classes' scores, cosine or standardized "
        f"(column scores); {_table_rule(rows)}."
        + SUPPORT_NOTE * bool(first["calibration"].get("support"))
        + " H: harmonic mean of base and novel.",
        "",
        "| method | base | novel | H | calibrated base | calibrated novel | calibrated H | scores | gamma |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, g in rows.items():
        s, c, sc = g.get("std", {}), g["calibrated"], g.get("std", {}).get("calibrated", {})
        cells = [cell(g[k], s.get(k)) for k in ("base", "novel", "harmonic")]
        cells += [cell(c[k], sc.get(k)) for k in ("base", "novel", "harmonic")]
        forms = g.get("scores") or ["cosine"]
        cells.append(_forms_cell(forms))
        cells.append(f"{g['gamma']:.3f}" if len(set(forms)) == 1 else "mixed")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
