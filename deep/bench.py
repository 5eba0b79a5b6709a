"""``python -m deep.bench``: training and evaluation throughput of our loop vs a reference-style loop.

Measured side by side in one process on one device (PreActResNet-18, same width, batch and data):

* **ours**: :func:`deep.train.train_epoch` exactly as ``deep.run`` trains - data resident on the device
  as uint8, batched tensor augmentation (reflect-pad-4 random crop + flip), channels_last and bf16
  autocast on CUDA, metrics accumulated on the device (no ``.item()`` per step), SAM from samrobust/sam.py,
  PGD from samrobust/attacks.py.  PGD-10 evaluation is :func:`deep.evaluate.evaluate` with the flags
  ``deep.run`` uses (fp32 attack, channels_last on CUDA).
* **reference**: the structure of common public CIFAR training code - a ``torch.utils.data.Dataset`` that
  augments one image at a time on the CPU (numpy reflect pad, random crop, random flip), a ``DataLoader``
  with worker processes, a host-to-device copy per batch, fp32 NCHW, plain SGD, ``loss.item()`` per step,
  and PGD written the usual way (``loss.backward()`` on the perturbation, which also computes the
  unused parameter gradients at each attack step).

Per phase (train ST, train SAM, train AT with PGD-10, PGD-10 evaluation): images/s, peak memory
(``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's ``ru_maxrss`` high-water mark, which
only grows during a run), and the FLOPs of one real step counted with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, 2 per multiply-add), from
which on CUDA the achieved TFLOP/s and the fraction of the device's dense bf16 peak follow.  Ratios:
ours / reference images/s per phase, and the cost of SAM and AT relative to ST within each loop.

Results: ``results/bench/deep_bench.json`` and ``.md`` next to it (atomic writes).  The package's performance
targets (``TARGETS``; stated for one H100 and judged only on CUDA): ours ST >= 3x reference, SAM cost <= 2.1x
our ST, AT-PGD10 cost <= 11x our ST.

**CPU** (``CPU_TARGETS``, judged on CPU): ours ST and SAM >= 2x the reference loop (3x the stretch goal), SAM
cost <= 2.1x our ST.  On CPU the benchmark uses the Fashion-MNIST shape (1x28x28, ``--dataset``; random images
of that shape, the data set's augmentation in both loops) and width 16 by default, and as many torch threads
as the process may use cores (``os.sched_getaffinity``).  Ours is the CPU fast path of ``deep.run --profile
cpu``: bf16 autocast (training and AT's PGD inner loop) + channels_last where the CPU computes bf16 natively
(AVX512-BF16 / AMX-BF16), fp32 evaluation.  GFLOP/s are compared with an *assumed* peak of the cores used
(:func:`cpu_peak_gflops`: clock from /proc/cpuinfo x FLOP/cycle of the widest vector unit, stated in the
output).  ``--compile`` measures our training loop compiled as well and reports, per phase, whether the
compiled loop is faster in steady state (then it counts as ours) and after how many images the compile time
is paid back.  ``--accuracy-check`` trains short fp32 and bf16 runs with the same seeds (deep.train.fit,
deep.evaluate.evaluate) and reports clean and PGD accuracy side by side: the speed must not cost accuracy.

Examples::

    python -m deep.bench                                  # GPU: batch 128, width 64, 50 timed steps
    python -m deep.bench --device cpu --steps 2 --width 8 # CPU smoke run (CI)
    python -m deep.bench --device cpu --compile --accuracy-check   # CPU fast path, compile, fp32 vs bf16
    python -m deep.bench --peak-tflops 756                # override the bf16 peak (e.g. H100 PCIe)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from samrobust.files import write_json_atomic, write_text_atomic
from samrobust.sam import SAM, frozen_bn_stats

from .data import ImageData
from .datasets import dataset_info
from samrobust.cli import DefaultsHelpFormatter, add_common
from .evaluate import evaluate, parse_attack, parse_eps
from .model import PreActResNet18, normalization_for
from .train import (TrainConfig, _flags, build_model, build_optimizer, compile_for, cpu_has_native_bf16, fit,
                    resolve_device, setup_device, train_epoch)

__all__ = ["BenchConfig", "DENSE_BF16_PEAK_TFLOPS", "peak_tflops_for", "ReferenceStyleDataset",
           "reference_pgd_linf", "count_flops", "model_flops_per_image", "run_bench", "format_table",
           "cpu_peak_gflops", "read_cpuinfo", "default_threads", "compute_ratios", "compile_summary",
           "judge_targets", "AccuracyCheckConfig", "accuracy_check", "format_accuracy", "main"]

PHASES = ("st", "sam", "at", "eval")
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000   # images per CIFAR epoch / test pass, for the time estimate
DEFAULT_OUT = "runs/bench/deep_bench.json"   # the shipped numbers: --out results/bench/deep_bench.json

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.  Matched in order
# against torch.cuda.get_device_name(); the first substring that occurs wins (more specific first).
DENSE_BF16_PEAK_TFLOPS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),          # SXM5
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

TARGETS = {"st_ours_vs_ref": (">=", 3.0), "sam_cost_vs_st": ("<=", 2.1), "at_cost_vs_st": ("<=", 11.0)}
# CPU targets (judged on CPU): ours vs the reference loop for ST and SAM, SAM cost; 3x is the stretch goal
CPU_TARGETS = {"st_ours_vs_ref": (">=", 2.0), "sam_ours_vs_ref": (">=", 2.0), "sam_cost_vs_st": ("<=", 2.1)}
CPU_STRETCH = {"st_ours_vs_ref": 3.0, "sam_ours_vs_ref": 3.0}

# Images per training epoch / test pass of each data set whose shape the benchmark can use
EPOCH_IMAGES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "fashion-mnist": (60_000, 10_000),
                "digits": (1_297, 500)}
BENCH_DATASETS = tuple(EPOCH_IMAGES)

# FLOPs per cycle and core (2 per fused multiply-add) assumed for the CPU peak, widest unit first:
# fp32: 2 FMA units x 16 lanes (AVX-512) / 8 lanes (AVX2+FMA); bf16: AMX-BF16 TMUL 1,024 (Intel: 1,024 bf16
# ops/cycle/core), AVX512-BF16 VDPBF16PS 2 units x 32 bf16 products x 2 = 128 (twice fp32).
CPU_FP32_FLOPS_PER_CYCLE = (("avx512f", 2 * 16 * 2, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"),
                            ("fma", 2 * 8 * 2, "AVX2: 2 FMA units x 8 fp32 lanes x 2"))
CPU_BF16_FLOPS_PER_CYCLE = (("amx_bf16", 1024, "AMX-BF16: 1,024 bf16 FLOP/cycle (TMUL)"),
                            ("avx512_bf16", 2 * 32 * 2, "AVX512-BF16: 2 units x 32 bf16 products x 2"))


def peak_tflops_for(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a GPU by name (see DENSE_BF16_PEAK_TFLOPS), None when unknown."""
    for key, tflops in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    """The text of /proc/cpuinfo ("" where there is none)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo: str, key: str) -> Optional[str]:
    for line in cpuinfo.splitlines():
        name, sep, val = line.partition(":")
        if sep and name.strip() == key:
            return val.strip()
    return None


def cpu_peak_gflops(cpuinfo: str, cores: int, clock_mhz: Optional[float] = None) -> Dict:
    """Assumed peak GFLOP/s of ``cores`` cores: cores x clock x FLOP/cycle of the widest unit in the flags.

    Clock: ``clock_mhz`` or the first "cpu MHz" of ``cpuinfo`` (the nominal clock in a VM; turbo and the
    lower AVX-512/AMX frequency licences are not modelled).  FLOP/cycle: CPU_FP32_FLOPS_PER_CYCLE and
    CPU_BF16_FLOPS_PER_CYCLE (bf16: None without native bf16).  An assumption stated in the output, not a
    measurement; the fp32 and bf16 peaks are None when the clock or the vector unit is unknown."""
    flags = set((_cpuinfo_field(cpuinfo, "flags") or "").split())
    if clock_mhz is None:
        try:
            clock_mhz = float(_cpuinfo_field(cpuinfo, "cpu MHz"))
        except (TypeError, ValueError):
            clock_mhz = None
    out: Dict = {"cores": int(cores), "clock_mhz": clock_mhz, "model": _cpuinfo_field(cpuinfo, "model name")}
    parts = []
    for kind, table in (("fp32", CPU_FP32_FLOPS_PER_CYCLE), ("bf16", CPU_BF16_FLOPS_PER_CYCLE)):
        unit = next(((f, n, why) for f, n, why in table if f in flags), None)
        out[f"{kind}_flops_per_cycle"] = unit[1] if unit else None
        out[f"{kind}_gflops"] = cores * clock_mhz * 1e-3 * unit[1] if unit and clock_mhz else None
        parts.append(f"{kind} {out[f'{kind}_gflops']:.0f} GFLOP/s = {cores} cores x {clock_mhz:.0f} MHz x "
                     f"{unit[2]}" if out[f"{kind}_gflops"] else f"{kind}: unknown")
    out["assumption"] = "assumed CPU peak (nominal clock from /proc/cpuinfo, no turbo): " + "; ".join(parts)
    return out


def default_threads() -> int:
    """Torch threads for the benchmark: the number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class BenchConfig:
    """What to measure; None fields take the device's default (GPU / CPU)."""
    device: str = "auto"
    dataset: Optional[str] = None        # image shape, normalisation, augmentation: cifar10 GPU, fashion-mnist CPU
    batch_size: Optional[int] = None     # 128
    steps: Optional[int] = None          # timed steps per phase: 50 on GPU, 3 on CPU
    warmup: Optional[int] = None         # untimed steps first: 5 on GPU, 1 on CPU
    width: Optional[int] = None          # PreActResNet-18 width: 64 on GPU, 16 on CPU
    workers: int = 2                     # DataLoader workers of the reference loop
    repeats: int = 1                     # measure each phase this often (interleaved), report the median
    phases: tuple = PHASES
    loops: tuple = ("ours", "reference")
    rho: float = 0.1
    eps: float = 8.0 / 255.0
    attack_steps: int = 10
    bf16: Optional[bool] = None          # ours: None = on for CUDA, on CPU where bf16 is native
    channels_last: Optional[bool] = None  # ours: None = as bf16
    peak_tflops: Optional[float] = None  # override the dense bf16 peak
    threads: Optional[int] = None        # torch CPU threads (None: the cores this process may use)
    compile: bool = False                # ours: also measure torch.compile'd training (falls back when failing)
    clock_mhz: Optional[float] = None    # CPU clock of the assumed peak (None: /proc/cpuinfo "cpu MHz")
    seed: int = 0

    def __post_init__(self):
        for name, lo in (("batch_size", 1), ("steps", 1), ("warmup", 0), ("width", 1), ("workers", 0),
                         ("repeats", 1), ("attack_steps", 0), ("threads", 1)):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < lo):
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not self.rho >= 0:
            raise ValueError(f"rho must be >= 0, got {self.rho!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"peak_tflops must be > 0, got {self.peak_tflops!r}")
        if self.clock_mhz is not None and not self.clock_mhz > 0:
            raise ValueError(f"clock_mhz must be > 0, got {self.clock_mhz!r}")
        if self.dataset is not None and self.dataset not in BENCH_DATASETS:
            raise ValueError(f"dataset must be one of {BENCH_DATASETS}, got {self.dataset!r}")
        self.phases = tuple(self.phases)
        self.loops = tuple(self.loops)
        bad = [p for p in self.phases if p not in PHASES]
        if bad or not self.phases:
            raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {self.phases!r}")
        bad = [l for l in self.loops if l not in ("ours", "reference")]
        if bad or not self.loops:
            raise ValueError(f"loops must be a non-empty subset of ('ours', 'reference'), got {self.loops!r}")

    def resolved(self, device: torch.device) -> "BenchConfig":
        """Every None field set for ``device``: sizes, data set, threads, and ours' fast-path flags (CPU:
        bf16 + channels_last where the CPU computes bf16 natively)."""
        gpu = device.type == "cuda"
        d = asdict(self)
        for name, on_gpu, on_cpu in (("batch_size", 128, 128), ("steps", 50, 3), ("warmup", 5, 1),
                                     ("width", 64, 16), ("dataset", "cifar10", "fashion-mnist"),
                                     ("threads", default_threads(), default_threads())):
            if d[name] is None:
                d[name] = on_gpu if gpu else on_cpu
        if d["bf16"] is None:
            d["bf16"] = gpu or cpu_has_native_bf16()
        if d["channels_last"] is None:
            d["channels_last"] = gpu or bool(d["bf16"] and cpu_has_native_bf16())
        return BenchConfig(**d)


# ------------------------------------------------------------------------------- reference loop

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


# ----------------------------------------------------------------------------------- measuring

def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the torch operations ``fn`` runs (FlopCounterMode: conv / matmul, 2 per multiply-add)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def model_flops_per_image(model: torch.nn.Module, image_shape=(3, 32, 32), batch: int = 2) -> Dict[str, float]:
    """Counted forward and forward+backward FLOPs of ``model`` per image (train mode, fp32)."""
    device = next(model.parameters()).device
    x = torch.rand((batch,) + tuple(image_shape), device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    fwd = count_flops(lambda: model(x))
    fwd_bwd = count_flops(lambda: F.cross_entropy(model(x), y).backward())
    model.zero_grad(set_to_none=True)
    return {"forward": fwd / batch, "forward_backward": fwd_bwd / batch}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _image_shape(dataset: str) -> tuple:
    info = dataset_info(dataset)
    return (info.channels, info.image_size, info.image_size)


def _make_data(cfg: BenchConfig, n: int) -> ImageData:
    """``n`` random uint8 images of the data set's shape, random labels."""
    info = dataset_info(cfg.dataset)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (n,) + _image_shape(cfg.dataset), generator=g, dtype=torch.uint8)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    return ImageData(x, y, info.num_classes)


def _train_cfg(cfg: BenchConfig, method: str, device: torch.device) -> TrainConfig:
    return TrainConfig(dataset=cfg.dataset, method=method, rho=cfg.rho, eps=cfg.eps, norm="inf",
                       attack_steps=cfg.attack_steps, epochs=1, batch_size=cfg.batch_size, width=cfg.width,
                       seed=cfg.seed, augment=True, bf16=cfg.bf16, channels_last=cfg.channels_last,
                       device=str(device), check_every=10 ** 9)


def _ours_train(cfg: BenchConfig, method: str, data: ImageData, device: torch.device,
                compile_model: bool = False) -> Dict:
    """Time train_epoch on ``steps`` full batches after ``warmup`` batches (at least 2 when compiling: the
    compile happens there, and is timed as ``warmup_s``); FLOPs of one real step."""
    tc = _train_cfg(cfg, method, device)
    bf16, channels_last, augment = _flags(tc, device)
    setup_device(device)
    model = build_model(tc, device)
    opt = build_optimizer(tc, model)
    B = cfg.batch_size
    kw = dict(bf16=bf16, channels_last=channels_last, augment=augment)
    net = model

    def run(lo, hi, epoch):
        return train_epoch(net, opt, data, tc, epoch, indices=torch.arange(lo * B, hi * B), **kw)

    flops = count_flops(lambda: run(0, 1, 0))               # one real step, untimed, uncompiled
    warmup = max(cfg.warmup, 2) if compile_model else cfg.warmup
    t_w = time.perf_counter()
    compiled = False
    if compile_model:
        net = compile_for(model, data, bf16, channels_last)
        compiled = net is not model
    if warmup:
        int(run(1, 1 + warmup, 0)["count"])
    _sync(device)
    warmup_s = time.perf_counter() - t_w
    _reset_peak(device)
    t0 = time.perf_counter()
    m = run(1 + warmup, 1 + warmup + cfg.steps, 0)
    int(m["count"])                                         # the loop's own end-of-epoch sync
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "batch": B,
            "peak_mem_bytes": _peak_bytes(device), "warmup_s": warmup_s, "warmup_images": warmup * B,
            "flags": {"bf16": bf16, "channels_last": channels_last, "augment": augment, "compiled": compiled,
                      "data": "device-resident uint8", "metrics": "on device"}}


