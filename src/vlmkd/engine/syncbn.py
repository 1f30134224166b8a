"""Synchronised BatchNorm for CPU process groups (gloo).

torch's SyncBatchNorm runs on CUDA only. On CPU, DDP with plain BatchNorm would normalise each rank's shard with
its own statistics, so N processes would not train the same model as one process with the same global batch.
This layer all-reduces the per-channel sums (differentiably) so the statistics are those of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x if x.dtype == torch.float64 else x.float()
        # Two passes over the global batch, as BatchNorm computes one process's statistics: the mean first, then
        # the squared deviations from it. The one-pass E[x^2] - E[x]^2 cancels catastrophically in float32 when
        # a channel's mean is large against its spread (raw pixels into a stem BN), and N processes then train
        # another model than one process does.
        local = torch.cat([xf.sum((0, 2, 3)), torch.tensor([x.numel() / c], dtype=xf.dtype, device=x.device)])
        total = all_reduce(local)
        n = total[c]
        mean = total[:c] / n
        dev = xf - mean[None, :, None, None]
        var = all_reduce((dev * dev).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
                self.num_batches_tracked.add_(1)
        y = dev * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace exact nn.BatchNorm2d layers (not subclasses with fused activations) by CPUSyncBatchNorm2d."""
    if type(module) is nn.BatchNorm2d:
        ref = module.weight if module.affine else module.running_mean
        new = CPUSyncBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,  # a float64 run's statistics stay float64
        )
        new.load_state_dict(module.state_dict())
        if (
            module.affine
        ):  # the same Parameter objects: an optimizer built before the conversion still owns them
            new.weight, new.bias = module.weight, module.bias
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_cpu_sync_batchnorm(child))
    return module
