"""The run specification of ``python -m deep.run``: its presets, the per-data-set protocols and the typed
object the command line resolves into.

``deep.run.resolve_spec`` fills the options left unset from the preset (``--profile`` / ``--quick``,
PROFILES), then from the data set's protocol (PROTOCOLS), then from TrainConfig's defaults, validates them
and returns a :class:`RunSpec`: the grid (methods, architectures, radii, seeds), the training settings
every run shares (``RunSpec.base``, a :class:`deep.train.TrainConfig` built with ``dataclasses.replace``
from TrainConfig's defaults), the evaluation (:class:`EvalSettings`) and where data and results live.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .synthetic import SyntheticSpec
from .robustness import Attack
from .train import TrainConfig

__all__ = ["TRAIN_DEFAULTS", "RUN_DEFAULTS", "CIFAR_PROTOCOL", "FASHION_MNIST_PROTOCOL", "PROTOCOLS",
           "PROFILES", "PROFILE_FOLDERS", "CURVE_STEPS", "QUICK", "TRAIN_OPTIONS", "EvalSettings", "RunSpec"]

#: PGD steps of the learning curves' robust accuracy (PGD-10, best iterate, one restart).
CURVE_STEPS = 10

#: TrainConfig's defaults: the reference training settings (docs/protocol.md); every run starts from them.
TRAIN_DEFAULTS = TrainConfig()

#: Defaults of the grid options that TrainConfig does not hold.
RUN_DEFAULTS = dict(dataset="cifar10", seeds="0", probe_n=2000, threads=0, curve_n=200, curve_attack="linf:2/255")

# Per-data-set protocol (docs/protocol.md): the grid and the evaluation used unless options say otherwise;
# training settings not named here (epochs, width, batch size, lr) are TRAIN_DEFAULTS'.
# curve_attack: the headline radius of the learning curves (PGD-10 on --curve-n images at a few epochs): the
# small l_inf radius at which the paper's claim (a), SAM more robust than ST, is judged.
CIFAR_PROTOCOL = dict(methods="st,sam,at", rho="0.1,0.2,0.4", eps="8/255",
                      eval_attacks="linf:1/255,linf:2/255,linf:8/255,l2:16/255,l2:32/255,l2:0.5",
                      curve_attack="linf:2/255")
FASHION_MNIST_PROTOCOL = dict(CIFAR_PROTOCOL, rho="0.05,0.1,0.2,0.4", eps="0.1", epochs=30,
                              eval_attacks="linf:0.01,linf:0.02,linf:0.05,linf:0.1,l2:0.25,l2:0.5,l2:1.0",
                              curve_attack="linf:0.02")
PROTOCOLS = {
    "cifar10": CIFAR_PROTOCOL, "cifar100": CIFAR_PROTOCOL,
    "synthetic": dict(CIFAR_PROTOCOL, n_train=10000, n_test=2000),
    "fashion-mnist": FASHION_MNIST_PROTOCOL,
    # digits: the small real set of the test suite; 8x8 images with 17 grey levels
    "digits": dict(FASHION_MNIST_PROTOCOL, epochs=10, width=8, batch_size=64, lr=0.05,
                   eval_attacks="linf:0.05,linf:0.1,l2:0.5", curve_attack="linf:0.1"),
}

# Presets: replacements of the defaults (explicit options still win). The cpu preset fits the whole
# Fashion-MNIST grid (ST, SAM at 4 radii, AT; 3 seeds) into about 90 minutes on two CPU cores: width 16,
# the first 10,000 training images (942-1,027 per class), 6 epochs, bf16 autocast + channels_last for
# training (2.3x fp32 on AVX512-BF16 CPUs, deep.bench), clean accuracy on all 10,000 test images and
# robust accuracy on the first 2,000 (188-219 per class).
PROFILES = {
    "quick": dict(dataset="synthetic", methods="st,sam,at", rho="0.1", eps="8/255", epochs=1, n_train=1024,
                  n_test=200, width=8, batch_size=16, lr=0.05, probe_n=500, threads=1),
    "cpu": dict(dataset="fashion-mnist", seeds="0,1,2", width=16, n_train=10000, epochs=6, batch_size=128,
                lr=0.1, bf16=True, channels_last=True, n_robust=2000),
}
# converged: the Fashion-MNIST protocol trained to the plateau on two CPU cores (issue 18; docs/protocol.md,
# "Converged protocol"): all 60,000 training images, the same 24 epochs for every method. 6 and 12 epochs failed
# the plateau test (doubling 12 moved clean accuracy by +0.74 [+0.02, +1.46] points for ST over 3 seeds,
# results/converged/cpu-12ep); doubling 24 moved it by +0.43 (ST) and +0.52 (SAM 0.1), results/converged/cpu-24ep.
# Width 8 (the largest that fits: measured on one core with bf16, width 8 trains ST / SAM / AT at 2,460 / 1,219
# / 284 images/s, width 16 at 1,267 / 627 / 162); ST and SAM rho 0.05 / 0.1 / 0.2 with 3 seeds, AT l_inf 0.1
# (PGD-10) with 2; --plateau-check adds one run per method at twice the epochs (seed 0) under
# <out>/fashion-mnist-converged/plateau/. --epochs 12 gives the shorter grid of results/converged/cpu-12ep.
PROFILES["converged"] = dict(dataset="fashion-mnist", methods="st,sam,at", rho="0.05,0.1,0.2", eps="0.1",
                             seeds="0,1,2", at_seeds="0,1", width=8, n_train=None, epochs=24, batch_size=128,
                             lr=0.1, bf16=True, channels_last=True, n_robust=1000,
                             eval_attacks="linf:0.02,linf:0.05,l2:0.5", curve_n=200)
#: results folder under --out of the presets that must not mix with the data set's own folder
PROFILE_FOLDERS = {"quick": "quick", "converged": "fashion-mnist-converged"}
QUICK = PROFILES["quick"]

#: TrainConfig field -> the deep.run option (argparse dest) that sets it for every run of the grid.
TRAIN_OPTIONS = dict(epochs="epochs", batch_size="batch_size", lr="lr", momentum="momentum",
                      weight_decay="weight_decay", width="width", augment="augment", bf16="bf16",
                      channels_last="channels_last", device="device", n_train="n_train", n_test="n_test",
                      attack_steps="at_steps", adaptive="adaptive",
                      sam_all_reduce_ascent="sam_all_reduce_ascent", bn_stats="bn_stats")


@dataclass(frozen=True)
class EvalSettings:
    """How every run of the grid is evaluated (``--attack-steps``, ``--eval-attacks``, ...)."""
    attacks: Tuple[Attack, ...]
    steps: int
    restarts: int
    loss: str                       # ce | cw
    n_robust: Optional[int]         # robust accuracy on the first n test images (None: all)
    batch_size: int
    probe_n: int                    # images per probe variant (generated data only)
    autoattack: str                 # off | cpu | standard
    aa_n: int
    curve_n: int = 0                # learning curves: PGD-10 on the first curve_n test images (0: clean only)
    curve_attack: Optional[Attack] = None   # the curves' radius (the protocol's curve_attack)

    def record(self, dataset: str, n_test: Optional[int]) -> Dict:
        """The "eval" entry of a result JSON (a finished run is reused only when it matches)."""
        return {"attack_steps": self.steps, "restarts": self.restarts,
                "attacks": [a.label for a in self.attacks], "n_test": n_test,
                "probe_n": self.probe_n if dataset == "synthetic" else None,
                "loss": self.loss, "n_robust": self.n_robust, "best_iterate": True,
                **({"autoattack": {"version": self.autoattack, "n": self.aa_n}} if self.autoattack != "off"
                   else {})}

    def curves_record(self) -> Optional[Dict]:
        """The "curves" entry of a result JSON: how the learning curves in its history were measured (not
        part of "eval", so that finished runs of earlier versions still match)."""
        out = {"clean": "all test images, every epoch"}
        if self.curve_n and self.curve_attack is not None:
            out.update(n=self.curve_n, attack=self.curve_attack.label, steps=CURVE_STEPS, restarts=1,
                       best_iterate=True)
        return out

    def curve_epochs(self, epochs: int) -> List[int]:
        """Epochs (from 1) whose learning-curve record has the PGD number: the first, every third of the
        budget, and the last; clean test accuracy is in every epoch's record."""
        step = max(1, epochs // 3)
        return sorted({1, epochs} | set(range(step, epochs + 1, step)))


@dataclass(frozen=True)
class RunSpec:
    """Everything ``python -m deep.run`` does, resolved: one run per (seed, arch, method, radius)."""
    base: TrainConfig               # what every run shares; make_configs sets method, rho / eps, seed, arch
    methods: List[str]
    archs: List[str]
    rhos: List[float]
    epss: List[float]
    seeds: List[int]
    eval: EvalSettings
    device: torch.device            # where data and models live (under torchrun: this process's device)
    out_dir: Path                   # <out>/<dataset> (<out>/quick for the quick preset)
    threads: int                    # torch CPU threads (0: torch's default)
    profile: Optional[str]
    data_dir: str
    download: bool
    resume: bool
    force: bool
    progress: bool
    compile: bool
    cuda_graph: bool = False        # replay a CUDA graph of the training step (deep/graphed.py; speed only)
    at_seeds: Optional[List[int]] = None   # seeds of AT and its variants (None: seeds)
    jobs: int = 1                   # runs at once, one process each (deep.run --jobs)
    plateau_check: Optional[str] = None   # run-id globs of the doubled-budget runs of the plateau test
                                          # (<out_dir>/plateau; "*": every method configuration; None: none)

    @property
    def dataset(self) -> str:
        return self.base.dataset

    @property
    def synthetic(self) -> SyntheticSpec:
        return self.base.synthetic_spec

    @property
    def attacks(self) -> Tuple[Attack, ...]:
        return self.eval.attacks

    def eval_record(self) -> Dict:
        return self.eval.record(self.dataset, self.base.n_test)
