"""Shared helpers for the describe/embed tests: tiny manifests of PNGs and a toy contrastive teacher."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmkd.data.manifest import Manifest


def png_manifest(
    root: Path, n: int = 12, classes=("t_shirt", "sandal", "bag"), size: int = 24, seed: int = 0
):
    """n distinct random PNGs under root/imgs, labels cycling through `classes`."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        p = f"imgs/{i:04d}.png"
        Image.fromarray(arr).save(root / p)
        paths.append(p)
    return Manifest(
        ids=[f"s{i:04d}" for i in range(n)],
        labels=[i % len(classes) for i in range(n)],
        class_names=list(classes),
        root=str(root),
        paths=paths,
    )


class ToyTeacher(torch.nn.Module):
    """A VisionLanguageTeacher stand-in: mean colour -> 3-d space; texts hash to fixed directions.

    "red"/"green"/"blue" phrases point along their colour axis, so ranking is predictable."""

    teacher_id = "toy:rgb"
    embed_dim = 3

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(3))

    def preprocess_config(self):
        return {"size": 8}

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((8, 8)), np.float32) / 255).permute(
            2, 0, 1
        )

    def encode_image(self, pixels):
        return pixels.mean((2, 3)) @ self.w

    def encode_text(self, texts):
        out = []
        for t in texts:
            v = torch.full((3,), 0.01)
            for j, c in enumerate(("red", "green", "blue")):
                if c in t:
                    v[j] = 1.0
            if not any(c in t for c in ("red", "green", "blue")):
                g = torch.Generator().manual_seed(int(hashlib.md5(t.encode()).hexdigest()[:8], 16))
                v = torch.rand(3, generator=g) * 0.3
            out.append(v)
        return torch.stack(out)
