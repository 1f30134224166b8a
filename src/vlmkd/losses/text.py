"""Contrastive distillation of per-image text (VLM descriptions) into the student's projected features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.losses.classification import require_positive

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on 1/temperature
DIRECTIONS = ("image_to_text", "text_to_image", "symmetric")


def same_class_negatives(labels: torch.Tensor) -> torch.Tensor:
    """B x B bool mask, True where j != i and labels[j] == labels[i] (same-class pairs to drop from the negatives)."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)


def pool_text(text_emb: torch.Tensor) -> torch.Tensor:
    """B x D -> normalised; B x K x D -> normalise each, average the K, renormalise.

    All-zero rows (padding for images with fewer descriptions) do not change the direction of the average.
    """
    if text_emb.dim() == 3:
        text_emb = F.normalize(text_emb, dim=-1).mean(dim=1)
    elif text_emb.dim() != 2:
        raise ConfigError(f"text_emb must be B x D or B x K x D, got shape {tuple(text_emb.shape)}")
    return F.normalize(text_emb, dim=-1)


@LOSSES.register("text_nce")
class TextNCE(nn.Module):
    """InfoNCE between the student's projected features and the embeddings of its own images' descriptions.

    logits_ij = cos(proj_i, text_j) / tau over the batch (in-batch negatives), targets on the diagonal.
    `direction`: image_to_text = CE over rows (each image picks its text), text_to_image = CE over columns,
    symmetric = the mean of both. With `mask_same_class`, off-diagonal pairs of the same class are set to -inf
    (removed from the negatives, in every direction; the positive on the diagonal is never masked).
    With `learnable_temperature`, 1/tau is learned as exp(logit_scale) (CLIP's parameterisation), initialised at
    1/temperature and clamped to at most 100.
    """

    inputs = ("proj", "text_emb", "labels")

    def __init__(
        self,
        temperature: float = 0.07,
        direction: str = "image_to_text",
        mask_same_class: bool = True,
        learnable_temperature: bool = False,
    ):
        super().__init__()
        temperature = require_positive("temperature", temperature)
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        self.direction = direction
        self.mask_same_class = bool(mask_same_class)
        self.learnable_temperature = bool(learnable_temperature)
        if self.learnable_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / temperature)), persistent=False)
            self._fixed_temperature = temperature

    @property
    def temperature(self) -> float:
        if not self.learnable_temperature:
            return self._fixed_temperature
        return 1.0 / float(self.scale().detach())

    def scale(self) -> torch.Tensor:
        """1/tau (a tensor; it carries the gradient when the temperature is learnable)."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, proj: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = F.normalize(proj, dim=-1)
        t = pool_text(text_emb).to(s.dtype)
        if t.shape != s.shape:
            raise ConfigError(
                f"text_nce: proj is {tuple(s.shape)} but text_emb pools to {tuple(t.shape)}; set the "
                "student's embed_dim to the text-embedding dimension"
            )
        if self.learnable_temperature:
            logits = (s @ t.T) * self.scale().to(s.dtype)
        else:
            logits = (s @ t.T) / self._fixed_temperature
        if self.mask_same_class:
            logits = logits.masked_fill(same_class_negatives(labels), float("-inf"))
        target = torch.arange(s.shape[0], device=s.device)
        if self.direction == "image_to_text":
            return F.cross_entropy(logits, target)
        if self.direction == "text_to_image":
            return F.cross_entropy(logits.T, target)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
