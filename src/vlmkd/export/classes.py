"""The zero-shot class store of an export folder: `classes.json` (names, texts, encoder) + `class_text.npy`.

A zero-shot export classifies by cosine similarity between the student's image embedding and one
L2-normalised text embedding per class. New classes are added later by embedding their names with the same text
encoder that built the stored rows (its id is recorded at export and checked on every add).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.export.card import replace_class_list_block
from vlmkd.export.encode import build_encoder, encoder_record
from vlmkd.export.measure import EXPORT_FILE, export_calibration, export_source, measure_class_list, run_rows
from vlmkd.export.texts import DEFAULT_TEMPLATES as TEMPLATES
from vlmkd.export.texts import TextLibrary, resolve_classes
from vlmkd.utils.io import atomic_write, read_json, save_npy, write_json

CLASSES_FILE = "classes.json"
CLASS_TEXT_FILE = "class_text.npy"
CARD_FILE = "MODEL_CARD.md"


def write_class_store(
    out_dir: str | Path,
    names: list[str],
    texts: list[Any],
    class_text: np.ndarray,
    encoder: dict[str, Any] | None,
    templates: list[str] | None,
    temperature: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """classes.json + class_text.npy. `texts`: exactly the texts behind each row (a list per class). `extra`:
    "seen" (one flag per class: trained on), "gamma", "scores" and "scale" (calibration, see
    `vlmkd.eval.generalized`), "text_library" (the run's texts)."""
    if len(names) != len(class_text):
        raise ArtifactError(f"{len(names)} class names but {len(class_text)} class embeddings")
    out_dir = Path(out_dir)
    save_npy(out_dir / CLASS_TEXT_FILE, np.asarray(class_text, dtype=np.float32))
    write_json(
        out_dir / CLASSES_FILE,
        {
            "mode": "zero_shot",
            "names": list(names),
            "texts": [[t] if isinstance(t, str) else list(t) for t in texts],
            "encoder": encoder,
            "templates": templates,
            "temperature": float(temperature),
            "gamma": 0.0,
            "scores": "cosine",
            "seen": [False] * len(names),
            **(extra or {}),
        },
    )


def read_class_store(export_dir: str | Path) -> tuple[dict[str, Any], np.ndarray | None]:
    export_dir = Path(export_dir)
    path = export_dir / CLASSES_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{str(export_dir)!r} has no {CLASSES_FILE}; give a folder written by `vlmkd export`"
        )
    info = read_json(path)
    if info.get("mode") != "zero_shot":
        return info, None
    arr_path = export_dir / CLASS_TEXT_FILE
    if not arr_path.is_file():
        raise ArtifactError(f"{str(arr_path)!r} is missing; re-run `vlmkd export --head zero_shot`")
    arr = np.load(arr_path, allow_pickle=False).astype(np.float32)
    if len(arr) != len(info["names"]):
        raise ArtifactError(
            f"{str(export_dir)!r}: {len(info['names'])} class names but {len(arr)} embeddings; "
            "re-run `vlmkd export`"
        )
    return info, arr


