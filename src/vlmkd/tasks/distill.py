"""One task for every method: student + named loss terms whose inputs are gathered on demand.

Each registered loss declares `inputs` (e.g. ("logits", "labels") or ("embedding", "teacher_features",
"class_text", "labels")). The task computes the student once, fetches only what the enabled terms need (cached
extras from the batch, live teachers under no_grad, class-text buffers) and sums `weight * term`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlmkd.errors import ConfigError


@dataclass
class LossSpec:
    name: str  # the term's name in logs, e.g. "cls", "kd", "text"
    weight: float
    module: nn.Module


STUDENT_OUTPUTS = {"logits": "logits", "embedding": "embedding", "proj": "embedding", "features": "features"}
BATCH_INPUTS = ("labels", "text_emb", "caption_emb")


class DistillTask(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        terms: list[LossSpec],
        class_text: torch.Tensor | None = None,
        vision_teacher: nn.Module | None = None,
        clip_teacher: Any = None,
        sample_text: bool = False,
        teacher_view: Any = None,
    ):
        super().__init__()
        if not terms:
            raise ConfigError("no loss term is enabled; give at least one term in `losses` with weight > 0")
        self.student = student
        self.terms = terms
        self.loss_modules = nn.ModuleDict({t.name: t.module for t in terms})
        self.register_buffer(
            "class_text", class_text.float() if class_text is not None else None, persistent=False
        )
        self.vision_teacher = vision_teacher
        if vision_teacher is not None:
            vision_teacher.eval().requires_grad_(False)
        self.clip_teacher = clip_teacher  # live CLIP teacher (consistent-view mode); frozen, not a submodule
        self.teacher_view = teacher_view  # student batch -> the teacher's input space (vlmkd.teachers.view)
        self.needed = {name for t in terms for name in t.module.inputs}
        self.sample_text = sample_text  # with several descriptions per image: one at random per step

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vision_teacher is not None:  # teachers stay in eval mode whatever the student does
            self.vision_teacher.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad and not self._is_teacher_param(p)]

    def _is_teacher_param(self, p) -> bool:
        return self.vision_teacher is not None and any(p is q for q in self.vision_teacher.parameters())

    def _input(self, name: str, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in STUDENT_OUTPUTS:
            key = STUDENT_OUTPUTS[name]
            if key not in out:
                raise ConfigError(
                    f"a loss needs the student's {key!r} output; set model.head to "
                    f"{'embedding or both' if key == 'embedding' else 'classifier or both'}"
                )
            return out[key]
        if name == "labels":
            return batch["label"]
        if name == "class_text":
            if self.class_text is None:
                raise ConfigError(
                    "a loss needs class-text embeddings; set text.class_embeddings (run `vlmkd classtext`)"
                )
            return self.class_text
        if name in batch and batch[name].ndim == 3 and (name == "teacher_features" or self.sample_text):
            return _pick_one(batch[name])  # several descriptions / cached teacher views: one per step
        if name in batch:
            return batch[name]
        if name == "teacher_logits" and self.vision_teacher is not None:
            with torch.no_grad():
                t = self.vision_teacher(batch["image"])
            return t["logits"] if isinstance(t, dict) else t
        if name == "teacher_features" and self.clip_teacher is not None:
            pixels = batch.get("teacher_image")
            if pixels is None:  # consistent view: the teacher sees the student's own augmented crop
                pixels = self.teacher_view(batch["image"])
            with torch.no_grad():
                return self.clip_teacher.encode_image(pixels).float()
        raise ConfigError(
            f"a loss needs {name!r} but no source provides it; configure the teacher or text artifacts"
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.student(batch["image"])
        cache: dict[str, torch.Tensor] = {}
        result: dict[str, torch.Tensor] = {}
        total = None
        for t in self.terms:
            args = []
            for name in t.module.inputs:
                if name not in cache:
                    cache[name] = self._input(name, batch, out)
                args.append(cache[name])
            value = t.module(*[a.float() if a.is_floating_point() else a for a in args])
            result[f"loss/{t.name}"] = value.detach()
            total = t.weight * value if total is None else total + t.weight * value
        result["loss"] = total
        if "logits" in out:
            result["logits"] = out["logits"].detach()
        return result


def _pick_one(emb: torch.Tensor) -> torch.Tensor:
    """B x K x D -> B x D, one of the K rows at random per sample; all-zero rows (missing) are never picked."""
    weight = (emb.abs().sum(-1) > 0).float()
    pick = torch.multinomial(weight + 1e-6, 1).squeeze(1)
    return emb[torch.arange(len(emb)), pick]