def _ours_eval(cfg: BenchConfig, data: ImageData, device: torch.device) -> Dict:
    tc = _train_cfg(cfg, "st", device)
    _, channels_last, _ = _flags(tc, device)
    model = build_model(tc, device)
    attack = (parse_attack(f"linf:{cfg.eps!r}"),)
    B = cfg.batch_size

    def run(lo, hi):
        sub = ImageData(data.x[lo * B:hi * B], data.y[lo * B:hi * B], data.num_classes)
        return evaluate(model, sub, attack, steps=cfg.attack_steps, batch_size=B, seed=cfg.seed,
                        bf16=False, channels_last=channels_last, sharded=False, fixed_work=True)

    flops = count_flops(lambda: run(0, 1))
    if cfg.warmup:
        run(1, 1 + cfg.warmup)
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    run(1 + cfg.warmup, 1 + cfg.warmup + cfg.steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "batch": B,
            "peak_mem_bytes": _peak_bytes(device),
            "flags": {"bf16": False, "channels_last": channels_last, "attack": attack[0].label,
                      "note": "as deep.run evaluates: fp32 attack"}}


def _reference_model(cfg: BenchConfig, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    mean, std = normalization_for(cfg.dataset)
    return PreActResNet18(num_classes=dataset_info(cfg.dataset).num_classes, width=cfg.width, mean=mean,
                          std=std).to(device)


def _reference(cfg: BenchConfig, phase: str, data: ImageData, device: torch.device) -> Dict:
    """Reference-style loop: per-image CPU augmentation in DataLoader workers, fp32, .item() per step."""
    images = data.x.permute(0, 2, 3, 1).contiguous().numpy()
    info = dataset_info(cfg.dataset)
    ds = ReferenceStyleDataset(images, data.y.numpy(), augment=(phase != "eval"), pad=info.crop_pad,
                               flip=info.flip, channels=info.channels)
    B = cfg.batch_size
    loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=(phase != "eval"), drop_last=True,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    model = _reference_model(cfg, device)
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
    flops = count_flops(lambda: step(x.to(device), y.to(device)))
    for i in range(cfg.warmup + cfg.steps):
        if i == cfg.warmup:
            _sync(device)
            _reset_peak(device)
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        step(x, y)
    _sync(device)
    seconds = time.perf_counter() - t0
    del it
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "batch": B,
            "peak_mem_bytes": _peak_bytes(device),
            "flags": {"bf16": False, "channels_last": False, "augment": phase != "eval",
                      "data": f"DataLoader, per-image CPU augmentation, {cfg.workers} workers",
                      "metrics": ".item() per step"}}


