"""`vlmkd predict`: classify image files with a run folder, a student.safetensors or an export folder.

    model = load_model("runs/fmnist/export-onnx")          # or a run folder, or its student.safetensors
    records = predict(model, ["photos/", "@list.txt"], top_k=3)
    model = load_model("runs/ood", classes=["sandal", "boot"])  # zero-shot among any class names

Zero-shot models score cosine(image, class text) / temperature; a class list that mixes names the student was
trained on with untrained ones is calibrated as the run's generalized evaluation chose (`vlmkd.eval.generalized`:
cosine or standardized scores, gamma subtracted from the trained classes), a list of one kind scores raw cosine
(`vlmkd.eval.class_list`, the rule the model card and `vlmkd eval --classes` use too). `classes` uses the same texts as training (see `vlmkd.export.texts`): the run's class-text rows
where it has the name, its templates otherwise.

Images are preprocessed exactly as the student was evaluated (colour conversion, resize, center crop,
normalise), from `preprocess.json` (export folders) or `student.json` (run folders). Unreadable files (corrupt,
not images, missing) become records with an `error` field; the rest are predicted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmkd.data.images import load_image
from vlmkd.data.transforms import eval_ops
from vlmkd.errors import ArtifactError, ConfigError, DataError
from vlmkd.eval.class_list import applies_calibration, list_scores
from vlmkd.eval.generalized import SeenCalibration
from vlmkd.export import (
    PREPROCESS_FILE,
    is_export_dir,
    load_runtime,
    preprocess_record,
    read_class_store,
    read_export,
)
from vlmkd.export.classes import export_library
from vlmkd.export.formats import TorchRuntime, output_names
from vlmkd.export.measure import export_calibration
from vlmkd.export.texts import resolve_classes, run_library, seen_mask
from vlmkd.students.io import load_student
from vlmkd.utils.io import read_json
from vlmkd.utils.progress import progress

OUTPUT_FORMATS = ("table", "json", "csv")


@dataclass
class Predictor:
    """A runtime (numpy batch -> named outputs) with what it needs to turn images into inputs and labels."""

    runtime: Any
    preprocess: dict[str, Any]
    class_names: list[str]
    mode: str = "logits"  # logits | cosine (zero-shot: cosine to class_text)
    class_text: np.ndarray | None = None
    temperature: float = 0.07
    source: str = ""
    kind: str = "pytorch"
    seen: np.ndarray | None = None  # cosine: classes trained on, whose scores gamma lowers
    calibration: Any = None  # cosine: a SeenCalibration (score form and gamma), None = raw cosine
    _transform: Any = field(default=None, repr=False)
    _stats: Any = field(default=None, init=False, repr=False)  # the calibration's per-class statistics

    def transform(self, image: Image.Image) -> np.ndarray:
        if self._transform is None:
            self._transform = build_transform(self.preprocess)
        return self._transform(image)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.runtime(batch)
        if self.mode == "logits":
            return out["logits"]
        e = out["embedding"]
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        cos = (e @ self.class_text.T).astype(np.float32)
        # the run's calibration (score form, gamma) where trained and untrained names compete, else raw cosine:
        # the one rule `vlmkd eval --classes` and the model card score by (vlmkd.eval.class_list)
        if self._stats is None and self.calibration is not None and applies_calibration(self.seen):
            self._stats = self.calibration.stats(self.class_text)
        return list_scores(cos, self.seen, self.calibration, self._stats) / self.temperature


def build_transform(pre: dict[str, Any]):
    """PIL image -> C x H x W float32 array: the student's evaluation transform (`data.transforms.eval_ops`)."""
    from torchvision import transforms as T

    ops = T.Compose(eval_ops(pre))
    mode = "L" if int(pre["in_chans"]) == 1 else "RGB"

    def apply(im: Image.Image) -> np.ndarray:
        return ops(im if im.mode == mode else im.convert(mode)).numpy()

    return apply


# --------------------------------------------------------------------------------------------- loading


def load_model(path: str | Path, device: str = "cpu", classes: list[str] | None = None) -> Predictor:
    """A Predictor from an export folder (ONNX, TorchScript, safetensors), a run folder, or student.safetensors.

    `classes`: zero-shot among these class names instead of the model's own list."""

    p = Path(path)
    if not p.exists():
        raise ArtifactError(
            f"model {str(p)!r} does not exist; give a run folder, student.safetensors or export folder"
        )
    folder = p if p.is_dir() else p.parent
    if not is_export_dir(folder):
        return _from_run(p, device, classes)
    rec = read_export(folder)
    info, class_text = read_class_store(folder)
    model = Predictor(
        load_runtime(folder, rec, device),
        read_json(folder / PREPROCESS_FILE),
        list(info["names"]),
        source=str(folder),
        kind=rec["format"],
    )
    if rec.get("head") != "zero_shot":
        if classes:
            raise ConfigError(
                f"{str(folder)!r} is a closed-set classifier export; --classes needs a zero-shot export "
                "(`vlmkd export RUN --head zero_shot`) or the run folder"
            )
        return model

    names, rows, seen = _export_classes(info, class_text, classes)
    return replace(
        model,
        class_names=names,
        mode="cosine",
        class_text=rows,
        temperature=float(info.get("temperature", rec.get("temperature", 0.07))),
        seen=seen,
        calibration=export_calibration(folder, info),
    )


def _export_classes(info: dict[str, Any], class_text: np.ndarray, classes: list[str] | None):
    """(names, rows, seen flags): the export's own rows for names it has, the others embedded like `classes add`."""

    names = list(info["names"])
    seen = np.array(info.get("seen") or [False] * len(names), dtype=bool)
    if not classes:
        return names, class_text, seen
    lib = export_library(info)
    lib.rows = dict(zip(names, class_text))
    _, rows, _ = resolve_classes(list(classes), lib)
    flags = dict(zip(names, seen))
    return list(classes), rows, np.array([bool(flags.get(n, False)) for n in classes], dtype=bool)


