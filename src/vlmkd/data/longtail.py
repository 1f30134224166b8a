"""Long-tail tools: profiles, the disjoint pretraining pool, Many/Medium/Few buckets, base/novel class splits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from vlmkd.config import LongTailConfig, SplitConfig
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError, DataError
from vlmkd.registry import suggest


def exponential_profile(num_classes: int, n_max: int, imbalance_factor: float) -> np.ndarray:
    """n_i = floor(n_max * IF^(-i/(C-1))), at least 1 image per class."""
    if imbalance_factor < 1:
        raise ConfigError(f"data.longtail.imbalance_factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    i = np.arange(num_classes)
    return np.maximum(1, np.floor(n_max * imbalance_factor ** (-i / (num_classes - 1)) + 1e-9)).astype(
        np.int64
    )


def step_profile(num_classes: int, n_max: int, imbalance_factor: float) -> np.ndarray:
    """First half of the classes keep n_max, the rest n_max / IF (the 'step' profile of Buda et al.)."""
    counts = np.full(num_classes, n_max, dtype=np.int64)
    counts[num_classes // 2 :] = max(1, int(n_max / imbalance_factor))
    return counts


PROFILES = {"exp": exponential_profile, "step": step_profile}


def _per_class_indices(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.nonzero(labels == c)[0]) for c in range(num_classes)]


def make_longtail(manifest: Manifest, cfg: LongTailConfig) -> dict[str, Manifest]:
    """{"train": long-tailed student set, "pool": disjoint balanced pool, "val": balanced validation split}.

    Seeded. The validation split is balanced, as ImageNet-LT's, and comes from the back of each class's
    shuffled images, so asking for one does not change which images the student set or the pool get.
    """
    rng = np.random.default_rng(cfg.seed)
    C = manifest.num_classes
    per_class = _per_class_indices(manifest.labels, C, rng)
    taken: dict[str, np.ndarray] = {}
    # the pool from the front of each class's shuffled images, the validation split from the back
    for key, size, front in (("pool", cfg.pool_per_class, True), ("val", cfg.val_per_class, False)):
        if size <= 0:
            continue
        short = [c for c in range(C) if len(per_class[c]) <= size]
        if short:
            raise DataError(
                f"class {manifest.class_names[short[0]]!r} has {len(per_class[short[0]])} images left, too few "
                f"for data.longtail.{key}_per_class={size}; lower it"
            )
        taken[key] = np.sort(np.concatenate([p[:size] if front else p[-size:] for p in per_class]))
        per_class = [p[size:] if front else p[:-size] for p in per_class]
    if cfg.imbalance_factor == 1 and cfg.n_max is None:
        keep = np.sort(np.concatenate(per_class))
    else:
        if cfg.profile not in PROFILES:
            raise ConfigError(
                f"unknown long-tail profile {cfg.profile!r}; choose one of: {', '.join(PROFILES)}"
            )
        available = np.array([len(p) for p in per_class])
        n_max = cfg.n_max or int(available.min())
        target = PROFILES[cfg.profile](C, n_max, cfg.imbalance_factor)
        order = np.arange(C) if cfg.class_order == "index" else rng.permutation(C)
        counts = np.empty(C, dtype=np.int64)
        counts[order] = target
        if (counts > available).any():
            c = int(np.nonzero(counts > available)[0][0])
            raise DataError(
                f"class {manifest.class_names[c]!r} has {available[c]} images but the profile asks for {counts[c]}; "
                "lower data.longtail.n_max"
            )
        keep = np.sort(np.concatenate([per_class[c][: counts[c]] for c in range(C)]))
    return {"train": manifest.subset(keep, "train"), **{k: manifest.subset(v, k) for k, v in taken.items()}}


def stratified_holdout(
    manifest: Manifest, fraction: float, seed: int, split_name: str
) -> tuple[Manifest, Manifest]:
    """Split off `fraction` of every class (at least one image per class stays in the rest)."""
    rng = np.random.default_rng(seed)
    held = []
    for idx in _per_class_indices(manifest.labels, manifest.num_classes, rng):
        k = min(int(round(len(idx) * fraction)), max(len(idx) - 1, 0))
        held.append(idx[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(manifest)), held_idx)
    return manifest.subset(rest), manifest.subset(held_idx, split_name)


def key_fraction(ids: Sequence[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per sample id, fixed by the id and the seed alone (the first 8 bytes of a blake2b)."""
    salt = f"vlmkd-holdout:{seed}:".encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, sid in enumerate(ids):
        out[i] = int.from_bytes(hashlib.blake2b(salt + str(sid).encode(), digest_size=8).digest(), "big")
    return out / 2.0**64


