"""Which texts (and which embedding rows) stand for a class name outside training: the run's own first.

A zero-shot student was trained and evaluated against the rows of its class-text store (`text.class_embeddings`,
written by `vlmkd classtext`): enriched sentences where the store has them, templates otherwise, embedded by the
run's text encoder. Export, `classes add` and `predict --classes` reuse exactly those rows for every name the
store knows, so an exported model scores the same as `vlmkd eval`; other names get the run's templates
(`classtext.templates`) embedded by the same encoder. The calibration (`vlmkd.eval.generalized`: score form and
gamma) travels with them; gamma is subtracted from the scores of the classes the student was trained on ("seen").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.config import load_config
from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.export.encode import build_encoder, embed_classes
from vlmkd.tasks.sources import class_text_matrix
from vlmkd.text.classtext import display_name, fill
from vlmkd.text.coop import learned_rows
from vlmkd.text.store import EmbeddingStore

DEFAULT_TEMPLATES = ["a photo of a {name}."]


@dataclass
class TextLibrary:
    """The class texts a run knows: names -> texts and their embedding rows, the templates, the encoder."""

    texts: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    encoder: dict[str, Any] = field(default_factory=dict)  # {"name", "model", "encoder_id"}
    seen: list[str] = field(default_factory=list)  # the classes the student was trained on
    store: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"texts": self.texts, "templates": self.templates, "store": self.store}


def template_texts(name: str, templates: list[str]) -> list[str]:
    """The run's templates filled with a class name, as `vlmkd classtext` fills them."""

    return [fill(t, display_name(name)) for t in templates]


def run_library(run_dir: str | Path, meta: dict[str, Any]) -> TextLibrary:
    """The class texts of a run folder: its class-text store when the config names one, else the texts recorded
    in student.json (training classes only)."""
    run_dir = Path(run_dir)
    ev = meta.get("eval") or {}
    lib = TextLibrary(encoder=dict(ev.get("text_encoder") or {}), seen=list(ev.get("class_names") or []))
    lib.seen = lib.seen or list(meta.get("class_names") or [])
    if ev.get("class_texts"):
        for n, t in zip(lib.seen, ev["class_texts"]):
            lib.texts[n] = [t] if isinstance(t, str) else list(t)
    if (run_dir / "config.yaml").is_file():
        cfg = load_config(run_dir / "config.yaml")
        lib.templates = list(cfg.classtext.templates or DEFAULT_TEMPLATES)
        if cfg.text.class_embeddings and Path(cfg.text.class_embeddings).exists():
            _add_store(lib, cfg)
    learned = ev.get("class_text_learned")
    if learned:  # a CoOp run: the rows it learned (the export cannot rerun the text tower with its context)
        lib.rows.update(zip(learned["names"], learned_rows(learned, learned["names"])))
    return lib


def _add_store(lib: TextLibrary, cfg: Any) -> None:
    matrix, names, texts = class_text_matrix(cfg)
    store_id = EmbeddingStore(cfg.text.class_embeddings).meta.get("encoder_id")
    if lib.encoder.get("encoder_id") and store_id and store_id != lib.encoder["encoder_id"]:
        return  # the store was re-embedded by another encoder since training: its rows are not the run's
    lib.store = str(cfg.text.class_embeddings)
    lib.encoder = lib.encoder or {"name": cfg.embed.encoder, "model": cfg.embed.model, "encoder_id": store_id}
    for i, n in enumerate(names):
        lib.rows[n] = matrix[i]
        if texts is not None:
            lib.texts[n] = list(texts[i])


def resolve_classes(
    names: list[str], lib: TextLibrary, encoder: Any = None, texts: list[Any] | None = None
) -> tuple[list[list[str]], np.ndarray, Any]:
    """(texts per class, C x D L2-normalised rows, the encoder if one was built) for class names: the library's
    rows where it has the name (and no explicit text is given), else its texts or templates embedded by
    `encoder` (default: the library's encoder)."""

    if texts is not None and len(texts) != len(names):
        raise ConfigError(f"{len(names)} names but {len(texts)} texts; give one text per name or none")
    out_texts, rows, todo = [], [None] * len(names), []
    for i, n in enumerate(names):
        given = None if texts is None else ([texts[i]] if isinstance(texts[i], str) else list(texts[i]))
        out_texts.append(given or lib.texts.get(n) or template_texts(n, lib.templates))
        if given is None and n in lib.rows:
            rows[i] = lib.rows[n]
        else:
            todo.append(i)
    if todo:
        if encoder is None:
            encoder = build_encoder(lib.encoder or None)
        for i, row in zip(todo, embed_classes(encoder, [out_texts[i] for i in todo])):
            rows[i] = row
    dims = {len(r) for r in rows}
    if len(dims) > 1:
        raise ArtifactError(
            f"class-text rows of different sizes {sorted(dims)}: the encoder differs from the run's "
            f"({lib.encoder.get('encoder_id')}); use the run's text encoder"
        )
    arr = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 1), np.float32)
    return out_texts, arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12), encoder


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines and # comments skipped)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--classes-file {str(path)!r} does not exist; give a text file, one name per line")
    names = [ln.strip() for ln in p.read_text("utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ConfigError(f"--classes-file {str(path)!r} lists no class names")
    return names


def seen_mask(names: list[str], seen: list[str]) -> np.ndarray:
    return np.array([n in set(seen) for n in names], dtype=bool)
