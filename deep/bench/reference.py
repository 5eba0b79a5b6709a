"""The reference-style loop the benchmark compares with: the structure of common public CIFAR training
code (a Dataset that augments one image at a time on the CPU, a DataLoader with workers, a host-to-device
copy per batch, fp32 NCHW, plain SGD, ``loss.item()`` per step, PGD with ``loss.backward()``)."""
from __future__ import annotations

import time
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from samrobust.sam import SAM, frozen_bn_stats

from ..images import ImageData
from ..datasets import dataset_info
from ..preact_resnet import PreActResNet18, normalization_for
from .config import BenchConfig
from .flops import count_flops_and_ops
from .timing import peak_bytes, reset_peak, sync

__all__ = ["ReferenceStyleDataset", "reference_pgd_linf", "reference_model", "measure_reference"]

class ReferenceStyleDataset(torch.utils.data.Dataset):
    """One CIFAR-like image per ``__getitem__``, augmented on the CPU as public reference code does:
    uint8 HWC -> reflect pad 4 -> random 32x32 crop -> random horizontal flip -> float CHW in [0, 1].
    ``pad``, ``flip`` and ``channels`` follow the data set (Fashion-MNIST: pad 2, no flip, 1 channel)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, augment: bool = True, pad: int = 4,
                 flip: bool = True, channels: int = 3):
        if images_hwc.ndim != 4 or images_hwc.shape[-1] != channels:
            raise ValueError(f"images_hwc must have shape (N, H, W, {channels}), got {images_hwc.shape}")
        self.images, self.labels, self.augment, self.pad, self.flip = images_hwc, labels, augment, pad, flip

    def __len__(self) -> int:
        return len(self.labels)

    def transform(self, img: np.ndarray, top: int, left: int, flip: bool) -> torch.Tensor:
        h, w = img.shape[:2]
        p = self.pad
        img = np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")[top:top + h, left:left + w]
        if flip:
            img = img[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, i):
        img = self.images[i]
        if self.augment:
            top, left = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
            x = self.transform(img, top, left, self.flip and bool(torch.rand(()) < 0.5))
        else:
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return x, int(self.labels[i])


def reference_pgd_linf(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       steps: int) -> torch.Tensor:
    """l_inf PGD as commonly written in public adversarial-training code: a perturbation tensor with
    ``requires_grad``, ``loss.backward()`` (so parameter gradients are computed too and discarded),
    sign step, clip to the eps-box and to [0, 1].  Kept here only as the benchmark's baseline; the
    package's attack is samrobust.attacks.pgd."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    delta.requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        with torch.no_grad():
            delta += alpha * delta.grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
        delta.grad.zero_()
    model.zero_grad(set_to_none=True)
    return delta.detach() + x


def _reference_train_step(method: str, model, opt, x, y, cfg: BenchConfig):
    if method == "at":
        x = reference_pgd_linf(model, x, y, cfg.eps, cfg.eps / 4, cfg.attack_steps)
    out = model(x)
    loss = F.cross_entropy(out, y)
    if method == "sam":
        loss.backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    else:
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item(), (out.argmax(1) == y).sum().item()      # host sync per step, as in reference code


def _reference_eval_step(model, x, y, cfg: BenchConfig):
    x_adv = reference_pgd_linf(model, x, y, cfg.eps, cfg.eps / 4, cfg.attack_steps)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).sum().item()


def reference_model(cfg: BenchConfig, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    mean, std = normalization_for(cfg.dataset)
    return PreActResNet18(num_classes=dataset_info(cfg.dataset).num_classes, width=cfg.width, mean=mean,
                          std=std).to(device)


def measure_reference(cfg: BenchConfig, phase: str, data: ImageData, device: torch.device) -> Dict:
    """Reference-style loop: per-image CPU augmentation in DataLoader workers, fp32, .item() per step."""
    images = data.x.permute(0, 2, 3, 1).contiguous().numpy()
    info = dataset_info(cfg.dataset)
    ds = ReferenceStyleDataset(images, data.y.numpy(), augment=(phase != "eval"), pad=info.crop_pad,
                               flip=info.flip, channels=info.channels)
    B = cfg.batch_size
    loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=(phase != "eval"), drop_last=True,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    model = reference_model(cfg, device)
    if phase == "eval":
        model.eval()
        step = lambda x, y: _reference_eval_step(model, x, y, cfg)      # noqa: E731
    else:
        model.train()
        kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
        opt = SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **kw) if phase == "sam" \
            else torch.optim.SGD(model.parameters(), **kw)
        step = lambda x, y: _reference_train_step(phase, model, opt, x, y, cfg)  # noqa: E731
    it = iter(loader)
    x, y = next(it)                                         # one real step, untimed: the FLOP count
    flops, ops = count_flops_and_ops(lambda: step(x.to(device), y.to(device)))
    for i in range(cfg.warmup + cfg.steps):
        if i == cfg.warmup:
            sync(device)
            reset_peak(device)
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        step(x, y)
    sync(device)
    seconds = time.perf_counter() - t0
    del it
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "ops_per_step": ops, "batch": B,
            "peak_mem_bytes": peak_bytes(device),
            "flags": {"bf16": False, "channels_last": False, "augment": phase != "eval",
                      "data": f"DataLoader, per-image CPU augmentation, {cfg.workers} workers",
                      "metrics": ".item() per step"}}
