"""A torch Dataset over a manifest, with per-sample extras (text embeddings, teacher outputs) and a bad-image policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vlmkd.data.images import open_image
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError, DataError


class ManifestDataset(Dataset):
    """Items are dicts: image, label, index (position in the manifest), plus one row of every extra array.

    `extras` maps a name to an array with one row per manifest sample (memory-mapped arrays are fine: only the
    needed row is read). With on_bad_image="skip", an unreadable image yields None, which `collate_skip` drops
    and counts.
    """

    def __init__(
        self,
        manifest: Manifest,
        transform=None,
        extras: dict[str, Any] | None = None,
        on_bad_image: str = "error",
    ):
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.manifest, self.transform, self.on_bad_image = manifest, transform, on_bad_image
        self.extras = dict(extras or {})
        self.seed: int | None = (
            None  # set by the trainer: augmentation becomes a function of (seed, epoch, index)
        )
        self.epoch = 0
        for name, arr in self.extras.items():
            if len(arr) != len(manifest):
                raise DataError(
                    f"extra {name!r} has {len(arr)} rows for {len(manifest)} samples; rebuild the artifact"
                )

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        try:
            img = open_image(self.manifest, i, as_array=getattr(self.transform, "accepts_arrays", False))
        except DataError:
            if self.on_bad_image == "skip":
                return None
            raise
        item = {"image": self._transform(img, i), "label": int(self.manifest.labels[i]), "index": i}
        for name, arr in self.extras.items():
            item[name] = torch.from_numpy(np.asarray(arr[i], dtype=np.float32))
        return item

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _transform(self, img, i: int):
        if self.transform is None:
            return img
        if self.seed is None:
            return self.transform(img)
        # Seeding per sample makes augmentation independent of worker count, world size and resume point,
        # which is what makes a resumed or a 2-process run reproduce a plain one exactly.
        # The CPU generator is seeded directly (torch.manual_seed would also queue CUDA seeding, which is slow).
        gen = torch.random.default_generator
        state = gen.get_state()
        gen.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        try:
            return self.transform(img)
        finally:
            gen.set_state(state)


def collate_skip(batch: list[dict | None]) -> dict[str, Any]:
    kept = [b for b in batch if b is not None]
    out = default_collate(kept) if kept else {}
    out["skipped"] = len(batch) - len(kept)
    return out
