"""K training runs at once: the aggregate images/s of K concurrent processes over one process.

Each of the K processes (``python -m deep.bench.worker``) trains our eager loop on its own random data with
equal work (``concurrency_steps`` steps of ``batch_size``), after its own warm-up. The parent starts all K,
waits until every one has warmed up, then releases them together; each reports the wall-clock window of its
timed steps. Aggregate images/s = all timed images / (latest end - earliest start), so stragglers count
against it. One torch thread per process (on CPU each process is also pinned to one core of this process's
affinity, round-robin), the way ``deep.run --jobs K`` would share a machine; on CUDA the K processes share
the device. The ratio K-process aggregate / one process is what running a grid's independent runs in
parallel can gain (issue 19: >= 1.7x with K = 2 on two CPU cores, >= 4x with K = 8 on one H200).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .config import BenchConfig

__all__ = ["run_concurrency", "aggregate", "worker_specs", "spin_ceiling"]

# A pure-Python busy loop (no torch, no memory traffic): K copies at once show how many cores' worth of CPU
# this process group gets right now. With Linux's autogroup scheduling another session's busy job takes its
# share whatever our nice level, so on a shared machine K = 2 can be capped near 1x before any torch work.
_SPIN = "import time;t=time.perf_counter();n=0\nwhile n<{n}:n+=1\nprint(time.perf_counter()-t)"

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])     # the folder holding deep/ (this checkout)


def aggregate(reports: List[Dict]) -> Dict:
    """Aggregate of the workers' reports {images, t0, t1} (t: time.time() at the start and end of the
    timed steps): all images over the union window, and each process's own rate."""
    images = sum(r["images"] for r in reports)
    wall = max(r["t1"] for r in reports) - min(r["t0"] for r in reports)
    return {"k": len(reports), "images": images, "wall_s": wall, "aggregate_images_per_s": images / wall,
            "per_process_images_per_s": [r["images"] / (r["t1"] - r["t0"]) for r in reports]}


def _cores() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def worker_specs(cfg: BenchConfig, device: torch.device, k: int) -> List[Dict]:
    """What each of ``k`` workers is told: the resolved config, its seed, thread count and CPU core."""
    cores = _cores() if device.type == "cpu" else []
    return [{"config": asdict(cfg), "device": str(device), "method": cfg.concurrency_method,
             "steps": cfg.concurrency_steps, "threads": 1, "seed": cfg.seed + i,
             "core": cores[i % len(cores)] if cores else None} for i in range(k)]


def _run_k(cfg: BenchConfig, device: torch.device, k: int) -> Dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([_PACKAGE_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    procs, logs = [], []
    try:
        for spec in worker_specs(cfg, device, k):
            log = tempfile.TemporaryFile(mode="w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "deep.bench.worker", json.dumps(spec)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                          env=env, cwd=_PACKAGE_ROOT))
        for p, log in zip(procs, logs):
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a deep.bench worker failed during warm-up: {_tail(p, log)}")
        for p in procs:                    # release all K together
            p.stdin.write("GO\n")
            p.stdin.flush()
        reports = []
        for p, log in zip(procs, logs):
            line = p.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"a deep.bench worker failed: {_tail(p, log)}")
            reports.append(json.loads(line))
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    return aggregate(reports)


def _tail(p: subprocess.Popen, log) -> str:
    p.wait(timeout=60)
    log.seek(0)
    return " ".join(log.read().split()[-60:]) or f"exit code {p.returncode}"


def spin_ceiling(ks, n: int = 3_000_000) -> Dict[str, float]:
    """For each K: K pure-Python busy loops started together, aggregate speed over one loop alone (the
    most K concurrent CPU-bound processes can gain on this machine now; 2.0 for K = 2 on two free cores)."""
    def run(k):
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(n=n)], stdout=subprocess.PIPE, text=True)
                 for _ in range(k)]
        return [float(p.communicate(timeout=300)[0]) for p in procs]
    one = run(1)[0]
    return {str(k): 1.0 if k == 1 else k * one / max(run(k)) for k in sorted(set(ks) | {1})}


def run_concurrency(cfg: BenchConfig, device: torch.device,
                    progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Aggregate images/s of K concurrent training processes for each K of cfg.concurrency (1 always
    included), and the ratio to one process."""
    ks = sorted(set(cfg.concurrency) | {1})
    runs = []
    for k in ks:
        if progress:
            progress(f"{k} concurrent {cfg.concurrency_method} process{'es' if k > 1 else ''}")
        runs.append(_run_k(cfg, device, k))
    one = runs[0]["aggregate_images_per_s"]
    ceiling = spin_ceiling(ks) if device.type == "cpu" else None
    return {"spin_ceiling": ceiling, "method": cfg.concurrency_method, "steps_per_process": cfg.concurrency_steps,
            "batch_size": cfg.batch_size, "threads_per_process": 1, "pinned_to_cores": device.type == "cpu",
            "runs": runs, "aggregate_vs_one": {str(r["k"]): r["aggregate_images_per_s"] / one for r in runs}}
