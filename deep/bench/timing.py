"""Small helpers every measurement of the benchmark uses: device synchronisation, peak memory, and the
random benchmark images."""
from __future__ import annotations

import resource

import torch

from ..images import ImageData
from ..datasets import dataset_info
from .config import image_shape

__all__ = ["sync", "reset_peak", "peak_bytes", "make_data"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def make_data(dataset: str, n: int, seed: int) -> ImageData:
    """``n`` random uint8 images of ``dataset``'s shape, random labels (CPU)."""
    info = dataset_info(dataset)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n,) + image_shape(dataset), generator=g, dtype=torch.uint8)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    return ImageData(x, y, info.num_classes)
