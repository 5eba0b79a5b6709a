"""``python -m deep.run``: the deep experiment of docs/protocol.md (ST, SAM, AT on PreActResNet-18).

Runs every (method, strength, seed) of the grid, each resumable, then prints the results table and writes
``<out>/<dataset>/<run_id>.json`` per run plus ``<out>/<dataset>/summary.md`` (``<out>/quick/`` for
``--quick``). Finished runs (a JSON with the same configuration) are skipped.

Examples::

    python -m deep.run --quick                                   # ~1 min on 2 CPU cores, generated data
    python -m deep.run --data-dir data --download                # reference grid on CIFAR-10 (GPU)
    python -m deep.run --dataset synthetic --epochs 30 --seeds 0,1,2
    python -m deep.run --methods at --norm l2 --eps 16/255,32/255 --resume
    torchrun --nproc_per_node=4 -m deep.run --data-dir data     # each run on 4 GPUs (DDP)

Under torchrun every run trains with DistributedDataParallel (deep/distributed.py): --batch-size is the
global batch, split evenly over the processes; each process takes a strided share of the epoch's
permutation; SAM's ascent uses each process's own batch gradient (m-sharpness with m = batch/N) unless
--sam-all-reduce-ascent; evaluation is sharded and the counts summed; only rank 0 prints and writes results
and checkpoints, and every rank reads the checkpoint on --resume (same number of processes required).

The command line resolves into one :class:`deep.spec.RunSpec` (:func:`resolve_spec`), which every step
below takes: :func:`make_configs`, :func:`deep.datasets.load_data`, :func:`run_one`.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from samrobust.attacks import check_linf_eps
from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common, threads_error
from samrobust.files import check_output_dir, remove_stale_temp_files
from samrobust.lock import RunLock
from samrobust.threat import Norm, attack_label, norm_name, normalize_norm, parse_norm

from . import distributed as ddist
from .images import DataError, ImageData
from .synthetic import SyntheticSpec
from .datasets import DATASETS, load_data, synthetic_seeds
from .robustness import EvalOptions, format_eps, parse_attack, parse_eps, evaluate, probes
from .archs import ARCHS, DEFAULT_ARCH
from .autoattack import run_autoattack
from .summary import results_table, write_summary
from .byo import ArchError, arch_tag, is_custom_arch
from .jobs import run_pool
from .logs import GridProgress, write_history_csv
from .spec import (CIFAR_PROTOCOL, FASHION_MNIST_PROTOCOL, PROFILES, PROTOCOLS, QUICK, RUN_DEFAULTS,  # noqa: F401
                   CURVE_STEPS, PROFILE_FOLDERS, TRAIN_DEFAULTS, TRAIN_OPTIONS, EvalSettings, RunSpec)
from .record import RunRecord, read_record, write_record
from .train import (BN_STATS, METHOD_NAMES, DivergenceError, FitOptions, FitResult, TrainConfig,
                    at_variant_config, build_model, check_finite_weights, config_matches, fit,
                    resolve_device, runtime_flags)


RUN_EXAMPLES = (
    "python -m deep.run --quick                        # one-minute smoke run on generated data -> runs/deep/quick/",
    "python -m deep.run --profile cpu                  # Fashion-MNIST ST / SAM / AT, 3 seeds, about 90 min on 2 cores",
    "python -m deep.run --profile cpu --archs mynets:small --methods st,sam --rho 0.1   # your own model",
    "python -m deep.run --dataset synthetic --epochs 30 --seeds 0,1,2",
    "python -m deep.run --profile cpu --out results/deep   # regenerate the shipped results",
    "torchrun --nproc_per_node=4 -m deep.run --data-dir data   # each run on 4 GPUs (DDP)",
)


def _csv(text: str) -> List[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m deep.run``. Defaults of training options are TrainConfig's (deep/train.py),
    of evaluation options EvalOptions' (deep/robustness.py); those left None here come from --profile, then
    the data set's protocol (deep/spec.py)."""
    p = CliParser(
        prog="python -m deep.run",
        description="Train PreActResNet-18 with ST, SAM and PGD adversarial training (AT) and evaluate clean "
                    "and PGD robust accuracy (docs/protocol.md). Defaults are the reference settings.",
        formatter_class=DefaultsHelpFormatter)
    _grid_options(p)
    _training_options(p)
    _evaluation_options(p)
    _synthetic_options(p)
    _file_options(p)
    return add_common(p, RUN_EXAMPLES)


