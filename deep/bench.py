"""``python -m deep.bench``: training and evaluation throughput of our loop vs a reference-style loop.

Measured side by side in one process on one device (PreActResNet-18, same width, batch and data):

* **ours**: :func:`deep.train.train_epoch` exactly as ``deep.run`` trains - data resident on the device
  as uint8, batched tensor augmentation (reflect-pad-4 random crop + flip), channels_last and bf16
  autocast on CUDA, metrics accumulated on the device (no ``.item()`` per step), SAM from deep/sam.py,
  PGD from deep/attacks.py.  PGD-10 evaluation is :func:`deep.evaluate.evaluate` with the flags
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

Examples::

    python -m deep.bench                                  # GPU: batch 128, width 64, 50 timed steps
    python -m deep.bench --device cpu --steps 2 --width 8 # CPU smoke run (CI)
    python -m deep.bench --peak-tflops 756                # override the bf16 peak (e.g. H100 PCIe)
"""
from __future__ import annotations

import argparse
import json
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

from .data import ImageData
from .files import write_text_atomic
from .evaluate import evaluate, parse_attack, parse_eps
from .model import PreActResNet18, normalization_for
from .sam import SAM, frozen_bn_stats
from .train import (TrainConfig, _flags, build_model, build_optimizer, compile_for, resolve_device,
                    setup_device, train_epoch)

__all__ = ["BenchConfig", "DENSE_BF16_PEAK_TFLOPS", "peak_tflops_for", "ReferenceStyleDataset",
           "reference_pgd_linf", "count_flops", "model_flops_per_image", "run_bench", "format_table",
           "main"]

PHASES = ("st", "sam", "at", "eval")
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000   # images per CIFAR epoch / test pass, for the time estimate
DEFAULT_OUT = "results/bench/deep_bench.json"

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


def peak_tflops_for(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a GPU by name (see DENSE_BF16_PEAK_TFLOPS), None when unknown."""
    for key, tflops in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


@dataclass
class BenchConfig:
    """What to measure; None fields take the device's default (GPU / CPU)."""
    device: str = "auto"
    batch_size: Optional[int] = None     # 128 on GPU, 32 on CPU
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
    bf16: Optional[bool] = None          # ours: None = on for CUDA
    channels_last: Optional[bool] = None  # ours: None = on for CUDA
    peak_tflops: Optional[float] = None  # override the dense bf16 peak
    threads: Optional[int] = None        # torch CPU threads (None: torch's default)
    compile: bool = False                # ours: torch.compile the model (falls back when failing)
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
        self.phases = tuple(self.phases)
        self.loops = tuple(self.loops)
        bad = [p for p in self.phases if p not in PHASES]
        if bad or not self.phases:
            raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {self.phases!r}")
        bad = [l for l in self.loops if l not in ("ours", "reference")]
        if bad or not self.loops:
            raise ValueError(f"loops must be a non-empty subset of ('ours', 'reference'), got {self.loops!r}")

    def resolved(self, device: torch.device) -> "BenchConfig":
        gpu = device.type == "cuda"
        d = asdict(self)
        for name, on_gpu, on_cpu in (("batch_size", 128, 32), ("steps", 50, 3), ("warmup", 5, 1),
                                     ("width", 64, 16)):
            if d[name] is None:
                d[name] = on_gpu if gpu else on_cpu
        return BenchConfig(**d)


# ------------------------------------------------------------------------------- reference loop

class ReferenceStyleDataset(torch.utils.data.Dataset):
    """One CIFAR-like image per ``__getitem__``, augmented on the CPU as public reference code does:
    uint8 HWC -> reflect pad 4 -> random 32x32 crop -> random horizontal flip -> float CHW in [0, 1]."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, augment: bool = True, pad: int = 4):
        if images_hwc.ndim != 4 or images_hwc.shape[-1] != 3:
            raise ValueError(f"images_hwc must have shape (N, H, W, 3), got {images_hwc.shape}")
        self.images, self.labels, self.augment, self.pad = images_hwc, labels, augment, pad

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
            x = self.transform(img, top, left, bool(torch.rand(()) < 0.5))
        else:
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return x, int(self.labels[i])


def reference_pgd_linf(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       steps: int) -> torch.Tensor:
    """l_inf PGD as commonly written in public adversarial-training code: a perturbation tensor with
    ``requires_grad``, ``loss.backward()`` (so parameter gradients are computed too and discarded),
    sign step, clip to the eps-box and to [0, 1].  Kept here only as the benchmark's baseline; the
    package's attack is deep.attacks.pgd."""
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


def _make_data(cfg: BenchConfig, n: int) -> ImageData:
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData(x, y, 10)


def _train_cfg(cfg: BenchConfig, method: str, device: torch.device) -> TrainConfig:
    return TrainConfig(dataset="cifar10", method=method, rho=cfg.rho, eps=cfg.eps, norm="inf",
                       attack_steps=cfg.attack_steps, epochs=1, batch_size=cfg.batch_size, width=cfg.width,
                       seed=cfg.seed, augment=True, bf16=cfg.bf16, channels_last=cfg.channels_last,
                       device=str(device), check_every=10 ** 9)


def _ours_train(cfg: BenchConfig, method: str, data: ImageData, device: torch.device) -> Dict:
    """Time train_epoch on ``steps`` full batches after ``warmup`` batches; FLOPs of one real step."""
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
    compiled = False
    if cfg.compile:
        net = compile_for(model, data, bf16, channels_last)
        compiled = net is not model
    if cfg.warmup:
        run(1, 1 + cfg.warmup, 0)
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    m = run(1 + cfg.warmup, 1 + cfg.warmup + cfg.steps, 0)
    int(m["count"])                                         # the loop's own end-of-epoch sync
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "batch": B,
            "peak_mem_bytes": _peak_bytes(device),
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
                        bf16=False, channels_last=channels_last, sharded=False)

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
    mean, std = normalization_for("cifar10")
    return PreActResNet18(num_classes=10, width=cfg.width, mean=mean, std=std).to(device)


