"""AutoAttack (Croce & Hein 2020) robust accuracy through the authors' package ``pyautoattack``.

Two versions (``VERSIONS``; the stored result names the one used and what it ran):

* ``"standard"``: the library's standard AutoAttack for l_inf / l2, unchanged: APGD-CE (100 iterations,
  1 restart), APGD-T (targeted DLR loss, 100 iterations, 9 target classes, 1 restart each), FAB-T
  (9 target classes, 100 iterations, 1 restart) and Square (5,000 queries, 1 restart), run in this order,
  each on the points the previous ones left unbroken.
* ``"cpu"``: the cheaper subset APGD-CE + APGD-T with the standard iterations and restarts (100, 1) but
  APGD-T aimed at the top ``CPU_TARGET_CLASSES`` = 3 wrong classes (by the clean logits, as the library
  chooses them) instead of 9; no FAB-T, no Square. It costs about 1 + 3 APGD runs on the unbroken
  points instead of 1 + 9 + FAB-T + Square; FAB-T and Square rarely lower AutoAttack's number on models
  without gradient masking, and the masking checks (deep.masking) look for the cases where they would.

Robust accuracy at (norm, eps) is the share of the first ``n`` images that the model classifies
correctly at AutoAttack's returned point, which is the clean image unless an attack found a
misclassified point inside the eps ball and the [0, 1] box (both checked here). The model runs in eval
mode and fp32 (no autocast); the library's seeded calls to ``torch.manual_seed`` do not leak out.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Sequence

import torch

from samrobust.threat import Norm, parse_norm

from .images import ImageData, to_float
from .robustness import Attack, no_cudnn_autotune

__all__ = ["VERSIONS", "CPU_TARGET_CLASSES", "make_autoattack", "robust_flags", "run_autoattack"]

CPU_TARGET_CLASSES = 3
VERSIONS: Dict[str, Dict] = {
    "standard": {"attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
                 "settings": "pyautoattack version='standard': APGD-CE (100 iterations, 1 restart), APGD-T "
                             "(DLR-targeted, 100 iterations, 9 target classes), FAB-T (9 target classes, "
                             "100 iterations), Square (5000 queries)"},
    "cpu": {"attacks": ["apgd-ce", "apgd-t"],
            "settings": f"pyautoattack version='custom': APGD-CE (100 iterations, 1 restart) + APGD-T "
                        f"(DLR-targeted, 100 iterations, 1 restart, {CPU_TARGET_CLASSES} target classes); "
                        f"no FAB-T, no Square"},
}
_LOGGER = "auto-attack"     # the library's logger: its warnings (zero gradients, ...) are kept in the result


def make_autoattack(model: torch.nn.Module, attack: Attack, version: str, device, seed: int = 0):
    """A configured ``pyautoattack.AutoAttack`` for one (norm, eps) and version (module docstring)."""
    from pyautoattack import AutoAttack

    if version not in VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}")
    norm = {Norm.LINF: "Linf", Norm.L2: "L2"}[parse_norm(attack.norm)]   # the library's spelling
    if version == "standard":
        aa = AutoAttack(model, norm=norm, eps=attack.eps, version="standard", device=device, seed=seed)
    else:
        aa = AutoAttack(model, norm=norm, eps=attack.eps, version="custom", attacks=VERSIONS[version]["attacks"],
                        device=device, seed=seed)
        aa.apgd.n_restarts = 1                   # 'custom' starts from 5; the standard setting is 1
        aa.apgd_targeted.n_restarts = 1
        aa.apgd_targeted.n_target_classes = CPU_TARGET_CLASSES
    aa.verbose = False
    return aa


def robust_flags(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, version: str,
                 device, seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """Per image, True when the model classifies AutoAttack's point for ``x`` correctly (clean and robust).

    ``x`` float in [0, 1] and ``y`` on ``device``, the model there in eval mode. RuntimeError when a returned
    point leaves the eps ball or the [0, 1] box (tolerance 1e-5)."""
    aa = make_autoattack(model, attack, version, device, seed)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    # fork_rng: AutoAttack's own draws leave the caller's RNG alone; no autotuning: it attacks only the
    # points still robust, so its batch sizes change at every step (see deep.robustness.no_cudnn_autotune)
    with torch.random.fork_rng(devices=devices), no_cudnn_autotune():
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if parse_norm(attack.norm) is Norm.LINF else d.norm(dim=1)
    if bool((size > attack.eps + 1e-5).any()) or x_adv.min() < -1e-5 or x_adv.max() > 1 + 1e-5:
        raise RuntimeError(f"AutoAttack returned points outside the {attack.label} ball or the [0, 1] box")
    return _correct(model, x_adv, y, batch_size)


def _correct(model, x, y, batch_size) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]
                          for s in range(0, x.shape[0], batch_size)])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


def run_autoattack(model: torch.nn.Module, data: ImageData, attacks: Sequence[Attack], version: str = "cpu",
                   n: int = 1000, device="cpu", seed: int = 0, batch_size: int = 250, progress=None) -> Dict:
    """AutoAttack robust accuracy on the first ``n`` images of ``data`` for each attack (norm, eps).

    Returns {"version", "settings" (what ran, in words), "attacks_run", "library", "n", "seed", "clean_acc",
    "robust": {label: accuracy}, "seconds" (all attacks), "seconds_per_attack": {label: s}, "warnings"
    (distinct warnings the library logged, e.g. zero gradients)}. ``progress(label, acc, seconds)`` is
    called after each attack. The model's train/eval mode is restored afterwards."""
    import pyautoattack

    if version not in VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    sub = data.subset(int(n))
    x, y = to_float(sub.x).to(device), sub.y.to(device)
    was_training = model.training
    model.eval()
    log, handler = logging.getLogger(_LOGGER), _Collect()
    log.addHandler(handler)
    out = {"version": version, "settings": VERSIONS[version]["settings"], "attacks_run": VERSIONS[version]["attacks"],
           "library": f"pyautoattack {pyautoattack.__version__}", "n": len(sub), "seed": seed,
           "clean_acc": int(_correct(model, x, y, batch_size).sum()) / len(sub), "robust": {},
           "seconds_per_attack": {}}
    try:
        for a in attacks:
            t0 = time.perf_counter()
            acc = int(robust_flags(model, x, y, a, version, device, seed, batch_size).sum()) / len(sub)
            out["robust"][a.label] = acc
            out["seconds_per_attack"][a.label] = time.perf_counter() - t0
            if progress is not None:
                progress(a.label, acc, out["seconds_per_attack"][a.label])
    finally:
        log.removeHandler(handler)
        model.train(was_training)
    out["seconds"] = sum(out["seconds_per_attack"].values())
    out["warnings"] = handler.messages
    return out
