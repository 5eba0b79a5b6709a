"""``python -m simulations bench``: speed numbers, measured side by side in one process (not a test).

1. Per-example SAM (m = 1) descent gradients: the vectorised ``torch.func`` route used in training vs the
   reference Python loop over examples, in SAM steps per second on the same batches.
2. The wall time of the default ``python -m simulations.run`` (fresh, into a temporary folder).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Optional, Sequence

import torch

import linear_theory as lt

from .experiments import PROFILES
from .run import run_simulations, torch_threads
from .training import fresh_data, sam_gradient_loop, sam_gradient_vectorized

__all__ = ["bench_sam", "main"]


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
    """SAM gradient steps/s, vectorised vs loop, same inputs; also checks they agree."""
    model = lt.FeatureModel()
    X, y = fresh_data(model, batch, range(replicas))(0)
    P = torch.randn(replicas, model.D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rho = 0.1
    a = sam_gradient_vectorized(P, X, y, rho, m, form, 4.0)
    b = sam_gradient_loop(P, X, y, rho, m, form, 4.0)
    vec = _rate(lambda: sam_gradient_vectorized(P, X, y, rho, m, form, 4.0), min_time)
    loop = _rate(lambda: sam_gradient_loop(P, X, y, rho, m, form, 4.0), min_time)
    return {"replicas": replicas, "batch": batch, "m": m, "form": form, "vectorised_steps_per_s": vec,
            "loop_steps_per_s": loop, "speedup": vec / loop,
            "max_abs_diff": float((a - b).abs().max())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-run", action="store_true", help="only the SAM comparison, not the default run")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per timing (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = p.parse_args(argv)
    if args.min_time <= 0:
        p.error(f"--min-time must be > 0, got {args.min_time}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    with torch_threads(args.threads):
        print(f"per-example SAM (m=1) gradient steps/s, batch 128 x 5 replicas, D=101, "
              f"{args.threads} thread(s):")
        for form in ("free", "fixed-scale"):
            r = bench_sam(form=form, min_time=args.min_time)
            print(f"  {form:12s} vectorised {r['vectorised_steps_per_s']:8.1f}/s   loop "
                  f"{r['loop_steps_per_s']:7.2f}/s   speed-up x{r['speedup']:.0f}   "
                  f"(max |diff| {r['max_abs_diff']:.1e})")
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            data = run_simulations(PROFILES["default"], out=out, figures=True, progress=True,
                                   threads=args.threads)
            wall = time.perf_counter() - t0
        meta = data["meta"]
        print(f"default run (python -m simulations.run, fresh): wall time {wall:.1f} s, training "
              f"{meta['train_time_s']:.1f} s, {meta['n_checks'] - meta['n_failed']}/{meta['n_checks']} "
              f"checks hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
