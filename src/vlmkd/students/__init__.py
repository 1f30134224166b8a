"""Students: a backbone (vlmkd small nets or any timm model), a classifier head and/or an embedding head.

`create_student(...)` is the one factory; `Student.forward` returns a dict with "features" (pooled backbone
output), "logits" (when the classifier head exists) and "embedding" (when an embedding/projection head exists).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.registry import suggest
from vlmkd.students.small import SMALL_STUDENTS, build_small


def list_students(timm_filter: str | None = None) -> list[str]:
    import timm

    return SMALL_STUDENTS + (timm.list_models(timm_filter) if timm_filter else [])


def build_backbone(
    name: str, in_chans: int = 3, pretrained: bool = False, drop_rate: float = 0.0
) -> nn.Module:
    if name in SMALL_STUDENTS:
        if pretrained:
            raise ConfigError(f"student {name!r} has no pretrained weights; set model.pretrained=false")
        return build_small(name, in_chans, drop_rate)
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"unknown student {name!r}{suggest(name, SMALL_STUDENTS + timm.list_models())}; "
            "use a vlmkd small student or a timm model name"
        )
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=0, in_chans=in_chans, drop_rate=drop_rate
        )
    except RuntimeError as e:  # e.g. no network for pretrained weights
        raise ConfigError(f"cannot build timm model {name!r}: {e}") from None


class Student(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: str = "classifier",
        embed_dim: int = 0,
        proj_type: str = "linear",
    ):
        super().__init__()
        if head not in ("classifier", "embedding", "both"):
            raise ConfigError(f"model.head must be classifier, embedding or both, got {head!r}")
        if head != "classifier" and embed_dim <= 0:
            raise ConfigError(
                f"model.head={head} needs model.embed_dim > 0 (the text/teacher embedding size)"
            )
        self.backbone = backbone
        feat = backbone.num_features
        self.head_type, self.num_classes, self.embed_dim = head, num_classes, embed_dim
        self.classifier = nn.Linear(feat, num_classes) if head in ("classifier", "both") else None
        self.proj = None
        if head in ("embedding", "both"):
            if proj_type == "linear":
                self.proj = nn.Linear(feat, embed_dim)
            elif proj_type == "mlp":
                self.proj = nn.Sequential(nn.Linear(feat, feat), nn.GELU(), nn.Linear(feat, embed_dim))
            else:
                raise ConfigError(f"model.proj_type must be linear or mlp, got {proj_type!r}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        out = {"features": f}
        if self.classifier is not None:
            out["logits"] = self.classifier(f)
        if self.proj is not None:
            out["embedding"] = self.proj(f)
        return out


def create_student(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    head: str = "classifier",
    embed_dim: int = 0,
    proj_type: str = "linear",
    pretrained: bool = False,
    drop_rate: float = 0.0,
) -> Student:
    return Student(
        build_backbone(name, in_chans, pretrained, drop_rate), num_classes, head, embed_dim, proj_type
    )


def student_spec(model_cfg: Any, num_classes: int, in_chans: int, embed_dim: int) -> dict[str, Any]:
    """Everything needed to rebuild the student architecture (saved next to its weights)."""
    return {
        "name": model_cfg.name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "head": model_cfg.head,
        "embed_dim": embed_dim,
        "proj_type": model_cfg.proj_type,
    }


def student_from_spec(spec: dict[str, Any]) -> Student:
    return create_student(
        spec["name"],
        spec["num_classes"],
        spec["in_chans"],
        spec["head"],
        spec["embed_dim"],
        spec["proj_type"],
    )