def _from_run(path: Path, device: str, classes: list[str] | None = None) -> Predictor:
    student, meta = load_student(path, device)
    names = list(meta.get("class_names") or [f"class_{i}" for i in range(student.num_classes)])
    pre = preprocess_record(meta)
    ev = meta.get("eval") or {}
    if not classes and student.classifier is not None and ev.get("mode", "logits") == "logits":
        return Predictor(
            TorchRuntime(student, output_names(student, "classifier"), device=device),
            pre,
            names,
            source=str(path),
        )
    if student.proj is not None and (classes or ev.get("mode") == "cosine"):
        run_dir = path if path.is_dir() else path.parent
        lib = run_library(run_dir, meta)
        names = list(classes or lib.seen)
        _, rows, _ = resolve_classes(names, lib)
        return Predictor(
            TorchRuntime(student, ("embedding",), True, device),
            pre,
            names,
            "cosine",
            rows,
            float(ev.get("temperature", 0.07)),
            str(path),
            seen=seen_mask(names, lib.seen),
            calibration=SeenCalibration.of_run(run_dir),
        )
    if classes:
        raise ConfigError(
            f"{str(path)!r} is a closed-set classifier (no embedding head); --classes needs a student trained "
            "with model.head=both or embedding"
        )
    if student.classifier is not None:
        return Predictor(TorchRuntime(student, ("logits",), device=device), pre, names, source=str(path))
    raise ArtifactError(
        f"{str(path)!r} is a zero-shot student without stored class texts; run "
        "`vlmkd export RUN --head zero_shot` and predict with the export folder"
    )


# ---------------------------------------------------------------------------------------------- images


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders recursively (hidden files skipped), `@list.txt` one path per line."""
    out: list[Path] = []
    for item in inputs:
        s = str(item)
        if s.startswith("@"):
            lst = Path(s[1:])
            if not lst.is_file():
                raise DataError(f"list file {str(lst)!r} does not exist")
            for line in lst.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(line)
                if not p.is_absolute() and not p.exists() and (lst.parent / p).exists():
                    p = lst.parent / p
                out.append(p)
        elif Path(s).is_dir():
            files = [
                f
                for f in Path(s).rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(s).parts)
            ]
            out.extend(sorted(files))
        else:
            out.append(Path(s))
    if not out:
        raise DataError(
            f"no files found in {[str(i) for i in inputs]}; give image files, folders or @list.txt"
        )
    return out


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image; raise DataError with a short reason otherwise."""
    if not path.exists():
        raise DataError("file does not exist")
    if path.is_dir():
        raise DataError("is a folder")
    # the one image loader (EXIF orientation, every Pillow mode, decompression-bomb cap), RGB or L
    return load_image(path)


class _ImageDataset:
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(read_image(self.paths[i])), None
        except DataError as e:
            return i, None, str(e)
        except Exception as e:  # a transform failure on a strange image must not end the run
            return i, None, f"cannot preprocess ({type(e).__name__}: {e})"


def _collate(items):
    return items


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict(
    model: Predictor | str | Path,
    inputs: list[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    num_workers: int = 0,
    show_progress: bool | None = None,
) -> list[dict[str, Any]]:
    """One record per input file, in input order: {"path", "label", "score", "top_k": [{"label", "score"}],
    "error"} (error None when predicted; label/score None when not)."""
    from torch.utils.data import DataLoader

    if not isinstance(model, Predictor):
        model = load_model(model)
    paths = collect_images(inputs)
    k = max(1, min(int(top_k), len(model.class_names)))
    dl = DataLoader(
        _ImageDataset(paths, model.transform),
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    records: list[dict[str, Any]] = [{}] * len(paths)
    disable = None if show_progress is None else not show_progress
    if len(paths) <= batch_size and show_progress is None:
        disable = True
    bar = progress(dl, total=len(dl), desc="predict", unit="batch", disable=disable)
    for items in bar:
        good = [(i, x) for i, x, err in items if err is None]
        for i, _, err in items:
            if err is not None:
                records[i] = {"path": str(paths[i]), "label": None, "score": None, "top_k": [], "error": err}
        if not good:
            continue
        probs = _softmax(model.logits(np.stack([x for _, x in good])).astype(np.float64))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for (i, _), row, idx in zip(good, probs, order):
            top = [{"label": model.class_names[j], "score": float(row[j]), "index": int(j)} for j in idx]
            records[i] = {
                "path": str(paths[i]),
                "label": top[0]["label"],
                "score": top[0]["score"],
                "top_k": top,
                "error": None,
            }
    return records


# ---------------------------------------------------------------------------------------------- output


def format_records(records: list[dict[str, Any]], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "score", "top_k", "error"])
        for r in records:
            top = ";".join(f"{t['label']}:{t['score']:.6f}" for t in r["top_k"])
            w.writerow(
                [
                    r["path"],
                    r["label"] or "",
                    "" if r["score"] is None else f"{r['score']:.6f}",
                    top,
                    r["error"] or "",
                ]
            )
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise DataError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    rows = [("path", "label", "score", "top-k")]
    for r in records:
        if r["error"]:
            rows.append((r["path"], "ERROR", "", r["error"]))
        else:
            rows.append(
                (
                    r["path"],
                    r["label"],
                    f"{r['score']:.4f}",
                    ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"][1:]),
                )
            )
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    return "\n".join(
        "  ".join(row[c].ljust(widths[c]) for c in range(3)) + "  " + row[3] for row in rows
    ).rstrip()
