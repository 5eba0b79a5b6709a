"""``python -m simulations bench``: speed numbers, measured side by side in one command (not a test).

1. Per-example SAM (m = 1) descent gradients on the same batches, in SAM steps per second: the batched
   autograd form used by the batched engine, the ``torch.func`` vmap form, and the Python loop over
   examples (with the largest difference between their results).
2. The main job ``python -m simulations.run`` (default profile unless ``--profile``), each engine in a
   fresh process (interpreter start and imports included, as a user sees it) into a temporary folder:
   wall time, training time, checks that hold, the speed-up of the batched engine over the loop engine,
   and how far the two result tables are apart (largest |difference| of a row's seed mean and of a
   per-seed value, and whether every row holds or fails alike).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

import torch

import linear_theory as lt
from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common

from .batched_ops import sam_gradient_batched
from .experiments import ENGINES, SIM_PROFILES
from .run import torch_threads
from .training import fresh_data, sam_gradient_loop, sam_gradient_vectorized

__all__ = ["bench_sam", "time_run", "compare_tables", "main"]


def _rate(fn, min_time: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n / dt


def bench_sam(replicas: int = 5, batch: int = 128, m: int = 1, form: str = "fixed-scale",
              min_time: float = 2.0) -> dict:
    """SAM gradient steps/s of the batched, vectorised (vmap) and loop forms on the same inputs, and
    the largest |difference| of the batched and vmap results from the loop's."""
    model = lt.FeatureModel()
    X, y = fresh_data(model, batch, range(replicas))(0)
    P = torch.randn(replicas, model.D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rho = 0.1
    forms = {"batched": sam_gradient_batched, "vectorised": sam_gradient_vectorized,
             "loop": sam_gradient_loop}
    ref = sam_gradient_loop(P, X, y, rho, m, form, 4.0)
    out = {"replicas": replicas, "batch": batch, "m": m, "form": form}
    for name, fn in forms.items():
        out[f"{name}_steps_per_s"] = _rate(lambda: fn(P, X, y, rho, m, form, 4.0), min_time)
        out[f"{name}_max_abs_diff"] = float((fn(P, X, y, rho, m, form, 4.0) - ref).abs().max())
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_run(engine: str, profile: str, threads: int, out: str, workers: Optional[int] = None) -> dict:
    """``python -m simulations.run`` with ``engine`` in a fresh process; returns its wall time (measured
    here, interpreter start included), its CPU time (user + system, its worker processes included: on
    a machine shared with other work this is the steadier number), its exit status and its results
    (``out/simulations.json``)."""
    cmd = [sys.executable, "-m", "simulations.run", "--engine", engine, "--out", out, "--no-progress",
           "--threads", str(threads)]
    if profile != "default":
        cmd.append(f"--{profile}")
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    with open(os.path.join(out, "simulations.json")) as f:
        data = json.load(f)
    return {"engine": engine, "wall_s": wall, "cpu_s": cpu, "rc": proc.returncode, "data": data}


def _abs_diff(a, b) -> float:
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    return abs(float(a) - float(b))


def compare_tables(a: dict, b: dict) -> dict:
    """Row-by-row distance of two results files' claim tables (same row ids required): the largest
    |difference| of the seed means (and the row where it occurs), of a per-seed value, and the rows
    whose verdict (holds / fails / measured) differs."""
    rows_a, rows_b = {r["id"]: r for r in a["claims"]}, {r["id"]: r for r in b["claims"]}
    if set(rows_a) != set(rows_b):
        raise ValueError(f"different rows: {sorted(set(rows_a) ^ set(rows_b))}")
    mean_diff = {i: _abs_diff(rows_a[i]["sim_mean"], rows_b[i]["sim_mean"]) for i in rows_a}
    seed_diff = max((_abs_diff(x, y) for i in rows_a
                     for x, y in zip(rows_a[i]["per_seed"], rows_b[i]["per_seed"])), default=0.0)
    worst = max(mean_diff, key=mean_diff.get)
    return {"rows": len(rows_a), "max_mean_diff": mean_diff[worst], "worst_row": worst,
            "max_seed_diff": seed_diff,
            "verdict_changes": sorted(i for i in rows_a if rows_a[i]["holds"] != rows_b[i]["holds"])}


def _print_sam(threads: int, min_time: float) -> None:
    print(f"per-example SAM (m=1) gradient steps/s, batch 128 x 5 replicas, D=101, float64, "
          f"{threads} thread(s):")
    for form in ("free", "fixed-scale"):
        r = bench_sam(form=form, min_time=min_time)
        print(f"  {form:12s} batched {r['batched_steps_per_s']:8.1f}/s   vmap "
              f"{r['vectorised_steps_per_s']:8.1f}/s   loop {r['loop_steps_per_s']:7.2f}/s   "
              f"(max |diff| from loop: batched {r['batched_max_abs_diff']:.1e}, vmap "
              f"{r['vectorised_max_abs_diff']:.1e})")


def _print_runs(runs: Dict[str, dict], profile: str, threads: int) -> None:
    print(f"python -m simulations.run, profile {profile}, {threads} thread(s), each in a fresh process:")
    for e, r in runs.items():
        m = r["data"]["meta"]
        print(f"  --engine {e:8s} ({m.get('dtype', 'float64')}, {m.get('workers', 1)} process(es)): wall "
              f"{r['wall_s']:6.1f} s   CPU {r['cpu_s']:6.1f} s   training (wall) {m['train_time_s']:6.1f} s   "
              f"{m['n_checks'] - m['n_failed']}/{m['n_checks']} checks hold")
    if {"batched", "loop"} <= set(runs):
        b, lo = runs["batched"], runs["loop"]
        print(f"  speed-up of batched over loop: x{lo['wall_s'] / b['wall_s']:.1f} wall, "
              f"x{lo['cpu_s'] / b['cpu_s']:.1f} CPU time, "
              f"x{lo['data']['meta']['train_time_s'] / b['data']['meta']['train_time_s']:.1f} training")
        c = compare_tables(lo["data"], b["data"])
        print(f"  results, batched vs loop, {c['rows']} rows: max |seed-mean diff| {c['max_mean_diff']:.2e} "
              f"({c['worst_row']}), max |per-seed diff| {c['max_seed_diff']:.2e}, rows whose verdict "
              f"differs: {', '.join(c['verdict_changes']) or 'none'}")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m simulations bench", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--skip-run", action="store_true", help="only the SAM comparison, not the main job")
    p.add_argument("--skip-sam", action="store_true", help="only the main job, not the SAM comparison")
    p.add_argument("--engines", default="batched,loop", metavar="E1,E2",
                   help="engines to time (default: batched,loop; the loop engine takes about 100 s in the "
                        "default profile on two quiet cores)")
    p.add_argument("--profile", choices=tuple(SIM_PROFILES), default="default", help="run profile to time")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per SAM timing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=None,
                   help="--workers of the batched run [default: the run's default]")
    return add_common(p, (
        "python -m simulations bench                       # SAM forms' steps/s, then batched vs loop engine",
        "python -m simulations bench --skip-run --min-time 1",
        "python -m simulations bench --skip-sam --engines batched --profile quick"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or any(e not in ENGINES for e in engines):
        p.error(f"--engines: choose from {','.join(ENGINES)}, got {args.engines!r}")
    if args.min_time <= 0:
        p.error(f"--min-time must be > 0, got {args.min_time}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if not args.skip_sam:
        with torch_threads(args.threads):
            _print_sam(args.threads, args.min_time)
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {e: time_run(e, args.profile, args.threads, os.path.join(tmp, e),
                                args.workers if e == "batched" else None) for e in engines}
        _print_runs(runs, args.profile, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
