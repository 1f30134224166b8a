"""A CLIP-style teacher as a live zero-shot classifier: the KD teacher of `teacher.name=clip, teacher.mode=live`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ZeroShotClassifier(nn.Module):
    """logits = cos(encode_image(view(x)), class_text) / temperature, on the student's own augmented batch.

    The teacher is held outside the module tree, so it is never trained, checkpointed or moved by the task.
    """

    def __init__(self, teacher: Any, view: Any, class_text: torch.Tensor, temperature: float):
        super().__init__()
        self.__dict__["teacher"] = teacher
        self.view = view
        self.register_buffer("class_text", F.normalize(class_text.float(), dim=-1), persistent=False)
        self.scale = 1.0 / temperature

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.teacher.encode_image(self.view(images)).float()
        return self.scale * F.normalize(feats, dim=-1) @ self.class_text.T