def _grid_options(parser: argparse.ArgumentParser) -> None:
    """What runs: data set, methods, radii, seeds."""
    td, fm = TRAIN_DEFAULTS, FASHION_MNIST_PROTOCOL
    g = parser.add_argument_group("grid")
    g.add_argument("--quick", action="store_true",
                   help=f"= --profile quick: smoke run on generated data ({QUICK['n_train']} train / "
                        f"{QUICK['n_test']} test images), width {QUICK['width']}, batch {QUICK['batch_size']}, "
                        f"lr {QUICK['lr']}, one epoch each of ST, SAM rho 0.1, AT l_inf 8/255; results in "
                        f"<out>/quick/. About a minute on two CPU cores. Explicit options override it.")
    g.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="preset replacing the defaults (explicit options override it): quick (see --quick); "
                        "cpu: the short Fashion-MNIST grid (not converged) in about 90 min on two CPU cores: "
                        + ", ".join(f"{k} {v}" for k, v in PROFILES["cpu"].items())
                        + "; converged: the Fashion-MNIST grid trained to the plateau (results in "
                        "<out>/fashion-mnist-converged; use with --jobs 2 --plateau-check): "
                        + ", ".join(f"{k} {v}" for k, v in PROFILES["converged"].items()))
    g.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="cifar10 / cifar100 (python archives in --data-dir), fashion-mnist (idx files in "
                        "--data-dir or from Debian's package dataset-fashion-mnist), digits (scikit-learn) or "
                        f"the generated robust/non-robust images (synthetic) [default: {RUN_DEFAULTS['dataset']}]")
    g.add_argument("--methods", default=None,
                   help="comma list of st, sam, at and the cheap AT variants fgsm-rs (FGSM, random start, step "
                        "1.25 eps), pgd1 (one step of eps from the clean point) and pgd2 (two steps of eps/2, "
                        "random start), which train at the --eps radii with a catastrophic-overfitting check "
                        f"[default: {CIFAR_PROTOCOL['methods']}]")
    g.add_argument("--archs", default=td.arch,
                   help="comma list of architectures: " + ", ".join(ARCHS) + " (deep/archs.py), or your own "
                        "model as module:callable (or file.py:callable), called with num_classes and "
                        "in_channels keywords, returning an nn.Module that takes images in [0, 1] "
                        "(deep/byo.py; --width does not apply)")
    g.add_argument("--rho", default=None,
                   help=f"comma list of SAM radii [default: {CIFAR_PROTOCOL['rho']}; fashion-mnist, digits: {fm['rho']}]")
    g.add_argument("--adaptive", action="store_true", help="adaptive SAM (ASAM): e = rho w^2 g / ||w g||")
    g.add_argument("--eps", default=None,
                   help=f"comma list of AT radii, fractions allowed [default: {CIFAR_PROTOCOL['eps']}; "
                        f"fashion-mnist, digits: {fm['eps']}]")
    g.add_argument("--norm", default=norm_name(td.norm), choices=["linf", "l2"], help="AT threat model")
    g.add_argument("--at-steps", type=int, default=td.attack_steps, help="PGD steps in AT's inner loop")
    g.add_argument("--at-step-size", default=None,
                   help="PGD step in AT (fraction allowed) [default: eps/4 for linf, eps/8 for l2]")
    g.add_argument("--seeds", default=None,
                   help=f"comma list of seeds (one run per seed) [default: {RUN_DEFAULTS['seeds']}]")
    g.add_argument("--at-seeds", default=None,
                   help="comma list of seeds for AT and the cheap AT variants only (PGD-10 AT costs ~9x an ST "
                        "epoch, so a grid may give it fewer seeds) [default: --seeds]")
    g.add_argument("--plateau-check", nargs="?", const="*", default=None, metavar="RUNS",
                   help="add one run per method configuration (optionally only those whose run id matches one "
                        "of the comma list of globs RUNS, e.g. 'st_*,sam_rho0.1_*') at twice the epochs (the "
                        "first seed) under "
                        "<results folder>/plateau/: the plateau test of docs/protocol.md (final clean accuracy "
                        "within 0.5 points and headline robust accuracy within 2 points of the doubled budget)")
    g.add_argument("--jobs", type=int, default=1,
                   help="independent runs at once, each in its own process (results identical to --jobs 1 at "
                        "the same --threads; --threads is per job, default cores / jobs). Pick K so that K x "
                        "threads <= CPU cores; on one GPU, K runs share the device (deep.bench measures the "
                        "aggregate speed-up per K). Not under torchrun")
    g.add_argument("--sam-all-reduce-ascent", action="store_true",
                   help="under torchrun: SAM's ascent from the all-reduced (global batch) gradient; default: "
                        "each process's own batch gradient (m-sharpness, m = per-process batch)")


def _training_options(parser: argparse.ArgumentParser) -> None:
    """Training settings (TrainConfig's defaults unless the preset or protocol set them)."""
    td = TRAIN_DEFAULTS
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per run [default: {td.epochs}; {QUICK['epochs']} with --quick]")
    t.add_argument("--batch-size", type=int, default=None, help="mini-batch size; under torchrun the global batch, split over the processes "
                        f"[default: {td.batch_size}]")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; piecewise x0.1 at 75%% and x0.01 at 90%% of the epochs "
                        f"[default: {td.lr}; {QUICK['lr']} with --quick]")
    t.add_argument("--momentum", type=float, default=td.momentum, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=td.weight_decay,
                   help="SGD weight decay (not in SAM's ascent)")
    t.add_argument("--width", type=int, default=None,
                   help=f"first-stage width of PreActResNet-18 [default: {td.width}]")
    t.add_argument("--n-train", type=int, default=None,
                   help="training images (first n; generated set: its size) "
                        f"[default: all; synthetic {PROTOCOLS['synthetic']['n_train']}]")
    t.add_argument("--n-test", type=int, default=None,
                   help=f"test images [default: all; synthetic {PROTOCOLS['synthetic']['n_test']}]")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (reflect pad 4) + flip [default: on for CIFAR, off for synthetic]")
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in training [default: on for CUDA, off on CPU]")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format [default: on for CUDA, off on CPU]")
    t.add_argument("--bn-stats", choices=list(BN_STATS), default=td.bn_stats,
                   help="which training forwards update the BatchNorm running statistics: first (ours: only "
                        "the loss forward at w; SAM's second pass and AT's inner PGD leave them alone) or all "
                        "(the paper's code: every forward in train mode); docs/protocol.md, deviation 1")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the model (speed only; falls back to uncompiled with a one-line warning "
                        "when unavailable or failing) [default: off]")
    t.add_argument("--cuda-graph", action="store_true",
                   help="CUDA: capture the whole training step once as a CUDA graph and replay it (deep/graphed.py; "
                        "speed only, the eager step's numbers up to kernel rounding; the last partial batch runs "
                        "eagerly); falls back to eager with a one-line warning off CUDA, under several processes or "
                        "when capture fails [default: off]")
    t.add_argument("--device", default=td.device, help="auto, cpu, cuda or cuda:N")
    t.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads for torch (0: torch's default) [default: {RUN_DEFAULTS['threads']}; "
                        f"{QUICK['threads']} with --quick, whose tiny "
                        "model gains nothing from more and slows down badly on a busy machine]")


