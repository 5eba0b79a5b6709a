"""Evaluation: clean accuracy, PGD robust accuracy on an (norm, eps) grid, feature-reliance probes.

Robust accuracy at (norm, eps) is the share of test images classified correctly both clean and under
every one of ``restarts`` PGD attacks (``steps`` steps, random start, step eps/4 for l_inf and eps/8 for
l2 as in docs/protocol.md), i.e. the per-example worst case over restarts. A point counts as broken when any
iterate of any restart fools the model (best iterate, samrobust.attacks.pgd); only points not yet broken are
attacked again. The PGD loss is cross-entropy ("ce") or the margin loss ("cw"). The model is in eval mode (BN running
statistics) and the attack runs in fp32 unless ``bf16`` is asked for.

``python -m deep.evaluate PATH --attacks pgd:50x5,autoattack:cpu`` re-evaluates saved runs with these
functions (deep/evaluate.py; AutoAttack in deep/autoattack.py, gradient-masking checks in deep/masking.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from samrobust.attacks import LOSSES, default_step_size, normalize_norm, pgd
from samrobust.seeds import ATTACK_MULT, BATCH_MULT, EVAL_RANK_MULT, RESTART_MULT, mix_seed
from samrobust.threat import attack_label, format_eps, parse_eps

from . import distributed as ddist
from .images import ImageData, to_float
from .synthetic import PROBE_VARIANTS, SyntheticSpec, make_synthetic

__all__ = ["Attack", "parse_eps", "format_eps", "parse_attack", "unique_attacks", "DEFAULT_GRID", "EvalOptions",
           "evaluate", "probes"]


@dataclass(frozen=True)
class Attack:
    norm: str   # "inf" | "l2"
    eps: float

    @property
    def label(self) -> str:
        return attack_label(self.norm, self.eps)


def parse_attack(text: str) -> Attack:
    """'linf:8/255' or 'l2:0.5' -> Attack."""
    if ":" not in text:
        raise ValueError(f"attack must look like linf:8/255 or l2:0.5, got {text!r}")
    norm, eps = text.split(":", 1)
    return Attack(normalize_norm(norm), parse_eps(eps))


def unique_attacks(attacks: Sequence[Attack]) -> tuple:
    """``attacks`` without repeats (same label, e.g. linf:1/255 twice or linf:1/255 and inf:1/255), first
    occurrence kept: robust accuracy is stored per label, so a repeat would count its images twice."""
    seen = {}
    for a in attacks:
        seen.setdefault(a.label, a)
    return tuple(seen.values())


DEFAULT_GRID = tuple(parse_attack(s) for s in
                     ("linf:1/255", "linf:2/255", "linf:8/255", "l2:16/255", "l2:32/255", "l2:0.5"))


def _batches(data: ImageData, batch_size: int, sharded: bool):
    n = len(data)
    sl = ddist.shard_range(n) if sharded else slice(0, n)
    for s in range(sl.start, sl.stop, batch_size):
        e = min(s + batch_size, sl.stop)
        yield to_float(data.x[s:e]), data.y[s:e]


@dataclass(frozen=True)
class EvalOptions:
    """Settings of :func:`evaluate` (defaults: docs/protocol.md's PGD-10, one restart, cross-entropy)."""
    steps: int = 10                     # PGD steps
    restarts: int = 1                   # random restarts; robust = correct under every one of them
    batch_size: int = 500
    seed: int = 0                       # seeds each (batch, attack, restart, rank) start (samrobust.seeds)
    bf16: bool = False                  # bf16 autocast in the forward passes (default fp32)
    channels_last: bool = False
    sharded: bool = True                # under torch.distributed: each rank its slice, counts summed
    progress: bool = False
    loss: str = "ce"                    # what PGD maximises: "ce" or "cw" (samrobust.attacks.LOSSES)
    n_robust: Optional[int] = None      # robust accuracy on the first n_robust images only
    fixed_work: bool = False            # attack every image every step, judge the last iterate (benchmark)
    pad_survivors: Optional[bool] = None  # pad PGD's survivors to SURVIVOR_FRACTIONS of the batch (None: on CUDA)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


def evaluate(model: torch.nn.Module, data: ImageData, attacks: Sequence[Attack] = DEFAULT_GRID, *,
             options: Optional[EvalOptions] = None, **kw) -> Dict:
    """{"clean_acc": float, "robust": {label: float}} on ``data`` (already on the model's device).

    ``options`` (:class:`EvalOptions`) or its fields as keywords (``evaluate(model, data, attacks,
    steps=10, restarts=5)``; keywords override ``options``).
    Under torch.distributed each rank evaluates its slice and the counts are summed (``sharded``).
    ``n_robust``: robust accuracy on the first ``n_robust`` images only (clean accuracy on all); the
    result then has "n_clean" and "n_robust".
    ``fixed_work``: attack every image for every step and restart and judge the last iterate (PGD as
    before best-iterate evaluation): the same work whatever the model, for the benchmark only.
    """
    opts = dataclasses.replace(options or EvalOptions(), **kw)
    with no_cudnn_autotune():
        return _evaluate(model, data, unique_attacks(attacks), opts)


@contextlib.contextmanager
def no_cudnn_autotune():
    """cuDNN autotuning (``cudnn.benchmark``, on for training: fixed shapes) off inside the block.

    Evaluation attacks only the images not yet broken, so every PGD call has a new batch size, and with
    autotuning each new size is timed anew for every convolution: on an H200 at width 64 this made
    PGD-10 on 500 Fashion-MNIST images take ~8 s instead of ~0.3 s (measured with deep.run, 2026-11-26)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _evaluate(model: torch.nn.Module, data: ImageData, attacks: tuple, opts: EvalOptions) -> Dict:
    """:func:`evaluate`'s work, with its options resolved."""
    model = ddist.unwrap(model)
    was_training = model.training
    model.eval()
    fwd = functools.partial(_forward, model, data.x.device if opts.bf16 else None)
    counts = _Counts.zeros(data.x.device, attacks)
    n_rob = len(data) if opts.n_robust is None else min(int(opts.n_robust), len(data))
    batches = list(_batches(data, opts.batch_size, opts.sharded))
    starts = _batch_starts(data, opts.batch_size, opts.sharded)
    bar = _progress_bar(opts.progress, len(batches) * (1 + len(attacks) * opts.restarts))
    for bi, (x, y) in enumerate(batches):
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ok = fwd(x).argmax(1) == y
        counts.clean += ok.sum()
        counts.total += y.shape[0]
        _tick(bar)
        keep = max(0, min(y.shape[0], n_rob - starts[bi]))   # images of this batch in the robust set
        counts.total_robust += keep
        for ai, a in enumerate(attacks):
            still = _survivors(fwd, x[:keep], y[:keep], ok[:keep], a, opts, (bi, ai), bar)
            counts.robust[a.label] += still.sum()
    if bar is not None:
        bar.close()
    if opts.sharded:
        counts.all_reduce()
    model.train(was_training)
    return counts.result(with_n=opts.n_robust is not None)


def _forward(model: torch.nn.Module, autocast_device: Optional[torch.device], z: torch.Tensor) -> torch.Tensor:
    """fp32 logits of ``model`` on ``z``; under bf16 autocast on ``autocast_device`` unless None."""
    ctx = contextlib.nullcontext() if autocast_device is None else \
        torch.autocast(device_type=autocast_device.type, dtype=torch.bfloat16)
    with ctx:
        return model(z).float()


# Survivor-batch sizes of the best-iterate PGD, as fractions of the evaluation batch: the images still
# unbroken are padded up to the next of these sizes (samrobust.attacks.pgd ``buckets``). Speed on CUDA: a
# handful of shapes instead of a new one at every PGD iteration (cuDNN plans, allocator blocks, graphs);
# the padding rows cost at most 2x the work of the survivors, which are few once most images break.
SURVIVOR_FRACTIONS = (1, 2, 4, 8)


def survivor_buckets(batch_size: int) -> Tuple[int, ...]:
    """The padded survivor-batch sizes of an evaluation batch of ``batch_size``: ceil(B / f) for f in
    SURVIVOR_FRACTIONS, largest first, without repeats."""
    return tuple(sorted({-(-int(batch_size) // f) for f in SURVIVOR_FRACTIONS}, reverse=True))


def _survivors(fwd, x: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, attack: Attack, opts: EvalOptions,
               where: Tuple[int, int], bar) -> torch.Tensor:
    """Mask of the images (correct clean: ``ok``) that every restart of ``attack`` leaves correctly
    classified; ``where`` = (batch index, attack index) seeds the random starts. Only images not yet
    broken are attacked again (all of them with opts.fixed_work)."""
    bi, ai = where
    still = ok.clone()
    pad = opts.pad_survivors if opts.pad_survivors is not None else x.device.type == "cuda"
    buckets = survivor_buckets(opts.batch_size) if pad and not opts.fixed_work else None
    for r in range(opts.restarts):
        idx = torch.arange(y.shape[0], device=x.device) if opts.fixed_work else still.nonzero().squeeze(1)
        if idx.numel():
            g = torch.Generator(device=x.device)
            g.manual_seed(mix_seed(opts.seed, (bi, BATCH_MULT), (ai, ATTACK_MULT), (r, RESTART_MULT),
                                   (ddist.get_rank(), EVAL_RANK_MULT)))
            x_adv = pgd(fwd, x[idx], y[idx], eps=attack.eps, norm=attack.norm, steps=opts.steps,
                        step_size=default_step_size(attack.eps, attack.norm), random_start=True, generator=g,
                        loss_fn=LOSSES[opts.loss], best_iterate=not opts.fixed_work, buckets=buckets)
            with torch.no_grad():
                still[idx] &= fwd(x_adv).argmax(1) == y[idx]
        _tick(bar)
    return still


@dataclass
class _Counts:
    """Device counters of :func:`evaluate` (no host synchronisation until the end)."""
    clean: torch.Tensor
    total: torch.Tensor
    total_robust: torch.Tensor
    robust: Dict[str, torch.Tensor]

    @classmethod
    def zeros(cls, device: torch.device, attacks: Sequence[Attack]) -> "_Counts":
        def zero():
            return torch.zeros((), device=device, dtype=torch.long)
        return cls(clean=zero(), robust={a.label: zero() for a in attacks}, total=zero(), total_robust=zero())

    def all_reduce(self) -> None:
        for t in [self.clean, self.total, self.total_robust, *self.robust.values()]:
            ddist.all_reduce_sum(t)

    def result(self, with_n: bool) -> Dict:
        n, nr = max(int(self.total), 1), max(int(self.total_robust), 1)
        out = {"clean_acc": int(self.clean) / n, "robust": {k: int(v) / nr for k, v in self.robust.items()}}
        if with_n:
            out.update(n_clean=int(self.total), n_robust=int(self.total_robust))
        return out


def _progress_bar(progress: bool, total: int):
    if not (progress and ddist.is_main()):
        return None
    from samrobust.progress import progress_bar
    return progress_bar(total, desc="eval", unit="pass", leave=False)   # plain lines off a terminal


def _tick(bar) -> None:
    if bar is not None:
        bar.update(1)


def _batch_starts(data: ImageData, batch_size: int, sharded: bool):
    """Index of the first image of each batch of :func:`_batches` in the whole data set."""
    n = len(data)
    sl = ddist.shard_range(n) if sharded else slice(0, n)
    return list(range(sl.start, sl.stop, batch_size))


def probes(model: torch.nn.Module, spec: SyntheticSpec, n: int, seed: int, device,
           batch_size: int = 500) -> Dict[str, float]:
    """Clean accuracy (w.r.t. the true label) on the probe variants of the generated test set:
    clean, non-robust pattern removed, non-robust pattern swapped to class y+1, robust pattern removed
    (docs/protocol.md). All variants share labels, coefficients and noise."""
    model = ddist.unwrap(model)
    was_training = model.training
    model.eval()
    out = {}
    for v in PROBE_VARIANTS:
        d = make_synthetic(n, seed, spec, variant=v).to(device)
        correct = 0
        with torch.no_grad():
            for s in range(0, n, batch_size):
                correct += int((model(d.x[s:s + batch_size]).argmax(1) == d.y[s:s + batch_size]).sum())
        out[v] = correct / n
    model.train(was_training)
    return out
