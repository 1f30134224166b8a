"""Replayable training augmentation: a transform that can (a) draw a view's parameters and (b) apply given ones.

Dataset reinforcement (Apple ml-dr, FKD, MobileCLIP's DataCompDR) stores, per image, the parameters of K
augmentations next to the teacher's output for each, and replays a stored view for the student: the student gets
exactly the tensor the teacher saw, with no teacher at training time. Here the parameters of one view are one int32
row (`PARAM_FIELDS`), so K views of N images are an N x K x P array that memory-maps like the features.

`draw(img)` makes the same random draws, in the same order, from torch's global generator as the torchvision
pipeline it stands for, so a seeded call gives the tensor the plain pipeline gave before (old seeds keep their
meaning) and returns the parameters; `replay(img, params)` applies them with no random draw at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, RandAugment, RandomCrop, RandomResizedCrop
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import _apply_op

# One view: the crop box (in the padded image for pad-and-crop), the flip, and RandAugment's ops (index into
# torchvision's op table, and the magnitude's sign: +1 / -1; op -1 = no op). Ints only: exact, and small on disk.
PARAM_FIELDS = ("top", "left", "height", "width", "flip", "op1", "sign1", "op2", "sign2")
NUM_PARAMS = len(PARAM_FIELDS)
NO_OP = -1


def identity_params(height: int, width: int) -> np.ndarray:
    """The parameters of the un-augmented view: the whole image, no flip, no RandAugment op."""
    return np.array([0, 0, height, width, 0, NO_OP, 1, NO_OP, 1], dtype=np.int32)


class ReplayablePipeline:
    """The PIL training pipeline as pre-ops -> random crop -> flip -> RandAugment -> tensor ops.

    `crop` is ("pad", size, padding) for the small-image pad-and-crop recipe, ("rrc", size, scale, ratio) for
    RandomResizedCrop, or None (no random op: augment=none, replay gives the pre-ops' image).
    """

    accepts_arrays = False

    def __init__(self, pre: list, crop: tuple | None, flip: bool, randaugment: bool, post: list):
        self.pre, self.crop, self.flip, self.post = pre, crop, flip, post
        self.randaugment = RandAugment(num_ops=2, magnitude=9) if randaugment else None

    def _prepare(self, img):
        for op in self.pre:
            img = op(img)
        if self.crop is not None and self.crop[0] == "pad":
            img = F.pad(img, self.crop[2], 0, "reflect")
        return img

    def draw(self, img) -> tuple[torch.Tensor, np.ndarray]:
        img = self._prepare(img)
        _, h, w = F.get_dimensions(img)
        params = identity_params(h, w)
        if self.crop is not None:
            if self.crop[0] == "pad":
                size = self.crop[1]
                params[:4] = RandomCrop.get_params(img, (size, size))
            else:
                params[:4] = RandomResizedCrop.get_params(img, list(self.crop[2]), list(self.crop[3]))
        if self.flip:
            params[4] = int(torch.rand(1) < 0.5)
        if self.randaugment is not None:
            params[5:] = self._draw_ops()
        return self._apply(img, params), params

    def _draw_ops(self) -> list[int]:
        """RandAugment's draws, in torchvision's order (op index, then the sign of a signed op). Only the op
        table's names and signed flags are read, which do not depend on the image size."""
        meta = self.randaugment._augmentation_space(self.randaugment.num_magnitude_bins, (1, 1))
        out = []
        for _ in range(self.randaugment.num_ops):
            op = int(torch.randint(len(meta), (1,)).item())
            signed = meta[list(meta)[op]][1]
            out += [op, -1 if signed and torch.randint(2, (1,)) else 1]
        return out

    def replay(self, img, params: Any) -> torch.Tensor:
        return self._apply(self._prepare(img), np.asarray(params, dtype=np.int64))

    def __call__(self, img) -> torch.Tensor:
        return self.draw(img)[0]

    def _apply(self, img, p: np.ndarray) -> torch.Tensor:
        top, left, height, width = (int(v) for v in p[:4])
        if self.crop is not None and self.crop[0] == "pad":
            img = F.crop(img, top, left, height, width)
        elif self.crop is not None:
            size = [self.crop[1], self.crop[1]]
            img = F.resized_crop(
                img, top, left, height, width, size, InterpolationMode.BILINEAR, antialias=True
            )
        if p[4]:
            img = F.hflip(img)
        if self.randaugment is not None:
            img = self._apply_ops(img, p[5:])
        for op in self.post:
            img = op(img)
        return img

    def _apply_ops(self, img, ops: np.ndarray):
        ra = self.randaugment
        _, h, w = F.get_dimensions(img)
        meta = ra._augmentation_space(ra.num_magnitude_bins, (h, w))
        names = list(meta)
        for op, sign in zip(ops[0::2], ops[1::2]):
            if op == NO_OP:
                continue
            magnitudes, _ = meta[names[int(op)]]
            magnitude = float(magnitudes[ra.magnitude].item()) if magnitudes.ndim > 0 else 0.0
            img = _apply_op(img, names[int(op)], magnitude * int(sign), ra.interpolation, ra.fill)
        return img