def _evaluation_options(parser: argparse.ArgumentParser) -> None:
    """Clean, PGD (EvalOptions' defaults) and AutoAttack evaluation."""
    ed, fm = EvalOptions(), FASHION_MNIST_PROTOCOL
    e = parser.add_argument_group("evaluation")
    e.add_argument("--attack-steps", type=int, default=ed.steps, help="PGD steps in evaluation")
    e.add_argument("--restarts", type=int, default=ed.restarts,
                   help="PGD random restarts in evaluation (worst case)")
    e.add_argument("--eval-attacks", default=None,
                   help=f"comma list of norm:eps [default: {CIFAR_PROTOCOL['eval_attacks']}; "
                        f"fashion-mnist: {fm['eval_attacks']}]")
    e.add_argument("--attack-loss", default=ed.loss, choices=["ce", "cw"],
                   help="loss PGD maximises in evaluation: cross-entropy or the margin (CW) loss")
    e.add_argument("--n-robust", type=int, default=None,
                   help="robust accuracy on the first N test images only (clean accuracy on all) [default: all]")
    e.add_argument("--eval-batch-size", type=int, default=ed.batch_size, help="evaluation batch size")
    e.add_argument("--autoattack", choices=["off", "cpu", "standard"], default="off",
                   help="also AutoAttack (pyautoattack) at the --eval-attacks radii on the first --aa-n test "
                        "images, stored under \"autoattack\" in each result: standard (APGD-CE, APGD-T, FAB-T, "
                        "Square) or cpu (APGD-CE + APGD-T with 3 target classes; deep/autoattack.py) [default: off]")
    e.add_argument("--aa-n", type=int, default=1000, help="test images for --autoattack")
    e.add_argument("--curve-n", type=int, default=None,
                   help="learning curves: clean accuracy on the whole test set after every epoch, and PGD-10 at "
                        "--curve-attack on the first N test images after the first epoch, every third of the "
                        f"budget and the last (0: clean only) [default: {RUN_DEFAULTS['curve_n']}]")
    e.add_argument("--curve-attack", default=None,
                   help="radius of the learning curves' PGD-10 [default: the protocol's headline radius: "
                        f"{CIFAR_PROTOCOL['curve_attack']} for CIFAR, {FASHION_MNIST_PROTOCOL['curve_attack']} for "
                        "fashion-mnist]")
    e.add_argument("--probe-n", type=int, default=None,
                   help="images per probe variant (synthetic only) "
                        f"[default: {RUN_DEFAULTS['probe_n']}; {QUICK['probe_n']} with --quick]")


def _synthetic_options(parser: argparse.ArgumentParser) -> None:
    """The generated data set (SyntheticSpec's defaults)."""
    s = parser.add_argument_group("generated dataset (--dataset synthetic)")
    d0 = SyntheticSpec()
    s.add_argument("--robust-amplitude", type=float, default=d0.robust_amplitude,
                   help="RMS per pixel of the robust class patterns")
    s.add_argument("--robust-spread", type=float, default=d0.robust_spread,
                   help="spread of the robust coefficients (0.4: robust feature alone ~81%%)")
    s.add_argument("--nonrobust-amplitude", default=format_eps(d0.nonrobust_amplitude),
                   help="per-pixel amplitude of the non-robust sign patterns (fraction allowed)")
    s.add_argument("--nonrobust-spread", type=float, default=d0.nonrobust_spread,
                   help="relative spread of the non-robust amplitude")
    s.add_argument("--pixel-noise", type=float, default=d0.pixel_noise, help="i.i.d. Gaussian pixel noise")
    s.add_argument("--synthetic-seed", type=int, default=d0.pattern_seed,
                   help="seed of the class patterns and of the generated images (train, test, probes)")


def _file_options(parser: argparse.ArgumentParser) -> None:
    """Data, results, resume."""
    o = parser.add_argument_group("files")
    o.add_argument("--data-dir", default="data", help="folder with the CIFAR archives or extracted folders")
    o.add_argument("--download", action="store_true", help="download CIFAR (md5-verified) if missing")
    o.add_argument("--out", default="runs/deep",
                   help="results root; runs go to <out>/<dataset>/ (untracked runs/ by default; the shipped "
                        "results are regenerated only with an explicit --out results/deep)")
    o.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their last epoch checkpoint")
    o.add_argument("--force", action="store_true", help="rerun and overwrite finished runs")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress bars (off a terminal progress is one plain line every 30 s)")


# ------------------------------------------------------------------------- options -> RunSpec

def _float_list(parser, text, name) -> List[float]:
    try:
        vals = [parse_eps(v) for v in _csv(text)]
    except ValueError as err:
        parser.error(f"--{name}: {err}".replace("eps", name) if name != "eps" else f"--eps: {err}")
    if not vals:
        parser.error(f"--{name} is empty")
    return vals


def _apply_profile(parser, args) -> None:
    """Fill options left unset (None) from --profile (--quick = --profile quick), then from the data set's
    protocol (PROTOCOLS), then from TrainConfig's defaults. Explicit options always win."""
    if args.quick:
        if args.profile not in (None, "quick"):
            parser.error(f"--quick conflicts with --profile {args.profile}")
        args.profile = "quick"
    for key, val in PROFILES.get(args.profile, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    args.dataset = args.dataset or RUN_DEFAULTS["dataset"]
    defaults = {**RUN_DEFAULTS, **{k: getattr(TRAIN_DEFAULTS, k) for k in ("epochs", "width", "batch_size", "lr")},
                **PROTOCOLS[args.dataset]}
    for key, val in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)


def _check_ranges(parser, args) -> None:
    for name in ("epochs", "width", "batch_size", "attack_steps", "at_steps", "restarts", "eval_batch_size",
                 "probe_n", "n_train", "n_test", "n_robust", "threads", "aa_n", "curve_n", "jobs"):
        val = getattr(args, name)
        lo = 0 if name in ("attack_steps", "at_steps", "threads", "curve_n") else 1
        if val is not None and val < lo:
            parser.error(f"--{name.replace('_', '-')} must be >= {lo}, got {val}")
    for name in ("lr", "weight_decay", "momentum"):
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be finite, got {getattr(args, name)}")
    if threads_error(args.threads) is not None:
        parser.error(threads_error(args.threads))
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not args.weight_decay >= 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum}")


def _names(parser, text: str, option: str, known, what: str) -> List[str]:
    names = _csv(text)
    bad = [n for n in names if n not in known]
    if bad or not names:
        parser.error(f"--{option}: unknown {what}(s) {bad}; choose from {', '.join(known)}")
    return names


def _arch_names(parser, text: str) -> List[str]:
    """--archs: built-in names (deep/archs.py) and user models ``module:callable`` (deep/byo.py)."""
    names = _csv(text)
    builtin = [n for n in names if not is_custom_arch(n)]
    if builtin or not names:        # unknown built-in names (or none at all): parser.error listing the choices
        _names(parser, ",".join(builtin), "archs", tuple(ARCHS), "architecture")
    return names


