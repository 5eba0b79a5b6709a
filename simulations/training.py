"""Real training algorithms for linear models on samples of the feature model (docs/theory.md section 5).

Everything here is the actual algorithm, not a closed-form shortcut:

* SGD with momentum and a decaying learning rate (cosine or step), logistic loss l(z) = log(1 + e^-z)
  on the margin z = y f(x), labels y in {-1, +1};
* SAM (Foret et al. 2021) with m-sharpness: a mini-batch of B examples is split into B/m groups; each
  group g takes its own ascent e_g = rho * grad L_g(w) / ||grad L_g(w)||_2 (``samrobust.sam.sam_perturbation``)
  and the descent gradient is the average over groups of grad L_g(w + e_g). m = 1 is per-example SAM
  (docs/theory.md L2-L4), computed with ``torch.func`` (``vmap`` over groups of ``grad``), no Python loop;
* PGD adversarial training (Madry et al. 2018): the inner maximisation is ``samrobust.attacks.pgd`` with real
  iterations (l_inf or l2), never the closed form of L1.

Model forms (docs/theory.md T2/T5):

* ``"free"``:         f(x) = v . x (unconstrained; add ``weight_decay`` for the weight-decay form);
* ``"fixed-scale"``:  f(x) = tau * w . x / ||w||_2, with w renormalised to ||w|| = 1 after every step (T5).

Many independent runs ("replicas": seeds, and for SAM also rho values) are trained at once: the parameter
is a (R, D) tensor and the loss is the *sum* over replicas of each replica's mean batch loss, so each row
receives exactly its own gradient, and torch's SGD (elementwise) keeps the rows independent. Each replica
has its own training set and its own shuffling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from samrobust.attacks import pgd
from samrobust.sam import sam_perturbation
from samrobust.threat import normalize_norm

__all__ = [
    "SimTrainConfig", "FORMS", "METHODS", "margins", "logistic_loss", "sample_replicas",
    "sam_gradient_vectorized", "sam_gradient_loop", "pgd_linear", "train_replicas",
    "make_optimizer", "make_scheduler", "fresh_data", "fixed_data",
]

FORMS = ("free", "fixed-scale")
METHODS = ("st", "sam", "at")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class SimTrainConfig:
    """One training recipe (shared by all replicas trained together).

    method: "st" (standard training), "sam" (rho, m) or "at" (PGD adversarial training: eps, norm,
    pgd_steps, pgd_step_size, pgd_random_start). form: "free" or "fixed-scale" (tau).
    Optimiser: SGD(lr, momentum, weight_decay) with a per-step ``schedule`` ("cosine" to 0, "step":
    x0.1 at 50% and 75% of the steps, or "constant"), ``epochs`` passes over ``n_train`` samples in
    mini-batches of ``batch_size`` (a multiple of m for SAM).
    """

    method: str = "st"
    form: str = "free"
    tau: float = 4.0
    rho: float = 0.0
    m: int = 1
    eps: float = 0.0
    norm: str = "inf"
    pgd_steps: int = 5
    pgd_step_size: Optional[float] = None
    pgd_random_start: bool = True
    n_train: int = 10000
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("tau", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite positive number, got {v!r}")
        for name in ("rho", "eps", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("m", "n_train", "epochs", "batch_size"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.pgd_steps < 0:
            raise ValueError(f"pgd_steps must be >= 0, got {self.pgd_steps!r}")
        if self.method == "sam" and self.batch_size % self.m:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of m ({self.m})")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= n_train ({self.n_train})")
        object.__setattr__(self, "norm", normalize_norm(self.norm))   # "inf" | "l2"; ValueError otherwise

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- model and loss

def margins(P: torch.Tensor, X: torch.Tensor, form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """f(x) for weights P (D,) or (R, D) and inputs X (..., D) or (R, B, D).

    free: f = P . x;  fixed-scale: f = tau * P . x / ||P||_2 (docs/theory.md T5).
    """
    z = (X @ P.unsqueeze(-1)).squeeze(-1)
    if form == "fixed-scale":
        z = tau * z / torch.linalg.vector_norm(P, dim=-1, keepdim=True)
    return z


def logistic_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise logistic loss l(y z) = log(1 + exp(-y z)) (docs/theory.md section 2)."""
    return F.softplus(-y * z)


