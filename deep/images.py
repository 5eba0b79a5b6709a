"""The in-memory image set every data set of deep/ is loaded into, the error a missing or corrupt data
file raises, and the conversion of stored images to the float pixels models and attacks work on.

:class:`ImageData` holds images (N, C, H, W), uint8 in [0, 255] (as read from disk) or float in [0, 1]
(generated data, digits), and int64 labels; :func:`to_float` turns either into float32 in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["DataError", "ImageData", "to_float"]


class DataError(ValueError):
    """Missing or corrupt data files; the message says how to get them."""


@dataclass
class ImageData:
    """Images (N, C, H, W), uint8 in [0, 255] or float in [0, 1], and int64 labels, on one device."""
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device) -> "ImageData":
        return ImageData(self.x.to(device), self.y.to(device), self.num_classes)

    def subset(self, n: Optional[int]) -> "ImageData":
        if n is None or n >= len(self):
            return self
        return ImageData(self.x[:n], self.y[:n], self.num_classes)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]; float input is returned as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()

