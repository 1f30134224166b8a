"""Per-sample transforms (applied in the Dataset, so every image gets its own crop, flip and RandAugment:
the released OOD code applied one draw to the whole batch, which we do not copy)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from vlmkd.config import DataConfig
from vlmkd.data.formats import FORMAT_STATS, IMAGENET_STATS
from vlmkd.data.views import ReplayablePipeline, identity_params
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
        "resize_mode": cfg.resize_mode,
        "interpolation": "bilinear",
        "crop": "center",
    }


def _eval_resize(cfg: DataConfig) -> int:
    return cfg.image_size if cfg.image_size <= 64 else int(round(cfg.image_size / 0.875))


class SmallImageTransform:
    """The small-image recipe (pad-and-crop, flip, normalise) as a few tensor ops on the pixel array.

    Same operations and the same random draws (torch's default generator, as torchvision) as the PIL pipeline it
    falls back to, but several times faster: at 28-32 px, PIL's per-operation overhead dominates the data loader.
    Images whose size differs from `size` go through the PIL pipeline (it resizes).
    """

    accepts_arrays = True  # uint8 H x W (x 3) arrays from array-backed datasets skip PIL entirely

    def __init__(self, cfg: DataConfig, train: bool, fallback: ReplayablePipeline):
        mean, std = norm_stats(cfg)
        self.size, self.in_chans, self.fallback = cfg.image_size, cfg.in_chans, fallback
        self.train = train and cfg.augment == "basic"
        self.padding = max(1, cfg.image_size // 8)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def _array(self, img: Image.Image | np.ndarray) -> np.ndarray | None:
        """The uint8 pixel array, or None when the image needs the PIL path (another size or colour mode)."""
        if isinstance(img, np.ndarray):
            channels = 1 if img.ndim == 2 else img.shape[2]
            if img.shape[:2] != (self.size, self.size) or channels != self.in_chans:
                img = Image.fromarray(img)  # resize / colour conversion: the PIL path
        if isinstance(img, Image.Image):
            if img.size != (self.size, self.size):
                return None
            mode = "L" if self.in_chans == 1 else "RGB"
            img = np.asarray(img.convert(mode) if img.mode != mode else img)
        return img

    def draw(self, img: Image.Image | np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(tensor, the view's parameters): the random draws of `__call__` (and of the PIL pipeline)."""
        arr = self._array(img)
        if arr is None:
            return self.fallback.draw(_as_pil(img))
        if not self.train:
            return self._finish(arr), identity_params(self.size, self.size)
        p, s = self.padding, self.size
        params = identity_params(s, s)  # the crop box in the reflect-padded image
        params[0] = int(torch.randint(0, 2 * p + 1, (1,)))
        params[1] = int(torch.randint(0, 2 * p + 1, (1,)))
        params[4] = int(torch.rand(1) < 0.5)
        return self._apply(arr, params), params

    def replay(self, img: Image.Image | np.ndarray, params) -> torch.Tensor:
        """The view with the given parameters (from `draw`): no random draw."""
        arr = self._array(img)
        if arr is None:
            return self.fallback.replay(_as_pil(img), params)
        return self._apply(arr, np.asarray(params)) if self.train else self._finish(arr)

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        return self.draw(img)[0]

    def _apply(self, img: np.ndarray, params: np.ndarray) -> torch.Tensor:
        # numpy: torch's reflect pad costs milliseconds per call on a busy CPU
        p, s, i, j = self.padding, self.size, int(params[0]), int(params[1])
        img = np.pad(img, ((p, p), (p, p)) + ((0, 0),) * (img.ndim - 2), mode="reflect")
        img = img[i : i + s, j : j + s]
        if params[4]:
            img = img[:, ::-1]
        return self._finish(img)

    def _finish(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).div_(255.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return (x - self.mean) / self.std


def _as_pil(img: Image.Image | np.ndarray) -> Image.Image:
    return img if isinstance(img, Image.Image) else Image.fromarray(img)


def build_transform(cfg: DataConfig, train: bool):
    pipeline = _pil_transform(cfg, train)
    if cfg.image_size <= 64 and (not train or cfg.augment in ("basic", "none")):
        pipeline = SmallImageTransform(cfg, train, pipeline)
    # How ManifestDataset decodes files for this transform: the pixel cap, and big images decoded at no more
    # than 4x the size the transform keeps (JPEG at reduced scale), not at full size every epoch.
    pipeline.decode_options = {
        "shorter_side": 4 * max(cfg.image_size, _eval_resize(cfg)),
        "max_pixels": cfg.max_image_pixels or None,
    }
    return pipeline


RESIZE_MODES = ("shorter", "squash")


def _pil_transform(cfg: DataConfig, train: bool) -> ReplayablePipeline:
    """The PIL pipeline, replayable (`vlmkd.data.views`): the same ops and random draws as torchvision's
    Resize / RandomCrop(reflect padding) / RandomResizedCrop / RandomHorizontalFlip / RandAugment(2, 9)."""
    mean, std = norm_stats(cfg)
    s = cfg.image_size
    ops = _channels(cfg)
    if cfg.resize_mode not in RESIZE_MODES:
        raise ConfigError(f"unknown data.resize_mode {cfg.resize_mode!r}; choose shorter or squash")
    if not train or cfg.augment == "none":
        return ReplayablePipeline(ops + eval_ops(preprocess_config(cfg)), None, False, False, [])
    if cfg.augment not in ("basic", "randaugment"):
        raise ConfigError(f"unknown data.augment {cfg.augment!r}; choose none, basic or randaugment")
    if cfg.resize_mode == "squash":  # every image to R x R first; crops then come from the squashed image
        ops.append(T.Resize((_eval_resize(cfg), _eval_resize(cfg))))
    if s <= 64:  # small images (MNIST/CIFAR scale): pad-and-crop, the standard recipe
        ops.append(T.Resize(s))
        crop = ("pad", s, max(1, s // 8))
    else:
        crop = ("rrc", s, (0.08, 1.0), (3 / 4, 4 / 3))
    post = [T.ToTensor(), T.Normalize(mean, std)]
    return ReplayablePipeline(ops, crop, True, cfg.augment == "randaugment", post)


INTERPOLATIONS = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def resize_arg(pre: dict) -> int | tuple[int, int]:
    """torchvision's Resize size: the shorter side, or (R, R) when the student was trained on squashed images."""
    r = int(pre.get("resize", pre["image_size"]))
    return (r, r) if pre.get("resize_mode") == "squash" else r


def eval_ops(pre: dict) -> list:
    """The evaluation transform (after colour conversion) from a preprocess dict (`preprocess_config`): the one
    definition shared by training-time evaluation and `vlmkd predict` on exported models."""
    interp = INTERPOLATIONS[pre.get("interpolation", "bilinear")]
    return [
        T.Resize(resize_arg(pre), interpolation=interp),
        T.CenterCrop(int(pre["image_size"])),
        T.ToTensor(),
        T.Normalize(pre["mean"], pre["std"]),
    ]
