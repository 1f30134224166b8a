"""Task modules: the unit of training. A task owns the student, frozen teachers (or their cached outputs) and the
losses; `forward(batch)` returns {"loss": total, "loss/<term>": value, ...}."""

from vlmkd.tasks.distill import DistillTask, LossSpec

__all__ = ["DistillTask", "LossSpec"]
