"""Run settings (quick / default / full), the training jobs each claim needs, and the per-job cache.

A *job* is one training recipe (``SimTrainConfig``) applied to all seeds at once (and, for SAM, to a list
of rho values, vectorised as replicas). Each finished job is written atomically to
``<out>/cache/<key>-<hash>.json``; the hash covers the feature model, the recipe, the seeds, the rho
list and the engine, so a resumed run skips exactly the jobs whose inputs are unchanged.

Engines (:data:`ENGINES`): ``"batched"`` (default) trains all pending jobs that share data and step
count together (:func:`train_jobs`, :mod:`simulations.engine`), in float32 by default; ``"loop"`` is the
original route, one job at a time with :func:`simulations.training.train_replicas` in float64.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import linear_theory as lt
from samrobust.files import jsonable, write_text_atomic
from samrobust.seeds import SIM_TRAIN_SEED_OFFSET

from .engine import JobSpec, batch_key, train_sharded
from .training import SimTrainConfig, fresh_data, train_replicas

__all__ = ["Settings", "SIM_PROFILES", "Job", "jobs_for", "run_job", "train_jobs", "atomic_write_json",
           "CLAIMS", "CACHE_VERSION", "ENGINES", "DTYPES", "DEFAULT_ENGINE", "engine_tag"]

CLAIMS = ("S1", "S2", "S3", "S4", "S5")
CACHE_VERSION = 1
ENGINES = ("batched", "loop")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_ENGINE = "batched"
DEFAULT_DTYPE = "float32"


def engine_tag(engine: str = DEFAULT_ENGINE, dtype: str = DEFAULT_DTYPE) -> str:
    """'loop' (always float64) or 'batched-<dtype>'; ValueError on unknown names or loop with float32."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if engine == "loop":
        if dtype != "float64":
            raise ValueError("the loop engine trains in float64 only")
        return "loop"
    return f"batched-{dtype}"


@dataclass(frozen=True)
class Settings:
    """Sizes of one simulation run. ``profile`` is a label; see :data:`SIM_PROFILES` for the presets.

    Training (all jobs): ``epochs`` epochs of a *fresh* sample of ``n_per_epoch`` examples per seed
    (online SGD: the target is the population optimum of docs/theory.md), mini-batches of ``batch_size``
    (a multiple of every m), SGD momentum 0.9 with cosine decay; ``lr_free`` for f = v.x,
    ``lr_fixed`` for f = tau w.x/||w||. PGD-AT uses ``pgd_steps`` inner steps (step 2.5 eps/steps,
    random start for l_inf; for l2 ``pgd_random_start_l2``, default off: the input gradient of a linear
    model has a fixed direction, so PGD from the clean point reaches the exact L1 maximiser, while from a
    random start in D = 101 dimensions it reaches only ~97-98% of it, see S1). S1 attacks ``s1_n_test`` test points per weight vector with ``s1_pgd_steps``.
    """

    profile: str = "default"
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    n_per_epoch: int = 5000
    epochs: int = 40
    batch_size: int = 128
    lr_free: float = 0.1
    lr_fixed: float = 0.02
    tau: float = 4.0
    pgd_steps: int = 5
    pgd_random_start_l2: bool = False
    s1_n_test: int = 20000
    s1_pgd_steps: int = 20
    s2_linf_eps: Tuple[float, ...] = (0.1, 0.3)
    s2_l2_eps: Tuple[float, ...] = (0.5, 2.0)
    s3_rho: float = 0.1
    s3_m: Tuple[int, ...] = (1, 128)
    s4_rho: Tuple[float, ...] = (0.05, 0.1, 0.2)
    s4_m: Tuple[int, ...] = (1, 4, 16, 64, 128)
    s4_m_rho: float = 0.2
    s5_rho: Tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
    s5_eps: Tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    eval_linf: float = 0.1
    eval_l2: float = 1.0
    opt_tol_scale: float = 1.0
    weight_decay: float = 0.01

    def __post_init__(self):
        if len(self.seeds) < 2:
            raise ValueError(f"seeds: need at least 2 seeds for an interval, got {len(self.seeds)}")
        for m in self.s3_m + self.s4_m:
            if self.batch_size % m:
                raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of every m, got m={m}")

    def with_seeds(self, n: int, first: int = 0) -> "Settings":
        return replace(self, seeds=tuple(range(first, first + int(n))))

    def to_dict(self) -> dict:
        return asdict(self)


