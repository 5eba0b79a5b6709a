"""Batched augmentation on device tensors: random crop with reflect padding and horizontal flip (the
augmentation of docs/protocol.md), one gather for the whole batch."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["augment_batch"]


def augment_batch(x: torch.Tensor, generator: Optional[torch.Generator] = None, pad: int = 4,
                  flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad``-pixel reflect padding and random horizontal flip, whole batch at once.

    ``x``: float (B, C, H, W) on any device; ``generator`` must live on that device. Each image gets its
    own offsets (dy, dx) in [0, 2*pad] and flip bit; implemented with one gather, no Python loop.
    """
    B, C, H, W = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        off = torch.randint(0, 2 * pad + 1, (2, B), generator=generator, device=dev)
        rows = off[0][:, None] + torch.arange(H, device=dev)[None, :]  # (B, H)
        cols = off[1][:, None] + torch.arange(W, device=dev)[None, :]  # (B, W)
        bidx = torch.arange(B, device=dev)[:, None, None]
        # (B, H, W, C) after advanced indexing on dims 0, 2, 3
        x = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(B, generator=generator, device=dev) < 0.5
        x = torch.where(mask.view(B, 1, 1, 1), x.flip(3), x)
    return x.contiguous()
