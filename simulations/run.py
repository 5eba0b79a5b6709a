"""``python -m simulations.run``: check the claims S1-S5 of docs/theory.md with the real training algorithms.

Trains linear models on samples of the feature model (SGD + momentum, SAM with m-sharpness, PGD-AT),
compares them claim by claim with ``linear_theory``, prints a table, writes
``<out>/simulations.json`` and ``<out>/simulations.md`` atomically (the figures drawn from that JSON are
paper_figs' fig1-fig4: ``python -m paper_figs``). Exit status: 0 every check holds, 1 some check fails, 2 bad arguments.
Finished training jobs are cached in ``<out>/cache/``; a rerun (e.g. after an interruption) skips them.
``--engine batched`` (default) trains all pending jobs together in one batched loop (float32 by default,
``--dtype float64``); ``--engine loop`` is the original one-job-at-a-time route (float64).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
import time
from typing import List, Optional, Sequence

import torch
from tqdm import tqdm

import linear_theory as lt
from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common, exit_fast, threads_error
from samrobust.files import check_output_dir
from samrobust.progress import progress_bar

from . import experiments
from .claims import CLAIM_FUNCS, OPT_TOL, precompute, prime_solutions
from .experiments import (CLAIMS, DEFAULT_ENGINE, DTYPES, ENGINES, SIM_PROFILES, Settings, atomic_write_json,
                          atomic_write_text, engine_tag, jobs_for)
from .parallel import Forked, can_fork
from .markdown import format_table, markdown_report

__all__ = ["run_simulations", "main", "parse_claims", "DEFAULT_WORKERS"]

DEFAULT_WORKERS = min(2, os.cpu_count() or 1)


class _Bar(tqdm):
    """tqdm without its monitor thread, so that worker processes are forked from a single-threaded
    parent."""

    monitor_interval = 0


def parse_claims(text: Optional[str]) -> List[str]:
    """'S2,S4' -> ['S2', 'S4'] (case-insensitive); None -> all. ValueError names the bad entry."""
    if text is None:
        return list(CLAIMS)
    out = []
    for part in text.split(","):
        c = part.strip().upper()
        if c not in CLAIMS:
            raise ValueError(f"--only: unknown claim {part.strip()!r}; choose from {','.join(CLAIMS)}")
        if c not in out:
            out.append(c)
    if not out:
        raise ValueError("--only: no claims given")
    return sorted(out)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Temporarily set torch's intra-op threads (None: leave as is). The tensors here are tiny
    (128 x 101), so one thread is fastest; several threads on a busy machine are much slower."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_simulations(settings: Settings, claims: Sequence[str] = CLAIMS, out: str = "results",
                    force: bool = False, model=None, progress: bool = True,
                    threads: Optional[int] = 1, engine: str = DEFAULT_ENGINE,
                    dtype: Optional[str] = None, workers: int = DEFAULT_WORKERS) -> dict:
    """Run the claims, write results, return the results dict (schema: simulations/README.md).
    ``engine``: "batched" (default; ``dtype`` "float32" by default or "float64") or "loop" (float64).
    ``workers`` > 1 (batched engine): train in that many processes, and meanwhile compute what needs no
    training (S1, the numerical optima) in another one; the results do not depend on it."""
    dtype = dtype or ("float64" if engine == "loop" else experiments.DEFAULT_DTYPE)
    engine_tag(engine, dtype)  # ValueError on bad names
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if engine == "loop":
        workers = 1  # the original route, unchanged
    with torch_threads(threads):
        return _run(settings, claims, out, force, model, progress, engine, dtype, int(workers))


def _train_all(jobs, model, cache_dir: str, force: bool, bar, engine: str, dtype: str,
               workers: int) -> dict:
    """Every job's result (cached, or trained: with the batched engine all pending jobs at once,
    before the per-job loop that stores them; with the loop engine one job at a time in that loop)."""
    trained = {}
    if engine == "batched":
        tag = engine_tag(engine, dtype)
        pending = [j for j in jobs if force or experiments.load_job(j, cache_dir, model, tag) is None]
        if pending:
            bar.set_postfix_str(f"{len(pending)} jobs batched")
            trained = experiments.train_jobs(pending, model, dtype, progress=bar.update, workers=workers)
    results = {}
    for job in jobs:
        bar.set_postfix_str(job.key)
        results[job.key] = experiments.run_job(job, model, cache_dir, force=force, progress=bar.update,
                                               engine=engine, dtype=dtype, trained=trained.get(job.key))
    return results


def _claims(claims, model, settings, results, progress, pre: Optional[Forked]):
    """Rows and extras of every claim; with a :func:`simulations.claims.precompute` worker ``pre``,
    S1's rows and the theory optima come from it."""
    s1 = None
    if pre is not None:
        done = pre.result()
        prime_solutions(done["solutions"])
        s1 = done["S1"]
    rows, extras = [], {"curves": {}, "sam_vs_m": []}
    for c in _Bar(claims, desc="claims", disable=not progress or not sys.stderr.isatty(), leave=False):
        r, ex = s1 if c == "S1" and s1 is not None else CLAIM_FUNCS[c](model, settings, results)
        rows += r
        extras.update(ex)
    return rows, extras


