"""Evaluation: clean accuracy, PGD robust accuracy on an (norm, eps) grid, feature-reliance probes.

Robust accuracy at (norm, eps) is the share of test images classified correctly both clean and under
every one of ``restarts`` PGD attacks (``steps`` steps, random start, step eps/4 for l_inf and eps/8 for
l2 as in docs/protocol.md), i.e. the per-example worst case over restarts. A point counts as broken when any
iterate of any restart fools the model (best iterate, common.attacks.pgd); only points not yet broken are
attacked again. The PGD loss is cross-entropy ("ce") or the margin loss ("cw"). The model is in eval mode (BN running
statistics) and the attack runs in fp32 unless ``bf16`` is asked for.

``python -m deep.evaluate PATH --attacks pgd:50x5,autoattack:cpu`` re-evaluates saved runs (deep/reeval.py;
AutoAttack in deep/autoattack.py, gradient-masking checks in deep/masking.py).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from common.attacks import LOSSES, default_step_size, normalize_norm, pgd
from common.seeds import ATTACK_MULT, BATCH_MULT, EVAL_RANK_MULT, RESTART_MULT, mix_seed
from common.threat import attack_label, format_eps, parse_eps

from . import distributed as ddist
from .data import PROBE_VARIANTS, ImageData, SyntheticSpec, make_synthetic, to_float

__all__ = ["Attack", "parse_eps", "format_eps", "parse_attack", "unique_attacks", "DEFAULT_GRID", "evaluate", "probes"]


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


def evaluate(model: torch.nn.Module, data: ImageData, attacks: Sequence[Attack] = DEFAULT_GRID,
             steps: int = 10, restarts: int = 1, batch_size: int = 500, seed: int = 0,
             bf16: bool = False, channels_last: bool = False, sharded: bool = True,
             progress: bool = False, loss: str = "ce", n_robust: Optional[int] = None,
             fixed_work: bool = False) -> Dict:
    """{"clean_acc": float, "robust": {label: float}} on ``data`` (already on the model's device).

    Under torch.distributed each rank evaluates its slice and the counts are summed (``sharded``).
    ``n_robust``: robust accuracy on the first ``n_robust`` images only (clean accuracy on all); the
    result then has "n_clean" and "n_robust".
    ``fixed_work``: attack every image for every step and restart and judge the last iterate (PGD as
    before best-iterate evaluation): the same work whatever the model, for the benchmark only.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    attacks = unique_attacks(attacks)
    model = ddist.unwrap(model)
    was_training = model.training
    model.eval()
    device = data.x.device

    def ctx():
        if bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fwd(z):
        with ctx():
            return model(z).float()

    clean = torch.zeros((), device=device, dtype=torch.long)
    robust = {a.label: torch.zeros((), device=device, dtype=torch.long) for a in attacks}
    total = torch.zeros((), device=device, dtype=torch.long)
    total_robust = torch.zeros((), device=device, dtype=torch.long)
    n_rob = len(data) if n_robust is None else min(int(n_robust), len(data))
    batches = list(_batches(data, batch_size, sharded))
    starts = _batch_starts(data, batch_size, sharded)
    bar = None
    if progress and ddist.is_main():
        from tqdm.auto import tqdm
        bar = tqdm(total=len(batches) * (1 + len(attacks) * restarts), desc="eval", unit="pass",
                   leave=False, dynamic_ncols=True)
    for bi, (x, y) in enumerate(batches):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ok = fwd(x).argmax(1) == y
        clean += ok.sum()
        total += y.shape[0]
        if bar is not None:
            bar.update(1)
        keep = max(0, min(y.shape[0], n_rob - starts[bi]))   # images of this batch in the robust set
        x, y, ok = x[:keep], y[:keep], ok[:keep]
        total_robust += keep
        for ai, a in enumerate(attacks):
            still = ok.clone()
            for r in range(restarts):
                idx = torch.arange(y.shape[0], device=device) if fixed_work else still.nonzero().squeeze(1)
                if idx.numel():
                    g = torch.Generator(device=device)
                    g.manual_seed(mix_seed(seed, (bi, BATCH_MULT), (ai, ATTACK_MULT), (r, RESTART_MULT),
                                           (ddist.get_rank(), EVAL_RANK_MULT)))
                    x_adv = pgd(fwd, x[idx], y[idx], eps=a.eps, norm=a.norm, steps=steps,
                                step_size=default_step_size(a.eps, a.norm), random_start=True, generator=g,
                                loss_fn=LOSSES[loss], best_iterate=not fixed_work)
                    with torch.no_grad():
                        still[idx] &= fwd(x_adv).argmax(1) == y[idx]
                if bar is not None:
                    bar.update(1)
            robust[a.label] += still.sum()
    if bar is not None:
        bar.close()
    if sharded:
        for t in [clean, total, total_robust, *robust.values()]:
            ddist.all_reduce_sum(t)
    model.train(was_training)
    n, nr = max(int(total), 1), max(int(total_robust), 1)
    out = {"clean_acc": int(clean) / n, "robust": {k: int(v) / nr for k, v in robust.items()}}
    if n_robust is not None:
        out.update(n_clean=int(total), n_robust=int(total_robust))
    return out


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


def build_parser():
    """The parser of ``python -m deep.evaluate`` (re-evaluation of saved runs; deep/reeval.py)."""
    from .reeval import build_parser as _build_parser
    return _build_parser()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m deep.evaluate PATH --attacks ...``: re-evaluate saved models with stronger attacks
    (PGD with more steps/restarts, AutoAttack) and store the numbers in their result JSONs (deep/reeval.py)."""
    from .reeval import main as _main
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
