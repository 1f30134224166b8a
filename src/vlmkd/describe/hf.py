"""The `transformers` describer: any Hugging Face image-text-to-text / vision-to-sequence model.

Loaded with `AutoProcessor` and `AutoModelForImageTextToText` (falling back to `AutoModelForVision2Seq` on
transformers versions that have it). Prompts go through the processor's chat template when it has one
(LLaVA, Qwen2-VL, SmolVLM...), else straight to the processor (BLIP-style captioners, where an empty prompt means
unconditional captioning). Batches are left-padded for decoder-only models. Out-of-memory batches are split.

Sampling (do_sample) does not depend on how images were batched: `PerRowSampler` draws each row's token with the
Gumbel-max trick from the row's own generator, seeded by (seed, image content key, k) (`keys.sample_seed`), and
hands `generate` a one-hot distribution, so its own multinomial draw (global RNG) has no say.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from PIL import Image

from vlmkd.describe.base import (
    DEFAULT_PROMPT,
    DESCRIBERS,
    Description,
    decoding_of,
    failed,
    fill_prompt,
)
from vlmkd.describe.keys import sample_seed
from vlmkd.errors import BackendError, ConfigError
from vlmkd.utils.device import resolve_device
from vlmkd.utils.io import path_fingerprint

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"describe.dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_vlm(model: str, revision: str | None, dtype: torch.dtype, trust_remote_code: bool):
    """(processor, model) through the auto classes; a clear BackendError when the model is not a VLM."""
    import transformers

    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        processor = transformers.AutoProcessor.from_pretrained(model, **kw)
    except (OSError, ValueError) as e:
        raise BackendError(f"cannot load a processor for {model!r}: {e}".splitlines()[0]) from None
    errors = []
    for cls_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        try:
            return processor, cls.from_pretrained(model, dtype=dtype, **kw)
        except ValueError as e:  # unrecognised configuration class for this auto class
            errors.append(f"{cls_name}: {str(e).splitlines()[0]}")
        except OSError as e:
            raise BackendError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
    raise BackendError(
        f"{model!r} is not an image-text-to-text model ({'; '.join(errors)}); pick a VLM or captioner"
    )


class PerRowSampler:
    """A logits processor that samples row j from softmax(scores / temperature) (top-p) with generator j."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = max(float(temperature), 1e-6), float(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= self.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        u = torch.stack([torch.rand(logits.shape[1], generator=g) for g in self.gens]).to(logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        choice = (logits + gumbel).argmax(-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter(1, choice, 0.0)


@DESCRIBERS.register("transformers")
class TransformersDescriber:
    backend = "transformers"

    def __init__(self, cfg: Any, processor: Any = None, model: Any = None):
        if not cfg.model and model is None:
            raise ConfigError("describe.model is required for the transformers backend (a HF id or folder)")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if model is None:
            processor, model = load_vlm(cfg.model, cfg.revision, self.dtype, cfg.trust_remote_code)
        self.processor = processor
        self.model = model.to(self.device).eval()
        self.model_id = str(cfg.model or getattr(model.config, "_name_or_path", "model"))
        self.template = DEFAULT_PROMPT if cfg.prompt is None else cfg.prompt
        self.chunk_size = max(1, int(cfg.batch_size))
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        tok = getattr(processor, "tokenizer", None)
        model_type = str(getattr(model.config, "model_type", ""))
        if tok is not None and not self.is_encoder_decoder and "blip" not in model_type:
            tok.padding_side = "left"  # decoder-only generation continues after the last prompt token
        self.tokenizer = tok

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.processor, "chat_template", None))

    def identity(self) -> dict[str, Any]:
        ident = {
            "backend": self.backend,
            "model": self.model_id,
            "revision": self.cfg.revision,
            "prompt": self.template,
            "chat_template": self.has_chat_template,
            "max_side": self.cfg.max_side,
            "decoding": decoding_of(self.cfg),
        }
        # a local folder's name says nothing about its weights: retrained weights in the same folder must not
        # reuse old descriptions (content, not mtime; hub ids are pinned by `revision` and keep their keys)
        weights = path_fingerprint(self.model_id)
        if weights:
            ident["weights"] = weights
        return ident

    def text_for(self, prompt: str) -> str:
        if not self.has_chat_template:
            return prompt
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def describe(self, images, class_names, n, on_done=None, keys=None):
        prompts = [fill_prompt(self.template, c) for c in class_names]
        if keys is None:  # called directly: key the sampling by the pixels
            keys = [hashlib.sha256(im.tobytes()).digest() for im in images]
        seeds = [[sample_seed(self.cfg.seed, key, k) for k in range(n)] for key in keys]
        out = self._generate(images, prompts, n, seeds)
        if on_done:
            on_done(len(images))
        return out

    def _generate(
        self, images: list[Image.Image], prompts: list[str], n: int, seeds
    ) -> list[list[Description]]:
        try:
            return self._generate_batch(images, prompts, n, seeds)
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise BackendError(
                    "out of GPU memory on a single image; lower describe.max_new_tokens or use a smaller dtype"
                ) from None
            torch.cuda.empty_cache()
            h = len(images) // 2
            return self._generate(images[:h], prompts[:h], n, seeds[:h]) + self._generate(
                images[h:], prompts[h:], n, seeds[h:]
            )

    @torch.no_grad()
    def _generate_batch(self, images, prompts, n, seeds):
        images = [im.convert("RGB") for im in images]
        kw: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if any(prompts):
            kw.update(text=[self.text_for(p) for p in prompts], padding=True)
        inputs = self.processor(**kw).to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        gen: dict[str, Any] = {
            "max_new_tokens": int(self.cfg.max_new_tokens),
            "do_sample": bool(self.cfg.do_sample),
            "num_return_sequences": n,
        }
        if self.cfg.do_sample:  # rows are image-major (i * n + k), as generate expands them
            sampler = PerRowSampler([s for row in seeds for s in row], self.cfg.temperature, self.cfg.top_p)
            gen.update(temperature=1.0, top_p=1.0, top_k=0, logits_processor=[sampler])
        out = self.model.generate(**inputs, **gen)
        ids = inputs.get("input_ids")
        prompt_tokens = [-1] * len(images)
        if ids is not None:
            mask = inputs.get("attention_mask", torch.ones_like(ids))
            prompt_tokens = mask.sum(1).tolist()
            rep = ids.repeat_interleave(n, dim=0)
            if (
                not self.is_encoder_decoder
                and out.shape[1] >= ids.shape[1]
                and torch.equal(out[:, : ids.shape[1]], rep)
            ):
                out = out[:, ids.shape[1] :]  # decoder-only: drop the echoed prompt
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        lengths = (out != pad).sum(1).tolist() if pad is not None else [int(out.shape[1])] * len(out)
        results = []
        for i in range(len(images)):
            row = []
            for k in range(n):
                j = i * n + k
                text = " ".join(texts[j].split())
                d = Description(text, None, int(prompt_tokens[i]), int(lengths[j])) if text else None
                row.append(d or failed("empty answer from the model"))
            results.append(row)
        return results