def sample_replicas(model, n: int, seeds: Sequence[int], dtype=torch.float64):
    """Independent training sets, one per seed: X (R, n, D), y (R, n) from ``model.sample``."""
    xs, ys = [], []
    for s in seeds:
        rng = np.random.default_rng(s)  # an int seed or a numpy SeedSequence
        X, y = model.sample(int(n), rng)
        xs.append(torch.as_tensor(np.asarray(X), dtype=dtype))
        ys.append(torch.as_tensor(np.asarray(y), dtype=dtype))
    return torch.stack(xs), torch.stack(ys)


def fresh_data(model, n: int, seeds: Sequence[int]) -> Callable:
    """Online sampling: epoch t of replica r trains on a new sample of n drawn with seed (seeds[r], t).
    SGD then minimises the population risk, whose minimisers are docs/theory.md's T1-T5."""
    seeds = [int(s) for s in seeds]

    def data(epoch: int):
        return sample_replicas(model, n, [np.random.SeedSequence([s, int(epoch)]) for s in seeds])
    return data


def fixed_data(model, n: int, seeds: Sequence[int]) -> Callable:
    """A fixed training set of n samples per replica, reused every epoch (empirical risk)."""
    X, y = sample_replicas(model, n, [int(s) for s in seeds])
    return lambda epoch: (X, y)


# --------------------------------------------------------------------------- SAM

def _group_loss_fn(form: str, tau: float) -> Callable:
    def group_loss(p, xg, yg):
        return logistic_loss(margins(p, xg, form, tau), yg).mean()
    return group_loss


