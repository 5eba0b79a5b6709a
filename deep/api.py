"""The Python route: your own model through ST / SAM / AT, PGD and AutoAttack, in a few lines.

Example (README.md, "Your own model")::

    from deep import api
    data = api.load("fashion-mnist", n_train=2000, n_test=500)
    model = api.train(net, data, method="sam", rho=0.1, epochs=1)   # a trained copy of net
    api.accuracy(model, data), api.robust_accuracy(model, data, "linf:0.05"), api.autoattack(model, data, "linf:0.05")

``net`` is any ``torch.nn.Module`` taking images in [0, 1] of shape (N, C, H, W) and returning logits
(normalisation inside the model, so attacks work in pixel space). Training is :func:`deep.train.fit`
(the same SAM step, PGD and lr schedule as ``deep.run``); evaluation is :func:`deep.evaluate.evaluate`
(PGD, best iterate) and :func:`deep.autoattack.run_autoattack`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .images import ImageData
from .datasets import load_data
from .robustness import evaluate, parse_attack
from .train import FitOptions, TrainConfig, fit, resolve_device

__all__ = ["Data", "load", "train", "accuracy", "robust_accuracy", "autoattack"]


@dataclass(frozen=True)
class Data:
    """A data set's name (deep.datasets.DATASETS or "synthetic") and its train and test images."""
    name: str
    train: ImageData
    test: ImageData


def load(dataset: str = "fashion-mnist", n_train: Optional[int] = None, n_test: Optional[int] = None,
         data_dir: str = "data", device: str = "auto") -> Data:
    """The first ``n_train`` / ``n_test`` images of ``dataset`` on ``device`` (as ``deep.run`` loads them;
    Fashion-MNIST from ``data_dir`` or Debian's dataset-fashion-mnist, CIFAR from ``data_dir``)."""
    cfg = TrainConfig(dataset=dataset, n_train=n_train, n_test=n_test)
    tr, te = load_data(cfg, resolve_device(device), data_dir)
    return Data(dataset, tr, te)


def train(model: nn.Module, data: Data, method: str = "st", *, rho: float = 0.1, eps: float = 0.1,
          epochs: int = 6, batch_size: int = 128, lr: float = 0.1, seed: int = 0, progress: bool = False,
          **config) -> nn.Module:
    """A trained copy of ``model`` (``model`` itself keeps its weights, so several methods can start from
    the same initialisation). ``method``: st, sam (radius ``rho``) or at (PGD-10 AT at l_inf ``eps``);
    ``config``: any other :class:`deep.train.TrainConfig` field (momentum, weight_decay, norm, adaptive,
    bf16, ...). Defaults are ``deep.run --profile cpu``'s lr and batch size."""
    cfg = TrainConfig(dataset=data.name, method=method, rho=rho, eps=eps, epochs=epochs, batch_size=batch_size,
                      lr=lr, seed=seed, **config)
    torch.manual_seed(seed)
    res = fit(cfg, data.train, options=FitOptions(model=copy.deepcopy(model), progress=progress,
                                                  desc=method))
    return res.model.eval()


def accuracy(model: nn.Module, data: Data) -> float:
    """Clean accuracy on ``data.test``."""
    return evaluate(model, data.test, ())["clean_acc"]


def robust_accuracy(model: nn.Module, data: Data, attack: str = "linf:0.05", *, steps: int = 10,
                    restarts: int = 1, n: Optional[int] = None) -> float:
    """PGD robust accuracy (``steps`` steps, ``restarts`` random starts, best iterate; correct on the clean
    and every attacked image) on the first ``n`` test images (all by default). ``attack``: norm:eps, e.g.
    ``"linf:0.05"``, ``"linf:8/255"``, ``"l2:0.5"``."""
    a = parse_attack(attack)
    return evaluate(model, data.test, (a,), steps=steps, restarts=restarts, n_robust=n)["robust"][a.label]


def autoattack(model: nn.Module, data: Data, attack: str = "linf:0.05", *, n: int = 100,
               version: str = "cpu", seed: int = 0) -> float:
    """AutoAttack robust accuracy (pyautoattack; ``version`` "cpu": APGD-CE + APGD-T, or "standard") on
    the first ``n`` test images."""
    from .autoattack import run_autoattack

    a = parse_attack(attack)
    return run_autoattack(model, data.test, (a,), version, n=n, device=data.test.x.device,
                          seed=seed)["robust"][a.label]
