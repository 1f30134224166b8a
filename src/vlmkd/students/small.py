"""Small students for low-resolution data (Fashion-MNIST, CIFAR), registered next to every timm model.

Each returns a backbone with `num_features` whose forward gives pooled B x num_features features.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """A VGG-style 4-stage CNN: fast on a CPU at 28-32 px."""

    def __init__(self, in_chans: int = 1, width: int = 32, drop_rate: float = 0.0):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_chans, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(drop_rate),
        )
        self.num_features = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet family (He et al. 2016): 3 stages of `depth` blocks, 3x3 stem, no max-pool."""

    def __init__(self, in_chans: int = 3, depth: int = 3, width: int = 16, drop_rate: float = 0.0):
        super().__init__()
        layers, cin = [_conv_bn(in_chans, width)], width
        for stage, mult in enumerate((1, 2, 4)):
            for b in range(depth):
                layers.append(BasicBlock(cin, width * mult, 2 if (b == 0 and stage > 0) else 1))
                cin = width * mult
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate))
        self.num_features = cin

    def forward(self, x):
        return self.features(x)


def build_small(name: str, in_chans: int, drop_rate: float) -> nn.Module:
    if name == "cnn_small":
        return SmallCNN(in_chans, 32, drop_rate)
    if name == "cnn_tiny":
        return SmallCNN(in_chans, 16, drop_rate)
    depth = {"resnet20_cifar": 3, "resnet32_cifar": 5, "resnet8_cifar": 1}[name]
    return CifarResNet(in_chans, depth, 16, drop_rate)


SMALL_STUDENTS = ["cnn_small", "cnn_tiny", "resnet8_cifar", "resnet20_cifar", "resnet32_cifar"]
