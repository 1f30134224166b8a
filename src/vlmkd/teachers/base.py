"""The contract every vision-language teacher meets (open_clip, Hugging Face CLIP/SigLIP, the vlmkd domain teacher).

Frozen, eval mode. Images go in as PIL images and are preprocessed by the teacher's own recorded transform,
so cached features say exactly which view they came from.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class VisionLanguageTeacher(Protocol):
    teacher_id: str  # stable id including revision, e.g. "open_clip:ViT-L-14/openai"
    embed_dim: int

    def preprocess_config(self) -> dict[str, Any]:
        """Size, interpolation, crop, mean and std: part of every cache key."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> C x H x W float tensor (the teacher's clean view)."""

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x C x H x W preprocessed pixels -> B x D features (not normalised)."""

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> N x D features (not normalised), in the same space as encode_image."""


def encode_pil(
    teacher: VisionLanguageTeacher, images: list[Image.Image], device: str | torch.device = "cpu"
) -> torch.Tensor:
    pixels = torch.stack([teacher.preprocess(im) for im in images]).to(device)
    return teacher.encode_image(pixels)
