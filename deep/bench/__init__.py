"""``python -m deep.bench``: training and evaluation throughput of our loop vs a reference-style loop.

Measured side by side in one process on one device (PreActResNet-18, same width, batch and data):

* **ours (eager)**: :func:`deep.train.train_epoch` exactly as ``deep.run`` trains - data resident on the
  device as uint8, batched tensor augmentation (reflect-pad random crop + flip), channels_last and bf16
  autocast on CUDA, metrics accumulated on the device (no ``.item()`` per step), SAM from samrobust/sam.py,
  PGD from samrobust/attacks.py.  PGD-10 evaluation is :func:`deep.robustness.evaluate` with the flags
  ``deep.run`` uses (fp32 attack, channels_last on CUDA).
* **ours (CUDA graph)**, CUDA only: the same loop with the whole step replayed from a CUDA graph
  (deep/graphed.py, ``deep.run --cuda-graph``).  **ours (compiled)** with ``--compile``.
* **reference**: the structure of common public CIFAR training code (deep/bench/reference.py).
* **concurrent processes**: aggregate images/s of K training processes over one (deep/bench/concurrency.py;
  K = 1, 2, 4, 8 on CUDA sharing the device, K = 1, 2 on CPU with one thread pinned to one core each).

Per phase (train ST, train SAM, train AT with PGD-10, PGD-10 evaluation): images/s, peak memory, the FLOPs of
one real step counted with ``torch.utils.flop_counter.FlopCounterMode`` and from them TFLOP/s and the
percentage of the device's dense bf16 peak (table in deep/bench/flops.py; an H200 counts 989.4 TFLOP/s,
``--peak-tflops`` overrides) or, on CPU, of an assumed peak of the cores used (clock x FLOP/cycle, stated in
the output).  Ratios: ours / reference per phase (ours = the fastest of our loops measured), CUDA graph /
eager, the cost of SAM and AT relative to ST, K processes / one.  The package's targets (issue 19), judged
in the output: on one H100/H200 ours ST and AT >= 3x the reference, SAM <= 2.1x ST, AT <= 11x ST, 8
processes >= 4x one; on two CPU cores ours ST and SAM >= 2x the reference, SAM <= 2.0x ST, 2 processes >=
1.7x one.  Speed is never asserted in tests, only measured here, side by side.

On CPU the benchmark uses the Fashion-MNIST shape (1x28x28; ``--dataset``), width 16 and as many torch
threads as the process may use cores; ours is the CPU fast path of ``deep.run --profile cpu`` (bf16 +
channels_last where the CPU computes bf16 natively).  ``--compile`` also measures our loop compiled and
reports whether and after how many images it pays.  ``--accuracy-check`` trains short fp32 and bf16 runs with
the same seeds and reports clean and PGD accuracy side by side. ``--precision-check`` (instead of the phases)
times our training step with bf16 autocast and in fp32 for each architecture (PreActResNet-18, CNN, MLP,
ViT): bf16 pays for the convolutional models on an AVX512-BF16 CPU and costs the small ViT about 5x, which
is why the converged grid trains the ViT in fp32.

Layout: config.py (settings, targets), flops.py (FLOP counting, peaks), reference.py (the reference loop),
harness.py (our loops, timing, ratios), concurrency.py + worker.py (K processes), tables.py (markdown,
files), accuracy.py (--accuracy-check), precision.py (--precision-check), cli.py (options).

Commands::

    python -m deep.bench --gpu-quick                      # one GPU, ~90 s on an H200 (estimated): every
                                                          # phase and loop, 30 timed steps, K = 1, 2, 4, 8;
                                                          # writes results/bench/deep_bench_h200_quick.json/.md
    python -m deep.bench                                  # GPU: batch 128, width 64, 50 timed steps
    python -m deep.bench --device cpu                     # CPU table (K = 1, 2 concurrent processes)
    python -m deep.bench --device cpu --steps 2 --width 8 --concurrency off   # CPU smoke run
    python -m deep.bench --device cpu --compile --accuracy-check   # CPU fast path, compile, fp32 vs bf16
    python -m deep.bench --device cpu --threads 1 --precision-check   # bf16 vs fp32 per architecture
    python -m deep.bench --peak-tflops 756                # override the bf16 peak (e.g. H100 PCIe)
"""
from __future__ import annotations

import os  # noqa: F401  (tests patch os.sched_getaffinity through this module)

from .accuracy import AccuracyCheckConfig, accuracy_check, format_accuracy
from .cli import GPU_QUICK, build_parser, main
from .concurrency import aggregate, run_concurrency
from .config import (BENCH_DATASETS, CPU_STRETCH, CPU_TARGETS, DEFAULT_OUT, EPOCH_IMAGES, LOOPS, PHASES, TARGETS,
                     BenchConfig, default_threads, image_shape)
from .flops import (DENSE_BF16_PEAK_TFLOPS, count_flops, cpu_peak_gflops, model_flops_per_image, peak_tflops_for,
                    read_cpuinfo)
from .harness import COMPILED, GRAPHED, compile_summary, compute_ratios, judge_targets, run_bench
from .precision import PrecisionCheckConfig, format_precision, precision_check
from .reference import ReferenceStyleDataset, reference_pgd_linf
from .tables import format_table, write_results

__all__ = ["BenchConfig", "DENSE_BF16_PEAK_TFLOPS", "peak_tflops_for", "ReferenceStyleDataset",
           "reference_pgd_linf", "count_flops", "model_flops_per_image", "run_bench", "format_table",
           "cpu_peak_gflops", "read_cpuinfo", "default_threads", "compute_ratios", "compile_summary",
           "judge_targets", "AccuracyCheckConfig", "accuracy_check", "format_accuracy", "PrecisionCheckConfig",
           "precision_check", "format_precision", "main", "GPU_QUICK",
           "run_concurrency", "aggregate", "write_results", "build_parser"]
