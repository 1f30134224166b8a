"""The student's augmented batch re-expressed in a teacher's input space (the "consistent" view).

The student's tensor is un-normalised with the student's statistics, given the teacher's channel count and input
size, then normalised with the teacher's statistics, so a live teacher sees exactly the crop the student sees.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class TeacherView:
    def __init__(self, student_pre: dict[str, Any], teacher_pre: dict[str, Any]):
        def stats(pre: dict[str, Any], key: str, chans: int) -> torch.Tensor:
            v = list(pre.get(key) or [0.0 if key == "mean" else 1.0])
            v = v * chans if len(v) == 1 else v
            return torch.tensor(v[:chans], dtype=torch.float32).view(1, -1, 1, 1)

        self.s_chans, self.t_chans = int(student_pre["in_chans"]), int(teacher_pre.get("in_chans", 3))
        self.s_mean, self.s_std = (
            stats(student_pre, "mean", self.s_chans),
            stats(student_pre, "std", self.s_chans),
        )
        self.t_mean, self.t_std = (
            stats(teacher_pre, "mean", self.t_chans),
            stats(teacher_pre, "std", self.t_chans),
        )
        self.size = int(teacher_pre["image_size"])
        self.mode = "bicubic" if teacher_pre.get("interpolation") == "bicubic" else "bilinear"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        dev = images.device
        x = images.float() * self.s_std.to(dev) + self.s_mean.to(dev)
        if self.s_chans == 1 and self.t_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif self.s_chans == 3 and self.t_chans == 1:  # ITU-R 601-2 luma, as PIL's "L"
            w = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode=self.mode, align_corners=False, antialias=True
            )
            x = x.clamp(0.0, 1.0)
        return (x - self.t_mean.to(dev)) / self.t_std.to(dev)
