"""PreActResNet-18 (He et al. 2016, "Identity mappings in deep residual networks") for CIFAR.

Architecture of docs/protocol.md: a 3x3 stem convolution, four stages of two pre-activation basic blocks
(widths w, 2w, 4w, 8w with w = 64; stride 2 at the start of stages 2-4), BN + ReLU before each convolution,
a final BN-ReLU, global average pooling (4x4 on 32x32 inputs) and a linear head. Convolutions have no bias;
shortcuts are 1x1 convolutions where the shape changes. With w = 64 and 10 classes: 11,172,170 parameters.
``final_bn=False`` drops the final BN (the variant of some public CIFAR repositories, where the last block's
output goes straight to ReLU and pooling): 11,171,146 parameters, 2 x 512 fewer.

Inputs are images in [0, 1]; the per-channel mean/std normalisation is the first operation of ``forward``
so that attacks (samrobust/attacks.py) operate in pixel space.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .datasets import DATASETS, dataset_info

__all__ = ["PreActBlock", "PreActResNet18", "preact_resnet18", "normalization_for"]


def normalization_for(dataset: str):
    """(mean, std) per channel used inside the model for ``dataset`` (deep.datasets.DATASETS); their
    length is the number of input channels."""
    info = dataset_info(dataset)
    return info.mean, info.std


class PreActBlock(nn.Module):
    """Pre-activation basic block: out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # the projection shortcut sees the pre-activated input, the identity sees x itself
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18; ``width`` is the first stage's channel count (64 in the paper; small in tests).

    The number of input channels is ``len(mean)`` (3 for CIFAR, 1 for Fashion-MNIST and digits); any image
    size works (global average pooling), e.g. 28x28 (Fashion-MNIST: 4x4 maps after stage 4) or 8x8 (digits:
    1x1 maps)."""

    def __init__(self, num_classes: int = 10, width: int = 64,
                 mean: Sequence[float] = DATASETS["cifar10"].mean, std: Sequence[float] = DATASETS["cifar10"].std,
                 blocks: Sequence[int] = (2, 2, 2, 2), final_bn: bool = True):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        channels = len(mean)
        if channels < 1 or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean and std must have one entry per input channel (got {len(mean)} and "
                             f"{len(std)}), std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))
        self.in_channels = channels
        self.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
        layers = []
        in_planes = width
        for i, n in enumerate(blocks):
            planes = width * 2 ** i
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_planes) if final_bn else nn.Identity()
        self.linear = nn.Linear(in_planes, num_classes)
        self.num_classes = num_classes
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x - self.mean) / self.std
        out = self.conv1(out)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = 4x4 average pool on 32x32 inputs
        return self.linear(out)


def preact_resnet18(num_classes: int = 10, width: int = 64, dataset: str = "cifar10",
                    final_bn: bool = True) -> PreActResNet18:
    """PreActResNet-18 with the normalisation constants of ``dataset``."""
    mean, std = normalization_for(dataset)
    return PreActResNet18(num_classes=num_classes, width=width, mean=mean, std=std, final_bn=final_bn)
