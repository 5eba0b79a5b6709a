"""The command line of ``python -m deep.bench`` (see the package docstring for the commands)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from samrobust.attacks import check_linf_eps
from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common, threads_error

from ..robustness import parse_eps
from ..train import resolve_device
from .accuracy import AccuracyCheckConfig, accuracy_check
from .config import BENCH_DATASETS, DEFAULT_OUT, LOOPS, PHASES, BenchConfig, default_threads, image_shape
from .harness import run_bench
from .precision import ARCH_WIDTHS, PrecisionCheckConfig, format_precision, precision_check
from .tables import format_table, write_precision, write_results

__all__ = ["build_parser", "main", "GPU_QUICK"]


def _add_accuracy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy check (fp32 vs bf16 with the same seeds)")
    g.add_argument("--accuracy-check", action="store_true",
                   help="after the throughput phases, train short fp32 and bf16 runs with the same seeds and "
                        "report clean and PGD accuracy side by side [default: off]")
    g.add_argument("--accuracy-dataset", choices=("digits", "fashion-mnist"), default="digits",
                   help="data set of the accuracy check")
    g.add_argument("--accuracy-methods", default="st,sam", help="comma list of st, sam, at")
    g.add_argument("--accuracy-seeds", default="0,1", help="comma list of seeds")
    g.add_argument("--accuracy-epochs", type=int, default=5, help="epochs per run")
    g.add_argument("--accuracy-width", type=int, default=8, help="PreActResNet-18 width")
    g.add_argument("--accuracy-eps", default="0.05",
                   help="l_inf radius of the PGD evaluation (and of AT)")
    g.add_argument("--accuracy-n-train", type=int, default=None,
                   help="first n training images [default: all; digits has 1,297]")
    g.add_argument("--accuracy-n-test", type=int, default=None, help="first n test images [default: all]")
    g.add_argument("--data-dir", default=None,
                   help="folder of the Fashion-MNIST idx files [default: the Debian package's]")


#: --out of a --precision-check run left at the throughput table's default
PRECISION_OUT = "runs/bench/precision_check.json"


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision check (bf16 autocast vs fp32 per architecture)")
    g.add_argument("--precision-check", action="store_true",
                   help="instead of the throughput phases, time our training step with bf16 autocast and in fp32 "
                        "for each architecture, side by side (channels_last as resolved in both); writes "
                        f"{PRECISION_OUT} unless --out is given [default: off]")
    g.add_argument("--precision-archs", default=",".join(ARCH_WIDTHS),
                   help="comma list of architectures (widths: " + ", ".join(f"{a} {w}" for a, w in ARCH_WIDTHS.items())
                        + ", those of the converged grid)")
    g.add_argument("--precision-methods", default="st,sam", help="comma list of st, sam, at")
    g.add_argument("--precision-steps", type=int, default=5, help="timed steps per measurement")
    g.add_argument("--precision-repeats", type=int, default=3,
                   help="measurements per precision, interleaved; the median is reported")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m deep.bench", formatter_class=DefaultsHelpFormatter,
        description="Side-by-side throughput of deep/'s training loop (eager; replaying a CUDA graph on CUDA; "
                    "optionally torch.compile'd) and a reference-style loop (per-image CPU augmentation in a "
                    "DataLoader, fp32): ST, SAM and AT (PGD) training steps and PGD evaluation; images/s, counted "
                    "FLOPs, TFLOP/s and % of the dense bf16 peak (GPU; H200/H100 SXM: 989.4 TFLOP/s) or of an "
                    "assumed CPU peak, peak memory; then the aggregate images/s of K concurrent training "
                    "processes over one. Ratios and the package's targets are in the output.",
        epilog="examples: python -m deep.bench --device cpu   (CPU table) | python -m deep.bench --gpu-quick   "
               "(one GPU, ~90 s on an H200; writes results/bench/deep_bench_h200_quick.json and .md)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--dataset", choices=BENCH_DATASETS, default=None,
                   help="image shape, normalisation and augmentation of the (random) benchmark images "
                        "[default: cifar10 (3x32x32) on GPU, fashion-mnist (1x28x28) on CPU]")
    p.add_argument("--batch-size", type=int, default=None, help="images per step [default: 128]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per phase [default: 50 GPU, 3 CPU]")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before timing, after one untimed step that counts the FLOPs "
                        "[default: 5 GPU, 1 CPU]")
    p.add_argument("--width", type=int, default=None,
                   help="PreActResNet-18 first-stage width [default: 64 GPU (the paper's model), 16 CPU]")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader worker processes of the reference loop")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every phase this often, ours and reference interleaved; the median is reported")
    p.add_argument("--phases", default=",".join(PHASES), help="comma list of st, sam, at, eval")
    p.add_argument("--loops", default=",".join(LOOPS),
                   help="comma list of ours (our eager loop), graphed (ours replaying a CUDA graph of the whole "
                        "step, deep/graphed.py; CUDA only, skipped elsewhere), reference (reference-style loop)")
    p.add_argument("--rho", type=float, default=0.1, help="SAM radius")
    p.add_argument("--eps", default="8/255",
                   help="l_inf radius of the PGD attack (AT and eval); fraction ok")
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps (AT and eval)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in our training loop [default: on for CUDA; on CPU where the CPU computes "
                        "bf16 natively (AVX512-BF16/AMX-BF16), else off]")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last in our loop [default: on for CUDA; on CPU together with native bf16]")
    p.add_argument("--compile", action="store_true",
                   help="also measure our training loop under torch.compile (compiled during at least 2 untimed "
                        "warm-up steps; falls back to uncompiled with a one-line warning when failing); per phase "
                        "the faster loop counts as ours and the output says which [default: off]")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device in TFLOP/s [default: from the built-in table by "
                        "device name, e.g. H100 SXM 989.4; none on CPU]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (intra-op) [default: the cores this process may use, "
                        "os.sched_getaffinity]; 1 is often fastest on a busy CPU")
    p.add_argument("--clock-mhz", type=float, default=None,
                   help="CPU clock of the assumed CPU peak [default: /proc/cpuinfo 'cpu MHz']")
    g = p.add_argument_group("concurrent processes (aggregate images/s of K training processes over one)")
    g.add_argument("--concurrency", default=None,
                   help="comma list of process counts K, or 'off' [default: 1,2,4,8 on GPU (sharing the device), "
                        "1,2 on CPU (one thread each, pinned to one core each)]")
    g.add_argument("--concurrency-method", choices=("st", "sam", "at"), default="st",
                   help="what the concurrent processes train (our eager loop)")
    g.add_argument("--concurrency-steps", type=int, default=None,
                   help="timed steps per process, after its own warm-up [default: 40 GPU, 10 CPU]")
    _add_accuracy_options(p)
    _add_precision_options(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random benchmark images and the models")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON output; the markdown table goes next to it (.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)  # former name
    p.add_argument("--gpu-quick", action="store_true",
                   help="preset for one GPU, about 90 s on an H200: " + ", ".join(
                       f"--{k.replace('_', '-')} {v}" for k, v in GPU_QUICK.items()) +
                        " (options given explicitly win) [default: off]")
    return add_common(p, (
        "python -m deep.bench                              # ours vs reference loop -> runs/bench/deep_bench.{json,md}",
        "python -m deep.bench --threads 1 --repeats 3 --accuracy-check",
        "python -m deep.bench --device cpu --threads 1 --precision-check   # bf16 vs fp32 per architecture",
        "python -m deep.bench --out results/bench/deep_bench.json   # regenerate the shipped numbers"))


# --gpu-quick: every phase and loop, short: ~30 s of phases + ~40 s of K = 1, 2, 4, 8 processes (their
# start-up, CUDA context and cuDNN autotuning dominate) on an H200 (estimated from the H200 rates in
# results/bench/deep_bench_h200.md: ST ~14k images/s eager, AT ~1.6k).
GPU_QUICK = {"device": "cuda", "steps": 30, "warmup": 5, "concurrency": "1,2,4,8", "concurrency_steps": 30,
             "out": "results/bench/deep_bench_h200_quick.json"}


def _apply_preset(parser: argparse.ArgumentParser, args) -> None:
    """--gpu-quick: its values for the options left at their defaults."""
    if not args.gpu_quick:
        return
    for key, value in GPU_QUICK.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def _csv(text: str) -> tuple:
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def _concurrency(text: Optional[str]):
    """None (the device's default), () for 'off', else the process counts."""
    if text is None:
        return None
    if str(text).strip().lower() in ("off", "0", "none", ""):
        return ()
    try:
        return tuple(int(v) for v in _csv(text))
    except ValueError:
        raise ValueError(f"concurrency must be a comma list of process counts or 'off', got {text!r}") from None


def check_bench_inputs(cfg, acfg) -> None:
    """ValueError, before anything is measured, for l_inf radii of 1 or more (--eps 8 meant 8/255: the
    benchmark's PGD is l_inf) and for --threads above samrobust.cli.max_threads."""
    check_linf_eps(cfg.eps, "--eps")
    if acfg is not None:
        check_linf_eps(acfg.eps, "--accuracy-eps")
    if threads_error(cfg.threads, low=1) is not None:
        raise ValueError(threads_error(cfg.threads, low=1))


def _configs(parser: argparse.ArgumentParser, args) -> tuple:
    """(BenchConfig, AccuracyCheckConfig or None, PrecisionCheckConfig or None) from the options; errors exit
    2 with the option's name."""
    try:
        cfg = BenchConfig(device=args.device, dataset=args.dataset, batch_size=args.batch_size, steps=args.steps,
                          warmup=args.warmup, width=args.width, workers=args.workers, repeats=args.repeats,
                          phases=_csv(args.phases), loops=_csv(args.loops), rho=args.rho, eps=parse_eps(args.eps),
                          attack_steps=args.attack_steps, bf16=args.bf16, channels_last=args.channels_last,
                          peak_tflops=args.peak_tflops, threads=args.threads, seed=args.seed, compile=args.compile,
                          clock_mhz=args.clock_mhz, concurrency=_concurrency(args.concurrency),
                          concurrency_method=args.concurrency_method, concurrency_steps=args.concurrency_steps)
        acfg = AccuracyCheckConfig(
            dataset=args.accuracy_dataset, methods=_csv(args.accuracy_methods),
            seeds=tuple(int(v) for v in _csv(args.accuracy_seeds)), epochs=args.accuracy_epochs,
            width=args.accuracy_width, eps=parse_eps(args.accuracy_eps), n_train=args.accuracy_n_train,
            n_test=args.accuracy_n_test, data_dir=args.data_dir) if args.accuracy_check else None
        pcfg = PrecisionCheckConfig(archs=_csv(args.precision_archs), methods=_csv(args.precision_methods),
                                    steps=args.precision_steps, repeats=args.precision_repeats) \
            if args.precision_check else None
        check_bench_inputs(cfg, acfg)
        resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        msg = str(err)
        for field in ("concurrency_steps", "concurrency_method", "batch_size", "attack_steps", "peak_tflops",
                      "clock_mhz"):
            msg = msg.replace(field, "--" + field.replace("_", "-"))
        parser.error(msg)
    return cfg, acfg, pcfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _apply_preset(parser, args)
    cfg, acfg, pcfg = _configs(parser, args)
    say = None if args.no_progress else (lambda s: print(f"deep.bench: measuring {s} ...", file=sys.stderr, flush=True))
    if pcfg is not None:
        return _precision_main(cfg, pcfg, Path(PRECISION_OUT if args.out == DEFAULT_OUT else args.out), say)
    rc = cfg.resolved(resolve_device(cfg.device))
    print(f"deep.bench: {rc.threads} torch threads ({default_threads()} cores allowed), {rc.dataset} "
          f"{'x'.join(map(str, image_shape(rc.dataset)))}, ours in {'bf16' if rc.bf16 else 'fp32'}"
          f"{' + channels_last' if rc.channels_last else ''}", file=sys.stderr, flush=True)
    result = run_bench(cfg, progress=say)
    if acfg is not None:
        result["accuracy_check"] = accuracy_check(acfg, result["meta"]["device"], progress=say)
    md = write_results(result, Path(args.out))
    print(format_table(result))
    print(f"\nwrote {args.out} and {md}")
    return 0


def _precision_main(cfg: BenchConfig, pcfg: PrecisionCheckConfig, out: Path, say) -> int:
    """--precision-check: the table, printed and written (JSON + .md, atomically) to ``out``."""
    res = precision_check(cfg, pcfg, progress=say)
    md = write_precision(res, out)
    print(format_precision(res))
    print(f"\nwrote {out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