def hashed_holdout(
    manifest: Manifest, fraction: float, seed: int, split_name: str, option: str = "data.val_fraction"
) -> tuple[Manifest, Manifest]:
    """Split off about `fraction` of the samples by a hash of each sample's own id (not its position in a list).

    An image is held out when hash(seed, id) < fraction, so adding or removing images never moves another image
    between the two sides (the descriptions and teacher outputs computed for it stay valid, and model selection
    keeps its validation images). Each class keeps at least one image in the rest: when every image of a class
    hashes under `fraction`, the one with the largest hash stays (the only case in which membership depends on
    the other images of the class).
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"the {split_name} fraction ({option}) must be in [0, 1), got {fraction}")
    u = key_fraction(manifest.ids, seed)
    held = u < fraction
    total = np.bincount(manifest.labels, minlength=manifest.num_classes)
    every = np.nonzero(
        (np.bincount(manifest.labels[held], minlength=manifest.num_classes) == total) & (total > 0)
    )
    for c in every[0]:
        members = np.nonzero(manifest.labels == c)[0]
        held[members[np.argmax(u[members])]] = False
    return manifest.subset(np.nonzero(~held)[0]), manifest.subset(np.nonzero(held)[0], split_name)


def bucket_of_counts(counts: np.ndarray, many_threshold: int = 100, few_threshold: int = 20) -> list[str]:
    """'many' (> many_threshold), 'few' (< few_threshold) or 'medium' per class."""
    return ["many" if n > many_threshold else "few" if n < few_threshold else "medium" for n in counts]


def novel_class_ids(entries: list, class_names: list[str] | None) -> list[int]:
    """data.split.novel_classes as class ids: integers are ids, strings are class names (did-you-mean on a typo)."""

    out = []
    names = list(class_names or [])
    folded = {" ".join(n.replace("_", " ").split()).lower(): i for i, n in enumerate(names)}
    for e in entries:
        if isinstance(e, int):
            out.append(e)
            continue
        key = " ".join(str(e).replace("_", " ").split()).lower()
        if str(e) in names:
            out.append(names.index(str(e)))
        elif key in folded:
            out.append(folded[key])
        else:
            hint = suggest(str(e), names) or f" (classes: {', '.join(names[:12])})"
            raise ConfigError(f"data.split.novel_classes: no class named {e!r}{hint}")
    return out


def base_novel_split(
    num_classes: int, cfg: SplitConfig, class_names: list[str] | None = None
) -> tuple[list[int], list[int]]:
    """Seeded (base, novel) class ids; an explicit `novel_classes` list (ids or names) wins."""
    if cfg.novel_classes:
        novel = sorted(set(novel_class_ids(cfg.novel_classes, class_names)))
        if any(c < 0 or c >= num_classes for c in novel):
            raise ConfigError(f"data.split.novel_classes must lie in 0..{num_classes - 1}")
    else:
        if not 0 < cfg.num_novel < num_classes:
            raise ConfigError(f"data.split.num_novel must be between 1 and {num_classes - 1}")
        novel = sorted(np.random.default_rng(cfg.seed).permutation(num_classes)[: cfg.num_novel].tolist())
    base = [c for c in range(num_classes) if c not in set(novel)]
    return base, novel
