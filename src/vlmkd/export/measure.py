"""A zero-shot export's accuracy with its own class list, measured from the run it came from.

The model card quotes this figure (`vlmkd.export.card.class_list_block`), and `vlmkd classes add|remove`
measure again for the new list; it is `vlmkd.eval.class_list.class_list_accuracy` of the run's student with the
export's rows, trained flags and calibration, which `vlmkd eval RUN --classes NAME ...` reports too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.errors import VlmkdError
from vlmkd.eval.calibration import SCORE_NORM_FILE, ScoreNorm, SeenCalibration
from vlmkd.eval.class_list import class_list_accuracy, score_form
from vlmkd.export.texts import run_library
from vlmkd.students.io import load_student
from vlmkd.utils.io import read_json

EXPORT_FILE = "export.json"


def run_folder(source: str | Path) -> Path:
    source = Path(source)
    return source if source.is_dir() else source.parent


def measure_class_list(
    source: str | Path,
    names: list[str],
    rows: np.ndarray,
    seen: np.ndarray,
    calibration: SeenCalibration | None,
    student: Any = None,
) -> dict[str, Any]:
    """class_list_accuracy on the run's test images, or {"names", "seen", "scores", "error"} saying why it could
    not be measured (no config.yaml, data moved); never raises for a run that cannot be re-read."""

    seen = np.asarray(seen, dtype=bool)
    base = {"names": list(names), "seen": seen.tolist(), "scores": score_form(calibration, seen)}
    run_dir = run_folder(source)
    if not (run_dir / "config.yaml").is_file():
        return {**base, "error": f"the run folder {str(run_dir)!r} has no config.yaml"}
    try:
        cfg = load_config(run_dir / "config.yaml")
        manifests = build_manifests(cfg.data)
        if student is None:
            student = load_student(source)[0]
        return class_list_accuracy(student, manifests, names, rows, seen, calibration, cfg.data, "cpu")
    except (VlmkdError, OSError) as e:  # the run's data moved or changed: the card says so
        return {**base, "error": f"the run's data could not be read: {e}"}


def export_calibration(export_dir: str | Path, info: dict[str, Any]) -> SeenCalibration:
    """The calibration a zero-shot export's classes.json records (with its score_norm.safetensors)."""
    norm = (
        ScoreNorm.load(Path(export_dir) / SCORE_NORM_FILE) if info.get("scores") == "standardized" else None
    )
    return SeenCalibration(float(info.get("gamma") or 0.0), norm)


def export_source(export_dir: str | Path) -> str | None:
    """The run (or student.safetensors) an export came from, as export.json records it; None for a bare store."""
    path = Path(export_dir) / EXPORT_FILE
    return read_json(path).get("source") if path.is_file() else None


def run_rows(source: str | Path | None, names: list[str], encoder_id: str | None) -> dict[str, np.ndarray]:
    """The run's own class-text rows for the names its store knows (the rows `vlmkd eval` and export use), when
    the run is still there and its encoder is the export's; {} otherwise (the texts are embedded again)."""
    run_dir = run_folder(source) if source else None
    if run_dir is None or not (run_dir / "student.json").is_file():
        return {}
    try:
        lib = run_library(run_dir, read_json(run_dir / "student.json"))
    except (VlmkdError, OSError, ValueError):
        return {}
    if encoder_id and lib.encoder.get("encoder_id") and str(lib.encoder["encoder_id"]) != str(encoder_id):
        return {}
    return {n: np.asarray(lib.rows[n], np.float32) for n in names if n in lib.rows}
