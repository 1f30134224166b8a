"""Per-sample transforms (applied in the Dataset, so every image gets its own crop, flip and RandAugment:
the released OOD code applied one draw to the whole batch, which we do not copy)."""

from __future__ import annotations

from torchvision import transforms as T

from vlmkd.config import DataConfig
from vlmkd.data.formats import FORMAT_STATS, IMAGENET_STATS
from vlmkd.errors import ConfigError


def norm_stats(cfg: DataConfig) -> tuple[list[float], list[float]]:
    if cfg.mean is not None and cfg.std is not None:
        mean, std = list(cfg.mean), list(cfg.std)
    else:
        mean, std = FORMAT_STATS.get(cfg.format, IMAGENET_STATS)
    if len(mean) != cfg.in_chans:  # e.g. grayscale data fed to a 3-channel model
        mean, std = [sum(mean) / len(mean)] * cfg.in_chans, [sum(std) / len(std)] * cfg.in_chans
    return list(mean), list(std)


def _channels(cfg: DataConfig):
    if cfg.in_chans == 1:
        return [T.Grayscale(1)]
    if cfg.in_chans == 3:
        return [T.Lambda(_to_rgb)]
    raise ConfigError(f"data.in_chans must be 1 or 3, got {cfg.in_chans}")


def _to_rgb(im):
    return im.convert("RGB") if im.mode != "RGB" else im


def preprocess_config(cfg: DataConfig) -> dict:
    """What other runtimes need to feed the student: written next to exported models."""
    mean, std = norm_stats(cfg)
    return {
        "image_size": cfg.image_size,
        "in_chans": cfg.in_chans,
        "mean": mean,
        "std": std,
        "resize": _eval_resize(cfg),
        "interpolation": "bilinear",
        "crop": "center",
    }


def _eval_resize(cfg: DataConfig) -> int:
    return cfg.image_size if cfg.image_size <= 64 else int(round(cfg.image_size / 0.875))


def build_transform(cfg: DataConfig, train: bool):
    mean, std = norm_stats(cfg)
    s = cfg.image_size
    ops = _channels(cfg)
    if train and cfg.augment != "none":
        if s <= 64:  # small images (MNIST/CIFAR scale): pad-and-crop, the standard recipe
            ops += [
                T.Resize(s),
                T.RandomCrop(s, padding=max(1, s // 8), padding_mode="reflect"),
                T.RandomHorizontalFlip(),
            ]
        else:
            ops += [T.RandomResizedCrop(s, scale=(0.08, 1.0)), T.RandomHorizontalFlip()]
        if cfg.augment == "randaugment":
            ops.append(T.RandAugment(num_ops=2, magnitude=9))
        elif cfg.augment != "basic":
            raise ConfigError(f"unknown data.augment {cfg.augment!r}; choose none, basic or randaugment")
    else:
        ops += [T.Resize(_eval_resize(cfg)), T.CenterCrop(s)]
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)