def sam_gradient_vectorized(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, rho, m: int,
                            form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """m-sharpness SAM descent gradient for every replica at once (no Python loop over examples).

    P (R, D) weights, X (R, B, D), y (R, B), rho float or (R,) tensor, B a multiple of m. For replica r
    and group g (m consecutive examples): e_g = rho_r * grad L_g(P_r) / ||grad L_g(P_r)|| and the
    returned gradient is mean_g grad L_g(P_r + e_g). Computed by vmap (replicas) of vmap (groups) of
    torch.func.grad; the ascent is ``samrobust.sam.sam_perturbation`` (called with rho = 1 and scaled by
    rho_r, since e is linear in rho and rho may differ between replicas).
    """
    R, B, D = X.shape
    if B % m:
        raise ValueError(f"batch size {B} must be a multiple of m={m}")
    G = B // m
    rho_t = torch.as_tensor(rho, dtype=P.dtype).expand(R)
    g_fn = grad(_group_loss_fn(form, tau))
    unit_ascent = vmap(lambda g: sam_perturbation([g], 1.0)[0])

    def one_replica(p, Xr, yr, rho_r):
        Xg, yg = Xr.reshape(G, m, D), yr.reshape(G, m)
        g = vmap(g_fn, in_dims=(None, 0, 0))(p, Xg, yg)            # (G, D) group gradients at w
        e = rho_r * unit_ascent(g)                                  # (G, D) ascent per group
        return vmap(g_fn)(p + e, Xg, yg).mean(0)                   # mean_g grad L_g(w + e_g)

    return vmap(one_replica)(P.detach(), X, y, rho_t)


def sam_gradient_loop(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, rho, m: int,
                      form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """Reference implementation of :func:`sam_gradient_vectorized` with explicit Python loops over
    replicas and groups (autograd per group). Used by tests and the benchmark only."""
    R, B, D = X.shape
    if B % m:
        raise ValueError(f"batch size {B} must be a multiple of m={m}")
    rho_t = torch.as_tensor(rho, dtype=P.dtype).expand(R)
    out = torch.zeros_like(P)
    for r in range(R):
        acc = torch.zeros(D, dtype=P.dtype)
        for start in range(0, B, m):
            xg, yg = X[r, start:start + m], y[r, start:start + m]
            w = P[r].detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(logistic_loss(margins(w, xg, form, tau), yg).mean(), w)
            (e,) = sam_perturbation([g], float(rho_t[r]))
            w2 = (P[r].detach() + e).requires_grad_(True)
            (g2,) = torch.autograd.grad(logistic_loss(margins(w2, xg, form, tau), yg).mean(), w2)
            acc += g2
        out[r] = acc / (B // m)
    return out


# --------------------------------------------------------------------------- PGD

def pgd_linear(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "inf",
               steps: int = 10, step_size: Optional[float] = None, random_start: bool = True,
               form: str = "free", tau: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD (``samrobust.attacks.pgd``) on the linear model(s) P (R, D) or (D,) against inputs X (R, B, D) or
    (B, D), maximising the logistic loss; inputs are unbounded (clamp=None). Returns x_adv, same shape.
    Default step size 2.5 * eps / steps (so l_inf sign steps reach any vertex from a random start)."""
    if step_size is None:  # Madry et al.'s rule: the iterates can cross the ball 2.5 times
        step_size = 2.5 * float(eps) / max(int(steps), 1)
    Pd = P.detach()
    shape = X.shape
    flat_x = X.reshape(-1, shape[-1])
    flat_y = y.reshape(-1)

    def forward(xf):
        return margins(Pd, xf.reshape(shape), form, tau).reshape(-1)

    def loss_fn(z, yy):
        return logistic_loss(z, yy).sum()

    x_adv = pgd(forward, flat_x, flat_y, float(eps), norm=norm, steps=steps, step_size=step_size,
                random_start=random_start, loss_fn=loss_fn, clamp=None, generator=generator)
    return x_adv.reshape(shape)


# --------------------------------------------------------------------------- training loop

def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    """The per-step learning-rate schedule of every param group of ``opt``: "cosine" (to 0 after
    ``total_steps``), "step" (x0.1 at 50% and 75% of the steps) or "constant"."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def make_optimizer(P: torch.Tensor, cfg: SimTrainConfig, total_steps: int):
    """torch SGD(momentum, weight_decay) and its per-step learning-rate schedule."""
    opt = torch.optim.SGD([P], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, make_scheduler(opt, cfg.schedule, total_steps)


def init_weights(R: int, D: int, cfg: SimTrainConfig, gen: torch.Generator, dtype) -> torch.Tensor:
    if cfg.form == "fixed-scale":  # random unit vectors (the scale is fixed by tau)
        w = torch.randn(R, D, generator=gen, dtype=dtype)
        return w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    return torch.zeros(R, D, dtype=dtype)


def train_replicas(data, cfg: SimTrainConfig, seed: int = 0, rho: Optional[Sequence[float]] = None,
                   source: Optional[Sequence[int]] = None, progress: Optional[Callable] = None
                   ) -> np.ndarray:
    """Train R independent linear models with the real algorithm of ``cfg``; returns weights (R, D).

    ``data(epoch) -> (X (U, n, D), y (U, n))`` gives U training samples for an epoch (see
    :func:`fresh_data`, :func:`fixed_data`); replica r trains on sample ``source[r]`` (default: r) with
    that sample's shuffling, so replicas that differ only in rho share data (common random numbers).
    For SAM, ``rho`` gives one value per replica (default cfg.rho). ``seed`` drives shuffling,
    initialisation and PGD random starts. For the fixed-scale form the rows are the unit vectors w
    (the model is tau * w . x). ``progress(1)`` is called after every epoch.
    """
    X, y = data(0)
    U, n, D = X.shape
    src = torch.arange(U) if source is None else torch.as_tensor(list(source), dtype=torch.long)
    R = len(src)
    if n < cfg.batch_size:
        raise ValueError(f"n_train ({n}) must be >= batch_size ({cfg.batch_size})")
    gen = torch.Generator().manual_seed(int(seed))
    P = init_weights(R, D, cfg, gen, X.dtype).requires_grad_(True)
    steps_per_epoch = n // cfg.batch_size
    opt, sched = make_optimizer(P, cfg, cfg.epochs * steps_per_epoch)
    rho_t = torch.as_tensor(cfg.rho if rho is None else list(rho), dtype=X.dtype).expand(R)
    rows = src.unsqueeze(1)
    for epoch in range(cfg.epochs):
        if epoch:
            X, y = data(epoch)
        perm = torch.argsort(torch.rand(U, n, generator=gen), dim=1)[src]
        for b in range(steps_per_epoch):
            idx = perm[:, b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = X[rows, idx], y[rows, idx]
            opt.zero_grad(set_to_none=True)
            if cfg.method == "sam":
                P.grad = sam_gradient_vectorized(P, xb, yb, rho_t, cfg.m, cfg.form, cfg.tau)
            else:
                if cfg.method == "at":
                    xb = pgd_linear(P, xb, yb, cfg.eps, cfg.norm, cfg.pgd_steps, cfg.pgd_step_size,
                                    cfg.pgd_random_start, cfg.form, cfg.tau, generator=gen)
                loss = logistic_loss(margins(P, xb, cfg.form, cfg.tau), yb).mean(dim=1).sum()
                loss.backward()
            opt.step()
            sched.step()
            if cfg.form == "fixed-scale":
                with torch.no_grad():
                    P /= torch.linalg.vector_norm(P, dim=1, keepdim=True)
        if progress is not None:
            progress(1)
    return P.detach().cpu().numpy()