def _check_custom_archs(parser, base: TrainConfig, archs: Sequence[str]) -> None:
    """Build each user model (``module:callable``) once before any run: a failing import or call exits
    with status 2 and one line saying why."""
    for name in archs:
        if is_custom_arch(name):
            try:
                build_model(dataclasses.replace(base, arch=name), torch.device("cpu"))
            except ArchError as err:
                parser.exit(2, f"{parser.prog}: error: --archs: {err}\n")


def _seeds(parser, text: str) -> List[int]:
    try:
        seeds = [int(s) for s in _csv(text)]
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, got {text!r}")
    if not seeds:
        parser.error("--seeds is empty")
    return seeds


def _attack(text: str, option: str):
    """parse_attack with the option named in its ValueError."""
    try:
        return parse_attack(text)
    except ValueError as err:
        raise ValueError(f"{option} {text}: {err}") from None


def _parse_values(parser, args, epss: List[float]):
    """(eval attacks, AT step size, generated-data spec, device) from the options; parser.error on a bad
    one (l_inf radii of 1 or more are refused with a hint: samrobust.attacks.check_linf_eps)."""
    try:
        attacks = tuple(_attack(a, "--eval-attacks") for a in _csv(args.eval_attacks))
        curve = _attack(args.curve_attack, "--curve-attack")
        if parse_norm(curve.norm) is Norm.LINF:
            check_linf_eps(curve.eps, f"--curve-attack {args.curve_attack}")
        at_step = parse_eps(args.at_step_size) if args.at_step_size is not None else None
        synthetic = SyntheticSpec(robust_amplitude=args.robust_amplitude, robust_spread=args.robust_spread,
                                  nonrobust_amplitude=parse_eps(args.nonrobust_amplitude),
                                  nonrobust_spread=args.nonrobust_spread, pixel_noise=args.pixel_noise,
                                  pattern_seed=args.synthetic_seed, num_classes=10)
        device = resolve_device(args.device)
        if parse_norm(args.norm) is Norm.LINF:
            for text, eps in zip(_csv(args.eps), epss):
                check_linf_eps(eps, f"--eps {text}")
        for text, a in zip(_csv(args.eval_attacks), attacks):
            if parse_norm(a.norm) is Norm.LINF:
                check_linf_eps(a.eps, f"--eval-attacks {text}")
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    if not attacks:
        parser.error(f"--eval-attacks is empty ({args.eval_attacks!r}); give at least one norm:eps")
    dup = [a.label for i, a in enumerate(attacks) if a.label in [b.label for b in attacks[:i]]]
    if dup:
        parser.error(f"--eval-attacks: {', '.join(dict.fromkeys(dup))} given more than once (linf: and inf: "
                     f"are the same norm); each attack once")
    return attacks, at_step, synthetic, device, curve