SIM_PROFILES: Dict[str, Settings] = {
    "quick": Settings(profile="quick", seeds=(0, 1, 2), n_per_epoch=4096, epochs=12,
                      s1_n_test=8000, s1_pgd_steps=10, s2_linf_eps=(0.1, 0.3), s2_l2_eps=(1.0,),
                      s3_m=(1, 128), s4_rho=(0.1, 0.2), s4_m=(1, 16, 128), s5_rho=(0.0, 0.1, 0.2),
                      s5_eps=(0.0, 0.1, 0.3), opt_tol_scale=2.5),
    "default": Settings(),
    "full": Settings(profile="full", seeds=tuple(range(8)), n_per_epoch=10000, epochs=60,
                     s1_n_test=50000, s2_linf_eps=(0.05, 0.1, 0.15, 0.25, 0.3),
                     s2_l2_eps=(0.25, 0.5, 1.0, 2.0, 3.0), s4_rho=(0.025, 0.05, 0.1, 0.2, 0.3),
                     s5_rho=(0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4),
                     s5_eps=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)),
}


@dataclass(frozen=True)
class Job:
    """One training recipe for all seeds (and, for SAM, every rho in ``rhos``)."""

    key: str
    cfg: SimTrainConfig
    seeds: Tuple[int, ...]
    rhos: Tuple[float, ...] = ()

    @property
    def replicas(self) -> List[Tuple[float, int]]:
        """(rho, seed) of each replica, rho-major; rho is None-free (cfg.rho when no list)."""
        rhos = self.rhos or (self.cfg.rho,)
        return [(r, s) for r in rhos for s in self.seeds]

    def digest(self, model, tag: Optional[str] = None) -> str:
        """Hash of model, recipe, seeds, rhos and the engine tag (:func:`engine_tag`, default the default engine's; the loop
        engine's hash is the one of cache version 1, so its old cache files stay valid)."""
        tag = tag or engine_tag()
        payload = {"v": CACHE_VERSION, "model": asdict(model), "cfg": self.cfg.to_dict(),
                   "seeds": list(self.seeds), "rhos": list(self.rhos)}
        if tag != "loop":
            payload["engine"] = tag
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def path(self, cache_dir: str, model, tag: Optional[str] = None) -> str:
        return os.path.join(cache_dir, f"{self.key}-{self.digest(model, tag)}.json")


def _free(st: Settings, **kw) -> SimTrainConfig:
    return SimTrainConfig(form="free", n_train=st.n_per_epoch, epochs=st.epochs, batch_size=st.batch_size,
                          lr=st.lr_free, pgd_steps=st.pgd_steps, **kw)


def _fixed(st: Settings, **kw) -> SimTrainConfig:
    return SimTrainConfig(form="fixed-scale", tau=st.tau, n_train=st.n_per_epoch, epochs=st.epochs,
                          batch_size=st.batch_size, lr=st.lr_fixed, **kw)


def st_job(st: Settings) -> Job:
    return Job("st-free", _free(st, method="st"), st.seeds)


def at_job(st: Settings, norm: str, eps: float) -> Job:
    if eps == 0:
        return st_job(st)
    rs = True if norm == "inf" else st.pgd_random_start_l2
    return Job(f"at-{norm}-eps{eps:g}", _free(st, method="at", norm=norm, eps=float(eps),
                                              pgd_random_start=rs), st.seeds)