def _reference(cfg: BenchConfig, phase: str, data: ImageData, device: torch.device) -> Dict:
    """Reference-style loop: per-image CPU augmentation in DataLoader workers, fp32, .item() per step."""
    images = data.x.permute(0, 2, 3, 1).contiguous().numpy()
    ds = ReferenceStyleDataset(images, data.y.numpy(), augment=(phase != "eval"))
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def run_bench(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Measure every (loop, phase); returns the JSON-ready result (see the module docstring)."""
    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    n = cfg.batch_size * (1 + cfg.warmup + cfg.steps)       # FLOP-count step + warm-up + timed
    data_cpu = _make_data(cfg, n)
    data_dev = data_cpu.to(device)
    name = _device_name(device)
    peak = cfg.peak_tflops if cfg.peak_tflops is not None else (
        peak_tflops_for(name) if device.type == "cuda" else None)
    peak_source = "--peak-tflops" if cfg.peak_tflops is not None else (
        "table DENSE_BF16_PEAK_TFLOPS" if peak is not None else None)
    mf = model_flops_per_image(_reference_model(cfg, device))
    jobs = {}
    for phase in cfg.phases:
        for loop in cfg.loops:
            if loop == "ours":
                jobs[(phase, loop)] = (lambda p=phase: _ours_eval(cfg, data_dev, device)) if phase == "eval" \
                    else (lambda p=phase: _ours_train(cfg, p, data_dev, device))
            else:
                jobs[(phase, loop)] = lambda p=phase: _reference(cfg, p, data_cpu, device)
    runs: Dict = {key: [] for key in jobs}
    for rep in range(cfg.repeats):          # interleaved: ours and reference see the same machine state
        for key, fn in jobs.items():
            if progress:
                progress(f"{key[1]} {key[0]}" + (f" (repeat {rep + 1}/{cfg.repeats})" if cfg.repeats > 1 else ""))
            runs[key].append(fn())
    rows: List[Dict] = []
    for (phase, loop), rs in runs.items():
        rs = sorted(rs, key=lambda r: r["images"] / r["seconds"])
        r = rs[len(rs) // 2]                # median (upper median for an even count)
        ips = r["images"] / r["seconds"]
        tflops = r["flops_per_step"] * (r["images"] / r["batch"]) / r["seconds"] / 1e12
        rows.append({"loop": loop, "phase": phase, "images_per_s": ips, "seconds": r["seconds"],
                     "images": r["images"], "images_per_s_all": [x["images"] / x["seconds"] for x in rs],
                     "flops_per_image": r["flops_per_step"] / r["batch"], "tflops": tflops,
                     "fraction_of_peak": tflops / peak if peak else None,
                     "peak_mem_bytes": max(x["peak_mem_bytes"] for x in rs), "flags": r["flags"],
                     "cifar_epoch_s": (CIFAR_TEST if phase == "eval" else CIFAR_TRAIN) / ips})
    ratios = compute_ratios(rows)
    targets = {}
    for key, (op, val) in TARGETS.items():
        got = ratios.get(key)
        judged = got is not None and device.type == "cuda"     # the targets are GPU targets
        targets[key] = {"target": f"{op} {val}", "measured": got,
                        "met": (got >= val if op == ">=" else got <= val) if judged else None}
    meta = {"device": str(device), "device_name": name, "torch": torch.__version__,
            "python": sys.version.split()[0], "cpu_threads": torch.get_num_threads(),
            "config": asdict(cfg), "peak_bf16_tflops": peak, "peak_source": peak_source,
            "model_flops_per_image": mf,
            "cuda_settings": {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                              "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
            if device.type == "cuda" else None,
            "memory_kind": "torch.cuda.max_memory_allocated per phase" if device.type == "cuda" else
            "process ru_maxrss high-water mark (cumulative over the run, DataLoader workers not included)",
            "targets_note": "the package's performance targets are stated for one H100 and judged only on "
                            "CUDA; on other GPUs they are indicative"}
    return {"meta": meta, "rows": rows, "ratios": ratios, "targets": targets}


def _ips(rows, loop, phase) -> Optional[float]:
    for r in rows:
        if r["loop"] == loop and r["phase"] == phase:
            return r["images_per_s"]
    return None


def compute_ratios(rows: Sequence[Dict]) -> Dict[str, Optional[float]]:
    """ours/reference images/s per phase; cost of SAM and AT relative to ST (= ST img/s / X img/s)."""
    out: Dict[str, Optional[float]] = {}
    for phase in PHASES:
        a, b = _ips(rows, "ours", phase), _ips(rows, "reference", phase)
        out[f"{phase}_ours_vs_ref"] = a / b if a and b else None
    for prefix, loop in (("", "ours"), ("ref_", "reference")):
        st = _ips(rows, loop, "st")
        for phase in ("sam", "at"):
            x = _ips(rows, loop, phase)
            out[f"{prefix}{phase}_cost_vs_st"] = st / x if st and x else None
    return out


def _fmt(v, spec=".2f", none="-") -> str:
    return none if v is None else format(v, spec)


def format_table(result: Dict) -> str:
    """Markdown: one row per (phase, loop), then the ratios and targets."""
    meta, rows = result["meta"], result["rows"]
    gpu = meta["device"].startswith("cuda")
    head = ["phase", "loop", "images/s", "CIFAR epoch (s)", "GFLOP/image", "TFLOP/s"] + \
        (["% bf16 peak"] if gpu else []) + ["peak memory (MiB)"]
    lines = [f"Device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
             f"batch {meta['config']['batch_size']}, width {meta['config']['width']}, "
             f"{meta['config']['steps']} timed steps after {meta['config']['warmup']} warm-up; "
             f"model {meta['model_flops_per_image']['forward_backward'] / 1e9:.3f} GFLOP fwd+bwd per image "
             f"(counted). CIFAR epoch = 50,000 training images (eval: the 10,000 test images) at the "
             f"measured rate. Memory: {meta['memory_kind']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    label = {"st": "train ST", "sam": "train SAM", "at": f"train AT PGD-{meta['config']['attack_steps']}",
             "eval": f"eval PGD-{meta['config']['attack_steps']}"}
    for r in rows:
        row = [label[r["phase"]], r["loop"], f"{r['images_per_s']:.1f}", f"{r['cifar_epoch_s']:.1f}",
               f"{r['flops_per_image'] / 1e9:.3f}", f"{r['tflops']:.3g}"]
        if gpu:
            row.append(_fmt(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"], ".1f"))
        row.append(f"{r['peak_mem_bytes'] / 2 ** 20:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    rt, tg = result["ratios"], result["targets"]
    lines += ["", "| ratio | value | target (one H100) |", "|---|---|---|"]
    names = [("st_ours_vs_ref", "ST: ours / reference images/s"),
             ("sam_ours_vs_ref", "SAM: ours / reference images/s"),
             ("at_ours_vs_ref", "AT: ours / reference images/s"),
             ("eval_ours_vs_ref", "PGD eval: ours / reference images/s"),
             ("sam_cost_vs_st", "SAM / ST cost, ours"), ("at_cost_vs_st", "AT / ST cost, ours"),
             ("ref_sam_cost_vs_st", "SAM / ST cost, reference"), ("ref_at_cost_vs_st", "AT / ST cost, reference")]
    for key, text in names:
        t = tg.get(key)
        verdict = "judged on a GPU only" if t is None or t["met"] is None else ("met" if t["met"] else "not met")
        ts = "" if t is None else f"{t['target']} ({verdict})"
        lines.append(f"| {text} | {_fmt(rt.get(key))} | {ts} |")
    return "\n".join(lines)


def write_results(result: Dict, out: Path) -> Path:
    """JSON at ``out`` and markdown at ``out`` with suffix .md, each written atomically."""
    write_text_atomic(out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return write_text_atomic(out.with_suffix(".md"), "# deep/ training throughput: ours vs reference-style loop\n\n"
                             + format_table(result) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deep.bench",
        description="Side-by-side throughput of deep/'s training loop and a reference-style loop (per-image "
                    "CPU augmentation in a DataLoader, fp32): ST, SAM and AT (PGD) training steps and PGD "
                    "evaluation; images/s, counted FLOPs, TFLOP/s vs the bf16 peak (GPU), peak memory.")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="images per step [default: 128 GPU, 32 CPU]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per phase [default: 50 GPU, 3 CPU]")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before timing, after one untimed step that counts the FLOPs "
                        "[default: 5 GPU, 1 CPU]")
    p.add_argument("--width", type=int, default=None,
                   help="PreActResNet-18 first-stage width [default: 64 GPU (the paper's model), 16 CPU]")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader worker processes of the reference loop [default: %(default)s]")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every phase this often, ours and reference interleaved; the median is reported "
                        "[default: %(default)s]")
    p.add_argument("--phases", default=",".join(PHASES), help="comma list of st, sam, at, eval [default: %(default)s]")
    p.add_argument("--loops", default="ours,reference", help="comma list of ours, reference [default: %(default)s]")
    p.add_argument("--rho", type=float, default=0.1, help="SAM radius [default: %(default)s]")
    p.add_argument("--eps", default="8/255",
                   help="l_inf radius of the PGD attack (AT and eval); fraction ok [default: %(default)s]")
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps (AT and eval) [default: %(default)s]")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in our loop [default: on for CUDA, off on CPU]")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last in our loop [default: on for CUDA, off on CPU]")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our model (compiled during the untimed warm-up steps; falls back to "
                        "uncompiled with a one-line warning when unavailable or failing) [default: off]")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device in TFLOP/s [default: from the built-in table by "
                        "device name, e.g. H100 SXM 989.4; none on CPU]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (intra-op) [default: torch's choice]; 1 is often fastest on a busy CPU")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random benchmark images and the models [default: %(default)s]")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON output; the markdown table goes next to it (.md) [default: %(default)s]")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        eps = parse_eps(args.eps)
        cfg = BenchConfig(device=args.device, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                          width=args.width, workers=args.workers, repeats=args.repeats,
                          phases=tuple(s.strip() for s in args.phases.split(",") if s.strip()),
                          loops=tuple(s.strip() for s in args.loops.split(",") if s.strip()),
                          rho=args.rho, eps=eps, attack_steps=args.attack_steps, bf16=args.bf16,
                          channels_last=args.channels_last, peak_tflops=args.peak_tflops, threads=args.threads,
                          seed=args.seed, compile=args.compile)
        resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        msg = str(err)
        for field in ("batch_size", "attack_steps", "peak_tflops"):
            msg = msg.replace(field, "--" + field.replace("_", "-"))
        parser.error(msg)
    say = None if args.quiet else (lambda s: print(f"deep.bench: measuring {s} ...", file=sys.stderr, flush=True))
    result = run_bench(cfg, progress=say)
    md = write_results(result, Path(args.out))
    print(format_table(result))
    print(f"\nwrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