def _training_bar(total: int, enabled: bool):
    """The training bar over job-epochs: tqdm on a terminal (smoothing 0: the ETA from the mean rate since
    the start, steadier than tqdm's moving average), plain lines elsewhere (samrobust.progress), a silent
    tqdm when not ``enabled``."""
    bar = progress_bar(total, desc="training", unit="epoch", enabled=enabled, bar_class=_Bar, smoothing=0)
    return bar if bar is not None else _Bar(total=total, disable=True)


def _run(settings, claims, out, force, model, progress, engine, dtype, workers) -> dict:
    model = model or lt.FeatureModel()
    t0 = time.perf_counter()
    cache_dir = os.path.join(out, "cache")
    jobs = jobs_for(claims, settings)
    pre = Forked(precompute, model, settings, claims) if workers > 1 and can_fork() else None
    try:
        bar = _training_bar(sum(j.cfg.epochs for j in jobs), progress and bool(jobs))
        try:
            results = _train_all(jobs, model, cache_dir, force, bar, engine, dtype, workers)
        finally:
            bar.close()
        rows, extras = _claims(claims, model, settings, results, progress, pre)
    finally:
        if pre is not None:
            pre.cancel()
    train_time = sum(0.0 if r["cached"] else r["wall_s"] for r in results.values())
    checked = [r for r in rows if r["holds"] is not None]
    meta = {
        "profile": settings.profile, "claims": list(claims), "seeds": list(settings.seeds),
        "settings": settings.to_dict(), "model": {"class": type(model).__name__, **model.__dict__},
        "opt_tol": {k: v * settings.opt_tol_scale for k, v in OPT_TOL.items()},
        "wall_time_s": time.perf_counter() - t0, "train_time_s": train_time,
        "cached_jobs_train_time_s": sum(r.get("wall_s") or 0.0 for r in results.values() if r["cached"]),
        "jobs": [{"key": j.key, "cached": results[j.key]["cached"], "wall_s": results[j.key].get("wall_s")}
                 for j in jobs],
        "n_checks": len(checked), "n_failed": sum(not r["holds"] for r in checked),
        "all_hold": all(r["holds"] for r in checked),
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "engine": engine, "dtype": dtype, "workers": workers,
    }
    data = {"meta": meta, "claims": rows, "curves": extras.pop("curves"), "sam_vs_m": extras.pop("sam_vs_m"),
            "extra": extras}
    os.makedirs(out, exist_ok=True)
    meta["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(os.path.join(out, "simulations.json"), data)
    atomic_write_text(os.path.join(out, "simulations.md"), markdown_report(rows, meta))
    return data


def reuse_freed_memory() -> bool:
    """Speed (glibc only; a no-op elsewhere): keep freed blocks of up to 32 MiB in the process's heap.

    The batched engine allocates and frees (rows, 128, 101) float32 temporaries of about 1 MB thousands
    of times per second; by default glibc returns each to the system (munmap) and the next one comes back
    as fresh pages, zero-filled on first touch (about 800 page faults per SAM step here). With the mmap
    threshold raised and trimming off they are reused: about 1% of the default run's CPU time (measured
    with GLIBC_TUNABLES, the same two settings). Forked workers inherit it. Returns whether it applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3   # glibc's mallopt parameter numbers
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m simulations.run", formatter_class=DefaultsHelpFormatter,
        description="Check the claims S1-S5 of docs/theory.md by training linear models with the real algorithms "
                    "(SGD+momentum, SAM with m-sharpness, PGD adversarial training) on samples of the "
                    "feature model. Exit 0 if every check holds, 1 if one fails, 2 on bad arguments.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small sizes (3 seeds, 12 epochs, fewer strengths): well under a minute")
    size.add_argument("--full", action="store_true",
                      help="8 seeds, 60 epochs of 10^4 fresh samples, finer sweeps (about 2 minutes on two cores)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="number of seeds (independent data streams and SGD runs), >= 2; default: "
                        "3 quick / 5 default / 8 full")
    p.add_argument("--only", default=None, metavar="S2,S4",
                   help="comma-separated subset of claims S1..S5 (default: all)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for simulations.json, simulations.md, figures/ and cache/ "
                        "[default: runs (untracked); the shipped results/ only with --publish or --out results]")
    p.add_argument("--publish", action="store_true",
                   help="= --out results: regenerate the shipped (committed) results")
    p.add_argument("--force", action="store_true",
                   help="retrain every job instead of reusing finished jobs from DIR/cache")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch intra-op threads (default 1: the tensors are tiny, more threads only add "
                        "overhead)")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help="batched (default): all jobs in one batched training loop; loop: the original "
                        "route, one job at a time (float64, about 4.6x slower)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="batched engine's float type (default float32; float64 reproduces the loop "
                        "engine to rounding); the loop engine is float64 only")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="W",
                   help=f"batched engine: processes that train at the same time (S1 and the theory "
                        f"optima are computed in another one meanwhile); default {DEFAULT_WORKERS} (this "
                        f"machine's cores, at most 2); the results do not depend on it")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (off a terminal progress is one plain line every 30 s)")
    return add_common(p, (
        "python -m simulations.run                         # all claims S1-S5 -> runs/simulations.{json,md}",
        "python -m simulations.run --quick                 # 3 seeds, small sizes, ~15 s",
        "python -m simulations.run --only S2,S4 --seeds 8 --out /tmp/sim",
        "python -m simulations.run --publish               # regenerate the shipped results/simulations.*"))


#: About what a run writes under --out (JSON, markdown, the job cache), checked free beforehand.
OUT_BYTES = 8 * 2**20


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        claims = parse_claims(args.only)
    except ValueError as e:
        parser.error(str(e))
    if threads_error(args.threads, low=1) is not None:
        parser.error(threads_error(args.threads, low=1))
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.engine == "loop" and args.dtype == "float32":
        parser.error("--dtype float32 needs --engine batched (the loop engine is float64 only)")
    if args.publish and args.out not in (None, "results"):
        parser.error(f"--publish writes to results/; it conflicts with --out {args.out}")
    args.out = "results" if args.publish else (args.out or "runs")
    try:                                # before any training: a file, read-only or full --out fails now
        check_output_dir(args.out, OUT_BYTES)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: --out {e}\n")
    settings = SIM_PROFILES["quick" if args.quick else "full" if args.full else "default"]
    if args.seeds is not None:
        if args.seeds < 2:
            parser.error(f"--seeds must be >= 2 (an interval needs two seeds), got {args.seeds}")
        settings = settings.with_seeds(args.seeds)
    reuse_freed_memory()
    try:
        data = run_simulations(settings, claims, out=args.out, force=args.force,
                               progress=not args.no_progress,
                               threads=args.threads, engine=args.engine, dtype=args.dtype,
                               workers=args.workers)
    except KeyboardInterrupt:
        print("interrupted; finished jobs are cached, rerun the same command to resume", file=sys.stderr)
        return 130
    meta = data["meta"]
    print(format_table(data["claims"]))
    print(f"\n{meta['n_checks'] - meta['n_failed']}/{meta['n_checks']} checks hold "
          f"(profile {meta['profile']}, {len(meta['seeds'])} seeds); wall time {meta['wall_time_s']:.1f} s, "
          f"training {meta['train_time_s']:.1f} s; results in {os.path.join(args.out, 'simulations.json')}")
    return 0 if meta["all_hold"] else 1


if __name__ == "__main__":
    exit_fast(main())  # skips ~0.4 s of interpreter teardown (samrobust/cli.py)