def resolve_spec(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RunSpec:
    """The :class:`RunSpec` of parsed deep.run options, after filling in the preset / data-set defaults
    (:func:`_apply_profile`); a bad option exits through ``parser.error`` (status 2)."""
    _apply_profile(parser, args)
    methods = _names(parser, args.methods, "methods", METHOD_NAMES, "method")
    archs = _arch_names(parser, args.archs)
    rhos = _float_list(parser, args.rho, "rho")
    epss = _float_list(parser, args.eps, "eps")
    seeds = _seeds(parser, args.seeds)
    _check_ranges(parser, args)
    at_seeds = _seeds(parser, args.at_seeds) if args.at_seeds is not None else seeds
    attacks, at_step, synthetic, device, curve = _parse_values(parser, args, epss)
    base = dataclasses.replace(
        TRAIN_DEFAULTS, dataset=args.dataset, norm=normalize_norm(args.norm), attack_step_size=at_step,
        synthetic=synthetic.to_dict(), **{field: getattr(args, opt) for field, opt in TRAIN_OPTIONS.items()})
    ev = EvalSettings(attacks=attacks, steps=args.attack_steps, restarts=args.restarts, loss=args.attack_loss,
                      n_robust=args.n_robust, batch_size=args.eval_batch_size, probe_n=args.probe_n,
                      autoattack=args.autoattack, aa_n=args.aa_n, curve_n=args.curve_n, curve_attack=curve)
    _check_custom_archs(parser, base, archs)
    spec = RunSpec(base=base, methods=methods, archs=archs, rhos=rhos, epss=epss, seeds=seeds, eval=ev,
                   at_seeds=at_seeds, jobs=args.jobs, plateau_check=args.plateau_check,
                   device=device, out_dir=Path(args.out) / PROFILE_FOLDERS.get(args.profile, args.dataset),
                   threads=args.threads, profile=args.profile, data_dir=args.data_dir, download=args.download,
                   resume=args.resume, force=args.force, progress=not args.no_progress, compile=args.compile,
                   cuda_graph=args.cuda_graph)
    try:
        check_run_ids(make_configs(spec))
        check_model_memory(make_configs(spec)[0], archs)
    except ValueError as err:
        parser.error(str(err))
    return spec


# ------------------------------------------------------------------------------------ the runs

def run_id(cfg: TrainConfig) -> str:
    """e.g. st_s0, sam_rho0.1_s0, at_linf_0.1_s0, fgsm-rs_linf_0.1_s0, vit_sam_rho0.1_s1 (architecture
    prefix unless PreActResNet-18; AT with other PGD settings keeps the name at_..., and a finished run of
    another configuration under that name is refused by run_one)."""
    if cfg.method == "st":
        base = "st"
    elif cfg.method == "sam":
        base = f"{'asam' if cfg.adaptive else 'sam'}_rho{format_rho(cfg.rho)}"
    else:
        base = f"{cfg.method}_{attack_label(cfg.norm, cfg.eps).replace('/', '-')}"
    arch = "" if cfg.arch == DEFAULT_ARCH else f"{arch_tag(cfg.arch)}_"
    return f"{arch}{base}_s{cfg.seed}"


def format_rho(rho: float) -> str:
    """rho as written in run ids: the short form (0.1, 0.05) when it reads back as the same float, else
    the exact repr (0.1000001), so that two different radii never share a run id."""
    short = f"{rho:g}"
    return short if float(short) == float(rho) else repr(float(rho))


def check_run_ids(cfgs: Sequence[TrainConfig]) -> None:
    """ValueError naming the run id that two runs of the grid would share (the same radius given twice,
    or two AT radii that print alike), since the second would fail against the first's result file."""
    seen: Dict[str, TrainConfig] = {}
    for cfg in cfgs:
        rid = run_id(cfg)
        if rid in seen:
            raise ValueError(f"two runs of the grid get the run id {rid} (rho {seen[rid].rho!r} / {cfg.rho!r}, "
                             f"eps {seen[rid].eps!r} / {cfg.eps!r}); give each radius once")
        seen[rid] = cfg


#: Bytes of memory per model parameter in training (weights, gradient, momentum, SAM's saved weights,
#: checkpoint copy), a lower bound used to refuse impossible widths before anything is allocated.
TRAIN_BYTES_PER_PARAM = 4 * 5


def count_parameters(cfg: TrainConfig, arch: str) -> int:
    """Parameters of ``arch`` at cfg's width for cfg's data set, counted on the meta device (nothing is
    allocated)."""
    from .archs import build_arch
    from .datasets import dataset_info
    from .preact_resnet import normalization_for

    mean, std = normalization_for(cfg.dataset)
    size = cfg.synthetic_spec.image_size if cfg.dataset == "synthetic" else dataset_info(cfg.dataset).image_size
    with torch.device("meta"):
        model = build_arch(arch, cfg.num_classes, cfg.width, mean, std, size, final_bn=cfg.final_bn)
    return sum(p.numel() for p in model.parameters())


def _physical_memory() -> int:
    """Bytes of RAM of this machine (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_model_memory(cfg: TrainConfig, archs: Sequence[str]) -> None:
    """ValueError naming --width when the model alone would need more memory to train than this machine
    has (:data:`TRAIN_BYTES_PER_PARAM` per parameter), before any allocation."""
    ram = _physical_memory()
    for arch in archs:
        need = count_parameters(cfg, arch) * TRAIN_BYTES_PER_PARAM
        if ram and need > ram:
            raise ValueError(f"--width {cfg.width}: {arch} would need at least {need / 2**30:.1f} GiB to train, "
                             f"more than the {ram / 2**30:.1f} GiB of memory here; choose a smaller --width")


def make_configs(spec: RunSpec) -> List[TrainConfig]:
    """One TrainConfig per run of the grid (seeds, then architectures, then methods and their radii): the
    spec's shared settings (spec.base) with the run's method, radius, seed and architecture replaced. AT and
    its cheap variants take the seeds of spec.at_seeds (default: spec.seeds)."""
    at_seeds = spec.seeds if spec.at_seeds is None else spec.at_seeds
    cfgs = []
    for seed in list(dict.fromkeys(list(spec.seeds) + list(at_seeds))):
        for arch in spec.archs:
            run = dict(seed=seed, arch=arch)
            for m in spec.methods:
                if seed not in (at_seeds if m not in ("st", "sam") else spec.seeds):
                    continue
                if m == "st":
                    cfgs.append(dataclasses.replace(spec.base, method="st", **run))
                elif m == "sam":
                    cfgs.extend(dataclasses.replace(spec.base, method="sam", rho=rho, **run) for rho in spec.rhos)
                elif m == "at":
                    cfgs.extend(dataclasses.replace(spec.base, method="at", eps=eps, **run) for eps in spec.epss)
                else:
                    cfgs.extend(dataclasses.replace(spec.base, **run, **at_variant_config(m, eps))
                                for eps in spec.epss)
    return cfgs


PLATEAU_FOLDER = "plateau"


def make_jobs(spec: RunSpec) -> List[Tuple[TrainConfig, Path]]:
    """(configuration, results folder) of every run: the grid (:func:`make_configs`) in spec.out_dir and,
    with spec.plateau_check, one run per method configuration at twice the epochs with the first seed in
    spec.out_dir / "plateau" (the plateau test, docs/protocol.md)."""
    cfgs = make_configs(spec)
    jobs = [(c, spec.out_dir) for c in cfgs]
    if spec.plateau_check:
        pats = _csv(spec.plateau_check) or ["*"]
        first: Dict[str, TrainConfig] = {}
        for c in cfgs:
            if any(fnmatch.fnmatchcase(run_id(c), p) for p in pats):
                first.setdefault(run_id(dataclasses.replace(c, seed=0)), c)
        jobs += [(dataclasses.replace(c, epochs=2 * c.epochs), spec.out_dir / PLATEAU_FOLDER)
                 for c in first.values()]
    return jobs


def job_cost(cfg: TrainConfig) -> float:
    """Relative training cost of a run, for ordering parallel jobs (longest first) and the ETA: epochs x
    forward-backward passes per step (ST 1, SAM 2, AT attack steps + 1) x width^2 (roughly the FLOPs)."""
    passes = {"st": 1, "sam": 2}.get(cfg.method, cfg.attack_steps + 1)
    return float(cfg.epochs * passes * cfg.width ** 2 * (cfg.n_train or 60000))


def run_one(cfg: TrainConfig, train: ImageData, test: ImageData, spec: RunSpec, is_main: bool = True,
            ctx: Optional[ddist.DistContext] = None) -> Dict:
    """Train (or resume) and evaluate one run; returns its result dict (a finished run of the same
    configuration and evaluation is not rerun: its stored result, with "skipped": True).

    With a multi-process ``ctx`` (torchrun) the model is trained with DDP, each process with batch
    cfg.batch_size / world_size on its shard of every epoch (cfg.batch_size stays the global batch)."""
    rid = run_id(cfg)
    path = spec.out_dir / f"{rid}.json"
    ckpt = spec.out_dir / "checkpoints" / f"{rid}.pt"
    if path.exists() and not spec.force:
        return _finished_run(path, cfg, spec)
    if not spec.resume and ckpt.exists() and is_main:
        print(f"{rid}: found an unfinished checkpoint, starting over (--resume continues it)")
        ckpt.unlink()
    t0 = time.perf_counter()
    world = ctx.world_size if ctx is not None else 1
    res = _train_run(cfg, train, spec, ckpt, is_main, ctx, test)
    check_trained(cfg, res)
    device = train.x.device
    channels_last = runtime_flags(cfg, device)[1]
    ev = evaluate(res.model, test, spec.attacks, steps=spec.eval.steps, restarts=spec.eval.restarts,
                  batch_size=spec.eval.batch_size, seed=cfg.seed, channels_last=channels_last,
                  progress=spec.progress, loss=spec.eval.loss, n_robust=spec.eval.n_robust)
    record = _result_record(cfg, spec, res, ev, total_s=time.perf_counter() - t0, test=test, world=world,
                            is_main=is_main)
    if spec.eval.autoattack != "off":   # every rank computes it (no collectives), rank 0 stores it
        record.autoattack = run_autoattack(res.model, test, spec.attacks, spec.eval.autoattack,
                                           n=spec.eval.aa_n, device=device, seed=cfg.seed,
                                           batch_size=min(spec.eval.batch_size, 250))
    if is_main:
        write_record(path, record)
        write_history_csv(path, record.history)
    return record.to_dict()


def check_trained(cfg: TrainConfig, res: FitResult) -> None:
    """DivergenceError before any evaluation when the trained (or resumed) model has a non-finite weight or
    its last recorded loss is not finite, naming the first epoch whose loss went non-finite."""
    check_finite_weights(res.model, cfg, res.epochs_done)
    bad = [h["epoch"] for h in res.history if not math.isfinite(h.get("train_loss", 0.0))]
    if bad:
        raise DivergenceError(f"training diverged: non-finite loss in epoch {bad[0]}; no result written")


def _finished_run(path: Path, cfg: TrainConfig, spec: RunSpec) -> Dict:
    """The stored result at ``path`` marked "skipped" when it is cfg's experiment (the science fields of
    its configuration: deep.train.config_matches, and the training precision it used) with the spec's
    evaluation; ValueError otherwise (another --out or --force is needed)."""
    old = read_record(path)             # RecordError (a ValueError) naming the file
    if config_matches(old.config, cfg) and old.eval == spec.eval_record() and _same_precision(old, cfg, spec):
        return old.to_dict() | {"skipped": True}
    hint = "; to add AutoAttack to finished runs: python -m deep.evaluate " + \
        f"{spec.out_dir} --attacks autoattack:{spec.eval.autoattack}" if spec.eval.autoattack != "off" else ""
    raise ValueError(f"{path} exists with a different configuration; use another --out or --force{hint}")


def _same_precision(old: RunRecord, cfg: TrainConfig, spec: RunSpec) -> bool:
    """Whether the finished run ``old`` trained in the precision cfg asks for: with bf16 left to the device
    (None) the precision it resolves to here against the record's train_precision; an explicit bf16 is
    compared by config_matches already."""
    if cfg.bf16 is not None or old.train_precision is None:
        return True
    return old.train_precision == _precision(runtime_flags(cfg, spec.device)[0])


def learning_curve(spec: RunSpec, cfg: TrainConfig, test: ImageData):
    """The epoch_eval of :class:`deep.train.FitOptions` for one run: after every epoch the clean accuracy on
    all of ``test`` ("test_clean_acc"), and at spec.eval.curve_epochs also PGD-10 (best iterate, one
    restart, fp32) at spec.eval.curve_attack on the first spec.eval.curve_n test images ("curve_robust":
    {label: accuracy}, "curve_n"). Seeded by the run's seed: the same numbers on resume."""
    ev_set = spec.eval
    with_pgd = set(ev_set.curve_epochs(cfg.epochs)) if ev_set.curve_n and ev_set.curve_attack else set()
    channels_last = runtime_flags(cfg, test.x.device)[1]

    def epoch_eval(model: torch.nn.Module, epoch: int) -> Dict:
        attacks = (ev_set.curve_attack,) if epoch in with_pgd else ()
        ev = evaluate(model, test, attacks, steps=CURVE_STEPS, restarts=1, batch_size=ev_set.batch_size,
                      seed=cfg.seed, channels_last=channels_last, progress=False, loss="ce",
                      n_robust=ev_set.curve_n if attacks else None)
        rec = {"test_clean_acc": ev["clean_acc"]}
        if attacks:
            rec.update(curve_robust=dict(ev["robust"]), curve_n=ev.get("n_robust"))
        return rec
    return epoch_eval


