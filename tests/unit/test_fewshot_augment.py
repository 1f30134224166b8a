"""Few-shot fine-tuning re-augments its support images at every step (they are few; reusing one crop overfits)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from conftest import make_image_folder
from vlmkd.config import DataConfig
from vlmkd.data import build_manifests
from vlmkd.eval.fewshot import finetune_few_shot


def test_support_images_get_a_new_crop_and_flip_each_step(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=(4, 4, 2), size=16)
    cfg = DataConfig(format="image_folder", root=str(root), image_size=16, in_chans=3, augment="basic")
    train = build_manifests(cfg)["train"]
    base, support = (train.subset(np.nonzero(m)[0]) for m in (train.labels < 2, train.labels == 2))
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):  # records the support half of each batch (the sampler puts it last)
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 16 * 16, 4)

        def forward(self, x):
            seen.append(x[-2:].clone())
            return {"embedding": self.lin(x.flatten(1))}

    # 2 support images, batch 4: both support images are in every one of the 4 steps
    finetune_few_shot(Probe(), base, support, torch.randn(6, 4), cfg, steps=4, batch_size=4)
    assert len(seen) == 4

    def same_pair(a, b):  # the same two images, in either order
        return any(torch.equal(a[0], b[j]) and torch.equal(a[1], b[1 - j]) for j in (0, 1))

    assert not all(same_pair(seen[0], s) for s in seen[1:])
