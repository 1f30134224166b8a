"""Epoch-seeded samplers, all DDP-aware: every rank draws the same global index list from (seed, epoch) and takes
its strided share, so N processes see exactly the samples one process would, split N ways."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler

from vlmkd.errors import ConfigError


class EpochSampler(Sampler[int]):
    """Base: subclasses implement `global_indices(rng)`; length is the same every epoch."""

    def __init__(
        self,
        labels: np.ndarray,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        num_samples: int | None = None,
    ):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = num_samples or len(self.labels)
        self.per_rank = math.ceil(self.total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_indices(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = self.global_indices(rng)[: self.total]
        pad = self.per_rank * self.num_replicas - len(idx)
        if pad > 0:  # pad by wrapping so every rank gets the same number of samples
            idx = np.concatenate([idx, idx[:pad]])
        return iter(idx[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank


class InstanceSampler(EpochSampler):
    """Every sample once per epoch, shuffled."""

    def global_indices(self, rng):
        return rng.permutation(len(self.labels))


class ClassPowerSampler(EpochSampler):
    """Sample a class with probability proportional to n_c^power, then an instance of it uniformly.

    power 0 = class-balanced, 0.5 = square-root sampling, 1 = instance-like (with replacement).
    """

    def __init__(self, labels, power: float, **kw):
        super().__init__(labels, **kw)
        counts = np.bincount(self.labels)
        present = np.nonzero(counts)[0]
        w = counts[present].astype(np.float64) ** power
        self.present, self.class_p = present, w / w.sum()
        self.by_class = {int(c): np.nonzero(self.labels == c)[0] for c in present}

    def global_indices(self, rng):
        classes = rng.choice(self.present, size=self.total, p=self.class_p)
        out = np.empty(self.total, dtype=np.int64)
        for c in np.unique(classes):
            where = np.nonzero(classes == c)[0]
            out[where] = rng.choice(self.by_class[int(c)], size=len(where))
        return out


def build_sampler(
    name: str, labels: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0
) -> EpochSampler:
    if name == "instance":
        return InstanceSampler(labels, num_replicas=num_replicas, rank=rank, seed=seed)
    powers = {"class_balanced": 0.0, "sqrt": 0.5}
    if name not in powers:
        raise ConfigError(f"unknown data.sampler {name!r}; choose one of: instance, class_balanced, sqrt")
    return ClassPowerSampler(labels, powers[name], num_replicas=num_replicas, rank=rank, seed=seed)


def worker_init(worker_id: int) -> None:
    """Distinct numpy/random seeds per worker, derived from torch's per-worker seed."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
