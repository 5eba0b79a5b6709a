"""The architectures of the deep experiments: PreActResNet-18 (deep/preact_resnet.py, the paper's) and three small
ones for the architecture comparison (docs/protocol.md, "Beyond the paper"): an MLP, a small CNN and a small
vision transformer, written here in plain torch.

Every model takes images in [0, 1] of shape (N, C, H, W) and normalises them with the data set's per-channel
mean/std as its first operation (so attacks work in pixel space), like PreActResNet18. ``width`` scales each
architecture (the first stage's channels for the ResNet; see each class for the others). None of the small
models has BatchNorm, so SAM's second pass and AT's inner PGD touch no running statistics.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .byo import build_custom, is_custom_arch
from .preact_resnet import PreActResNet18

__all__ = ["ARCHS", "DEFAULT_ARCH", "MLP", "SmallCNN", "ViT", "build_arch"]

DEFAULT_ARCH = "preact-resnet18"


class _Normalize(nn.Module):
    """(x - mean) / std per channel, the first operation of every model (buffers travel with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        c = len(mean)
        if c < 1 or len(std) != c or min(std) <= 0:
            raise ValueError(f"mean and std need one entry per channel and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    """Flatten -> [Linear(32 w) -> ReLU] x 2 -> Linear(classes); 32 w = 512 hidden units at width 16."""

    def __init__(self, num_classes: int, width: int, mean, std, image_size: int):
        super().__init__()
        self.norm = _Normalize(mean, std)
        hidden = 32 * width
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(len(mean) * image_size * image_size, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


class SmallCNN(nn.Module):
    """Two 3x3 conv-ReLU-conv-ReLU-maxpool stages (2w and 4w channels), then Linear(16 w) -> ReLU ->
    Linear(classes) on the flattened map; at width 16: 32 and 64 channels, 256 hidden units (the shape of
    the small CNNs of the MNIST robustness literature)."""

    def __init__(self, num_classes: int, width: int, mean, std, image_size: int):
        super().__init__()
        self.norm = _Normalize(mean, std)
        c1, c2 = 2 * width, 4 * width
        self.features = nn.Sequential(
            nn.Conv2d(len(mean), c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, 16 * width), nn.ReLU(),
                                  nn.Linear(16 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.norm(x)))


class _Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with a GELU MLP of 2x the width."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)           # softmax(q k^T / sqrt(d_head)) v
        x = x + self.proj(att.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Small vision transformer (Dosovitskiy et al. 2021): non-overlapping patches of ``patch`` pixels
    (a strided convolution), a class token, learned position embeddings, ``depth`` pre-norm blocks of
    dimension 4 w with 4 heads, a final LayerNorm and a linear head on the class token. At width 16 and
    patch 7 on 28x28 images: 16 patches of dimension 64, 4 blocks (patch 4, 49 patches, trains about 3x
    slower on CPU). Default patch: the first of 7, 4, 2 that divides the image size."""

    def __init__(self, num_classes: int, width: int, mean, std, image_size: int, patch: int | None = None,
                 depth: int = 4, heads: int = 4):
        super().__init__()
        if patch is None:       # 7 on 28x28 (Fashion-MNIST), 4 on 32x32 (CIFAR) and 8x8 (digits)
            patch = next((p for p in (7, 4, 2) if image_size % p == 0), 1)
        if image_size % patch:
            raise ValueError(f"ViT: image size {image_size} is not a multiple of the patch size {patch}")
        dim = 4 * width
        if dim % heads:
            raise ValueError(f"ViT: dimension 4 x width = {dim} is not a multiple of {heads} heads")
        self.norm = _Normalize(mean, std)
        self.embed = nn.Conv2d(len(mean), dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(self.norm(x)).flatten(2).transpose(1, 2)       # (N, tokens, dim)
        z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], dim=1) + self.pos
        return self.head(self.ln(self.blocks(z))[:, 0])


def _resnet(num_classes, width, mean, std, image_size, final_bn=True):
    return PreActResNet18(num_classes=num_classes, width=width, mean=mean, std=std, final_bn=final_bn)


def _small(cls):
    def build(num_classes, width, mean, std, image_size, final_bn=True):   # final_bn: ResNet only
        return cls(num_classes, width, mean, std, image_size)
    return build


# name -> builder(num_classes, width, mean, std, image_size, final_bn)
ARCHS: Dict[str, Callable[..., nn.Module]] = {
    "preact-resnet18": _resnet, "mlp": _small(MLP), "cnn": _small(SmallCNN), "vit": _small(ViT)}


def build_arch(arch: str, num_classes: int, width: int, mean, std, image_size: int,
               final_bn: bool = True) -> nn.Module:
    """The model ``arch`` (a key of ARCHS, or a user's ``module:callable``: deep/byo.py, which gets
    num_classes and in_channels only) for images of ``len(mean)`` channels and side ``image_size``."""
    if is_custom_arch(arch):
        return build_custom(arch, num_classes, in_channels=len(mean))
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes, width, mean, std, image_size, final_bn=final_bn)
