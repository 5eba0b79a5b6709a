"""Per-image worst case over every attack run on the same images (docs/protocol.md, "Robust evaluation: PGD, AutoAttack, masking checks").

A reviewer's robust accuracy: an image counts as robust at (norm, eps) only when the model classifies it
correctly clean, at PGD's best iterate (PGD-10, random start, step eps/4 for l_inf and eps/8 for l2) and at
AutoAttack's point (deep.autoattack: "cpu" = APGD-CE + APGD-T, "standard" adds FAB-T and Square), all on
the first n test images. The stored entry keeps the PGD-only and AutoAttack-only numbers beside the worst
case, the gap (PGD - worst case, in points: how much PGD-10 alone overstates robustness) and AutoAttack's
time per radius.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence

import torch

from samrobust.attacks import default_step_size, pgd
from samrobust.seeds import mix_seed

from .autoattack import VERSIONS, robust_flags
from .images import ImageData, to_float
from .robustness import Attack

__all__ = ["pgd_flags", "worst_case"]

# salt of the PGD random starts of the worst-case evaluation (independent of deep.robustness's streams)
_PGD_SALT = 7919


def pgd_flags(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, steps: int = 10,
              seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """Per image, True when ``model`` (eval mode) classifies x correctly and also PGD-``steps``'s best
    iterate (random start, default step size) inside the ``attack`` ball and the [0, 1] box."""
    out = []
    for b, s in enumerate(range(0, x.shape[0], batch_size)):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        g = torch.Generator(device=x.device)
        g.manual_seed(mix_seed(seed, (b, 1), (_PGD_SALT, 1)))
        xa = pgd(model, xb, yb, eps=attack.eps, norm=attack.norm, steps=steps,
                 step_size=default_step_size(attack.eps, attack.norm), random_start=True, generator=g,
                 best_iterate=True)
        with torch.no_grad():
            out.append((model(xb).argmax(1) == yb) & (model(xa).argmax(1) == yb))
    return torch.cat(out)


def _share(flags: torch.Tensor) -> float:
    """Share of True entries (count / n, exact in binary for the counts that matter; 0 for no images)."""
    return int(flags.sum()) / max(int(flags.numel()), 1)


def worst_case(model: torch.nn.Module, test: ImageData, radii: Sequence[Attack], version: str, n: int,
               device, seed: int = 0, batch_size: int = 250, pgd_steps: int = 10,
               progress: Optional[Callable[[str, float, float], None]] = None) -> Dict:
    """The worst-case entry (module docstring) on the first ``n`` images of ``test`` for every radius:
    {"kind": "worst", "version", "settings", "pgd_steps", "n", "seed", "clean_acc", "robust" (worst case),
    "pgd", "autoattack", "gap_points", "seconds_per_attack" (AutoAttack), "seconds"}."""
    if version not in VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}")
    sub = test.subset(int(n))
    x, y = to_float(sub.x).to(device), sub.y.to(device)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    entry: Dict = {"kind": "worst", "version": version,
                   "settings": f"per image: clean, PGD-{pgd_steps} best iterate (1 restart) and AutoAttack "
                               f"({VERSIONS[version]['settings']}) all correct",
                   "pgd_steps": pgd_steps, "n": len(sub), "seed": seed, "robust": {}, "pgd": {},
                   "autoattack": {}, "gap_points": {}, "seconds_per_attack": {}}
    try:
        with torch.no_grad():
            entry["clean_acc"] = _share(model(x).argmax(1) == y)
        for a in radii:
            p_ok = pgd_flags(model, x, y, a, pgd_steps, seed, batch_size)
            ta = time.perf_counter()
            a_ok = robust_flags(model, x, y, a, version, device, seed, batch_size)
            entry["seconds_per_attack"][a.label] = time.perf_counter() - ta
            worst = _share(p_ok & a_ok)
            entry["robust"][a.label] = worst
            entry["pgd"][a.label] = _share(p_ok)
            entry["autoattack"][a.label] = _share(a_ok)
            entry["gap_points"][a.label] = 100 * (entry["pgd"][a.label] - worst)
            if progress is not None:
                progress(a.label, worst, entry["seconds_per_attack"][a.label])
    finally:
        model.train(was_training)
    entry["seconds"] = time.perf_counter() - t0
    return entry
