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
        # the pooled output's width: timm's head_hidden_size where a head conv follows the pooling (MobileNetV3:
        # num_features 576, output 1024), else num_features
        feat = getattr(backbone, "head_hidden_size", None) or backbone.num_features
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
    *,
    num_classes: int,
    in_chans: int = 3,
    head: str = "classifier",
    embed_dim: int = 0,
    proj_type: str = "linear",
    pretrained: bool = False,
    drop_rate: float = 0.0,
) -> Student:
    """Build a student (the one factory, like timm's `create_model`).

    Args:
        name: a vlmkd small student (`list_students()`) or any timm model name; the backbone, pooled, no classifier.
        num_classes: classes of the classifier head (also recorded for an embedding-only student).
        in_chans: input channels (1 for Fashion-MNIST, 3 for RGB).
        head: "classifier" (logits), "embedding" (a projection into the text/teacher space) or "both".
        embed_dim: size of the embedding head; needed when head is "embedding" or "both".
        proj_type: the embedding head: "linear", or "mlp" (Linear-GELU-Linear).
        pretrained: timm pretrained weights for the backbone (vlmkd small students have none).
        drop_rate: dropout before the heads (timm's drop_rate).
    Returns a `Student` whose forward gives {"features", "logits"?, "embedding"?}.
    """
    return Student(
        build_backbone(name, in_chans, pretrained, drop_rate), num_classes, head, embed_dim, proj_type
    )


def student_spec(name: str, student: Student, in_chans: int, proj_type: str = "linear") -> dict[str, Any]:
    """Everything needed to rebuild the student architecture (saved next to its weights): the heads it was
    built with, which may be fewer than model.head asked for (a head no loss or evaluation reads is not built)."""
    return {
        "name": name,
        "num_classes": student.num_classes,
        "in_chans": in_chans,
        "head": student.head_type,
        "embed_dim": student.embed_dim,
        "proj_type": proj_type,
    }


def student_from_spec(spec: dict[str, Any]) -> Student:
    return create_student(
        spec["name"],
        num_classes=spec["num_classes"],
        in_chans=spec["in_chans"],
        head=spec["head"],
        embed_dim=spec["embed_dim"],
        proj_type=spec["proj_type"],
    )