COMPILED = "ours-compiled"           # loop name of our training loop under torch.compile (--compile)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo_field(read_cpuinfo(), "model name") or platform.processor() or platform.machine() or "cpu"


def _setup(cfg: BenchConfig):
    """(device, resolved config); sets the torch threads and the seed."""
    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return device, cfg


def _jobs(cfg: BenchConfig, data_cpu: ImageData, data_dev: ImageData, device: torch.device) -> Dict:
    """(phase, loop) -> a function measuring it; with --compile also (training phase, COMPILED)."""
    jobs: Dict = {}
    for phase in cfg.phases:
        for loop in cfg.loops:
            if loop == "reference":
                jobs[(phase, loop)] = lambda p=phase: _reference(cfg, p, data_cpu, device)
            elif phase == "eval":
                jobs[(phase, loop)] = lambda: _ours_eval(cfg, data_dev, device)
            else:
                jobs[(phase, loop)] = lambda p=phase: _ours_train(cfg, p, data_dev, device)
                if cfg.compile:
                    jobs[(phase, COMPILED)] = lambda p=phase: _ours_train(cfg, p, data_dev, device, True)
    return jobs


def _measure(cfg: BenchConfig, jobs: Dict, progress: Optional[Callable[[str], None]]) -> Dict:
    """Every job ``cfg.repeats`` times, interleaved: ours and reference see the same machine state."""
    runs: Dict = {key: [] for key in jobs}
    for rep in range(cfg.repeats):
        for key, fn in jobs.items():
            if progress:
                progress(f"{key[1]} {key[0]}" + (f" (repeat {rep + 1}/{cfg.repeats})" if cfg.repeats > 1 else ""))
            runs[key].append(fn())
    return runs


