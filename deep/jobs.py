"""Independent runs of a grid at once, one process each (``python -m deep.run --jobs K``).

The runs of a grid share nothing but the data set, and each is seeded by its own configuration (weights,
epoch order, augmentation and PGD starts: deep/train.py), so running them in K processes gives the same
numbers as running them one after another, provided every process uses the same number of torch threads
(intra-op reductions split differently with other thread counts). Processes are started with "spawn" (no
fork of a process that already holds torch's thread pools); each loads the data once in its initializer.

Jobs are handed out longest first (``cost``), the greedy longest-processing-time rule, so that the last
long run does not start when every other process is idle. The parent prints one line per finished run:
"run k/N", its time and an ETA from the estimated cost of what is left at the rate measured so far.

How to pick K: on a CPU, K x threads-per-job <= physical cores (two cores: K = 2 with one thread each);
on one GPU, K processes share the device and overlap each other's kernel launches, which pays while a
single run is bound by launching small kernels (deep.bench measures the aggregate speed-up for K = 1, 2,
4, 8). The results folder's checkpoints are per run, so interrupted jobs resume with ``--resume``.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from samrobust.progress import format_seconds

__all__ = ["run_pool", "longest_first"]


def longest_first(costs: Sequence[float]) -> List[int]:
    """Indices of ``costs`` from the largest to the smallest (ties keep their order)."""
    return sorted(range(len(costs)), key=lambda i: -costs[i])


def run_pool(tasks: Sequence, costs: Sequence[float], worker: Callable, init: Callable, init_args: Tuple,
             k: int, on_done: Callable[[int, object, str], None],
             names: Optional[Sequence[str]] = None) -> Dict[int, object]:
    """Run ``worker(task)`` for every task in ``k`` spawned processes (each first calls ``init(*init_args)``),
    longest (by ``costs``) first. ``on_done(index, result, line)`` is called in this process as each task
    finishes, with a progress line "run k/N name: t; elapsed e, ETA l" (times as h:mm:ss,
    samrobust.progress.format_seconds). Returns {index: result}. ``worker``, ``init`` and the tasks must be
    picklable (module-level functions). A KeyboardInterrupt terminates the pool and propagates."""
    order = longest_first(costs)
    total = float(sum(costs)) or 1.0
    names = list(names) if names is not None else [str(i) for i in range(len(tasks))]
    out: Dict[int, object] = {}
    t0 = time.perf_counter()
    done_cost = 0.0
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(processes=k, initializer=init, initargs=init_args, maxtasksperchild=None)
    try:
        it = pool.imap_unordered(_call, [(worker, i, tasks[i]) for i in order], chunksize=1)
        while len(out) < len(tasks):
            try:
                # a bounded wait, so that a SIGINT (Ctrl-C, `timeout -s INT`) is handled within a second: an
                # unbounded wait on the pool's result queue does not return to the interpreter for signals
                i, res, seconds = it.next(timeout=1.0)
            except mp.TimeoutError:
                continue
            out[i] = res
            done_cost += costs[i]
            elapsed = time.perf_counter() - t0
            left = (total - done_cost) / done_cost * elapsed if done_cost > 0 else float("nan")
            line = (f"run {len(out)}/{len(tasks)} {names[i]}: {format_seconds(seconds)}; elapsed "
                    f"{format_seconds(elapsed)}" + (f", ETA {format_seconds(left)}" if len(out) < len(tasks)
                                                    else ""))
            on_done(i, res, line)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return out


def _call(packed):
    worker, i, task = packed
    t = time.perf_counter()
    res = worker(task)
    return i, res, time.perf_counter() - t
