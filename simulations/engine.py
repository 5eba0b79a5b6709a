"""The batched training engine: every job of a run that shares data and step count, trained in one loop.

:func:`simulations.training.train_replicas` trains one job (one recipe, all its seeds and rho values)
at a time, one Python step per mini-batch per job. :func:`train_batched` runs the same algorithms for
many jobs at once: all their replicas are rows of one (R, D) weight tensor, grouped in *kernel* blocks
(:func:`kernel_key`: e.g. every PGD-AT row with 5 steps, each with its own norm and eps). Each step takes
one autograd call per phase for all blocks (SAM ascents, each PGD step, the descent gradient;
:func:`_step_gradient`), then one torch SGD step (one param group per learning rate / momentum / weight
decay) and one scheduler step for all rows.

Per job it keeps everything :func:`~simulations.training.train_replicas` does: its own
``torch.Generator`` seeded the same way (initial weights, then per epoch the shuffling, then the PGD
random starts, drawn in the same order and in float64), the same data (epoch t of replica r is sample
``source[r]`` of ``data(t)``), the same optimiser and schedule. So in float64 it reproduces the per-job
route up to float rounding (tests/test_sim_batched.py); the default float32 changes the results by far
less than the claims' tolerances (simulations/README.md, "Engines").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from samrobust.threat import normalize_norm

from .batched_ops import (pgd_random_start, pgd_rows, plain_loss, sam_ascent_batched, sam_ascent_loss,
                          sam_descent_loss, sam_groups)
from .parallel import EpochFeed, Forked, can_fork
from .training import SimTrainConfig, init_weights, make_scheduler

__all__ = ["JobSpec", "kernel_key", "batch_key", "train_batched", "train_sharded", "shard_jobs"]


@dataclass(frozen=True)
class JobSpec:
    """One job inside a batched run: recipe, generator seed, and per replica its rho and data sample."""

    cfg: SimTrainConfig
    seed: int
    rho: Tuple[float, ...]
    source: Tuple[int, ...]

    def __post_init__(self):
        if len(self.rho) != len(self.source):
            raise ValueError(f"rho ({len(self.rho)}) and source ({len(self.source)}) must have one entry "
                             f"per replica")


def kernel_key(cfg: SimTrainConfig) -> tuple:
    """Rows computed together: SAM rows of the same form, tau and m (one group shape), AT rows of the
    same form, tau and PGD step count (norm, radius, step size and random start may differ per row),
    plain rows of the same form and tau. rho, eps and the optimiser may differ per row."""
    if cfg.method == "sam":
        return ("sam", cfg.form, cfg.tau, cfg.m)
    if cfg.method == "at":
        return ("at", cfg.form, cfg.tau, cfg.pgd_steps)
    return ("st", cfg.form, cfg.tau)


def batch_key(cfg: SimTrainConfig) -> tuple:
    """Jobs with equal batch keys (and the same data) can be trained together: same number of steps
    per epoch and epochs, and the same learning-rate schedule."""
    return (cfg.n_train, cfg.epochs, cfg.batch_size, cfg.schedule)


@dataclass
class _Block:
    """Consecutive rows [start, stop) sharing one kernel (``key``, :func:`_row_key`; ``cfg`` is the first
    job's); ``jobs`` are (job index, start, stop) of the rows of each job in the block;
    ``segments`` (AT) are (norm, start, stop) row ranges relative to ``start``, one per threat model."""

    key: tuple
    cfg: SimTrainConfig
    start: int
    stop: int
    jobs: List[Tuple[int, int, int]] = field(default_factory=list)
    segments: List[Tuple[str, int, int]] = field(default_factory=list)
    rho: Optional[torch.Tensor] = None
    eps: Optional[torch.Tensor] = None
    step: Optional[torch.Tensor] = None


def _pgd_step_size(cfg: SimTrainConfig) -> float:
    """PGD step of :func:`simulations.training.pgd_linear`: given, or 2.5 eps / steps."""
    if cfg.pgd_step_size is not None:
        return float(cfg.pgd_step_size)
    return 2.5 * float(cfg.eps) / max(int(cfg.pgd_steps), 1)


def _norm(cfg: SimTrainConfig) -> str:
    """The AT threat model as "inf" / "l2" ("" for other methods)."""
    return normalize_norm(cfg.norm) if cfg.method == "at" else ""


def _row_order(spec: JobSpec) -> tuple:
    """Jobs are laid out by form (so the fixed-scale rows are contiguous), then kernel, then threat model
    (so each AT norm is one segment), then optimiser settings (rows sharing an SGD param group adjacent)."""
    c = spec.cfg
    return (c.form, repr(kernel_key(c)), _norm(c), c.lr, c.momentum, c.weight_decay)


def _segments(b: _Block, specs: Sequence[JobSpec]) -> List[Tuple[str, int, int]]:
    """Maximal row ranges of one AT norm inside block ``b``, relative to its first row."""
    segs: List[Tuple[str, int, int]] = []
    for j, s, e in b.jobs:
        norm = _norm(specs[j].cfg)
        if segs and segs[-1][0] == norm and segs[-1][2] == s - b.start:
            segs[-1] = (norm, segs[-1][1], e - b.start)
        else:
            segs.append((norm, s - b.start, e - b.start))
    return segs


def _row_key(cfg: SimTrainConfig, rho: float) -> tuple:
    """:func:`kernel_key` of one row. A SAM row with rho = 0 is plain gradient descent (its ascent is
    e = 0 * g/||g|| = 0, and the mean over groups of the group losses at P is the batch loss), so it is
    computed with the plain rows of its form: the same gradient up to the order of the sums, at a fifth
    of the cost of a fixed-scale SAM row with m = 1 (S5's rho = 0 point)."""
    if cfg.method == "sam" and rho == 0:
        return ("st", cfg.form, cfg.tau)
    return kernel_key(cfg)


def _layout(specs: Sequence[JobSpec], dtype) -> Tuple[List[Tuple[int, int]], List[_Block]]:
    """Row layout (:func:`_row_order`): each job's rows [start, stop) and the kernel blocks (runs of rows
    with one :func:`_row_key`) with their per-row rho, eps and PGD step tensors."""
    order = sorted(range(len(specs)), key=lambda j: _row_order(specs[j]))
    spans: List[Tuple[int, int]] = [(0, 0)] * len(specs)
    blocks: List[_Block] = []
    row = 0
    for j in order:
        spec = specs[j]
        spans[j] = (row, row + len(spec.source))
        for r in range(row, spans[j][1]):
            key = _row_key(spec.cfg, spec.rho[r - row])
            if not blocks or blocks[-1].key != key:
                blocks.append(_Block(key, spec.cfg, r, r))
            b = blocks[-1]
            b.stop = r + 1
            if b.jobs and b.jobs[-1][0] == j:
                b.jobs[-1] = (j, b.jobs[-1][1], r + 1)
            else:
                b.jobs.append((j, r, r + 1))
        row = spans[j][1]
    for b in blocks:
        per_row = [(specs[j].rho[r - spans[j][0]], specs[j].cfg) for j, s, e in b.jobs for r in range(s, e)]
        b.rho = torch.tensor([r for r, _ in per_row], dtype=dtype)
        b.eps = torch.tensor([float(c.eps) for _, c in per_row], dtype=dtype)
        b.step = torch.tensor([_pgd_step_size(c) for _, c in per_row], dtype=dtype)
        b.segments = _segments(b, specs) if b.key[0] == "at" else []
    return spans, blocks


def _pgd_start(b: _Block, specs, gens, batch: int, D: int, dtype) -> torch.Tensor:
    """PGD's starting perturbation for the rows of AT block ``b``: zeros, and for each job with a random
    start the one ``samrobust.attacks.pgd`` draws for that job's (R_j * B, D) inputs, from its own generator
    in float64 (none when eps = 0, as there)."""
    delta = torch.zeros(b.stop - b.start, batch, D, dtype=dtype)
    for j, s, e in b.jobs:
        cfg = specs[j].cfg
        if cfg.pgd_random_start and cfg.eps != 0:
            start = pgd_random_start(((e - s) * batch, D), float(cfg.eps), cfg.norm, gens[j])
            delta[s - b.start:e - b.start].view(-1, D).copy_(start)
    return delta


def _rows_of(b: _Block, *tensors):
    """Block ``b``'s rows of each tensor."""
    return [t[b.start:b.stop] for t in tensors]


def _sam_ascents(blocks: Sequence[_Block], P, xb, yb) -> Dict[int, torch.Tensor]:
    """First SAM pass for every SAM block with *one* autograd call: block index -> ascent e (R_b, G, D),
    e_rg = rho_r grad L_g(P_r) / ||grad L_g(P_r)|| (``samrobust.sam.sam_perturbation`` per group)."""
    sam = [i for i, b in enumerate(blocks) if b.key[0] == "sam"]
    if not sam:
        return {}
    leaves, total = [], 0.0
    with torch.enable_grad():
        for i in sam:
            b = blocks[i]
            Pb, Xb, Yb = _rows_of(b, P, xb, yb)
            W, loss = sam_ascent_loss(Pb, *sam_groups(Xb, Yb, b.cfg.m), b.cfg.form, b.cfg.tau)
            leaves.append(W)
            total = total + loss
        grads = torch.autograd.grad(total, leaves)
    return {i: sam_ascent_batched(g, blocks[i].rho.view(-1, 1, 1)) for i, g in zip(sam, grads)}


def _adversarial_inputs(blocks: Sequence[_Block], P, xb, yb, specs, gens) -> Dict[int, torch.Tensor]:
    """PGD for every AT block (block index -> x_adv), all its norms in one batch (:func:`pgd_rows`)."""
    out = {}
    for i, b in enumerate(blocks):
        if b.key[0] == "at":
            Pb, Xb, Yb = _rows_of(b, P, xb, yb)
            delta = _pgd_start(b, specs, gens, Xb.shape[1], Xb.shape[2], Xb.dtype)
            out[i] = pgd_rows(Pb, Xb, Yb, b.eps, b.step, b.segments, b.cfg.pgd_steps, delta, b.cfg.form,
                              b.cfg.tau)
    return out


def _step_gradient(blocks: Sequence[_Block], P, xb, yb, specs, gens) -> torch.Tensor:
    """Gradient of every row on its mini-batch with its block's real algorithm: the SAM ascents
    (:func:`_sam_ascents`), the PGD attacks (:func:`_adversarial_inputs`), then *one* autograd call for
    the descent gradient of all rows: the sum over blocks of sum_r L_r (SAM at P_r + e_r, AT at x_adv,
    ST at the batch). Rows do not interact, so row r of the result is its own algorithm's gradient."""
    asc = _sam_ascents(blocks, P, xb, yb)
    adv = _adversarial_inputs(blocks, P, xb, yb, specs, gens)
    Pl = P.detach().requires_grad_(True)
    total = 0.0
    with torch.enable_grad():
        for i, b in enumerate(blocks):
            Pb, Xb, Yb = _rows_of(b, Pl, xb, yb)
            if i in asc:
                total = total + sam_descent_loss(Pb, asc[i], *sam_groups(Xb, Yb, b.cfg.m), b.cfg.form, b.cfg.tau)
            else:
                total = total + plain_loss(Pb, adv.get(i, Xb), Yb, b.cfg.form, b.cfg.tau)
        (g,) = torch.autograd.grad(total, Pl)
    return g


def _param_runs(specs, spans) -> List[Tuple[tuple, int, int]]:
    """Maximal runs of consecutive rows whose jobs share (lr, momentum, weight decay)."""
    runs: List[Tuple[tuple, int, int]] = []
    for spec, (s, e) in sorted(zip(specs, spans), key=lambda t: t[1]):
        hp = (spec.cfg.lr, spec.cfg.momentum, spec.cfg.weight_decay)
        if runs and runs[-1][0] == hp and runs[-1][2] == s:
            runs[-1] = (hp, runs[-1][1], e)
        else:
            runs.append((hp, s, e))
    return runs


def _optimizer(specs, spans, P: torch.Tensor, G: torch.Tensor, total_steps: int):
    """torch SGD over row views of P (their gradients: the matching views of G), one param group per
    (lr, momentum, weight decay), and the shared schedule. SGD is elementwise, so each row is
    updated exactly as if it were its own parameter."""
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for hp, s, e in _param_runs(specs, spans):
        view = P[s:e]
        view.grad = G[s:e]
        groups.setdefault(hp, []).append(view)
    opt = torch.optim.SGD([{"params": v, "lr": lr, "momentum": mom, "weight_decay": wd}
                           for (lr, mom, wd), v in groups.items()], lr=specs[0].cfg.lr, foreach=True)
    return opt, make_scheduler(opt, specs[0].cfg.schedule, total_steps)


def _check_batch(specs: Sequence[JobSpec], U: int, n: int) -> None:
    """ValueError unless the jobs can share one loop over data of U samples of n examples."""
    if not specs:
        raise ValueError("no jobs to train")
    keys = {batch_key(s.cfg) for s in specs}
    if len(keys) != 1:
        raise ValueError(f"jobs trained together must share (n_train, epochs, batch_size, schedule), "
                         f"got {sorted(keys)}")
    if n < specs[0].cfg.batch_size:
        raise ValueError(f"n_train ({n}) must be >= batch_size ({specs[0].cfg.batch_size})")
    if any(not 0 <= i < U for s in specs for i in s.source):
        raise ValueError(f"source indices must lie in [0, {U})")


def _init(specs, spans, D: int, dtype):
    """Per job its generator and initial rows (drawn in float64 as the per-job route does)."""
    gens = [torch.Generator().manual_seed(int(s.seed)) for s in specs]
    P = torch.empty(max(e for _, e in spans), D, dtype=dtype)
    for spec, gen, (s, e) in zip(specs, gens, spans):
        P[s:e] = init_weights(e - s, D, spec.cfg, gen, torch.float64)
    return gens, P


def _epoch_rows(specs, spans, gens, U: int, n: int) -> torch.Tensor:
    """This epoch's order of the examples of every row, shuffled as by ``train_replicas`` (each job
    from its own generator), as indices into the epoch's data flattened to (U * n, D)."""
    flat = torch.empty(max(e for _, e in spans), n, dtype=torch.long)
    for spec, gen, (s, e) in zip(specs, gens, spans):
        rows = torch.as_tensor(list(spec.source), dtype=torch.long)
        flat[s:e] = torch.argsort(torch.rand(U, n, generator=gen), dim=1)[rows] + rows[:, None] * n
    return flat


def train_batched(specs: Sequence[JobSpec], data: Callable, dtype=torch.float32,
                  progress: Optional[Callable] = None) -> List[np.ndarray]:
    """Train the jobs ``specs`` together; returns each job's weights (R_j, D) as float64 arrays.

    ``data(epoch) -> (X (U, n, D), y (U, n))`` is shared by all jobs (see
    :func:`simulations.training.fresh_data`); the jobs must share :func:`batch_key`. Each job gets the
    result :func:`simulations.training.train_replicas` ``(data, cfg, seed, rho, source)`` gives, up to
    float rounding in ``dtype``. ``progress(len(specs))`` is called after every epoch.
    """
    X, y = data(0)
    U, n, D = X.shape
    _check_batch(specs, U, n)
    cfg0 = specs[0].cfg
    spans, blocks = _layout(specs, dtype)
    gens, P = _init(specs, spans, D, dtype)
    G = torch.zeros_like(P)
    steps, B = n // cfg0.batch_size, cfg0.batch_size
    opt, sched = _optimizer(specs, spans, P, G, cfg0.epochs * steps)
    fixed = [(b.start, b.stop) for b in blocks if b.cfg.form == "fixed-scale"]
    f0, f1 = (fixed[0][0], fixed[-1][1]) if fixed else (0, 0)
    for epoch in range(cfg0.epochs):
        if epoch:
            X, y = data(epoch)
        Xd, yd = X.to(dtype), y.to(dtype)
        Xf, yf = Xd.reshape(U * n, D), yd.reshape(U * n)
        flat = _epoch_rows(specs, spans, gens, U, n)
        for k in range(steps):
            idx = flat[:, k * B:(k + 1) * B].reshape(-1)
            xb, yb = Xf.index_select(0, idx).view(-1, B, D), yf.index_select(0, idx).view(-1, B)
            G.copy_(_step_gradient(blocks, P, xb, yb, specs, gens))
            opt.step()
            sched.step()
            if f1 > f0:
                P[f0:f1] /= torch.linalg.vector_norm(P[f0:f1], dim=1, keepdim=True)
        if progress is not None:
            progress(len(specs))
    return [P[s:e].double().numpy().copy() for s, e in spans]


# Cost per step in microseconds (float32, one core), measured with the default run's jobs, for balancing
# shards only: PGD-AT 60 per row and PGD step (+ 80 per PGD step for the block), SAM 100 per row
# (+ 300 for the block), plain gradient (ST, and SAM rows with rho = 0) 20 per row (+ 100).
_ROW_COST = {"st": 20.0, "sam": 100.0}
_BLOCK_COST = {"st": 100.0, "sam": 300.0}


def _row_cost(cfg: SimTrainConfig, key: tuple) -> float:
    """Estimated time per step of one row computed with kernel ``key`` (:func:`_row_key`)."""
    return 60.0 * cfg.pgd_steps if key[0] == "at" else _ROW_COST[key[0]]


def _block_cost(cfg: SimTrainConfig, key: tuple) -> float:
    """Estimated fixed time per step of one kernel block (paid once per shard that holds its rows)."""
    return 80.0 * cfg.pgd_steps if key[0] == "at" else _BLOCK_COST[key[0]]


def _job_costs(spec: JobSpec) -> Dict[tuple, float]:
    """Estimated time per step of one job's rows, by the kernel each row is computed with (a SAM job's
    rho = 0 rows are plain rows, :func:`_row_key`); the kernels' fixed costs not included."""
    out: Dict[tuple, float] = {}
    for rho in spec.rho:
        key = _row_key(spec.cfg, rho)
        out[key] = out.get(key, 0.0) + _row_cost(spec.cfg, key)
    return out


def shard_jobs(specs: Sequence[JobSpec], k: int) -> List[List[int]]:
    """Split the jobs (by index) into at most ``k`` shards of similar estimated cost: largest job first,
    each to the shard where the total (its rows, plus each kernel's fixed cost once) grows least. A
    job's rows stay together (one generator per job). Empty shards are dropped."""
    costs = [_job_costs(s) for s in specs]
    shards: List[Tuple[float, List[int], set]] = [(0.0, [], set()) for _ in range(max(1, int(k)))]
    for i in sorted(range(len(specs)), key=lambda i: -sum(costs[i].values())):

        def grown(t: int) -> float:
            load, _, keys = shards[t]
            return load + sum(c + (0.0 if key in keys else _block_cost(specs[i].cfg, key))
                              for key, c in costs[i].items())

        j = min(range(len(shards)), key=grown)
        shards[j] = (grown(j), shards[j][1] + [i], shards[j][2] | set(costs[i]))
    return [sorted(idx) for _, idx, _ in shards if idx]


class _ScaledProgress:
    """The progress of the first shard stretched to the whole group: the other shards train at the same
    time in child processes that report nothing, so each row-epoch of the first shard stands for ``scale``
    of the group (in whole units); :meth:`finish` adds what is left once all shards are done. Without this
    the bar moved at a fraction of its real speed and jumped at the end of each group, and the ETA with it."""

    def __init__(self, progress: Optional[Callable], scale: float):
        self.progress, self.scale, self.raw, self.sent = progress, scale, 0, 0

    def __call__(self, n: int) -> None:
        self.raw += n
        step = int(round(self.raw * self.scale)) - self.sent
        if self.progress is not None and step > 0:
            self.sent += step
            self.progress(step)

    def finish(self, total: int) -> None:
        if self.progress is not None and total > self.sent:
            self.progress(total - self.sent)
            self.sent = total


def train_sharded(specs: Sequence[JobSpec], data: Callable, dtype=torch.float32,
                  progress: Optional[Callable] = None, workers: int = 1) -> List[np.ndarray]:
    """:func:`train_batched` with the jobs split into ``workers`` shards (:func:`shard_jobs`) trained at
    the same time, all but the first in forked child processes (one process where fork is missing).
    Each row's result does not depend on the other rows of its batch, so it is the same as one
    :func:`train_batched` call (tests/test_sim_batched.py)."""
    shards = shard_jobs(specs, workers if can_fork() else 1)
    if len(shards) == 1:
        return train_batched(specs, data, dtype, progress)
    # the parent samples each epoch once and shares it (sampling is ~2 s of a default run per process)
    feed = EpochFeed(data, data(0), len(shards) - 1, dtype)
    children = [Forked(train_batched, [specs[i] for i in idx], feed.reader(r), dtype)
                for r, idx in enumerate(shards[1:])]
    feed.watch(children)
    scaled = _ScaledProgress(progress, len(specs) / len(shards[0]))
    try:
        first = train_batched([specs[i] for i in shards[0]], feed.producer(), dtype, scaled)
        results = [first] + [c.result() for c in children]
    finally:
        for c in children:
            c.cancel()
    scaled.finish(len(specs) * specs[0].cfg.epochs)
    out: List[Optional[np.ndarray]] = [None] * len(specs)
    for idx, weights in zip(shards, results):
        for i, W in zip(idx, weights):
            out[i] = W
    return out