def _train_run(cfg: TrainConfig, train: ImageData, spec: RunSpec, ckpt: Path, is_main: bool,
               ctx: Optional[ddist.DistContext], test: Optional[ImageData] = None) -> FitResult:
    """deep.train.fit of one run with its checkpoint. Under several processes: DDP, the global batch
    split over them, and afterwards every rank takes rank 0's BatchNorm running statistics (each rank
    then evaluates its shard of the test set with the model rank 0 reports and saves)."""
    world = ctx.world_size if ctx is not None else 1
    opts = FitOptions(checkpoint=str(ckpt), resume=spec.resume, progress=spec.progress, desc=run_id(cfg),
                      compile_model=spec.compile, cuda_graph=spec.cuda_graph, is_main=is_main,
                      epoch_eval=learning_curve(spec, cfg, test) if test is not None else None)
    if world > 1:
        opts = dataclasses.replace(opts, model_wrapper=lambda m: ddist.wrap_model(m, ctx),
                                   shard=ddist.shard_indices, rank=ctx.rank)
    fit_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // world) if world > 1 else cfg
    res = fit(fit_cfg, train, options=opts)
    if world > 1:
        ddist.broadcast_buffers_(res.model)
    return res


def _result_record(cfg: TrainConfig, spec: RunSpec, res: FitResult, ev: Dict, *, total_s: float,
                   test: ImageData, world: int, is_main: bool) -> RunRecord:
    """The record of one run (deep/record.py: accuracies, timings, history, configuration, environment)."""
    device = test.x.device
    bf16, channels_last, _ = runtime_flags(cfg, device)
    ips = res.images_per_s
    return RunRecord(
        run_id=run_id(cfg), dataset=cfg.dataset, method=cfg.method,
        rho=cfg.rho if cfg.method == "sam" else None,
        eps=cfg.eps if cfg.adversarial else None,
        norm=norm_name(cfg.norm) if cfg.adversarial else None,
        arch=cfg.arch, stopped_early=res.stopped_early,
        seed=cfg.seed, epochs=cfg.epochs, clean_acc=ev["clean_acc"], robust=ev["robust"],
        wall_time_s=res.train_time_s,
        images_per_s=ips if ips is not None and math.isfinite(ips) else None,
        total_time_s=total_s,
        probes=probes(res.model, cfg.synthetic_spec, spec.eval.probe_n, synthetic_seeds(cfg)[1], device,
                      spec.eval.batch_size) if cfg.dataset == "synthetic" and is_main else None,
        history=res.history, eval=spec.eval_record(), curves=spec.eval.curves_record(),
        config=cfg.to_dict(),
        device=str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        torch=torch.__version__, world_size=world, per_process_batch=cfg.batch_size // world,
        compile=bool(spec.compile), cuda_graph=bool(spec.cuda_graph),
        train_precision=_precision(bf16), bn_stats=cfg.bn_stats,
        channels_last=channels_last, threads=torch.get_num_threads(), profile=spec.profile,
        n_clean=ev.get("n_clean", len(test)), n_robust=ev.get("n_robust", len(test)),
    )


