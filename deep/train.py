"""Training of PreActResNet-18 with standard training (ST), SAM or PGD adversarial training (AT).

Structure (kept small so that data parallelism is a local change, see deep/distributed.py):

* :func:`train_step` - one optimisation step on one batch, no host synchronisation (returns device
  tensors: summed loss, number correct, a non-finite flag);
* :func:`train_epoch` - one pass over this process's share of the epoch's permutation;
* :func:`fit` - epochs, lr schedule, divergence check, atomic per-epoch checkpoints and resume.

Methods (docs/theory.md: ST = T1, SAM = L2-L4, AT = L1):
    st:  w <- SGD(w, grad L(w))
    sam: e = rho g/||g|| (samrobust/sam.py), w <- SGD(w, grad L(w + e)); BN running stats from the first pass
    at:  x_adv = PGD_eps(x) (samrobust/attacks.py, model in train mode with BN running stats frozen),
         w <- SGD(w, grad L(w; x_adv))
    (cfg.bn_stats = "all": every forward updates the BN running stats, as in the paper's code.)
Learning rate (reference piecewise schedule): lr(t) = lr * (1, 0.1, 0.01) for t/epochs in
[0, 0.75), [0.75, 0.9), [0.9, 1], evaluated at the fractional epoch t = epoch + (i + 1) / steps.

Reproducibility: the example order of each epoch, the augmentation and the PGD random starts are drawn
from generators seeded by (seed, epoch, rank), so an epoch does not depend on the RNG history; the global
torch RNG states are saved in the checkpoint as well. A run interrupted after any epoch and resumed gives
the same weights as an uninterrupted one (bitwise on CPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from samrobust.attacks import check_linf_eps, normalize_norm, pgd
from samrobust.files import write_atomic
from samrobust.progress import progress_bar
from samrobust.sam import SAM, bn_freezer
from samrobust.seeds import EPOCH_MULT, RANK_MULT, mix_seed

from . import distributed as ddist
from .augment import augment_batch
from .images import ImageData, to_float
from .synthetic import SyntheticSpec
from .datasets import DATASETS, dataset_info
from .graphed import graphed_step_for
from .archs import ARCHS, DEFAULT_ARCH, build_arch
from .byo import is_custom_arch
from .preact_resnet import normalization_for

__all__ = ["TrainConfig", "DivergenceError", "CheckpointError", "first_nonfinite", "check_finite_weights",
           "resolve_device", "build_model", "build_optimizer", "lr_at",
           "train_step", "time_steps", "train_epoch", "fit", "FitOptions", "maybe_compile", "compile_for", "setup_device", "FitResult", "save_checkpoint", "load_checkpoint",
           "config_matches", "BN_STATS", "batch_bounds", "AT_VARIANTS", "METHOD_NAMES", "is_adversarial",
           "at_variant_config", "pgd_check_acc", "RUNTIME_FIELDS", "science_fields"]

METHODS = ("st", "sam", "at")
# Cheap adversarial training at about SAM's cost (two or three forward/backward passes per step instead of
# AT's eleven; docs/protocol.md, "Beyond the paper"): name -> (PGD steps, step size / eps, random start).
#   fgsm-rs: FGSM from a uniform random start with step 1.25 eps ("fast AT", Wong, Rice and Kolter 2020)
#   pgd1:    one PGD step of eps from the clean point (= FGSM AT, Goodfellow et al. 2015)
#   pgd2:    two PGD steps of eps/2 from a uniform random start
# All three train with the catastrophic-overfitting check of AT_VARIANT_CHECK images (pgd_check). Each is a
# method of its own (TrainConfig.method, the run id and the result's "method"); it trains as AT with its
# attack settings (:func:`is_adversarial`).
AT_VARIANTS = {"fgsm-rs": (1, 1.25, True), "pgd1": (1, 1.0, False), "pgd2": (2, 0.5, True)}
AT_VARIANT_CHECK = 256
METHOD_NAMES = METHODS + tuple(AT_VARIANTS)     # what --methods accepts


def is_adversarial(method: str) -> bool:
    """Whether ``method`` trains on PGD examples: "at" and the cheap variants of AT_VARIANTS."""
    return method == "at" or method in AT_VARIANTS


def at_variant_config(name: str, eps: float) -> dict:
    """TrainConfig fields of the AT variant ``name`` (AT_VARIANTS) at radius ``eps``: method ``name`` with its
    attack settings."""
    steps, mult, start = AT_VARIANTS[name]
    return dict(method=name, eps=eps, attack_steps=steps, attack_step_size=mult * eps,
                attack_random_start=start, pgd_check=AT_VARIANT_CHECK)


def _check_variant(cfg) -> None:
    """ValueError unless an AT-variant method has its own attack settings (at_variant_config)."""
    steps, mult, start = AT_VARIANTS[cfg.method]
    if (cfg.attack_steps, cfg.attack_random_start, cfg.attack_step_size) != (steps, start, mult * cfg.eps):
        raise ValueError(f"method {cfg.method} trains with {steps} PGD step(s) of {mult:g} eps "
                         f"({'random' if start else 'clean'} start); build it with "
                         f"deep.train.at_variant_config({cfg.method!r}, eps)")


# Which training forwards update the BatchNorm running statistics: "first" (ours: only the forward that
# computes the training loss at w; SAM's second pass and AT's inner PGD run under frozen_bn_stats) or "all"
# (the paper's code: every forward in train mode, including SAM's second pass and each PGD iteration).
BN_STATS = ("first", "all")


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults: docs/protocol.md reference settings).

    Science and runtime settings. Most fields define the experiment (its science): a different value is a
    different run. :data:`RUNTIME_FIELDS` say only where and how fast it runs and change the numbers by
    floating-point rounding at most: ``device`` (CPU or which GPU), ``channels_last`` (memory layout),
    ``check_every`` (how often the host looks for a non-finite loss; a diverged run stops either way).
    Training precision (``bf16``) is science: bf16 autocast rounds activations to 8 mantissa bits in every
    training forward, far beyond the rounding differences of the runtime fields, so runs in bf16 and in fp32
    are different runs. Where ``bf16`` is None the device decides it, so deep.run also compares the precision
    a finished run actually used (its record's train_precision). :func:`config_matches` compares the science
    fields only. (torch.compile, CUDA graphs and threads are deep.run options, not fields here: runtime too.)"""
    dataset: str = "cifar10"            # a key of deep.datasets.DATASETS
    method: str = "st"                  # st | sam | at | an AT variant (fgsm-rs, pgd1, pgd2)
    rho: float = 0.1                    # SAM radius
    adaptive: bool = False              # adaptive SAM (ASAM)
    sam_all_reduce_ascent: bool = False  # multi-process: ascent from the global batch gradient
    eps: float = 8.0 / 255.0            # AT radius
    norm: str = "inf"                   # AT norm: inf | l2
    attack_steps: int = 10              # AT PGD steps
    attack_step_size: Optional[float] = None  # default eps/4 (l_inf) or eps/8 (l2)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple = (0.75, 0.9)
    lr_factors: tuple = (0.1, 0.01)
    seed: int = 0
    width: int = 64
    final_bn: bool = True
    augment: Optional[bool] = None      # None: the data set's default (DATASETS[dataset].augment_default)
    bf16: Optional[bool] = None         # None: on for CUDA, off on CPU (on CPU only with native bf16)
    channels_last: Optional[bool] = None  # None: on for CUDA, off on CPU
    device: str = "auto"
    n_train: Optional[int] = None       # use the first n training images (None: all)
    n_test: Optional[int] = None
    synthetic: dict = field(default_factory=lambda: SyntheticSpec().to_dict())
    check_every: int = 50               # steps between non-finite checks (one host sync each)
    bn_stats: str = "first"             # BN running-statistics updates: "first" | "all" (BN_STATS)
    arch: str = DEFAULT_ARCH            # a key of deep.archs.ARCHS
    attack_random_start: bool = True    # AT: PGD starts from a uniform point of the eps ball
    pgd_check: int = 0                  # AT: images of the catastrophic-overfitting check (0: off)

    def __post_init__(self):
        dataset_info(self.dataset)  # ValueError listing the data sets
        if self.method not in METHOD_NAMES:
            raise ValueError(f"method must be one of {METHOD_NAMES}, got {self.method!r}")
        for name in ("rho", "eps", "lr", "weight_decay"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not self.rho >= 0:
            raise ValueError(f"rho must be >= 0, got {self.rho!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        self.norm = normalize_norm(self.norm)
        if self.norm == "inf":
            check_linf_eps(self.eps, "eps")
        if self.arch not in ARCHS and not is_custom_arch(self.arch):
            raise ValueError(f"arch must be one of {tuple(ARCHS)} or module:callable, got {self.arch!r}")
        if self.pgd_check < 0:
            raise ValueError(f"pgd_check must be >= 0, got {self.pgd_check!r}")
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {self.bn_stats!r}")
        for name in ("epochs", "batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.attack_steps < 0:
            raise ValueError(f"attack_steps must be >= 0, got {self.attack_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        self.lr_factors = tuple(float(f) for f in self.lr_factors)
        if len(self.lr_milestones) != len(self.lr_factors):
            raise ValueError("lr_milestones and lr_factors must have the same length")
        if self.method in AT_VARIANTS:
            _check_variant(self)
        if isinstance(self.synthetic, SyntheticSpec):
            self.synthetic = self.synthetic.to_dict()
        SyntheticSpec(**self.synthetic)  # validate

    @property
    def adversarial(self) -> bool:
        """Whether this run trains on PGD examples (AT or an AT variant: :func:`is_adversarial`)."""
        return is_adversarial(self.method)

    @property
    def synthetic_spec(self) -> SyntheticSpec:
        return SyntheticSpec(**self.synthetic)

    @property
    def num_classes(self) -> int:
        if self.dataset == "synthetic":
            return self.synthetic_spec.num_classes
        return DATASETS[self.dataset].num_classes

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["lr_factors"] = list(self.lr_factors)
        return d


#: TrainConfig fields that change the result by floating-point rounding at most (TrainConfig's docstring);
#: every other field is science.
RUNTIME_FIELDS = frozenset({"device", "channels_last", "check_every"})

_DEFAULT_DICT: List[dict] = []
_NO_DEFAULT = object()


def science_fields(config) -> dict:
    """The science part of a configuration (a TrainConfig or its dict): every field but RUNTIME_FIELDS."""
    d = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}


def config_matches(stored, current) -> bool:
    """Whether a stored configuration (``TrainConfig.to_dict()`` in a result JSON or a checkpoint) defines the
    same experiment as ``current`` (a TrainConfig or its dict): the science fields are compared, the
    runtime ones (:data:`RUNTIME_FIELDS`: device, channels_last, check_every) are not, so a finished run or
    a checkpoint is kept when only where or how fast it runs changed. A field missing from ``stored`` (written
    before the field existed) matches when ``current`` has that field's default value, so adding a field with
    a default keeps finished runs and checkpoints valid. A stored method "at" matches a current AT-variant
    method (fgsm-rs, pgd1, pgd2): earlier versions stored the variants as "at" with the variant's attack
    settings, which are compared as usual. Any other difference, or a stored field that this version does
    not know, is a mismatch."""
    if not isinstance(stored, dict):
        return False
    cur = science_fields(current)
    if not _DEFAULT_DICT:
        _DEFAULT_DICT.append(TrainConfig().to_dict())
    defaults = _DEFAULT_DICT[0]
    for key in set(science_fields(stored)) | set(cur):
        if key not in cur:
            return False
        have = stored[key] if key in stored else defaults.get(key, _NO_DEFAULT)
        if key == "method" and have == "at" and cur[key] in AT_VARIANTS:
            continue
        if have != cur[key]:
            return False
    return True


def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return dev


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags).
    Without it, oneDNN emulates bf16 and autocast is slower than fp32, so the fast path stays off."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


_BF16_FALLBACK_SAID = []


def _cpu_bf16(requested: bool) -> bool:
    """bf16 on CPU when requested and native; else fp32, saying why once per process."""
    if requested and not cpu_has_native_bf16():
        if not _BF16_FALLBACK_SAID:
            print("deep: bf16 requested but this CPU has no native bf16 (avx512_bf16/amx_bf16); training in "
                  "fp32", file=sys.stderr, flush=True)
            _BF16_FALLBACK_SAID.append(True)
        return False
    return requested


def runtime_flags(cfg: TrainConfig, device: torch.device):
    """(bf16, channels_last, augment) actually used for ``cfg`` on ``device``."""
    on_cuda = device.type == "cuda"
    bf16 = on_cuda if cfg.bf16 is None else bool(cfg.bf16)
    if bf16 and device.type == "cpu":
        bf16 = _cpu_bf16(bf16)
    channels_last = on_cuda if cfg.channels_last is None else bool(cfg.channels_last)
    augment = dataset_info(cfg.dataset).augment_default if cfg.augment is None else bool(cfg.augment)
    return bf16, channels_last, augment


def autocast_ctx(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_model(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """cfg.arch (PreActResNet-18 by default; deep.archs) for ``cfg`` (weights from torch.manual_seed(cfg.seed))."""
    torch.manual_seed(cfg.seed)
    mean, std = normalization_for(cfg.dataset)
    size = cfg.synthetic_spec.image_size if cfg.dataset == "synthetic" else dataset_info(cfg.dataset).image_size
    model = build_arch(cfg.arch, cfg.num_classes, cfg.width, mean, std, size, final_bn=cfg.final_bn).to(device)
    if runtime_flags(cfg, device)[1]:
        model = model.to(memory_format=torch.channels_last)
    return model


def _sgd_impl(model: torch.nn.Module) -> dict:
    """On CUDA the fused SGD kernel when this torch supports it, else the multi-tensor (foreach) one;
    on CPU torch's default (keeps CPU runs bitwise reproducible across versions of this file)."""
    params = list(model.parameters())
    if not params or params[0].device.type != "cuda":
        return {}
    try:
        torch.optim.SGD([torch.zeros(1, device=params[0].device, requires_grad=True)], lr=0.1, fused=True)
        return {"fused": True}
    except (TypeError, RuntimeError, ValueError):
        return {"foreach": True}


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) for ST/AT; SAM over that SGD for SAM (weight decay not in the ascent).
    On CUDA the SGD is fused (or foreach where fused is unsupported)."""
    kw = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **_sgd_impl(model))
    if cfg.method == "sam":
        return SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, adaptive=cfg.adaptive, **kw)
    return torch.optim.SGD(model.parameters(), **kw)


def setup_device(device: torch.device) -> None:
    """Per-process settings of the fast path: cuDNN autotuning on CUDA (fixed input shapes)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def maybe_compile(model: torch.nn.Module, enabled: bool, sample: Optional[torch.Tensor] = None,
                  compiler: Optional[Callable] = None) -> torch.nn.Module:
    """``torch.compile(model)`` when ``enabled``; the model itself when disabled, unavailable or failing.

    torch.compile is lazy, so with a ``sample`` batch the compiled model is tried once in eval mode under
    no_grad (no BatchNorm statistics change, train mode restored afterwards). On any failure a one-line
    warning goes to stderr and training continues uncompiled. ``compiler`` (default torch.compile) is
    for tests. :func:`deep.distributed.unwrap` strips the wrapper again (PGD, checkpoints).
    """
    if not enabled:
        return model
    compiler = compiler or getattr(torch, "compile", None)
    try:
        if compiler is None:
            raise RuntimeError("this torch has no torch.compile")
        compiled = compiler(model)
        if sample is not None:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    compiled(sample)
            finally:
                model.train(was_training)
        return compiled
    except Exception as err:  # noqa: BLE001 - any compiler failure means: run uncompiled
        msg = " ".join(str(err).split())[:200]
        print(f"deep: torch.compile unavailable or failing ({type(err).__name__}: {msg}); "
              f"training uncompiled", file=sys.stderr, flush=True)
        return model


def compile_for(model: torch.nn.Module, data: ImageData, bf16: bool, channels_last: bool) -> torch.nn.Module:
    """:func:`maybe_compile` with a probe of two images of ``data`` laid out as in training."""
    sample = to_float(data.x[:2])
    if channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    with autocast_ctx(data.x.device, bf16):
        return maybe_compile(model, True, sample)


def lr_at(cfg: TrainConfig, t: float) -> float:
    """Piecewise-constant lr at fractional epoch t: lr * factor of the last milestone passed."""
    frac = t / cfg.epochs
    lr = cfg.lr
    for m, f in zip(cfg.lr_milestones, cfg.lr_factors):
        if frac >= m:
            lr = cfg.lr * f
    return lr


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
               opt: torch.optim.Optimizer, generator: Optional[torch.Generator] = None,
               bf16: bool = False, start_noise: Optional[Tuple[torch.Tensor, ...]] = None):
    """One step of cfg.method on the batch (x in [0,1], float). Returns device tensors
    (summed loss, number correct, non-finite flag) measured on the first forward pass (ST/SAM: at w on
    clean x; AT: at w on x_adv). No ``.item()``: nothing here waits for the device, so the same function
    is the body of the CUDA-graphed step (deep/graphed.py). ``start_noise``: AT's PGD random-start numbers
    drawn beforehand (samrobust.attacks.draw_start_noise; the graphed step's static buffers); else they are
    drawn from ``generator``.

    Speed (issue 19): the BatchNorm layers to freeze are found once per model (samrobust.sam.bn_freezer),
    freezing switches their running-stat tracking off instead of saving and restoring buffers, and SAM's
    ascent and restore are multi-tensor operations (samrobust/sam.py); the numbers are unchanged
    (tests/test_deep_step_ops.py compares with the former step in float64)."""
    device = x.device
    raw = ddist.unwrap(model)
    bn_guard = bn_freezer(raw) if cfg.bn_stats == "first" else _NO_GUARD
    if is_adversarial(cfg.method):
        with bn_guard, autocast_ctx(device, bf16):
            x = pgd(raw, x, y, eps=cfg.eps, norm=cfg.norm, steps=cfg.attack_steps,
                    step_size=cfg.attack_step_size, random_start=cfg.attack_random_start,
                    generator=generator, start_noise=start_noise)
    opt.zero_grad(set_to_none=True)
    ascent = ddist.ascent_sync(model, cfg.sam_all_reduce_ascent) if cfg.method == "sam" else _NO_GUARD
    with ascent:
        with autocast_ctx(device, bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
    if cfg.method == "sam":
        opt.first_step(zero_grad=True)
        with bn_guard:
            with autocast_ctx(device, bf16):
                logits2 = model(x)
            F.cross_entropy(logits2.float(), y).backward()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
    loss = loss.detach()
    n = y.shape[0]
    correct = (logits.detach().argmax(1) == y).sum()
    return loss * n, correct, ~torch.isfinite(loss)


_NO_GUARD = contextlib.nullcontext()     # re-usable "no context" (nullcontext instances may be re-entered)



def time_steps(model: torch.nn.Module, opt, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, steps: int,
               generator: torch.Generator, bf16: bool) -> float:
    """Seconds per :func:`train_step` of ``cfg`` on the batch (x, y), averaged over ``steps`` steps; the device
    is synchronised before and after, so queued CUDA work is neither missed nor counted twice. The one step
    timer of deep.cost and deep.gridtime."""
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, cfg, opt, generator=generator, bf16=bf16)
    _sync(x.device)
    return (time.perf_counter() - t0) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_generator(device: torch.device, seed: int, epoch: int, rank: int, salt: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(mix_seed(seed, (epoch, EPOCH_MULT), (rank, RANK_MULT), (salt, 1)))
    return g


def batch_bounds(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """(start, end) of each training batch of an epoch of ``n`` examples: full batches of ``batch_size``
    and a last partial one, except that a last batch of a single example (batch_size > 1) is folded into
    the batch before it, which then has batch_size + 1 examples. A batch of one image crashes BatchNorm in
    train mode where a feature map is 1x1 (8x8 inputs: the last stage), and its batch statistics are
    degenerate anyway; folding keeps every example of the epoch."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if batch_size > 1 and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, data: ImageData, cfg: TrainConfig,
                epoch: int, indices: Optional[torch.Tensor] = None, rank: int = 0,
                bf16: bool = False, channels_last: bool = False, augment: bool = False,
                on_step: Optional[Callable[[int], None]] = None, cuda_graph: bool = False,
                graph_backend=None) -> Dict[str, torch.Tensor]:
    """One epoch over ``indices`` (default: the whole permutation of epoch ``epoch``; under
    torch.distributed pass this rank's shard). Full batches of cfg.batch_size; a last partial batch is
    kept, except that a last batch of one image is folded into the batch before it (:func:`batch_bounds`).
    Returns device tensors {loss_sum, correct, count, nonfinite}; raises DivergenceError when a
    non-finite loss is seen on any rank (checked every cfg.check_every steps and at the end).
    ``cuda_graph``: full batches replay a CUDA graph of the step (deep/graphed.py; eager where graphs do
    not apply, with a one-line warning); ``graph_backend`` replaces CUDA graphs in tests."""
    device = data.x.device
    if indices is None:
        indices = ddist.epoch_permutation(len(data), cfg.seed, epoch)
    indices = indices.to(device)
    bounds = batch_bounds(indices.shape[0], cfg.batch_size)
    steps = len(bounds)
    g_aug = _epoch_generator(device, cfg.seed, epoch, rank, 1)
    g_pgd = _epoch_generator(device, cfg.seed, epoch, rank, 2)
    graphed = None
    if cuda_graph:
        graphed = graphed_step_for(model, opt, cfg, bf16, step_fn=train_step, backend=graph_backend)
    if graphed is not None:
        graphed.begin_epoch()
        totals = None
    else:
        totals = {"loss_sum": torch.zeros((), device=device),
                  "correct": torch.zeros((), device=device, dtype=torch.long),
                  "nonfinite": torch.zeros((), device=device, dtype=torch.bool)}
    model.train()
    try:
        for i in range(steps):
            lr = lr_at(cfg, epoch + (i + 1) / steps)
            idx = indices[bounds[i][0]:bounds[i][1]]
            x = to_float(data.x[idx])
            y = data.y[idx]
            if augment:
                info = DATASETS[cfg.dataset]
                x = augment_batch(x, g_aug, pad=info.crop_pad, flip=info.flip)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if graphed is not None:
                graphed.set_lr(lr)
                graphed.step(x, y, generator=g_pgd)
                nonfinite = graphed.nonfinite
            else:
                _set_lr(opt, lr)
                ls, c, bad = train_step(model, x, y, cfg, opt, generator=g_pgd, bf16=bf16)
                totals["loss_sum"] += ls
                totals["correct"] += c
                totals["nonfinite"] |= bad
                nonfinite = totals["nonfinite"]
            if on_step is not None:
                on_step(i)
            if (i + 1) % cfg.check_every == 0 and _any_rank(nonfinite):
                _diverged(cfg, epoch, i)
    finally:
        if graphed is not None:
            totals = graphed.end_epoch()
    if _any_rank(totals["nonfinite"]):
        _diverged(cfg, epoch, steps - 1)
    return {"loss_sum": totals["loss_sum"], "correct": totals["correct"], "count": torch.tensor(indices.shape[0]),
            "nonfinite": totals["nonfinite"]}


def _any_rank(flag: torch.Tensor) -> bool:
    """True when ``flag`` is set on any process (one all-reduce under torch.distributed; every rank calls
    this at the same steps, since the shards have equal sizes), so all ranks stop together."""
    if ddist.get_world_size() > 1:
        flag = ddist.all_reduce_sum(flag.to(torch.int32))
    return bool(flag)


def _diverged(cfg: TrainConfig, epoch: int, step: int):
    raise DivergenceError(
        f"training diverged: non-finite loss in epoch {epoch + 1} by step {step + 1} (method {cfg.method}, "
        f"lr {cfg.lr}, rho {cfg.rho}, eps {cfg.eps:.4g}). The last good checkpoint is kept; try a smaller "
        f"--lr (or --rho), or turn off bf16 (--no-bf16).")


# ---------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, then os.replace (atomic; samrobust.files.write_atomic).
    The state is serialised in memory first and written with a plain file write, so that a full disk raises
    OSError (No space left on device) rather than torch's "basic_ios::clear: iostream error"."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or holding objects other than tensors and
    plain data (refused unloaded, since unpickling them could run code); the message names the file."""


def load_checkpoint(path, device) -> dict:
    """The checkpoint dict at ``path``, loaded with ``torch.load(weights_only=True)``: tensors, numbers,
    strings, lists and dicts only (what :func:`save_checkpoint` writes, the RNG states included), so a
    planted pickle payload is refused without running. CheckpointError (one line naming the file) for a
    missing, truncated, corrupt or foreign file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a checkpoint (torch.save's zip archive expected); it was not loaded")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused: holds objects other than tensors and plain data (not a "
                              f"deep.run checkpoint, or a tampered one); it was not loaded") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {first})") from None
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise CheckpointError(f"{path}: not a deep.run checkpoint (no model and config)")
    return ck


def first_nonfinite(model: torch.nn.Module) -> Optional[str]:
    """The name of the first parameter or floating buffer of ``model`` holding a NaN or inf, else None
    (one host synchronisation)."""
    named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
             if t.is_floating_point()]
    if not named:
        return None
    bad = torch.stack([~torch.isfinite(t.detach()).all() for _, t in named]).cpu()
    hits = bad.nonzero()
    return named[int(hits[0])][0] if hits.numel() else None


def check_finite_weights(model: torch.nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """DivergenceError naming the epoch (1-based) and the first non-finite tensor when training left a NaN
    or inf in the weights (the loss checks see the loss before each update, so they miss an update that
    breaks the weights of the last step)."""
    name = first_nonfinite(model)
    if name is not None:
        raise DivergenceError(
            f"training diverged: non-finite weights ({name}) after epoch {epoch} (method {cfg.method}, "
            f"lr {cfg.lr}, rho {cfg.rho}, eps {cfg.eps:.4g}); no result written. Try a smaller --lr (or --rho).")


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])
        except (RuntimeError, IndexError):
            pass  # different number of GPUs: epoch randomness is seeded per epoch anyway


@dataclass
class FitResult:
    model: torch.nn.Module
    history: List[dict]
    train_time_s: float
    images_per_s: Optional[float]       # None when no training time was measured (no epoch ran)
    epochs_done: int
    finished: bool
    stopped_early: Optional[int] = None  # AT with pgd_check: epoch whose weights were kept after a collapse


# A drop of the check's PGD accuracy by more than this below its best marks catastrophic overfitting.
CO_DROP = 0.2


def pgd_check_acc(model: torch.nn.Module, train: ImageData, cfg: TrainConfig) -> float:
    """PGD-10 accuracy (cfg.eps, cfg.norm, step eps/4 or eps/8, random start, best iterate, eval mode,
    fp32) on the first cfg.pgd_check training images: the catastrophic-overfitting check of fast AT (Wong,
    Rice and Kolter 2020, early stopping when it collapses). Restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device=train.x.device)
    g.manual_seed(mix_seed(cfg.seed, (3, 1)))
    correct = 0
    n = min(cfg.pgd_check, len(train))
    for s in range(0, n, 500):
        x, y = to_float(train.x[s:min(s + 500, n)]), train.y[s:min(s + 500, n)]
        xa = pgd(model, x, y, eps=cfg.eps, norm=cfg.norm, steps=10, random_start=True, generator=g,
                 best_iterate=True)
        with torch.no_grad():   # robust = right on the clean image and on the attacked one (as deep.evaluate)
            correct += int(((model(xa).argmax(1) == y) & (model(x).argmax(1) == y)).sum())
    model.train(was_training)
    return correct / max(n, 1)


def _co_guard(model, train, cfg, rec: dict, best: dict) -> bool:
    """Run the PGD check after an epoch (AT with cfg.pgd_check > 0): record its accuracy in ``rec``; keep a
    copy of the best-checked weights in ``best``; on a drop of more than CO_DROP below the best, restore
    those weights and return True (stop training)."""
    if not is_adversarial(cfg.method) or cfg.pgd_check <= 0:
        return False
    acc = pgd_check_acc(model, train, cfg)
    rec["pgd_check_acc"] = acc
    if acc >= best.get("acc", -1.0):
        best.update(acc=acc, epoch=rec["epoch"],
                    model={k: v.detach().clone() for k, v in model.state_dict().items()})
        return False
    if acc < best["acc"] - CO_DROP:
        model.load_state_dict(best["model"])
        rec["co_stop"] = f"PGD check {acc:.3f} < best {best['acc']:.3f} - {CO_DROP}: kept epoch {best['epoch']}"
        return True
    return False


@dataclass
class FitOptions:
    """How :func:`fit` runs, apart from what it trains (none of this is part of the TrainConfig)."""
    checkpoint: Optional[str] = None    # file written atomically after every epoch (only when is_main)
    resume: bool = False                # continue an existing checkpoint of the same configuration
    stop_after_epoch: Optional[int] = None  # return after that many epochs in total (simulates an interruption)
    progress: bool = True               # a tqdm bar over the steps (only when is_main)
    desc: str = ""                      # the bar's label (default: the method)
    compile_model: bool = False         # torch.compile the model (:func:`maybe_compile`; speed only)
    cuda_graph: bool = False            # replay a CUDA graph of the step (deep/graphed.py; speed only)
    # under torch.distributed (deep/distributed.py):
    is_main: bool = True                # this process writes the checkpoint and shows progress
    model_wrapper: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None  # e.g. DDP
    shard: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # epoch permutation -> this process's indices
    rank: int = 0                       # seeds this process's augmentation and PGD starts
    # bring your own model: trained in place instead of build_model(cfg) (any nn.Module taking images in
    # [0, 1] and returning logits; cfg.arch and cfg.width are then not used)
    model: Optional[torch.nn.Module] = None
    # learning curves: called as epoch_eval(model, epoch) after every epoch (epoch counted from 1, the model
    # the plain one in train mode); the dict it returns is merged into that epoch's history record before the
    # checkpoint is written. Not training time. It must leave the model's mode and weights as it found them.
    epoch_eval: Optional[Callable[[torch.nn.Module, int], Dict]] = None


@dataclass
class _FitState:
    """What :func:`fit` carries from epoch to epoch; a checkpoint holds it besides model and optimizer."""
    epoch: int = 0                      # epochs done
    history: List[dict] = field(default_factory=list)
    train_time: float = 0.0
    best: dict = field(default_factory=dict)   # best PGD-check weights (AT with cfg.pgd_check)
    stopped: Optional[int] = None       # epoch kept after a catastrophic-overfitting stop


@dataclass
class _FitLoop:
    """What every epoch of one :func:`fit` call uses."""
    cfg: TrainConfig
    train: ImageData
    model: torch.nn.Module              # the plain model (checkpoints, PGD check)
    net: torch.nn.Module                # what trains: the model, compiled and/or wrapped
    opt: torch.optim.Optimizer
    opts: FitOptions
    flags: Tuple[bool, bool, bool]      # (bf16, channels_last, augment) of :func:`runtime_flags`


def fit(cfg: TrainConfig, train: ImageData, *, options: Optional[FitOptions] = None, **kw) -> FitResult:
    """Train cfg.method for cfg.epochs on ``train`` (an ImageData already on the target device).

    ``options`` (:class:`FitOptions`) or its fields as keywords (``fit(cfg, data, checkpoint=path,
    resume=True)``; keywords override ``options``). With ``checkpoint`` the state is written atomically
    after every epoch; with ``resume`` an existing checkpoint of the same config is continued (a checkpoint
    of a different config raises ValueError). With ``model`` (an nn.Module taking images in [0, 1]) that
    model is trained in place instead of the architecture cfg names. Returns the trained (unwrapped) model
    and per-epoch history.
    """
    opts = dataclasses.replace(options or FitOptions(), **kw)
    device = train.x.device
    setup_device(device)
    flags = runtime_flags(cfg, device)
    model = build_model(cfg, device) if opts.model is None else _own_model(opts.model, cfg, device)
    opt = build_optimizer(cfg, model)
    state = _resume(cfg, model, opt, opts, device)
    net = compile_for(model, train, flags[0], flags[1]) if opts.compile_model else model
    net = opts.model_wrapper(net) if opts.model_wrapper is not None else net
    loop = _FitLoop(cfg, train, model, net, opt, opts, flags)
    end_epoch = cfg.epochs if opts.stop_after_epoch is None else min(cfg.epochs, opts.stop_after_epoch)
    if state.stopped is not None:
        end_epoch = state.epoch           # stopped early before the interruption: nothing left to train
    bar = _progress_bar(loop, state.epoch)
    try:
        for epoch in range(state.epoch, end_epoch):
            rec = _fit_epoch(loop, epoch, state, on_step=(lambda i: bar.update(1)) if bar is not None else None)
            if opts.epoch_eval is not None:
                rec.update(opts.epoch_eval(model, rec["epoch"]))
            if bar is not None:
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", acc=f"{rec['train_acc']:.3f}",
                                **({"test": f"{rec['test_clean_acc']:.3f}"} if "test_clean_acc" in rec else {}))
            if opts.checkpoint is not None and opts.is_main:
                _save_fit_checkpoint(loop, state)
            if state.stopped is not None:
                break
    finally:
        if bar is not None:
            bar.close()
    images = sum(h["images"] for h in state.history)
    return FitResult(model=model, history=state.history, train_time_s=state.train_time,
                     images_per_s=images / state.train_time if state.train_time > 0 else None,
                     epochs_done=len(state.history),
                     finished=len(state.history) >= cfg.epochs or state.stopped is not None,
                     stopped_early=state.stopped)


def _own_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """A user's model (FitOptions.model) on ``device``, in channels_last when cfg asks for it."""
    model = model.to(device)
    if runtime_flags(cfg, device)[1]:
        model = model.to(memory_format=torch.channels_last)
    return model


def _resume(cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, opts: FitOptions,
            device: torch.device) -> _FitState:
    """With ``opts.resume`` and an existing checkpoint: its weights, optimizer and RNG states loaded and
    its bookkeeping returned (ValueError for a checkpoint of another configuration); else a fresh state."""
    if opts.checkpoint is None or not opts.resume or not os.path.exists(opts.checkpoint):
        return _FitState()
    ck = load_checkpoint(opts.checkpoint, device)
    if not config_matches(ck.get("config"), cfg):
        raise ValueError(f"checkpoint {opts.checkpoint} was written for a different configuration; "
                         f"delete it or choose another --out")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    _set_rng_state(ck["rng"])
    return _FitState(epoch=ck["epoch"], history=ck["history"], train_time=ck["train_time_s"],
                     best=ck.get("pgd_check_best") or {}, stopped=ck.get("stopped_early"))


def _progress_bar(loop: _FitLoop, start_epoch: int):
    """A tqdm bar over all steps of the run, plain lines when stderr is no terminal
    (samrobust.progress.progress_bar); None without progress or off the main process."""
    if not (loop.opts.progress and loop.opts.is_main):
        return None
    n = len(loop.train) if loop.opts.shard is None else loop.opts.shard(torch.arange(len(loop.train))).shape[0]
    steps_per_epoch = len(batch_bounds(n, loop.cfg.batch_size))
    return progress_bar(loop.cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                        desc=loop.opts.desc or f"{loop.cfg.method}", unit="step", leave=True)


def _cuda_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fit_epoch(loop: _FitLoop, epoch: int, state: _FitState, on_step: Optional[Callable[[int], None]]) -> dict:
    """Train epoch ``epoch`` (this process's shard of its permutation), then the PGD check; appends the
    epoch's record (loss and accuracy summed over all processes) to ``state`` and returns it. The timed
    span (training time) covers both."""
    cfg, device = loop.cfg, loop.train.x.device
    order = ddist.epoch_permutation(len(loop.train), cfg.seed, epoch)
    idx = loop.opts.shard(order) if loop.opts.shard is not None else order
    bf16, channels_last, augment = loop.flags
    _cuda_sync(device)
    t0 = time.perf_counter()
    m = train_epoch(loop.net, loop.opt, loop.train, cfg, epoch, indices=idx, rank=loop.opts.rank, bf16=bf16,
                    channels_last=channels_last, augment=augment, on_step=on_step, cuda_graph=loop.opts.cuda_graph)
    check_finite_weights(loop.model, cfg, epoch + 1)    # before the epoch is checkpointed
    loss_sum, correct = ddist.all_reduce_sum(m["loss_sum"].clone()), \
        ddist.all_reduce_sum(m["correct"].clone().float())
    count = ddist.all_reduce_sum(m["count"].to(device).float())
    rec = {"epoch": epoch + 1, "train_loss": float(loss_sum / count),
           "train_acc": float(correct / count), "lr_end": lr_at(cfg, epoch + 1)}
    halt = _co_guard(loop.model, loop.train, cfg, rec, state.best)     # its cost counts as training time
    _cuda_sync(device)
    state.train_time += time.perf_counter() - t0
    rec["images"] = int(count)
    state.history.append(rec)
    state.epoch = epoch + 1
    state.stopped = state.best["epoch"] if halt else None
    return rec


def _save_fit_checkpoint(loop: _FitLoop, state: _FitState) -> None:
    save_checkpoint(loop.opts.checkpoint, {
        "config": loop.cfg.to_dict(), "epoch": state.epoch, "model": loop.model.state_dict(),
        "optimizer": loop.opt.state_dict(), "history": state.history, "train_time_s": state.train_time,
        "rng": _rng_state(), "pgd_check_best": state.best, "stopped_early": state.stopped})