def _row(phase: str, loop: str, rs: List[Dict], cfg: BenchConfig, peak: Optional[float],
         cpu_peak: Optional[Dict]) -> Dict:
    """One table row from the repeats of (phase, loop): the median run by images/s."""
    rs = sorted(rs, key=lambda r: r["images"] / r["seconds"])
    r = rs[len(rs) // 2]                # median (upper median for an even count)
    ips = r["images"] / r["seconds"]
    tflops = r["flops_per_step"] * (r["images"] / r["batch"]) / r["seconds"] / 1e12
    n_train, n_test = EPOCH_IMAGES[cfg.dataset]
    row = {"loop": loop, "phase": phase, "images_per_s": ips, "seconds": r["seconds"],
           "images": r["images"], "images_per_s_all": [x["images"] / x["seconds"] for x in rs],
           "flops_per_image": r["flops_per_step"] / r["batch"], "tflops": tflops, "gflops": tflops * 1e3,
           "fraction_of_peak": tflops / peak if peak else None,
           "peak_mem_bytes": max(x["peak_mem_bytes"] for x in rs), "flags": r["flags"],
           "cifar_epoch_s": (CIFAR_TEST if phase == "eval" else CIFAR_TRAIN) / ips,
           "epoch_s": (n_test if phase == "eval" else n_train) / ips}
    if cpu_peak is not None:
        kind = "bf16" if r["flags"].get("bf16") else "fp32"
        pk = cpu_peak.get(f"{kind}_gflops")
        row.update(cpu_peak_kind=kind, cpu_peak_gflops=pk, fraction_of_cpu_peak=tflops * 1e3 / pk if pk else None)
    if "warmup_s" in r:     # the longest warm-up: the first compile (later repeats reuse dynamo's cache)
        row.update(warmup_s=max(x["warmup_s"] for x in rs), warmup_images=r["warmup_images"])
    return row


def _gpu_peak(cfg: BenchConfig, device: torch.device, name: str):
    """(dense bf16 peak TFLOP/s, where it came from) of a GPU; (None, None) on CPU without --peak-tflops."""
    if cfg.peak_tflops is not None:
        return cfg.peak_tflops, "--peak-tflops"
    peak = peak_tflops_for(name) if device.type == "cuda" else None
    return peak, ("table DENSE_BF16_PEAK_TFLOPS" if peak is not None else None)


def _meta(cfg: BenchConfig, device: torch.device, name: str, peak, peak_source, mf: Dict,
          cpu_peak: Optional[Dict]) -> Dict:
    gpu = device.type == "cuda"
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "python": sys.version.split()[0], "cpu_threads": torch.get_num_threads(),
            "cores_allowed": default_threads(), "config": asdict(cfg), "dataset": cfg.dataset,
            "image_shape": list(_image_shape(cfg.dataset)), "epoch_images": list(EPOCH_IMAGES[cfg.dataset]),
            "cpu_native_bf16": None if gpu else cpu_has_native_bf16(),
            "peak_bf16_tflops": peak, "peak_source": peak_source, "cpu_peak": cpu_peak,
            "model_flops_per_image": mf,
            "cuda_settings": {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                              "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32} if gpu else None,
            "memory_kind": "torch.cuda.max_memory_allocated per phase" if gpu else
            "process ru_maxrss high-water mark (cumulative over the run, DataLoader workers not included)",
            "targets_note": "the package's GPU targets are stated for one H100 and judged only on CUDA (on other "
                            "GPUs indicative); its CPU targets are judged on CPU"}


def run_bench(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Measure every (loop, phase); returns the JSON-ready result (see the module docstring)."""
    device, cfg = _setup(cfg)
    warmup = max(cfg.warmup, 2) if cfg.compile else cfg.warmup
    data_cpu = _make_data(cfg, cfg.batch_size * (1 + warmup + cfg.steps))   # FLOP-count step + warm-up + timed
    data_dev = data_cpu.to(device)
    name = _device_name(device)
    peak, peak_source = _gpu_peak(cfg, device, name)
    cpu_peak = None if device.type == "cuda" else \
        cpu_peak_gflops(read_cpuinfo(), min(cfg.threads, default_threads()), cfg.clock_mhz)
    mf = model_flops_per_image(_reference_model(cfg, device), _image_shape(cfg.dataset))
    runs = _measure(cfg, _jobs(cfg, data_cpu, data_dev, device), progress)
    rows = [_row(phase, loop, rs, cfg, peak, cpu_peak) for (phase, loop), rs in runs.items()]
    ratios = compute_ratios(rows)
    return {"meta": _meta(cfg, device, name, peak, peak_source, mf, cpu_peak), "rows": rows, "ratios": ratios,
            "targets": judge_targets(ratios, device.type),
            "compile": compile_summary(rows, EPOCH_IMAGES[cfg.dataset][0]) if cfg.compile else None}


def _find(rows, loop, phase) -> Optional[Dict]:
    return next((r for r in rows if r["loop"] == loop and r["phase"] == phase), None)


def _ips(rows, loop, phase) -> Optional[float]:
    r = _find(rows, loop, phase)
    return r["images_per_s"] if r else None


def _ours_ips(rows, phase) -> Optional[float]:
    """Our images/s in ``phase``: the faster of eager and torch.compile'd (where that was measured)."""
    vals = [v for v in (_ips(rows, "ours", phase), _ips(rows, COMPILED, phase)) if v]
    return max(vals) if vals else None


def compute_ratios(rows: Sequence[Dict]) -> Dict[str, Optional[float]]:
    """ours/reference images/s per phase; cost of SAM and AT relative to ST (= ST img/s / X img/s).
    Ours is the faster of our eager and compiled loop where both were measured (--compile)."""
    out: Dict[str, Optional[float]] = {}
    for phase in PHASES:
        a, b = _ours_ips(rows, phase), _ips(rows, "reference", phase)
        out[f"{phase}_ours_vs_ref"] = a / b if a and b else None
    for prefix, get in (("", _ours_ips), ("ref_", lambda rs, p: _ips(rs, "reference", p))):
        st = get(rows, "st")
        for phase in ("sam", "at"):
            x = get(rows, phase)
            out[f"{prefix}{phase}_cost_vs_st"] = st / x if st and x else None
    return out


def compile_summary(rows: Sequence[Dict], epoch_images: int) -> Dict[str, Dict]:
    """Per training phase with both loops measured: compiled/eager speed, whether the compiled loop is used
    (it compiled and is faster in steady state), the compile time (warm-up time beyond the eager rate) and
    the images (and epochs of ``epoch_images``) after which it is paid back."""
    out = {}
    for phase in ("st", "sam", "at"):
        e, c = _find(rows, "ours", phase), _find(rows, COMPILED, phase)
        if e is None or c is None:
            continue
        speedup = c["images_per_s"] / e["images_per_s"]
        used = bool(c["flags"].get("compiled")) and speedup > 1
        compile_s = max(0.0, c["warmup_s"] - c["warmup_images"] / e["images_per_s"])
        gain = 1 / e["images_per_s"] - 1 / c["images_per_s"]             # seconds saved per image
        even = compile_s / gain if used and gain > 0 else None
        out[phase] = {"speedup": speedup, "compiled": bool(c["flags"].get("compiled")), "used": used,
                      "compile_s": compile_s, "break_even_images": even,
                      "break_even_epochs": even / epoch_images if even is not None else None}
    return out


def judge_targets(ratios: Dict, device_type: str) -> Dict[str, Dict]:
    """The package's targets for the device (TARGETS on CUDA, CPU_TARGETS on CPU), judged."""
    table = TARGETS if device_type == "cuda" else CPU_TARGETS
    out = {}
    for key, (op, val) in table.items():
        got = ratios.get(key)
        ok = (lambda v: got >= v if op == ">=" else got <= v) if got is not None else (lambda v: None)
        out[key] = {"target": f"{op} {val}", "measured": got, "met": ok(val)}
        if device_type != "cuda" and key in CPU_STRETCH:
            out[key].update(stretch=f"{op} {CPU_STRETCH[key]}", stretch_met=ok(CPU_STRETCH[key]))
    return out


def _fmt(v, spec=".2f", none="-") -> str:
    return none if v is None else format(v, spec)


def _header(meta: Dict) -> str:
    c = meta["config"]
    title = dataset_info(meta["dataset"]).title
    n_train, n_test = meta["epoch_images"]
    ours = ("bf16 autocast" if c["bf16"] else "fp32") + (" + channels_last" if c["channels_last"] else "")
    text = (f"Device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
            f"{meta['cpu_threads']} torch threads ({meta['cores_allowed']} cores allowed), "
            f"{title} shape {'x'.join(map(str, meta['image_shape']))}, batch {c['batch_size']}, width {c['width']}, "
            f"{c['steps']} timed steps after {c['warmup']} warm-up; ours trains in {ours} (evaluation fp32); "
            f"torch.compile {'measured' if c['compile'] else 'not measured (--compile)'}; "
            f"model {meta['model_flops_per_image']['forward_backward'] / 1e9:.3f} GFLOP fwd+bwd per image "
            f"(counted). {title} epoch = {n_train:,} training images (eval: the {n_test:,} test images) at the "
            f"measured rate. Memory: {meta['memory_kind']}.")
    if meta.get("cpu_peak"):
        text += f" GFLOP/s vs the {meta['cpu_peak']['assumption']}."
    return text


_LOOP_LABEL = {"ours": "ours", "reference": "reference", COMPILED: "ours (compiled)"}


def _row_table(meta: Dict, rows: Sequence[Dict]) -> List[str]:
    gpu = meta["device"].startswith("cuda")
    cpu_peak = bool(meta.get("cpu_peak"))
    title = dataset_info(meta["dataset"]).title
    head = ["phase", "loop", "images/s", f"{title} epoch (s)", "GFLOP/image",
            "TFLOP/s" if gpu else "GFLOP/s"] + (["% bf16 peak"] if gpu else []) + \
        (["% assumed peak (kind)"] if cpu_peak else []) + ["peak memory (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    label = {"st": "train ST", "sam": "train SAM", "at": f"train AT PGD-{meta['config']['attack_steps']}",
             "eval": f"eval PGD-{meta['config']['attack_steps']}"}
    for r in rows:
        row = [label[r["phase"]], _LOOP_LABEL[r["loop"]], f"{r['images_per_s']:.1f}",
               f"{r.get('epoch_s', r['cifar_epoch_s']):.1f}", f"{r['flops_per_image'] / 1e9:.3f}",
               f"{r['tflops']:.3g}" if gpu else f"{r['tflops'] * 1e3:.3g}"]
        if gpu:
            row.append(_fmt(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"], ".1f"))
        if cpu_peak:
            f = r.get("fraction_of_cpu_peak")
            row.append(f"{_fmt(None if f is None else 100 * f, '.2f')} ({r.get('cpu_peak_kind')})")
        row.append(f"{r['peak_mem_bytes'] / 2 ** 20:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


RATIO_NAMES = [("st_ours_vs_ref", "ST: ours / reference images/s"),
               ("sam_ours_vs_ref", "SAM: ours / reference images/s"),
               ("at_ours_vs_ref", "AT: ours / reference images/s"),
               ("eval_ours_vs_ref", "PGD eval: ours / reference images/s"),
               ("sam_cost_vs_st", "SAM / ST cost, ours"), ("at_cost_vs_st", "AT / ST cost, ours"),
               ("ref_sam_cost_vs_st", "SAM / ST cost, reference"), ("ref_at_cost_vs_st", "AT / ST cost, reference")]


def _verdict(met) -> str:
    return "-" if met is None else ("met" if met else "not met")


def _ratio_table(result: Dict) -> List[str]:
    gpu = result["meta"]["device"].startswith("cuda")
    rt, tg = result["ratios"], result["targets"]
    lines = ["| ratio | value | the package's target " + ("(one H100) |" if gpu else "(CPU) |"), "|---|---|---|"]
    for key, text in RATIO_NAMES:
        t = tg.get(key)
        ts = "" if t is None else f"{t['target']} ({_verdict(t['met'])})"
        if t is not None and "stretch" in t:
            ts += f"; stretch {t['stretch']} ({_verdict(t['stretch_met'])})"
        lines.append(f"| {text} | {_fmt(rt.get(key))} | {ts} |")
    return lines


def _compile_lines(result: Dict) -> List[str]:
    comp = result.get("compile")
    if not comp:
        return []
    lines = ["", "torch.compile of our training loop (PGD inside AT and the evaluation stay eager): "
             "used in a phase where it compiled and is faster in steady state. Compile time: the longest "
             "warm-up beyond the eager rate (inductor's on-disk cache can shorten it).", "",
             "| phase | compiled / eager images/s | used | compile time (s) | pays back after (images, epochs) |",
             "|---|---|---|---|---|"]
    for phase, c in comp.items():
        even = "-" if c["break_even_images"] is None else \
            f"{c['break_even_images']:,.0f} ({c['break_even_epochs']:.2f})"
        used = "yes" if c["used"] else ("no" if c["compiled"] else "no (compile failed)")
        lines.append(f"| {phase} | {c['speedup']:.2f} | {used} | {c['compile_s']:.0f} | {even} |")
    return lines


def format_table(result: Dict) -> str:
    """Markdown: one row per (phase, loop), then the ratios and targets (and torch.compile, the accuracy
    check where measured)."""
    lines = [_header(result["meta"]), ""] + _row_table(result["meta"], result["rows"]) + [""] + \
        _ratio_table(result) + _compile_lines(result)
    if result.get("accuracy_check"):
        lines += ["", format_accuracy(result["accuracy_check"])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ accuracy check

@dataclass
class AccuracyCheckConfig:
    """Short fp32 and bf16 training runs with the same seeds (``--accuracy-check``); defaults: digits
    (scikit-learn, deep.run's digits protocol: width 8, batch 64, lr 0.05) for a few epochs."""
    dataset: str = "digits"              # digits | fashion-mnist
    methods: tuple = ("st", "sam")
    seeds: tuple = (0, 1)
    epochs: int = 5
    width: int = 8
    batch_size: int = 64
    lr: float = 0.05
    rho: float = 0.1
    eps: float = 0.05                    # l_inf radius of the PGD evaluation
    attack_steps: int = 10
    n_train: Optional[int] = None        # first n training / test images (None: all)
    n_test: Optional[int] = None
    data_dir: Optional[str] = None       # Fashion-MNIST idx files (None: the Debian package's)

    def __post_init__(self):
        if self.dataset not in ("digits", "fashion-mnist"):
            raise ValueError(f"accuracy-check dataset must be digits or fashion-mnist, got {self.dataset!r}")
        self.methods, self.seeds = tuple(self.methods), tuple(int(s) for s in self.seeds)
        if not self.methods or any(m not in ("st", "sam", "at") for m in self.methods) or not self.seeds:
            raise ValueError(f"accuracy-check methods must be a non-empty subset of st, sam, at and seeds "
                             f"non-empty, got {self.methods!r}, {self.seeds!r}")
        for name in ("epochs", "width", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"accuracy-check {name} must be >= 1, got {getattr(self, name)!r}")


def _accuracy_data(acfg: AccuracyCheckConfig, device: torch.device):
    from .datasets import load_digits_split, load_fashion_mnist
    train, test = load_digits_split() if acfg.dataset == "digits" else load_fashion_mnist(acfg.data_dir)
    return train.subset(acfg.n_train).to(device), test.subset(acfg.n_test).to(device)


def _accuracy_run(acfg: AccuracyCheckConfig, method: str, seed: int, precision: str, train: ImageData,
                  test: ImageData, device: torch.device) -> Dict:
    """deep.train.fit, then deep.evaluate.evaluate (fp32; clean and PGD) of one (method, seed, precision)."""
    fast = precision == "bf16"
    tc = TrainConfig(dataset=acfg.dataset, method=method, rho=acfg.rho, eps=acfg.eps, epochs=acfg.epochs,
                     batch_size=acfg.batch_size, width=acfg.width, lr=acfg.lr, seed=seed, bf16=fast,
                     channels_last=fast, device=str(device))
    bf16, channels_last, _ = _flags(tc, device)
    res = fit(tc, train, progress=False)
    attack = parse_attack(f"linf:{acfg.eps!r}")
    ev = evaluate(res.model, test, (attack,), steps=acfg.attack_steps, batch_size=500, seed=seed,
                  channels_last=channels_last, sharded=False)
    return {"method": method, "seed": seed, "precision": precision, "bf16_used": bf16,
            "channels_last": channels_last, "clean_acc": ev["clean_acc"], "robust_acc": ev["robust"][attack.label],
            "train_loss": res.history[-1]["train_loss"], "train_s": res.train_time_s}


def accuracy_check(acfg: AccuracyCheckConfig, device="cpu",
                   progress: Optional[Callable[[str], None]] = None) -> Dict:
    """fp32 vs bf16 (+ channels_last) training with the same seeds; clean and PGD accuracy of each run and,
    per method, the mean over seeds and the largest |bf16 - fp32| difference of a seed."""
    device = resolve_device(str(device))
    train, test = _accuracy_data(acfg, device)
    runs = []
    for method in acfg.methods:
        for seed in acfg.seeds:
            for precision in ("fp32", "bf16"):
                if progress:
                    progress(f"accuracy check {method} seed {seed} {precision}")
                runs.append(_accuracy_run(acfg, method, seed, precision, train, test, device))
    summary = {}
    for method in acfg.methods:
        by = {(r["seed"], r["precision"]): r for r in runs if r["method"] == method}
        s = {}
        for key in ("clean_acc", "robust_acc"):
            for prec in ("fp32", "bf16"):
                s[f"{key}_{prec}"] = float(np.mean([by[seed, prec][key] for seed in acfg.seeds]))
            fp32 = [by[seed, "fp32"][key] for seed in acfg.seeds]
            s[f"{key}_max_abs_diff"] = max(abs(by[seed, "bf16"][key] - a) for seed, a in zip(acfg.seeds, fp32))
            s[f"{key}_fp32_seed_spread"] = max(fp32) - min(fp32)
        summary[method] = s
    return {"config": asdict(acfg), "device": str(device), "n_train": len(train), "n_test": len(test),
            "attack": parse_attack(f"linf:{acfg.eps!r}").label, "runs": runs, "summary": summary,
            "bf16_native": all(r["bf16_used"] for r in runs if r["precision"] == "bf16")}


def format_accuracy(acc: Dict) -> str:
    """Markdown: clean and PGD accuracy, fp32 vs bf16 side by side, per run and mean per method."""
    c = acc["config"]
    title = dataset_info(c["dataset"]).title
    lines = [f"Accuracy check: fp32 vs bf16 autocast + channels_last training (same seeds), {title} "
             f"({acc['n_train']} train / {acc['n_test']} test images), width {c['width']}, {c['epochs']} epochs, "
             f"batch {c['batch_size']}, lr {c['lr']}, SAM rho {c['rho']}; evaluation fp32, PGD-{c['attack_steps']} "
             f"{acc['attack']}." + ("" if acc["bf16_native"] else
                                    " This CPU has no native bf16: the bf16 runs fell back to fp32."), "",
             "| method | seed | clean fp32 | clean bf16 | PGD fp32 | PGD bf16 |", "|---|---|---|---|---|---|"]
    by = {(r["method"], r["seed"], r["precision"]): r for r in acc["runs"]}
    for method in c["methods"]:
        for seed in c["seeds"]:
            a, b = by[method, seed, "fp32"], by[method, seed, "bf16"]
            lines.append(f"| {method.upper()} | {seed} | {a['clean_acc']:.3f} | {b['clean_acc']:.3f} | "
                         f"{a['robust_acc']:.3f} | {b['robust_acc']:.3f} |")
        s = acc["summary"][method]
        lines.append(f"| {method.upper()} | mean | {s['clean_acc_fp32']:.3f} | {s['clean_acc_bf16']:.3f} | "
                     f"{s['robust_acc_fp32']:.3f} | {s['robust_acc_bf16']:.3f} |")
    worst = max(max(s["clean_acc_max_abs_diff"], s["robust_acc_max_abs_diff"]) for s in acc["summary"].values())
    spread = max(max(s["clean_acc_fp32_seed_spread"], s["robust_acc_fp32_seed_spread"])
                 for s in acc["summary"].values())
    lines += ["", f"Largest |bf16 - fp32| accuracy difference of one seed: {worst:.3f} (for scale, the largest "
                  f"spread between seeds in fp32: {spread:.3f})."]
    return "\n".join(lines)


def write_results(result: Dict, out: Path) -> Path:
    """JSON at ``out`` and markdown at ``out`` with suffix .md, each written atomically."""
    write_json_atomic(out, result)
    return write_text_atomic(out.with_suffix(".md"), "# deep/ training throughput: ours vs reference-style loop\n\n"
                             + format_table(result) + "\n")


def _add_accuracy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy check (fp32 vs bf16 with the same seeds)")
    g.add_argument("--accuracy-check", action="store_true",
                   help="after the throughput phases, train short fp32 and bf16 runs with the same seeds and "
                        "report clean and PGD accuracy side by side [default: off]")
    g.add_argument("--accuracy-dataset", choices=("digits", "fashion-mnist"), default="digits",
                   help="data set of the accuracy check")
    g.add_argument("--accuracy-methods", default="st,sam", help="comma list of st, sam, at")
    g.add_argument("--accuracy-seeds", default="0,1", help="comma list of seeds")
    g.add_argument("--accuracy-epochs", type=int, default=5, help="epochs per run")
    g.add_argument("--accuracy-width", type=int, default=8, help="PreActResNet-18 width")
    g.add_argument("--accuracy-eps", default="0.05",
                   help="l_inf radius of the PGD evaluation (and of AT)")
    g.add_argument("--accuracy-n-train", type=int, default=None,
                   help="first n training images [default: all; digits has 1,297]")
    g.add_argument("--accuracy-n-test", type=int, default=None, help="first n test images [default: all]")
    g.add_argument("--data-dir", default=None,
                   help="folder of the Fashion-MNIST idx files [default: the Debian package's]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deep.bench", formatter_class=DefaultsHelpFormatter,
        description="Side-by-side throughput of deep/'s training loop and a reference-style loop (per-image "
                    "CPU augmentation in a DataLoader, fp32): ST, SAM and AT (PGD) training steps and PGD "
                    "evaluation; images/s, counted FLOPs, TFLOP/s vs the bf16 peak (GPU), peak memory.")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--dataset", choices=BENCH_DATASETS, default=None,
                   help="image shape, normalisation and augmentation of the (random) benchmark images "
                        "[default: cifar10 (3x32x32) on GPU, fashion-mnist (1x28x28) on CPU]")
    p.add_argument("--batch-size", type=int, default=None, help="images per step [default: 128]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per phase [default: 50 GPU, 3 CPU]")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before timing, after one untimed step that counts the FLOPs "
                        "[default: 5 GPU, 1 CPU]")
    p.add_argument("--width", type=int, default=None,
                   help="PreActResNet-18 first-stage width [default: 64 GPU (the paper's model), 16 CPU]")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader worker processes of the reference loop")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every phase this often, ours and reference interleaved; the median is reported")
    p.add_argument("--phases", default=",".join(PHASES), help="comma list of st, sam, at, eval")
    p.add_argument("--loops", default="ours,reference", help="comma list of ours, reference")
    p.add_argument("--rho", type=float, default=0.1, help="SAM radius")
    p.add_argument("--eps", default="8/255",
                   help="l_inf radius of the PGD attack (AT and eval); fraction ok")
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps (AT and eval)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in our training loop [default: on for CUDA; on CPU where the CPU computes "
                        "bf16 natively (AVX512-BF16/AMX-BF16), else off]")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last in our loop [default: on for CUDA; on CPU together with native bf16]")
    p.add_argument("--compile", action="store_true",
                   help="also measure our training loop under torch.compile (compiled during at least 2 untimed "
                        "warm-up steps; falls back to uncompiled with a one-line warning when failing); per phase "
                        "the faster loop counts as ours and the output says which [default: off]")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device in TFLOP/s [default: from the built-in table by "
                        "device name, e.g. H100 SXM 989.4; none on CPU]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (intra-op) [default: the cores this process may use, "
                        "os.sched_getaffinity]; 1 is often fastest on a busy CPU")
    p.add_argument("--clock-mhz", type=float, default=None,
                   help="CPU clock of the assumed CPU peak [default: /proc/cpuinfo 'cpu MHz']")
    _add_accuracy_options(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random benchmark images and the models")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON output; the markdown table goes next to it (.md)")
    p.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true",
                   help="no progress lines (--quiet: the former name)")
    return add_common(p, (
        "python -m deep.bench                              # ours vs reference loop -> runs/bench/deep_bench.{json,md}",
        "python -m deep.bench --threads 1 --repeats 3 --accuracy-check",
        "python -m deep.bench --out results/bench/deep_bench.json   # regenerate the shipped numbers"))


def _csv(text: str) -> tuple:
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def _configs(parser: argparse.ArgumentParser, args) -> tuple:
    """(BenchConfig, AccuracyCheckConfig or None) from the options; errors exit 2 with the option's name."""
    try:
        cfg = BenchConfig(device=args.device, dataset=args.dataset, batch_size=args.batch_size, steps=args.steps,
                          warmup=args.warmup, width=args.width, workers=args.workers, repeats=args.repeats,
                          phases=_csv(args.phases), loops=_csv(args.loops), rho=args.rho, eps=parse_eps(args.eps),
                          attack_steps=args.attack_steps, bf16=args.bf16, channels_last=args.channels_last,
                          peak_tflops=args.peak_tflops, threads=args.threads, seed=args.seed, compile=args.compile,
                          clock_mhz=args.clock_mhz)
        acfg = AccuracyCheckConfig(
            dataset=args.accuracy_dataset, methods=_csv(args.accuracy_methods),
            seeds=tuple(int(v) for v in _csv(args.accuracy_seeds)), epochs=args.accuracy_epochs,
            width=args.accuracy_width, eps=parse_eps(args.accuracy_eps), n_train=args.accuracy_n_train,
            n_test=args.accuracy_n_test, data_dir=args.data_dir) if args.accuracy_check else None
        resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        msg = str(err)
        for field in ("batch_size", "attack_steps", "peak_tflops", "clock_mhz"):
            msg = msg.replace(field, "--" + field.replace("_", "-"))
        parser.error(msg)
    return cfg, acfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg, acfg = _configs(parser, args)
    say = None if args.quiet else (lambda s: print(f"deep.bench: measuring {s} ...", file=sys.stderr, flush=True))
    rc = cfg.resolved(resolve_device(cfg.device))
    print(f"deep.bench: {rc.threads} torch threads ({default_threads()} cores allowed), {rc.dataset} "
          f"{'x'.join(map(str, _image_shape(rc.dataset)))}, ours in {'bf16' if rc.bf16 else 'fp32'}"
          f"{' + channels_last' if rc.channels_last else ''}", file=sys.stderr, flush=True)
    result = run_bench(cfg, progress=say)
    if acfg is not None:
        result["accuracy_check"] = accuracy_check(acfg, result["meta"]["device"], progress=say)
    md = write_results(result, Path(args.out))
    print(format_table(result))
    print(f"\nwrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