def _precision(bf16: bool) -> str:
    """The record's train_precision."""
    return "bf16 autocast" if bf16 else "fp32"


# ------------------------------------------------------------------------------------- command

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    spec = resolve_spec(parser, parser.parse_args(argv))
    old_threads = torch.get_num_threads()
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    try:
        return _run_all(parser, spec)
    finally:
        torch.set_num_threads(old_threads)


def _run_all(parser, spec: RunSpec) -> int:
    try:
        ctx = ddist.init_distributed(device=spec.base.device)   # torchrun: process group; else single process
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    rc = None
    try:
        rc = _run_grid(parser, spec, ctx)
        return rc
    finally:
        # every rank waits for the others before the process group goes (gloo teardown race), except
        # on an interrupt or an exception, where a peer may never reach the barrier
        ddist.teardown(ctx, sync=rc is not None and rc != 130)


def _run_grid(parser, spec: RunSpec, ctx: ddist.DistContext) -> int:
    jobs = make_jobs(spec)
    cfgs = [c for c, _ in jobs]
    if ctx.distributed and spec.jobs > 1:
        parser.error("--jobs runs several single-process runs at once; under torchrun each run already uses "
                     "every process: use --jobs 1")
    if ctx.distributed:
        spec = dataclasses.replace(spec, device=ctx.device)   # under torchrun on CUDA: cuda:LOCAL_RANK
    if spec.base.batch_size % ctx.world_size:
        parser.error(f"--batch-size {spec.base.batch_size} must be divisible by the number of processes "
                     f"{ctx.world_size}")
    lock, err = _claim_out_dir(spec, cfgs) if ctx.is_main else (None, None)
    err = ddist.broadcast_object(err)       # under torchrun every rank stops when rank 0 cannot write
    if err is not None:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        return _run_locked(parser, spec, ctx, jobs)
    finally:
        if lock is not None:
            lock.release()


def estimate_out_bytes(cfgs: Sequence[TrainConfig]) -> int:
    """About what the grid writes: per run a checkpoint (weights and momentum, 8 bytes per parameter) and
    its JSON, plus one more checkpoint for the temporary file of the atomic rewrite."""
    per_arch = {a: count_parameters(cfgs[0], a) * 8 + 2**18 for a in dict.fromkeys(c.arch for c in cfgs)}
    return sum(per_arch[c.arch] for c in cfgs) + max(per_arch.values()) + 2**20


def _claim_out_dir(spec: RunSpec, cfgs: Sequence[TrainConfig]) -> Tuple[Optional[RunLock], Optional[str]]:
    """Before any training: the output folder exists and is writable, has room for what the grid writes
    (:func:`estimate_out_bytes`), and is locked for this process (one writer per folder; a second process
    is refused naming the holder). Leftover temporary files of killed processes are removed.
    Returns (the lock, None) or (None, the one-line error)."""
    try:
        check_output_dir(spec.out_dir, estimate_out_bytes(cfgs))
        lock = RunLock(spec.out_dir).acquire()
    except OSError as err:
        return None, f"output folder {spec.out_dir}: {err.strerror or err}"
    except ValueError as err:
        return None, str(err)
    if lock.taken_over is not None:
        print(f"{spec.out_dir}: taking over the lock of process {lock.taken_over}, which no longer runs")
    for folder in (spec.out_dir, spec.out_dir / "checkpoints"):
        for p in remove_stale_temp_files(folder) if folder.is_dir() else []:
            print(f"removed {p}, a temporary file of a process that no longer runs")
    return lock, None


def _run_locked(parser, spec: RunSpec, ctx: ddist.DistContext, jobs: List[Tuple[TrainConfig, Path]]) -> int:
    """:func:`_run_grid` once the output folder is claimed: load the data, run every job, write the
    summary."""
    cfgs = [c for c, _ in jobs]
    train, test = _load_on_every_rank(parser, spec, ctx)
    say = print if ctx.is_main else (lambda *a, **k: None)
    _announce(say, spec, cfgs, train, test, ctx)
    t0 = time.perf_counter()
    if spec.jobs > 1:
        del train, test         # each job process loads its own copy
        rc, results = _run_parallel(parser, spec, jobs)
    else:
        rc, results = _run_configs(parser, spec, jobs, train, test, ctx, say)
    if rc is not None or not ctx.is_main:
        return rc or 0
    if any(d != spec.out_dir for _, d in jobs):
        write_summary(spec.out_dir / PLATEAU_FOLDER)
    summary = write_summary(spec.out_dir)
    print()
    print(results_table(results))
    print(f"\n{len(results)} run(s) in {time.perf_counter() - t0:.1f} s; JSON per run and {summary}")
    return 0


def _load_on_every_rank(parser, spec: RunSpec, ctx: ddist.DistContext) -> Tuple[ImageData, ImageData]:
    """(train, test) on every process: rank 0 first, so that a --download happens once; a data error
    exits with status 2."""
    data, err = None, None
    if ctx.is_main:
        data, err = _try_load(spec)
    err = ddist.broadcast_object(err)
    if err is None and not ctx.is_main:
        data, err = _try_load(spec)
    if err is not None:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return data