def sam_free_job(st: Settings, m: int) -> Job:
    return Job(f"sam-free-m{m}", _free(st, method="sam", m=int(m), rho=st.s3_rho), st.seeds)


def fixed_rhos(st: Settings) -> Tuple[float, ...]:
    """All rho values trained at m = 1 on the fixed-scale model (S4 and S5 share them)."""
    return tuple(sorted({0.0, *map(float, st.s4_rho), *map(float, st.s5_rho), float(st.s4_m_rho)}))


def sam_fixed_job(st: Settings, m: int) -> Job:
    if m == 1:
        return Job("sam-fixed-m1", _fixed(st, method="sam", m=1), st.seeds, fixed_rhos(st))
    return Job(f"sam-fixed-m{m}", _fixed(st, method="sam", m=int(m), rho=st.s4_m_rho), st.seeds)


def sam_wd_job(st: Settings) -> Job:
    """S4's weight-decay form: f = v.x, SGD weight decay, SAM m = 1 at rho 0 and st.s4_m_rho."""
    return Job("sam-wd-m1", _free(st, method="sam", m=1, weight_decay=st.weight_decay), st.seeds,
               (0.0, float(st.s4_m_rho)))


def jobs_for(claims: Sequence[str], st: Settings) -> List[Job]:
    """The distinct training jobs the given claims need (S1 needs none)."""
    jobs: List[Job] = []
    if "S2" in claims:
        jobs.append(st_job(st))
        jobs += [at_job(st, "inf", e) for e in st.s2_linf_eps]
        jobs += [at_job(st, "l2", e) for e in st.s2_l2_eps]
    if "S3" in claims:
        jobs.append(st_job(st))
        jobs += [sam_free_job(st, m) for m in st.s3_m]
    if "S4" in claims:
        jobs += [sam_fixed_job(st, m) for m in st.s4_m]
        if 1 not in st.s4_m:
            jobs.append(sam_fixed_job(st, 1))
        if st.weight_decay > 0:
            jobs.append(sam_wd_job(st))
    if "S5" in claims:
        jobs.append(sam_fixed_job(st, 1))
        jobs += [at_job(st, "inf", e) for e in st.s5_eps]
    seen, out = set(), []
    for j in jobs:
        if j.key not in seen:
            seen.add(j.key)
            out.append(j)
    return out


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``samrobust.files.write_text_atomic``: tmp file, then os.replace)."""
    write_text_atomic(path, text)


def atomic_write_json(path: str, obj) -> None:
    """Write strict JSON (NaN/inf -> null) to ``path`` atomically (via :func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=1, allow_nan=False))


def load_job(job: Job, cache_dir: str, model, tag: Optional[str] = None) -> Optional[dict]:
    """The cached result of ``job`` or None (missing or unreadable cache files are recomputed)."""
    path = job.path(cache_dir, model, tag)
    try:
        with open(path) as f:
            res = json.load(f)
        W = np.asarray(res["weights"], dtype=float)
        if W.shape != (len(job.replicas), model.D):
            return None
        res["weights"] = W
        return res
    except (OSError, ValueError, KeyError):
        return None


def _data_seeds(job: Job) -> List[int]:
    return sorted(set(job.seeds))


def _spec(job: Job) -> JobSpec:
    """The job for :func:`simulations.engine.train_batched`: generator seed and data rows as
    :func:`run_job`'s loop route uses them."""
    seeds = _data_seeds(job)
    return JobSpec(job.cfg, SIM_TRAIN_SEED_OFFSET + seeds[0], tuple(float(r) for r, _ in job.replicas),
                   tuple(seeds.index(s) for _, s in job.replicas))


def _effective(job: Job, W: np.ndarray) -> np.ndarray:
    """Stored weights: v = tau * w / ||w|| for the fixed-scale form, else the trained rows."""
    if job.cfg.form == "fixed-scale":
        return job.cfg.tau * W / np.linalg.norm(W, axis=1, keepdims=True)
    return W


