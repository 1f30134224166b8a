"""CLIP-style teachers by name: `load_clip_teacher("open_clip:ViT-L-14/openai" | "hf:ID_OR_DIR" | "domain:DIR")`.

Every teacher meets `vlmkd.teachers.base.VisionLanguageTeacher`: frozen, eval mode, its own recorded preprocessing,
unnormalised image and text features in one space. `teacher_id` names the weights exactly (name, revision, and a
fingerprint of local weight files), because it keys every cache of teacher features.

- `open_clip:ARCH/PRETRAINED`: PRETRAINED is an open_clip tag or a local checkpoint file; `open_clip:ARCH` alone is
  random weights (tests, benchmarks); `open_clip:hf-hub:ORG/REPO` and `open_clip:local-dir:DIR` are passed through.
- `hf:ID_OR_DIR`: a Hugging Face CLIP or SigLIP model (AutoModel + AutoProcessor); remote code is never run.
- `domain:DIR`: the in-house domain teacher (`vlmkd teacher train`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmkd.errors import BackendError, ConfigError
from vlmkd.registry import Registry
from vlmkd.teachers.base import VisionLanguageTeacher
from vlmkd.teachers.domain import load_domain_teacher
from vlmkd.utils.device import resolve_device
from vlmkd.utils.io import path_fingerprint
from vlmkd.utils.offline import OFFLINE_ROUTE, check_hub, hub_offline
from vlmkd.utils.provenance import record_model

log = logging.getLogger("vlmkd")

CLIP_TEACHERS = Registry("CLIP teacher prefix")
CLIP_EXTRA = 'pip install "vlmkd[clip]"'
# Which files of a local model folder identify its weights and preprocessing.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json", "*processor*.json")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def list_clip_teachers() -> list[str]:
    return CLIP_TEACHERS.names()


def load_clip_teacher(name: str, revision: str | None = None, device: str = "cpu") -> VisionLanguageTeacher:
    """The teacher named `PREFIX:SPEC` (see the module docstring), frozen and in eval mode on `device`."""
    prefix, sep, spec = (name or "").partition(":")
    if not sep or prefix not in CLIP_TEACHERS or not spec:
        raise ConfigError(
            f"clip.name {name!r} must be PREFIX:SPEC with PREFIX one of: "
            f"{', '.join(p + ':' for p in list_clip_teachers())} (e.g. open_clip:ViT-B-32/openai)"
        )
    teacher = CLIP_TEACHERS.get(prefix)(spec, revision=revision, device=str(resolve_device(device)))
    # every loaded teacher is named in the run's artifacts.json, a live one (read by no cache) included
    record_model("clip_teacher", teacher.teacher_id)
    return teacher


def _teacher_id(name: str, revision: str | None, fingerprint: str | None = None) -> str:
    return name + (f"@{revision}" if revision else "") + (f"#{fingerprint}" if fingerprint else "")


def fingerprint(path: str | Path) -> str | None:
    """The content fingerprint of a local weight file or model folder (None for hub ids): sha256 of the weight
    files' bytes, remembered per (path, size, mtime) so it is computed once (`vlmkd.utils.io.path_fingerprint`).
    Retrained or swapped weights at the same path get a new teacher_id, hence a new feature cache; a touched or
    copied file keeps it."""

    digest = path_fingerprint(path, _WEIGHT_PATTERNS)
    return digest[:12] if digest else None


def _freeze(model: torch.nn.Module, device: str) -> torch.nn.Module:
    return model.to(device).eval().requires_grad_(False)


def _route() -> str:
    """Offline (HF_HUB_OFFLINE), a missing download is final: point at the route that needs none."""

    return f" (HF_HUB_OFFLINE is set; {OFFLINE_ROUTE})" if hub_offline() else ""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------------------------------------- open_clip


class OpenClipTeacher:
    """An open_clip model with its eval transform and its arch's tokenizer."""

    def __init__(self, spec: str, revision: str | None = None, device: str = "cpu"):
        try:
            import open_clip
        except ImportError:
            raise ConfigError(f"open_clip teachers need open_clip_torch: {CLIP_EXTRA}") from None
        if spec.startswith(("hf-hub:", "local-dir:")):  # open_clip's own schemas carry their weights
            arch, pretrained = spec, ""
        else:
            arch, _, pretrained = spec.partition("/")
        if spec.startswith("hf-hub:") or (pretrained and not Path(pretrained).exists()):
            check_hub(f"the open_clip weights {spec!r}")  # open_clip alone retries for ~50 s
        try:
            model, _, self._transform = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained or None, device=device
            )
            self.tokenizer = open_clip.get_tokenizer(arch)
        except (RuntimeError, ValueError, OSError, KeyError) as e:
            raise BackendError(
                f"cannot create open_clip model {spec!r}: {_first_line(e)}{_route()}"
            ) from None
        self.model = _freeze(model, device)
        self.device = device
        self._pre = dict(open_clip.get_model_preprocess_cfg(model))
        name = f"open_clip:{arch}/{pretrained or 'random'}" if "/" not in arch else f"open_clip:{arch}"
        local = spec.removeprefix("local-dir:") if spec.startswith("local-dir:") else pretrained
        self.teacher_id = _teacher_id(name, revision, fingerprint(local) if local else None)
        self.embed_dim = int(getattr(model.visual, "output_dim", 0) or self.encode_text(["a"]).shape[1])

    def preprocess_config(self) -> dict[str, Any]:
        p = self._pre
        size = p.get("size", 224)
        size = int(size if isinstance(size, int) else size[0])
        mode = p.get("resize_mode", "shortest")
        return {
            "backend": "open_clip",
            "image_size": size,
            "in_chans": 3,
            "mean": [float(v) for v in p.get("mean", ())],
            "std": [float(v) for v in p.get("std", ())],
            "interpolation": p.get("interpolation", "bicubic"),
            "resize_mode": mode,
            "crop": "center" if mode == "shortest" else "none",
            "fill_color": p.get("fill_color", 0),
        }

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))