def _zero_shot_store(export_dir: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    info, arr = read_class_store(export_dir)
    if arr is None:
        raise ConfigError(
            f"{str(export_dir)!r} is a closed-set classifier export; its classes are fixed. "
            "Export with --head zero_shot to add classes by name"
        )
    return info, arr


def export_library(info: dict[str, Any]):
    """The export's text library: the run's class texts (recorded at export) and its templates."""

    lib = info.get("text_library") or {}
    rec = info.get("encoder") or {}
    return TextLibrary(
        texts={k: list(v) for k, v in (lib.get("texts") or {}).items()},
        templates=list(lib.get("templates") or info.get("templates") or TEMPLATES),
        encoder={"name": rec.get("name"), "model": rec.get("model"), "encoder_id": rec.get("id")},
    )


def _write_back(export_dir, info: dict[str, Any], names, texts, arr, seen) -> None:
    keep = {k: info[k] for k in ("gamma", "scores", "scale", "text_library") if k in info}
    write_class_store(
        export_dir,
        names,
        texts,
        arr,
        info.get("encoder"),
        info.get("templates"),
        info.get("temperature", 0.07),
        {**keep, "seen": list(seen)},
    )


def add_classes(
    export_dir: str | Path,
    names: list[str],
    texts: list[str] | None = None,
    encoder: Any = None,
    replace: bool = False,
) -> list[str]:
    """Embed new class names (or `texts`, one per name) with the export's text encoder and append them.

    Default texts: the run's own texts for the name (enriched sentences, recorded at export), else its templates.
    `encoder` defaults to the one recorded at export; a different encoder id is refused, since its vectors
    would live in another space. Returns the full list of class names.
    """

    info, arr = _zero_shot_store(export_dir)
    rec = info.get("encoder") or {}
    if encoder is None:
        encoder = build_encoder(rec.get("name"), rec.get("model"))
    if rec.get("id") and str(encoder.encoder_id) != rec["id"]:
        raise ConfigError(
            f"this export's class embeddings come from text encoder {rec['id']!r}, not "
            f"{encoder.encoder_id!r}; new classes must use the same encoder"
        )
    existing = list(info["names"])
    dup = [n for n in names if n in existing]
    if dup and not replace:
        raise ConfigError(f"class(es) {dup} already exist; use --replace to re-embed them")
    lib = export_library(info)
    if (
        texts is None
    ):  # names the run's store knows keep its exact rows, as at export (`vlmkd eval` uses them)
        lib.rows = run_rows(export_source(export_dir), list(names), rec.get("id"))
    new_texts, new, _ = resolve_classes(names, lib, encoder, texts)
    if new.shape[1] != arr.shape[1]:
        raise ArtifactError(f"encoder gives {new.shape[1]}-d embeddings, the export stores {arr.shape[1]}-d")
    all_texts = list(info.get("texts") or [[n] for n in existing])
    seen = list(info.get("seen") or [False] * len(existing))
    for n, t, row in zip(names, new_texts, new):
        if n in existing:
            i = existing.index(n)
            arr[i], all_texts[i] = row, t
        else:
            existing.append(n)
            all_texts.append(t)
            seen.append(False)  # added after training: an unseen class, never penalised by gamma
            arr = np.concatenate([arr, row[None]], 0)
    _write_back(
        export_dir,
        {**info, "encoder": rec or encoder_record(encoder, None, None)},
        existing,
        all_texts,
        arr,
        seen,
    )
    remeasure_export(export_dir)
    return existing


def remove_classes(export_dir: str | Path, names: list[str]) -> list[str]:
    info, arr = _zero_shot_store(export_dir)
    existing = list(info["names"])
    missing = [n for n in names if n not in existing]
    if missing:
        raise ConfigError(f"no class named {missing}; `vlmkd classes list` shows the names")
    keep = [i for i, n in enumerate(existing) if n not in names]
    if not keep:
        raise ConfigError("cannot remove every class; a classifier needs at least one")
    texts = list(info.get("texts") or existing)
    seen = list(info.get("seen") or [False] * len(existing))
    _write_back(
        export_dir,
        info,
        [existing[i] for i in keep],
        [texts[i] for i in keep],
        arr[keep],
        [seen[i] for i in keep],
    )
    remeasure_export(export_dir)
    return [existing[i] for i in keep]


def remeasure_export(export_dir: str | Path) -> dict[str, Any] | None:
    """After `classes add|remove`: the new class list measured from the export's run (`vlmkd.export.measure`),
    written to export.json and to the model card's class-list block. None for a store without export.json."""
    export_dir = Path(export_dir)
    source = export_source(export_dir)
    if source is None:
        return None
    info, rows = read_class_store(export_dir)
    seen = np.asarray(info.get("seen") or [False] * len(info["names"]), dtype=bool)
    res = measure_class_list(source, list(info["names"]), rows, seen, export_calibration(export_dir, info))
    write_json(export_dir / EXPORT_FILE, {**read_json(export_dir / EXPORT_FILE), "class_list": res})
    card_path = export_dir / CARD_FILE
    if card_path.is_file():
        card = replace_class_list_block(card_path.read_text(encoding="utf-8"), res, source)
        atomic_write(card_path, lambda p: p.write_text(card, encoding="utf-8"))
    return res
