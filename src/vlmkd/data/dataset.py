"""A torch Dataset over a manifest, with per-sample extras (text embeddings, teacher outputs) and a bad-image policy.

Bad images under data.on_bad_image=skip: an evaluation dataset drops the sample (counted by `collate_skip`); a
training dataset (`replace_bad=True`) puts another readable sample in its place, the first readable one after it
of the same class (then of any class), so every batch stays full. That keeps the number of steps the same on every
rank, which a dropped sample would not (an all-unreadable batch on one rank would skip a step the others take,
and DDP would hang). Either way the file is counted and named (`skipped`, `skipped_files` in the batch).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vlmkd.data.images import fetch_bytes, open_image, sample_path
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError, DataError
from vlmkd.utils.rng import seeded_call

log = logging.getLogger(__name__)
# A replacement is searched among this many samples after the bad one before the dataset is declared broken.
MAX_REPLACEMENT_TRIES = 64
BAD_KEY = "_bad_image"  # an item's field naming the unreadable file it stands for


class BatchFetched(Dataset):
    """A map-style dataset whose item i reads image i of `self.manifest`. DataLoader asks a worker for a batch
    with `__getitems__`, which first requests the batch's images inside shards on object storage at once (the
    batch waits about one round trip, not one per image), then builds each item with `_get(i, fetched)` exactly
    as `__getitem__` builds it."""

    manifest: Manifest

    def __getitem__(self, i: int) -> Any:
        return self._get(int(i))

    def __getitems__(self, indices: list[int]) -> list[Any]:
        fetched = fetch_bytes(self.manifest, [int(i) for i in indices])
        return [self._get(int(i), fetched.get(int(i))) for i in indices]

    def _get(self, i: int, fetched: tuple[bytes, str] | BaseException | None = None) -> Any:
        raise NotImplementedError


class ManifestDataset(BatchFetched):
    """Items are dicts: image, label, index (position in the manifest), plus one row of every extra array.

    `extras` maps a name to an array with one row per manifest sample (memory-mapped arrays are fine: only the
    needed row is read). With on_bad_image="skip", an unreadable image yields an item holding only its file name
    (dropped and counted by `collate_skip`), or with `replace_bad` a readable stand-in (see the module docstring).
    Decoding follows the transform's `decode_options` (set by `build_transform`: size cap, decode-time downscale).
    """

    def __init__(
        self,
        manifest: Manifest,
        transform=None,
        extras: dict[str, Any] | None = None,
        on_bad_image: str = "error",
        replace_bad: bool = False,
    ):
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.manifest, self.transform, self.on_bad_image = manifest, transform, on_bad_image
        self.replace_bad = replace_bad
        self.decode_options = dict(getattr(transform, "decode_options", {}))
        self.extras = dict(extras or {})
        # set by the trainer: augmentation becomes a function of (seed, epoch, index)
        self.seed: int | None = None
        self.epoch = 0
        self._warned: set[int] = set()
        for name, arr in self.extras.items():
            if len(arr) != len(manifest):
                raise DataError(
                    f"extra {name!r} has {len(arr)} rows for {len(manifest)} samples; rebuild the artifact"
                )

    def __len__(self) -> int:
        return len(self.manifest)

    def _get(self, i: int, fetched: tuple[bytes, str] | BaseException | None = None) -> dict[str, Any]:
        try:
            return self._item(i, self._open(i, fetched), i)
        except DataError as e:
            if self.on_bad_image != "skip":
                raise
            self._warn(i, e)
        bad = {BAD_KEY: sample_path(self.manifest, i)}
        if not self.replace_bad:
            return bad
        j, img = self._replacement(i)
        return {**self._item(j, img, i), **bad}

    def _open(self, i: int, fetched: tuple[bytes, str] | BaseException | None = None):
        as_array = getattr(self.transform, "accepts_arrays", False)
        return open_image(self.manifest, i, as_array, fetched=fetched, **self.decode_options)

    def _item(self, j: int, img, aug_index: int) -> dict[str, Any]:
        """Sample j's item; augmentation drawn for `aug_index` (a stand-in gets the draw of the sample it replaces).

        Replayed views (an extra with `view(i, epoch)`, `vlmkd.tasks.rows.ReplayRows`): the image is sample j's
        stored view for this epoch, replayed from its parameters, so it is the crop the teacher saw; "view" says
        which of the K stored views it is (the extras' rows are that view's)."""
        replay = next((a for a in self.extras.values() if hasattr(a, "view")), None)
        if replay is None:
            item = {"image": self._transform(img, aug_index)}
        else:
            v, params = replay.view(j, self.epoch)
            item = {"image": self.transform.replay(img, params), "view": v}
        item.update(label=int(self.manifest.labels[j]), index=j)
        for name, arr in self.extras.items():  # row sources with `row(i, epoch)` choose per (seed, epoch, i)
            row = arr.row(j, self.epoch) if hasattr(arr, "row") else arr[j]
            item[name] = torch.from_numpy(np.asarray(row, dtype=np.float32))
        return item

    def _replacement(self, i: int):
        """(j, image) of the first readable sample after i: same class first, then any class (deterministic)."""
        labels = self.manifest.labels
        after = np.roll(np.arange(len(labels)), -i)[1:]
        same = labels[after] == labels[i]
        for j in np.concatenate([after[same], after[~same]])[:MAX_REPLACEMENT_TRIES]:
            try:
                return int(j), self._open(int(j))
            except DataError as e:
                self._warn(int(j), e)
        raise DataError(
            f"image {sample_path(self.manifest, i)!r} and the {MAX_REPLACEMENT_TRIES} samples after it are all "
            "unreadable; check data.root and the files"
        )

    def _warn(self, i: int, e: DataError) -> None:
        if i not in self._warned:  # once per file and process: an epoch loop would repeat it otherwise
            self._warned.add(i)
            log.warning("skipping unreadable image (data.on_bad_image=skip): %s", e)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _transform(self, img, i: int):
        if self.transform is None:
            return img
        if self.seed is None:
            return self.transform(img)
        # seeded per sample: a resumed or a 2-process run reproduces a plain one exactly
        return seeded_call(self.transform, img, seed=(self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)


def collate_skip(batch: list[dict | None]) -> dict[str, Any]:
    """Collate the readable items; "skipped" counts the unreadable ones (dropped, replaced or None) and
    "skipped_files" names those the dataset named."""
    kept = [b for b in batch if b is not None and "image" in b]
    names = [b[BAD_KEY] for b in batch if b is not None and BAD_KEY in b]
    out = default_collate([{k: v for k, v in b.items() if k != BAD_KEY} for b in kept]) if kept else {}
    out["skipped"] = len(batch) - len(kept) + sum(BAD_KEY in b for b in kept)
    out["skipped_files"] = names
    return out