def _try_load(spec: RunSpec):
    try:
        return load_data(spec.base, spec.device, spec.data_dir, spec.download), None
    except DataError as e:
        return None, str(e)


def _announce(say, spec: RunSpec, cfgs: List[TrainConfig], train: ImageData, test: ImageData,
              ctx: ddist.DistContext) -> None:
    """The two header lines: the grid and where it runs, then the settings runs actually use."""
    say(f"deep.run: {len(cfgs)} run(s) on {spec.dataset} ({len(train)} train / {len(test)} test images), "
        f"device {spec.device}" + (f" x {ctx.world_size} processes (DDP)" if ctx.distributed else "")
        + f", results in {spec.out_dir}", flush=True)
    c0, ev = cfgs[0], spec.eval
    bf16, channels_last, augment = runtime_flags(c0, train.x.device)
    say(f"settings: profile {spec.profile or '-'}, width {c0.width}, epochs {c0.epochs}, batch {c0.batch_size}, "
        f"lr {c0.lr}, training images {len(train)}, augment {augment}, training in "
        f"{'bf16 autocast' if bf16 else 'fp32'}{' + channels_last' if channels_last else ''}, "
        f"{torch.get_num_threads()} thread(s); evaluation fp32 PGD-{ev.steps} x {ev.restarts} "
        f"({ev.loss}, best iterate), clean on {len(test)} and robust on "
        f"{min(ev.n_robust or len(test), len(test))} test images", flush=True)


def _run_configs(parser, spec: RunSpec, jobs: List[Tuple[TrainConfig, Path]], train: ImageData,
                 test: ImageData, ctx: ddist.DistContext, say) -> Tuple[Optional[int], List[Dict]]:
    """Every run in turn: (None, results), or (exit status, results so far) when a run diverged (1) or
    was interrupted (130); a run that cannot start (ValueError) exits with status 2."""
    results = []
    grid = GridProgress(len(jobs), say=lambda line: say(line, flush=True))
    for cfg, out_dir in jobs:
        grid.start(run_id(cfg))
        try:
            res = run_one(cfg, train, test, dataclasses.replace(spec, out_dir=out_dir), is_main=ctx.is_main,
                          ctx=ctx)
        except DivergenceError as err:
            print(f"{parser.prog}: {run_id(cfg)}: {err}", file=sys.stderr)
            return 1, results
        except KeyboardInterrupt:
            print(f"\n{parser.prog}: interrupted in {run_id(cfg)}; the last finished epoch is checkpointed, "
                  f"rerun the same command with --resume to continue", file=sys.stderr)
            return 130, results
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        except OSError as err:          # a full disk or a vanished folder while writing: one line, status 1
            print(f"{parser.prog}: {run_id(cfg)}: cannot write {err.filename or spec.out_dir}: "
                  f"{err.strerror or err}; finished runs are kept", file=sys.stderr)
            return 1, results
        grid.finish(skipped=bool(res.get("skipped")))
        if res.get("skipped"):
            say(f"{run_id(cfg)}: finished earlier, skipped ({out_dir / (run_id(cfg) + '.json')})")
        results.append(res)
    return None, results


# ------------------------------------------------------------------- --jobs K: runs in K processes

_JOB_DATA: Dict[str, Tuple[ImageData, ImageData]] = {}


def _job_init(spec: RunSpec, threads: int) -> None:
    """Initializer of a --jobs process: its torch threads and its copy of the data."""
    torch.set_num_threads(threads)
    _JOB_DATA["data"] = load_data(spec.base, spec.device, spec.data_dir, False)


def _job_run(task: Tuple[TrainConfig, Path, RunSpec]) -> Dict:
    """One run in a --jobs process: its result, or {"error": kind, "message": ...} (kind: diverged,
    invalid, interrupted)."""
    cfg, out_dir, spec = task
    train, test = _JOB_DATA["data"]
    try:
        return run_one(cfg, train, test, dataclasses.replace(spec, out_dir=out_dir, progress=False))
    except DivergenceError as err:
        return {"error": "diverged", "message": f"{run_id(cfg)}: {err}"}
    except ValueError as err:
        return {"error": "invalid", "message": str(err)}
    except OSError as err:              # a full disk while writing: one line, status 1 (as in _run_configs)
        return {"error": "write", "message": f"{run_id(cfg)}: cannot write {err.filename or out_dir}: "
                                             f"{err.strerror or err}; finished runs are kept"}
    except KeyboardInterrupt:
        return {"error": "interrupted", "message": run_id(cfg)}


def _run_parallel(parser, spec: RunSpec, jobs: List[Tuple[TrainConfig, Path]]) -> Tuple[Optional[int], List[Dict]]:
    """The runs of ``jobs`` in spec.jobs processes (deep/jobs.py), one progress line per finished run;
    (exit status or None, results in grid order). A diverged run gives status 1 and a run that cannot
    start status 2, after the other runs have finished."""
    threads = spec.threads if spec.threads > 0 else max(1, (os.cpu_count() or 1) // spec.jobs)
    print(f"deep.run: {len(jobs)} run(s) in {spec.jobs} processes x {threads} thread(s), longest first",
          flush=True)
    failures: List[Dict] = []

    def on_done(i, res, line):
        if "error" in res:
            failures.append(res)
            line += f" FAILED ({res['error']}: {res['message']})"
        elif res.get("skipped"):
            line += " (finished earlier, skipped)"
        else:
            line += f"; clean {100 * res['clean_acc']:.2f}%"
        print(line, flush=True)
    try:
        out = run_pool([(c, d, spec) for c, d in jobs], [job_cost(c) for c, _ in jobs], _job_run, _job_init,
                       (spec, threads), min(spec.jobs, len(jobs)), on_done, names=[run_id(c) for c, _ in jobs])
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; every run's last finished epoch is checkpointed, rerun the same "
              f"command with --resume to continue", file=sys.stderr)
        return 130, []
    results = [out[i] for i in range(len(jobs)) if "error" not in out[i]]
    for f in failures:
        print(f"{parser.prog}: {f['message']}", file=sys.stderr)
    if any(f["error"] == "invalid" for f in failures):
        return 2, results
    return (1 if failures else None), results


if __name__ == "__main__":
    ddist.exit_process(main())
