"""PreActResNet-18 (He et al. 2016, "Identity mappings in deep residual networks") for CIFAR.

Architecture of docs/protocol.md: a 3x3 stem convolution, four stages of two pre-activation basic blocks
(widths w, 2w, 4w, 8w with w = 64; stride 2 at the start of stages 2-4), BN + ReLU before each convolution,
a final BN-ReLU, global average pooling (4x4 on 32x32 inputs) and a linear head. Convolutions have no bias;
shortcuts are 1x1 convolutions where the shape changes. With w = 64 and 10 classes: 11,172,170 parameters.
``final_bn=False`` drops the final BN (the variant of some public CIFAR repositories, where the last block's
output goes straight to ReLU and pooling): 11,171,146 parameters, 2 x 512 fewer.

Inputs are images in [0, 1]; the per-channel mean/std normalisation is the first operation of ``forward``
so that attacks (deep/attacks.py) operate in pixel space.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreActBlock", "PreActResNet18", "preact_resnet18", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD", "SYNTHETIC_MEAN", "SYNTHETIC_STD", "normalization_for"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)


def normalization_for(dataset: str):
    """(mean, std) per channel used inside the model for ``dataset``."""
    return {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
            "synthetic": (SYNTHETIC_MEAN, SYNTHETIC_STD)}[dataset]


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
    """PreActResNet-18; ``width`` is the first stage's channel count (64 in the paper; small in tests)."""

    def __init__(self, num_classes: int = 10, width: int = 64,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 blocks: Sequence[int] = (2, 2, 2, 2), final_bn: bool = True):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("mean and std must have 3 entries, std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
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
