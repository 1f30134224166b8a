"""`vlmkd export`: a trained student as ONNX, TorchScript or safetensors, ready for other runtimes.

An export folder holds:

    model.onnx | model.torchscript.pt | student.safetensors + student.json   the model
    preprocess.json    image size, channels, resize, crop, mean, std: how to turn an image into the input
    classes.json       class names (and for a zero-shot head: texts, templates, text encoder, temperature)
    class_text.npy     zero-shot head only: one L2-normalised text embedding per class (C x D float32)
    export.json        format, head, output names, the student spec, where it came from
    MODEL_CARD.md      data, teachers, losses, metrics, parameters, FLOPs, measured CPU latency

`export_model(run, "onnx")` writes one; `vlmkd.predict.load_model(folder)` runs it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd import __version__
from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.eval.class_list import score_form
from vlmkd.eval.generalized import SCORE_NORM_FILE, SeenCalibration
from vlmkd.export.card import (
    count_flops,
    count_params,
    measure_runtime_latency,
    model_card,
    read_run_info,
)
from vlmkd.export.classes import (
    CARD_FILE,
    CLASSES_FILE,
    add_classes,
    build_encoder,
    encoder_record,
    read_class_store,
    remove_classes,
    write_class_store,
)
from vlmkd.export.formats import (
    FORMATS,
    MODEL_FILES,
    ONNX_OPSET,
    ExportWrapper,
    load_runtime,
    output_names,
    write_onnx,
    write_torchscript,
)
from vlmkd.export.measure import EXPORT_FILE, measure_class_list
from vlmkd.export.texts import TextLibrary, resolve_classes, run_library, seen_mask
from vlmkd.students.io import export_student, load_student
from vlmkd.utils.io import atomic_write, read_json, write_json

__all__ = [
    "FORMATS",
    "export_model",
    "read_export",
    "is_export_dir",
    "add_classes",
    "remove_classes",
    "read_class_store",
    "build_encoder",
    "load_runtime",
    "EXPORT_FILE",
    "PREPROCESS_FILE",
]

PREPROCESS_FILE = "preprocess.json"


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def read_export(export_dir: str | Path) -> dict[str, Any]:
    export_dir = Path(export_dir)
    if not is_export_dir(export_dir):
        raise ArtifactError(
            f"{str(export_dir)!r} has no {EXPORT_FILE}; give a folder written by `vlmkd export`"
        )
    return read_json(export_dir / EXPORT_FILE)


def preprocess_record(meta: dict[str, Any]) -> dict[str, Any]:
    pre = dict(meta.get("preprocess") or {})
    missing = [k for k in ("image_size", "in_chans", "mean", "std") if k not in pre]
    if missing:
        raise ArtifactError(
            f"student.json has no preprocessing {missing}; re-export the student with `vlmkd train`"
        )
    pre.setdefault("resize", pre["image_size"])
    pre.setdefault("interpolation", "bilinear")
    pre.setdefault("crop", "center")
    pre.setdefault("resize_mode", "shorter")
    resize = (
        f"resize to {pre['resize']}x{pre['resize']}, aspect ratio not kept"
        if pre["resize_mode"] == "squash"
        else f"resize shorter side to {pre['resize']}"
    )
    pre.update(
        {
            "color": "L" if pre["in_chans"] == 1 else "RGB",
            "layout": "NCHW",
            "dtype": "float32",
            "scale": "pixel / 255, then (x - mean) / std",
            "steps": [
                "convert color",
                f"{resize} ({pre['interpolation']})",
                f"center crop {pre['image_size']}",
                "to float in [0, 1]",
                "normalise",
            ],
        }
    )
    return pre


def _zero_shot_head(
    run_dir: Path,
    meta: dict[str, Any],
    class_names: list[str] | None,
    texts: list[Any] | None,
    templates: list[str] | None,
    text_encoder: Any,
    encoder_name: str | None,
    encoder_model: str | None,
    cal: Any,
) -> tuple[list[str], list[list[str]], np.ndarray, dict[str, Any], dict[str, Any]]:
    """(names, texts, rows, encoder record, extra) of a zero-shot export: the run's own class-text rows where it
    has them (see `vlmkd.export.texts`), the calibration `cal` (a SeenCalibration) and the seen-class flags."""

    lib = run_library(run_dir, meta)
    if templates:  # explicit templates replace the run's texts for every name
        lib = TextLibrary(templates=list(templates), encoder=lib.encoder, seen=lib.seen)
    if encoder_name or encoder_model:
        lib.encoder = {"name": encoder_name or lib.encoder.get("name"), "model": encoder_model}
        lib.rows = {}  # rows of the run's encoder do not live in another encoder's space
        if text_encoder is None:
            text_encoder = build_encoder(encoder_name, encoder_model)
    names = list(class_names or lib.seen)
    if not names:
        raise ConfigError("zero-shot export needs class names; pass --classes NAME ...")
    texts, rows, built = resolve_classes(names, lib, text_encoder, texts)
    if built is not None:
        encoder = encoder_record(built, lib.encoder.get("name"), lib.encoder.get("model"))
    else:  # every row came from the run's store: record its encoder without loading it
        encoder = {
            "name": lib.encoder.get("name") or "sentence_transformers",
            "model": lib.encoder.get("model"),
            "id": lib.encoder.get("encoder_id"),
            "dim": int(rows.shape[1]),
        }
    extra = {
        "gamma": float(cal.gamma),
        "scores": cal.form,
        **({"scale": float(cal.norm.scale)} if cal.norm is not None else {}),
        "seen": seen_mask(names, lib.seen).tolist(),
        "text_library": lib.to_json(),
    }
    return names, texts, rows, encoder, extra


def export_model(
    source: str | Path,
    fmt: str = "onnx",
    out_dir: str | Path | None = None,
    head: str | None = None,
    *,
    class_names: list[str] | None = None,
    texts: list[Any] | None = None,
    templates: list[str] | None = None,
    text_encoder: Any = None,
    encoder_name: str | None = None,
    encoder_model: str | None = None,
    measure_latency: bool = True,
    measure_accuracy: bool = True,
    opset: int = ONNX_OPSET,
    latency_runs: int = 5,
    gamma: float | None = None,
) -> Path:
    """Export the student of a run folder (or its student.safetensors) and return the export folder.

    head: "classifier" (the classifier head's logits) or "zero_shot" (the embedding head + class-text
    embeddings built with `text_encoder`, default: the encoder named by `encoder_name`, the run's
    `embed.encoder`, or the bundled MiniLM). None picks the head `vlmkd eval` scores (the embedding head of a
    cosine-scored run, else the classifier). Zero-shot names the run's class-text store knows keep its exact rows
    (enriched texts); the calibration `vlmkd eval` recorded for the run (score form, and gamma, subtracted from the
    trained classes' scores in predict) travels with them; `gamma` overrides its gamma. It applies where trained
    and untrained names compete (`vlmkd.eval.class_list`); `measure_accuracy` scores the run's student with
    this class list on the run's test images for the model card (what `vlmkd eval RUN --classes` reports).
    """

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = Path(source)
    run_dir = source if source.is_dir() else source.parent
    student, meta = load_student(source)
    if head is None:  # the head `vlmkd eval` scored (and `predict RUN` uses): an export behaves like its run
        scored = (meta.get("eval") or {}).get("mode")
        head = "classifier" if student.classifier is not None and scored != "cosine" else "zero_shot"
    outputs = output_names(student, head)
    out_dir = (
        Path(out_dir)
        if out_dir
        else run_dir / (f"export-{fmt}" + ("-zero_shot" if head == "zero_shot" else ""))
    )
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError("--out must not be the run folder itself (its student files would be overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, config = read_run_info(run_dir)
    pre = preprocess_record(meta)
    shape = (int(pre["in_chans"]), int(pre["image_size"]), int(pre["image_size"]))
    wrapper = ExportWrapper(student, outputs, normalize_embedding=head == "zero_shot").eval()
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))

    model_file = MODEL_FILES[fmt]
    if fmt == "onnx":
        write_onnx(wrapper, out_dir / model_file, example, opset)
    elif fmt == "torchscript":
        write_torchscript(wrapper, out_dir / model_file, example)
    else:
        export_student(out_dir, student, meta["spec"], {k: v for k, v in meta.items() if k != "spec"})

    write_json(out_dir / PREPROCESS_FILE, pre)
    temperature = float((meta.get("eval") or {}).get("temperature", 0.07))
    encoder, extra, calibration, class_list = None, {}, None, None
    if head == "zero_shot":
        from dataclasses import replace

        cal = SeenCalibration.of_run(run_dir)
        if gamma is None and (run_dir / "calibration.json").is_file():  # its measured result goes on the card
            calibration = read_json(run_dir / "calibration.json")
        cal = cal if gamma is None else replace(cal, gamma=float(gamma))
        names, texts, emb, encoder, extra = _zero_shot_head(
            run_dir, meta, class_names, texts, templates, text_encoder, encoder_name, encoder_model, cal
        )
        if cal.norm is not None:  # standardized scores: predict needs the held-out images' statistics
            cal.norm.save(out_dir / SCORE_NORM_FILE)
        else:
            (out_dir / SCORE_NORM_FILE).unlink(missing_ok=True)  # a previous export's, into this folder
        if emb.shape[1] != student.embed_dim:
            raise ConfigError(
                f"text encoder {encoder['id']!r} gives {emb.shape[1]}-d embeddings but the "
                f"student's embedding head is {student.embed_dim}-d; use the encoder it was trained with"
            )
        write_class_store(
            out_dir, names, texts, emb, encoder, extra["text_library"]["templates"], temperature, extra
        )
        seen = np.asarray(extra["seen"], dtype=bool)
        class_list = (
            measure_class_list(source, names, emb, seen, cal, student)
            if measure_accuracy
            else {
                "names": names,
                "seen": seen.tolist(),
                "scores": score_form(cal, seen),
                "error": "skipped with --no-accuracy",
            }
        )
    else:
        names = list(
            class_names or meta.get("class_names") or [f"class_{i}" for i in range(student.num_classes)]
        )
        if len(names) != student.num_classes:
            raise ConfigError(f"{len(names)} class names for a {student.num_classes}-class classifier")
        write_json(out_dir / CLASSES_FILE, {"mode": "classifier", "names": names})

    record = {
        "format": fmt,
        "head": head,
        "model_file": model_file,
        "outputs": list(outputs),
        "input": {"name": "image", "shape": ["batch", *shape], "dtype": "float32"},
        "opset": opset if fmt == "onnx" else None,
        "temperature": temperature,
        "gamma": extra["gamma"] if head == "zero_shot" else None,
        "scores": extra["scores"] if head == "zero_shot" else None,
        "spec": meta["spec"],
        "source": str(source.resolve()),
        # a zero-shot export's accuracy with its class list (its card quotes it; `classes add` re-measures)
        **({"class_list": class_list} if class_list is not None else {}),
        "vlmkd_version": __version__,
        "torch_version": torch.__version__,
    }
    runtime = load_runtime(out_dir, record)
    record["max_abs_diff_vs_torch"] = _max_diff(wrapper, runtime, shape)
    write_json(out_dir / EXPORT_FILE, record)

    params = count_params(student)
    flops = count_flops(wrapper, torch.randn(1, *shape))
    latency = measure_runtime_latency(runtime, shape, runs=latency_runs) if measure_latency else None
    card = model_card(
        name=run_dir.name,
        export=record,
        meta=meta,
        summary=summary,
        config=config,
        params=params,
        flops=flops,
        latency=latency,
        class_names=names,
        encoder=encoder,
        calibration=calibration,
        class_list=class_list,
    )
    atomic_write(out_dir / CARD_FILE, lambda p: p.write_text(card, encoding="utf-8"))
    return out_dir


@torch.no_grad()
def _max_diff(wrapper: ExportWrapper, runtime, shape: tuple[int, int, int]) -> float:
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    ref = dict(zip(wrapper.outputs, (t.numpy() for t in wrapper(x))))
    got = runtime(x.numpy())
    return float(max(np.abs(ref[k] - got[k]).max() for k in ref))
