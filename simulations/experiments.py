"""Run settings (quick / default / full), the training jobs each claim needs, and the per-job cache.

A *job* is one training recipe (``TrainConfig``) applied to all seeds at once (and, for SAM, to a list
of rho values, vectorised as replicas). Each finished job is written atomically to
``<out>/cache/<key>-<hash>.json``; the hash covers the feature model, the recipe, the seeds and the rho
list, so a resumed run skips exactly the jobs whose inputs are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import linear_theory as lt
from deep.files import write_text_atomic

from .training import TrainConfig, fresh_data, train_replicas

__all__ = ["Settings", "PROFILES", "Job", "jobs_for", "run_job", "atomic_write_json", "CLAIMS",
           "CACHE_VERSION"]

CLAIMS = ("S1", "S2", "S3", "S4", "S5")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """Sizes of one simulation run. ``profile`` is a label; see :data:`PROFILES` for the presets.

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


PROFILES: Dict[str, Settings] = {
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
    cfg: TrainConfig
    seeds: Tuple[int, ...]
    rhos: Tuple[float, ...] = ()

    @property
    def replicas(self) -> List[Tuple[float, int]]:
        """(rho, seed) of each replica, rho-major; rho is None-free (cfg.rho when no list)."""
        rhos = self.rhos or (self.cfg.rho,)
        return [(r, s) for r in rhos for s in self.seeds]

    def digest(self, model) -> str:
        payload = json.dumps({"v": CACHE_VERSION, "model": asdict(model), "cfg": self.cfg.to_dict(),
                              "seeds": list(self.seeds), "rhos": list(self.rhos)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def path(self, cache_dir: str, model) -> str:
        return os.path.join(cache_dir, f"{self.key}-{self.digest(model)}.json")


def _free(st: Settings, **kw) -> TrainConfig:
    return TrainConfig(form="free", n_train=st.n_per_epoch, epochs=st.epochs, batch_size=st.batch_size,
                       lr=st.lr_free, pgd_steps=st.pgd_steps, **kw)


def _fixed(st: Settings, **kw) -> TrainConfig:
    return TrainConfig(form="fixed-scale", tau=st.tau, n_train=st.n_per_epoch, epochs=st.epochs,
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


def _jsonable(obj):
    """Replace non-finite floats by None and numpy scalars/arrays by Python objects (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``deep.files.write_text_atomic``: tmp file, then os.replace)."""
    write_text_atomic(path, text)


def atomic_write_json(path: str, obj) -> None:
    """Write strict JSON (NaN/inf -> null) to ``path`` atomically (via :func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=1, allow_nan=False))


def load_job(job: Job, cache_dir: str, model) -> Optional[dict]:
    """The cached result of ``job`` or None (missing or unreadable cache files are recomputed)."""
    path = job.path(cache_dir, model)
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


def run_job(job: Job, model, cache_dir: str, force: bool = False,
            progress: Optional[Callable] = None) -> dict:
    """Train ``job`` (or load it from the cache) and return {"weights": (R, D) array of v, ...}.

    For the fixed-scale form the stored weights are v = tau * w (the model's effective weights).
    """
    if not force:
        res = load_job(job, cache_dir, model)
        if res is not None:
            if progress is not None:
                progress(job.cfg.epochs)
            res["cached"] = True
            return res
    t0 = time.perf_counter()
    seeds = sorted(set(job.seeds))
    source = [seeds.index(s) for _, s in job.replicas]
    rhos = [r for r, _ in job.replicas]
    data = fresh_data(model, job.cfg.n_train, seeds)
    W = train_replicas(data, job.cfg, seed=1000 + seeds[0], rho=rhos, source=source, progress=progress)
    if job.cfg.form == "fixed-scale":
        W = job.cfg.tau * W / np.linalg.norm(W, axis=1, keepdims=True)
    res = {"key": job.key, "config": job.cfg.to_dict(), "seeds": list(job.seeds),
           "rhos": list(job.rhos), "replicas": [[r, s] for r, s in job.replicas],
           "wall_s": time.perf_counter() - t0, "weights": W.tolist()}
    atomic_write_json(job.path(cache_dir, model), res)
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
