"""CPU SyncBatchNorm (gloo) computes a process's BatchNorm exactly, including where one-pass statistics cancel."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from vlmkd.engine.syncbn import CPUSyncBatchNorm2d, convert_cpu_sync_batchnorm


@pytest.fixture
def group(tmp_path):
    """A one-process gloo group: the synced layer runs its all-reduce path, whose sums equal the local ones."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_synced_batchnorm_equals_batchnorm(group, offset):
    """Raw-pixel-like input (mean 300, spread 0.5): E[x^2] - E[x]^2 in float32 loses the variance (relative error
    ~1e-1); the two-pass statistics keep forward, gradients and running statistics at BatchNorm's."""
    torch.manual_seed(0)
    x = torch.randn(16, 4, 8, 8) * 0.5 + offset
    bn = nn.BatchNorm2d(4).train()
    sync = convert_cpu_sync_batchnorm(copy.deepcopy(bn)).train()
    assert isinstance(sync, CPUSyncBatchNorm2d)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = bn(xa), sync(xb)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(yb, ya, atol=2e-4, rtol=1e-4)  # the mean itself rounds at 300: 3e-5 absolute
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sync.weight.grad, bn.weight.grad, atol=1e-3, rtol=2e-3)  # one-pass: 5e-2
    torch.testing.assert_close(sync.running_var, bn.running_var, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sync.running_mean, bn.running_mean)


def test_conversion_keeps_the_parameters_an_optimizer_holds():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    params = list(model.parameters())
    converted = convert_cpu_sync_batchnorm(model)
    assert all(a is b for a, b in zip(params, converted.parameters()))


def test_conversion_keeps_a_float64_layer_float64():
    converted = convert_cpu_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)).double())
    assert {t.dtype for t in converted.state_dict().values() if t.is_floating_point()} == {torch.float64}
