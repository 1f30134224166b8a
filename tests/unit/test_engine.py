"""Engine parts with golden values: the EMA copy of the student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmkd.engine.ema import build_ema


def _set(model: nn.Sequential, weight: float, running_mean: float, tracked: int) -> None:
    with torch.no_grad():
        model[0].weight.fill_(weight)
        model[1].running_mean.fill_(running_mean)
        model[1].running_var.fill_(2 * running_mean)
        model[1].num_batches_tracked.fill_(tracked)


def test_ema_averages_batchnorm_buffers_golden():
    """decay 0.9; the first update copies, the second mixes: 0.9 * first + 0.1 * second, buffers included."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    ema = build_ema(model, decay=0.9)
    _set(model, weight=1.0, running_mean=1.0, tracked=5)
    ema.update_parameters(model)
    _set(model, weight=3.0, running_mean=3.0, tracked=6)
    ema.update_parameters(model)
    avg = ema.module
    torch.testing.assert_close(avg[0].weight, torch.full((2, 2), 1.2))
    # BatchNorm statistics are averaged like the weights (torch's default copies the live model's: 3.0 / 6.0)
    torch.testing.assert_close(avg[1].running_mean, torch.full((2,), 1.2))
    torch.testing.assert_close(avg[1].running_var, torch.full((2,), 2.4))
    assert int(avg[1].num_batches_tracked) == 6  # a counter: copied, not averaged


def test_one_device_resolver(monkeypatch):
    from vlmkd.errors import ConfigError
    from vlmkd.utils.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # under torchrun a bare "cuda" is this rank's GPU, not cuda:0 for every rank
    assert (
        resolve_device("cuda", local_rank=1) == resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    )
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")


def test_timm_teacher_without_checkpoint_for_another_class_count_is_refused():
    """Pretrained ImageNet weights with a random 3-class head: KD would learn from noise."""
    from vlmkd.config import VisionTeacherConfig
    from vlmkd.errors import ConfigError
    from vlmkd.teachers.vision import load_vision_teacher

    with pytest.raises(ConfigError, match="1000-class pretrained head but this dataset has 3 classes"):
        load_vision_teacher(VisionTeacherConfig(name="resnet18"), 3, 3, torch.device("cpu"))


def test_rng_state_round_trips_every_generator_through_a_safe_checkpoint(tmp_path):
    import random

    import numpy as np

    from vlmkd.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})

    def draws():
        return torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist()

    first = draws()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # weights_only=True load
    assert draws() == first