# ------------------------------------------------------------------------------------------- Hugging Face


def _pooled(out: Any) -> torch.Tensor:
    """transformers 4.x returns the projected features; 5.x a model output holding them in pooler_output."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise BackendError(f"unexpected feature output {type(out).__name__} from the Hugging Face model")


def _hf_size(ip: Any) -> int:
    crop, size = getattr(ip, "crop_size", None), getattr(ip, "size", None)
    for d in ((crop,) if getattr(ip, "do_center_crop", False) else ()) + (size, crop):
        if isinstance(d, int):
            return d
        for k in ("height", "shortest_edge", "width"):  # a dict (4.x) or a SizeDict (5.x)
            v = d.get(k) if isinstance(d, dict) else getattr(d, k, None)
            if v:
                return int(v)
    raise ConfigError(f"cannot tell the input size of image processor {type(ip).__name__}")


class HFClipTeacher:
    """A Hugging Face CLIP or SigLIP model: get_image_features / get_text_features and its own processor."""

    def __init__(self, spec: str, revision: str | None = None, device: str = "cpu"):
        try:
            from transformers import AutoModel, AutoProcessor
        except ImportError:
            raise ConfigError(f"hf teachers need transformers: {CLIP_EXTRA}") from None
        if not Path(spec).exists():
            check_hub(f"the Hugging Face model {spec!r}")
        try:
            model = AutoModel.from_pretrained(spec, revision=revision)
            processor = AutoProcessor.from_pretrained(spec, revision=revision)
        except (OSError, ValueError) as e:
            raise BackendError(
                f"cannot load Hugging Face model {spec!r}: {_first_line(e)}{_route()}"
            ) from None
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ConfigError(f"{spec!r} is not a CLIP-style model (no get_image_features/get_text_features)")
        self.image_processor = getattr(processor, "image_processor", processor)
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigError(f"{spec!r} has no tokenizer saved next to the model; save its processor")
        self.model = _freeze(model, device)
        self.device = device
        self.siglip = "siglip" in str(getattr(model.config, "model_type", ""))
        commit = getattr(model.config, "_commit_hash", None)  # a hub snapshot: pins "main" to what was loaded
        self.teacher_id = _teacher_id(
            f"hf:{spec}", revision, fingerprint(spec) or (commit or "")[:12] or None
        )
        self.embed_dim = int(self.encode_text(["a"]).shape[1])

    def preprocess_config(self) -> dict[str, Any]:
        ip = self.image_processor
        try:  # everything the processor does, so a changed processor is a changed cache key
            full = json.loads(ip.to_json_string())
        except (AttributeError, TypeError, ValueError):
            full = {}
        return {
            "backend": "transformers",
            "image_size": _hf_size(ip),
            "in_chans": 3,
            "mean": [float(v) for v in getattr(ip, "image_mean", None) or (0.5, 0.5, 0.5)],
            "std": [float(v) for v in getattr(ip, "image_std", None) or (0.5, 0.5, 0.5)],
            "interpolation": _RESAMPLE.get(int(getattr(ip, "resample", 3) or 3), "bicubic"),
            "crop": "center" if getattr(ip, "do_center_crop", False) else "none",
            "processor": {"class": type(ip).__name__, **full},
        }

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB") if image.mode != "RGB" else image
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        # SigLIP was trained on max_length padding; CLIP on the longest text with an attention mask
        kw = {"padding": "max_length", "max_length": 64} if self.siglip else {"padding": True}
        tok = self.tokenizer(list(texts), truncation=True, return_tensors="pt", **kw)
        return _pooled(self.model.get_text_features(**tok.to(self.device)))


# ------------------------------------------------------------------------------------------------- domain


def _domain(spec: str, revision: str | None = None, device: str = "cpu") -> VisionLanguageTeacher:
    if revision:
        log.warning(
            "clip.revision=%s is ignored for domain teachers (their id is their training key)", revision
        )
    return load_domain_teacher(spec, device)


CLIP_TEACHERS.register("open_clip", OpenClipTeacher)
CLIP_TEACHERS.register("hf", HFClipTeacher)
CLIP_TEACHERS.register("domain", _domain)