def train_jobs(jobs: Sequence[Job], model, dtype: str = DEFAULT_DTYPE, progress: Optional[Callable] = None,
               workers: int = 1) -> Dict[str, Tuple[np.ndarray, float]]:
    """Train ``jobs`` with the batched engine: jobs with the same data (sizes, seeds) and step count go
    into one :func:`simulations.engine.train_sharded` call (``workers`` processes). Returns key ->
    (weights as stored by :func:`run_job`, the job's share of its batch's wall time, by rows)."""
    groups: Dict[tuple, List[Job]] = {}
    for job in jobs:
        groups.setdefault((batch_key(job.cfg), tuple(_data_seeds(job))), []).append(job)
    out: Dict[str, Tuple[np.ndarray, float]] = {}
    for (key, seeds), group in groups.items():
        t0 = time.perf_counter()
        data = fresh_data(model, key[0], list(seeds))
        weights = train_sharded([_spec(j) for j in group], data, DTYPES[dtype], progress, workers)
        wall = time.perf_counter() - t0
        rows = sum(len(W) for W in weights)
        for job, W in zip(group, weights):
            out[job.key] = (_effective(job, W), wall * len(W) / rows)
    return out


def _train_loop(job: Job, model, progress: Optional[Callable]) -> Tuple[np.ndarray, float]:
    """The loop engine: :func:`simulations.training.train_replicas` on this job alone."""
    t0 = time.perf_counter()
    seeds = _data_seeds(job)
    spec = _spec(job)
    data = fresh_data(model, job.cfg.n_train, seeds)
    W = train_replicas(data, job.cfg, seed=spec.seed, rho=list(spec.rho), source=list(spec.source),
                       progress=progress)
    return _effective(job, W), time.perf_counter() - t0


def run_job(job: Job, model, cache_dir: str, force: bool = False, progress: Optional[Callable] = None,
            engine: str = DEFAULT_ENGINE, dtype: Optional[str] = None,
            trained: Optional[Tuple[np.ndarray, float]] = None) -> dict:
    """Return {"weights": (R, D) array of v, ...} for ``job``: the ``trained`` (weights, wall_s) pair
    from :func:`train_jobs` if given, else the cached result (unless ``force``), else trained here with
    ``engine`` (``dtype``: default float32 for batched, float64 for loop); the result is cached.

    For the fixed-scale form the stored weights are v = tau * w (the model's effective weights).
    """
    dtype = dtype or ("float64" if engine == "loop" else DEFAULT_DTYPE)
    tag = engine_tag(engine, dtype)
    if trained is None and not force:
        res = load_job(job, cache_dir, model, tag)
        if res is not None:
            if progress is not None:
                progress(job.cfg.epochs)
            res["cached"] = True
            return res
    if trained is None:
        trained = (_train_loop(job, model, progress) if engine == "loop" else
                   train_jobs([job], model, dtype, progress)[job.key])
    W, wall = trained
    res = {"key": job.key, "config": job.cfg.to_dict(), "seeds": list(job.seeds),
           "rhos": list(job.rhos), "replicas": [[r, s] for r, s in job.replicas], "engine": tag,
           "wall_s": wall, "weights": W.tolist()}
    atomic_write_json(job.path(cache_dir, model, tag), res)
    res["weights"] = W
    res["cached"] = False
    return res


def weights_by_rho(res: dict, rho: float) -> np.ndarray:
    """Rows of a job result that were trained with SAM radius ``rho`` (one per seed)."""
    reps = res["replicas"]
    idx = [i for i, (r, _) in enumerate(reps) if abs(float(r) - float(rho)) < 1e-12]
    if not idx:
        raise KeyError(f"rho={rho} not in job {res.get('key')}")
    return np.asarray(res["weights"])[idx]
