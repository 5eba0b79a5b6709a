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

from .data import SyntheticSpec
from .robustness import Attack
from .train import TrainConfig

__all__ = ["TRAIN_DEFAULTS", "RUN_DEFAULTS", "CIFAR_PROTOCOL", "FASHION_MNIST_PROTOCOL", "PROTOCOLS",
           "PROFILES", "QUICK", "TRAIN_OPTIONS", "EvalSettings", "RunSpec"]

#: TrainConfig's defaults: the reference training settings (docs/protocol.md); every run starts from them.
TRAIN_DEFAULTS = TrainConfig()

#: Defaults of the grid options that TrainConfig does not hold.
RUN_DEFAULTS = dict(dataset="cifar10", seeds="0", probe_n=2000, threads=0)

# Per-data-set protocol (docs/protocol.md): the grid and the evaluation used unless options say otherwise;
# training settings not named here (epochs, width, batch size, lr) are TRAIN_DEFAULTS'.
CIFAR_PROTOCOL = dict(methods="st,sam,at", rho="0.1,0.2,0.4", eps="8/255",
                      eval_attacks="linf:1/255,linf:2/255,linf:8/255,l2:16/255,l2:32/255,l2:0.5")
FASHION_MNIST_PROTOCOL = dict(CIFAR_PROTOCOL, rho="0.05,0.1,0.2,0.4", eps="0.1", epochs=30,
                              eval_attacks="linf:0.01,linf:0.02,linf:0.05,linf:0.1,l2:0.25,l2:0.5,l2:1.0")
PROTOCOLS = {
    "cifar10": CIFAR_PROTOCOL, "cifar100": CIFAR_PROTOCOL,
    "synthetic": dict(CIFAR_PROTOCOL, n_train=10000, n_test=2000),
    "fashion-mnist": FASHION_MNIST_PROTOCOL,
    # digits: the small real set of the test suite; 8x8 images with 17 grey levels
    "digits": dict(FASHION_MNIST_PROTOCOL, epochs=10, width=8, batch_size=64, lr=0.05,
                   eval_attacks="linf:0.05,linf:0.1,l2:0.5"),
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

    def record(self, dataset: str, n_test: Optional[int]) -> Dict:
        """The "eval" entry of a result JSON (a finished run is reused only when it matches)."""
        return {"attack_steps": self.steps, "restarts": self.restarts,
                "attacks": [a.label for a in self.attacks], "n_test": n_test,
                "probe_n": self.probe_n if dataset == "synthetic" else None,
                "loss": self.loss, "n_robust": self.n_robust, "best_iterate": True,
                **({"autoattack": {"version": self.autoattack, "n": self.aa_n}} if self.autoattack != "off"
                   else {})}


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
