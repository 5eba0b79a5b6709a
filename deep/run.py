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
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from common.attacks import check_linf_eps
from common.files import write_json_atomic, write_text_atomic
from common.threat import Norm, attack_label, norm_name, normalize_norm, parse_norm

from . import distributed as ddist
from .data import DataError, SyntheticSpec, load_cifar, make_synthetic
from .datasets import DATASETS, load_digits_split, load_fashion_mnist
from .masking import masking_markdown
from .evaluate import DEFAULT_GRID, format_eps, parse_attack, parse_eps, evaluate, probes
from .archs import ARCHS, DEFAULT_ARCH
from .train import (AT_VARIANTS, BN_STATS, METHOD_NAMES, DivergenceError, TrainConfig, at_variant,
                    at_variant_config, config_matches, fit, resolve_device, _flags)

# Per-data-set protocol (docs/protocol.md): the grid and the evaluation used unless options say otherwise.
CIFAR_PROTOCOL = dict(methods="st,sam,at", rho="0.1,0.2,0.4", eps="8/255", epochs=100, width=64,
                      batch_size=128, lr=0.1,
                      eval_attacks="linf:1/255,linf:2/255,linf:8/255,l2:16/255,l2:32/255,l2:0.5")
FASHION_MNIST_PROTOCOL = dict(CIFAR_PROTOCOL, rho="0.05,0.1,0.2,0.4", eps="0.1", epochs=30,
                              eval_attacks="linf:0.01,linf:0.02,linf:0.05,linf:0.1,l2:0.25,l2:0.5,l2:1.0")
PROTOCOLS = {
    "cifar10": CIFAR_PROTOCOL, "cifar100": CIFAR_PROTOCOL,
    "synthetic": dict(CIFAR_PROTOCOL, n_train=10000, n_test=2000),
    "fashion-mnist": FASHION_MNIST_PROTOCOL,
    # digits: the small real set of the test suite; 8x8 images with 17 grey levels
    "digits": dict(FASHION_MNIST_PROTOCOL, epochs=10, width=8, batch_size=64, lr=0.05,
                   eval_attacks="linf:0.05,linf:0.1,l2:0.5"),
}

# Presets: replacements of the defaults (explicit options still win). The cpu preset fits the whole
# Fashion-MNIST grid (ST, SAM at 4 radii, AT; 3 seeds) into about 90 minutes on two CPU cores: width 16,
# the first 10,000 training images (942-1,027 per class), 6 epochs, bf16 autocast + channels_last for
# training (2.3x fp32 on AVX512-BF16 CPUs, deep.bench), clean accuracy on all 10,000 test images and
# robust accuracy on the first 2,000 (188-219 per class).
PROFILES = {
    "quick": dict(dataset="synthetic", methods="st,sam,at", rho="0.1", eps="8/255", epochs=1, n_train=1024,
                  n_test=200, width=8, batch_size=16, lr=0.05, probe_n=500, threads=1),
    "cpu": dict(dataset="fashion-mnist", seeds="0,1,2", width=16, n_train=10000, epochs=6, batch_size=128,
                lr=0.1, bf16=True, channels_last=True, n_robust=2000),
}
QUICK = PROFILES["quick"]


def _csv(text: str) -> List[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless X is None/False or the help states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deep.run",
        description="Train PreActResNet-18 with ST, SAM and PGD adversarial training (AT) and evaluate clean "
                    "and PGD robust accuracy (docs/protocol.md). Defaults are the reference settings.",
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("grid")
    g.add_argument("--quick", action="store_true",
                   help=f"= --profile quick: smoke run on generated data ({QUICK['n_train']} train / "
                        f"{QUICK['n_test']} test images), width {QUICK['width']}, batch {QUICK['batch_size']}, "
                        f"lr {QUICK['lr']}, one epoch each of ST, SAM rho 0.1, AT l_inf 8/255; results in "
                        f"<out>/quick/. About a minute on two CPU cores. Explicit options override it.")
    g.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="preset replacing the defaults (explicit options override it): quick (see --quick); "
                        "cpu: the whole Fashion-MNIST grid in about 90 min on two CPU cores: "
                        + ", ".join(f"{k} {v}" for k, v in PROFILES["cpu"].items()))
    g.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="cifar10 / cifar100 (python archives in --data-dir), fashion-mnist (idx files in "
                        "--data-dir or from Debian's package dataset-fashion-mnist), digits (scikit-learn) or "
                        "the generated robust/non-robust images (synthetic) [default: cifar10]")
    g.add_argument("--methods", default=None,
                   help="comma list of st, sam, at and the cheap AT variants fgsm-rs (FGSM, random start, step "
                        "1.25 eps), pgd1 (one step of eps from the clean point) and pgd2 (two steps of eps/2, "
                        "random start), which train at the --eps radii with a catastrophic-overfitting check "
                        "[default: st,sam,at]")
    g.add_argument("--archs", default=DEFAULT_ARCH,
                   help="comma list of architectures: " + ", ".join(ARCHS) + " (deep/archs.py)")
    g.add_argument("--rho", default=None,
                   help="comma list of SAM radii [default: 0.1,0.2,0.4; fashion-mnist, digits: 0.05,0.1,0.2,0.4]")
    g.add_argument("--adaptive", action="store_true", help="adaptive SAM (ASAM): e = rho w^2 g / ||w g||")
    g.add_argument("--eps", default=None,
                   help="comma list of AT radii, fractions allowed [default: 8/255; fashion-mnist, digits: 0.1]")
    g.add_argument("--norm", default="linf", choices=["linf", "l2"], help="AT threat model")
    g.add_argument("--at-steps", type=int, default=10, help="PGD steps in AT's inner loop")
    g.add_argument("--at-step-size", default=None,
                   help="PGD step in AT (fraction allowed) [default: eps/4 for linf, eps/8 for l2]")
    g.add_argument("--seeds", default=None, help="comma list of seeds (one run per seed) [default: 0]")
    g.add_argument("--sam-all-reduce-ascent", action="store_true",
                   help="under torchrun: SAM's ascent from the all-reduced (global batch) gradient; default: "
                        "each process's own batch gradient (m-sharpness, m = per-process batch)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="epochs per run [default: 100; 1 with --quick]")
    t.add_argument("--batch-size", type=int, default=None, help="mini-batch size; under torchrun the global batch, split over the processes "
                        "[default: 128]")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; piecewise x0.1 at 75%% and x0.01 at 90%% of the epochs "
                        "[default: 0.1; 0.05 with --quick]")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (not in SAM's ascent)")
    t.add_argument("--width", type=int, default=None, help="first-stage width of PreActResNet-18 [default: 64]")
    t.add_argument("--n-train", type=int, default=None,
                   help="training images (first n; generated set: its size) [default: all; synthetic 10000]")
    t.add_argument("--n-test", type=int, default=None, help="test images [default: all; synthetic 2000]")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (reflect pad 4) + flip [default: on for CIFAR, off for synthetic]")
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in training [default: on for CUDA, off on CPU]")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format [default: on for CUDA, off on CPU]")
    t.add_argument("--bn-stats", choices=list(BN_STATS), default="first",
                   help="which training forwards update the BatchNorm running statistics: first (ours: only "
                        "the loss forward at w; SAM's second pass and AT's inner PGD leave them alone) or all "
                        "(the paper's code: every forward in train mode); docs/protocol.md, deviation 1")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the model (speed only; falls back to uncompiled with a one-line warning "
                        "when unavailable or failing) [default: off]")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (0: torch's default) [default: 0; 1 with --quick, whose tiny "
                        "model gains nothing from more and slows down badly on a busy machine]")
    e = p.add_argument_group("evaluation")
    e.add_argument("--attack-steps", type=int, default=10, help="PGD steps in evaluation")
    e.add_argument("--restarts", type=int, default=1, help="PGD random restarts in evaluation (worst case)")
    e.add_argument("--eval-attacks", default=None,
                   help="comma list of norm:eps [default: linf:1/255,linf:2/255,linf:8/255,l2:16/255,"
                        "l2:32/255,l2:0.5; fashion-mnist: " + FASHION_MNIST_PROTOCOL["eval_attacks"] + "]")
    e.add_argument("--attack-loss", default="ce", choices=["ce", "cw"],
                   help="loss PGD maximises in evaluation: cross-entropy or the margin (CW) loss")
    e.add_argument("--n-robust", type=int, default=None,
                   help="robust accuracy on the first N test images only (clean accuracy on all) [default: all]")
    e.add_argument("--eval-batch-size", type=int, default=500, help="evaluation batch size")
    e.add_argument("--autoattack", choices=["off", "cpu", "standard"], default="off",
                   help="also AutoAttack (pyautoattack) at the --eval-attacks radii on the first --aa-n test "
                        "images, stored under \"autoattack\" in each result: standard (APGD-CE, APGD-T, FAB-T, "
                        "Square) or cpu (APGD-CE + APGD-T with 3 target classes; deep/autoattack.py) [default: off]")
    e.add_argument("--aa-n", type=int, default=1000, help="test images for --autoattack")
    e.add_argument("--probe-n", type=int, default=None,
                   help="images per probe variant (synthetic only) [default: 2000; 500 with --quick]")
    s = p.add_argument_group("generated dataset (--dataset synthetic)")
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
    s.add_argument("--synthetic-seed", type=int, default=0,
                   help="seed of the class patterns and of the generated images (train, test, probes)")
    o = p.add_argument_group("files")
    o.add_argument("--data-dir", default="data", help="folder with the CIFAR archives or extracted folders")
    o.add_argument("--download", action="store_true", help="download CIFAR (md5-verified) if missing")
    o.add_argument("--out", default="results/deep", help="results root; runs go to <out>/<dataset>/")
    o.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their last epoch checkpoint")
    o.add_argument("--force", action="store_true", help="rerun and overwrite finished runs")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


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
    protocol (PROTOCOLS). Explicit options always win."""
    if args.quick:
        if args.profile not in (None, "quick"):
            parser.error(f"--quick conflicts with --profile {args.profile}")
        args.profile = "quick"
    for key, val in PROFILES.get(args.profile, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    args.dataset = args.dataset or "cifar10"
    defaults = dict(seeds="0", probe_n=2000, threads=0, **PROTOCOLS[args.dataset])
    for key, val in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)


def _check_ranges(parser, args) -> None:
    for name in ("epochs", "width", "batch_size", "attack_steps", "at_steps", "restarts", "eval_batch_size",
                 "probe_n", "n_train", "n_test", "n_robust", "threads", "aa_n"):
        val = getattr(args, name)
        lo = 0 if name in ("attack_steps", "at_steps", "threads") else 1
        if val is not None and val < lo:
            parser.error(f"--{name.replace('_', '-')} must be >= {lo}, got {val}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not args.weight_decay >= 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum}")


def _resolve(parser, args) -> Dict:
    """Validate the arguments after filling in the profile / data-set defaults (:func:`_apply_profile`)."""
    _apply_profile(parser, args)
    methods = _csv(args.methods)
    bad = [m for m in methods if m not in METHOD_NAMES]
    if bad or not methods:
        parser.error(f"--methods: unknown method(s) {bad}; choose from {', '.join(METHOD_NAMES)}")
    archs = _csv(args.archs)
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        parser.error(f"--archs: unknown architecture(s) {bad}; choose from {', '.join(ARCHS)}")
    rhos = _float_list(parser, args.rho, "rho")
    epss = _float_list(parser, args.eps, "eps")
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds is empty")
    _check_ranges(parser, args)
    try:
        attacks = tuple(parse_attack(a) for a in _csv(args.eval_attacks))
        at_step = parse_eps(args.at_step_size) if args.at_step_size is not None else None
        spec = SyntheticSpec(robust_amplitude=args.robust_amplitude, robust_spread=args.robust_spread,
                             nonrobust_amplitude=parse_eps(args.nonrobust_amplitude),
                             nonrobust_spread=args.nonrobust_spread, pixel_noise=args.pixel_noise,
                             pattern_seed=args.synthetic_seed,
                             num_classes=10)
        device = resolve_device(args.device)
        if parse_norm(args.norm) is Norm.LINF:
            for text, eps in zip(_csv(args.eps), epss):
                check_linf_eps(eps, f"--eps {text}")
        for text, a in zip(_csv(args.eval_attacks), attacks):
            if parse_norm(a.norm) is Norm.LINF:
                check_linf_eps(a.eps, f"--eval-attacks {text}")
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    dup = [a.label for i, a in enumerate(attacks) if a.label in [b.label for b in attacks[:i]]]
    if dup:
        parser.error(f"--eval-attacks: {', '.join(dict.fromkeys(dup))} given more than once (linf: and inf: "
                     f"are the same norm); each attack once")
    out_dir = Path(args.out) / ("quick" if args.profile == "quick" else args.dataset)
    return dict(threads=args.threads, dataset=args.dataset, methods=methods, archs=archs, rhos=rhos, epss=epss, seeds=seeds,
                epochs=args.epochs, width=args.width, batch=args.batch_size, n_train=args.n_train,
                n_test=args.n_test, probe_n=args.probe_n, attacks=attacks, at_step=at_step, spec=spec,
                device=device, out_dir=out_dir)


def run_id(cfg: TrainConfig) -> str:
    """e.g. st_s0, sam_rho0.1_s0, at_linf_0.1_s0, fgsm-rs_linf_0.1_s0, vit_sam_rho0.1_s1 (architecture
    prefix unless PreActResNet-18; AT with other PGD settings keeps the name at_..., and a finished run of
    another configuration under that name is refused by run_one)."""
    if cfg.method == "st":
        base = "st"
    elif cfg.method == "sam":
        base = f"{'asam' if cfg.adaptive else 'sam'}_rho{cfg.rho:g}"
    else:
        base = f"{at_variant(cfg) or 'at'}_{attack_label(cfg.norm, cfg.eps).replace('/', '-')}"
    arch = "" if cfg.arch == DEFAULT_ARCH else f"{cfg.arch}_"
    return f"{arch}{base}_s{cfg.seed}"


def make_configs(args, r: Dict) -> List[TrainConfig]:
    common = dict(dataset=r["dataset"], epochs=r["epochs"], batch_size=r["batch"], lr=args.lr,
                  momentum=args.momentum, weight_decay=args.weight_decay, width=r["width"],
                  augment=args.augment, bf16=args.bf16, channels_last=args.channels_last, device=args.device,
                  n_train=r["n_train"], n_test=r["n_test"], synthetic=r["spec"].to_dict(),
                  attack_steps=args.at_steps, attack_step_size=r["at_step"],
                  norm=normalize_norm(args.norm), adaptive=args.adaptive,
                  sam_all_reduce_ascent=args.sam_all_reduce_ascent, bn_stats=args.bn_stats)
    cfgs = []
    for seed in r["seeds"]:
        for arch in r["archs"]:
            for m in r["methods"]:
                kw = dict(common, seed=seed, arch=arch)
                if m == "st":
                    cfgs.append(TrainConfig(method="st", **kw))
                elif m == "sam":
                    cfgs.extend(TrainConfig(method="sam", rho=rho, **kw) for rho in r["rhos"])
                elif m == "at":
                    cfgs.extend(TrainConfig(method="at", eps=eps, **kw) for eps in r["epss"])
                else:
                    cfgs.extend(TrainConfig(**dict(kw, **at_variant_config(m, eps))) for eps in r["epss"])
    return cfgs


def load_data(r: Dict, args):
    """(train, test) on the device."""
    if r["dataset"] == "synthetic":
        spec = r["spec"]
        train = make_synthetic(r["n_train"], 2 * args.synthetic_seed, spec)
        test = make_synthetic(r["n_test"], 2 * args.synthetic_seed + 1, spec)
    else:
        if r["dataset"] == "fashion-mnist":
            train, test = load_fashion_mnist(args.data_dir)
        elif r["dataset"] == "digits":
            train, test = load_digits_split()
        else:
            train, test = load_cifar(r["dataset"], args.data_dir, download=args.download)
        train, test = train.subset(r["n_train"]), test.subset(r["n_test"])
    return train.to(r["device"]), test.to(r["device"])


def _eval_settings(args, r) -> Dict:
    return {"attack_steps": args.attack_steps, "restarts": args.restarts,
            "attacks": [a.label for a in r["attacks"]], "n_test": r["n_test"],
            "probe_n": r["probe_n"] if r["dataset"] == "synthetic" else None,
            "loss": args.attack_loss, "n_robust": args.n_robust, "best_iterate": True,
            **({"autoattack": {"version": args.autoattack, "n": args.aa_n}} if args.autoattack != "off" else {})}


def run_one(cfg: TrainConfig, train, test, args, r: Dict, is_main: bool = True,
            ctx: Optional[ddist.DistContext] = None) -> Optional[Dict]:
    """Train (or resume) and evaluate one run; returns its result dict (None if it was skipped).

    With a multi-process ``ctx`` (torchrun) the model is trained with DDP, each process with batch
    cfg.batch_size / world_size on its shard of every epoch (cfg.batch_size stays the global batch)."""
    rid = run_id(cfg)
    out_dir: Path = r["out_dir"]
    path = out_dir / f"{rid}.json"
    ckpt = out_dir / "checkpoints" / f"{rid}.pt"
    if path.exists() and not args.force:
        old = json.loads(path.read_text())
        if config_matches(old.get("config"), cfg) and old.get("eval") == _eval_settings(args, r):
            return old | {"skipped": True}
        hint = "; to add AutoAttack to finished runs: python -m deep.evaluate " + \
            f"{out_dir} --attacks autoattack:{args.autoattack}" if args.autoattack != "off" else ""
        raise ValueError(f"{path} exists with a different configuration; use another --out or --force{hint}")
    if not args.resume and ckpt.exists() and is_main:
        print(f"{rid}: found an unfinished checkpoint, starting over (--resume continues it)")
        ckpt.unlink()
    t0 = time.perf_counter()
    world = ctx.world_size if ctx is not None else 1
    dist_kw = dict(model_wrapper=lambda m: ddist.wrap_model(m, ctx), shard=ddist.shard_indices,
                   rank=ctx.rank) if world > 1 else {}
    fit_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // world) if world > 1 else cfg
    res = fit(fit_cfg, train, checkpoint=str(ckpt), resume=args.resume, is_main=is_main,
              progress=not args.no_progress, desc=rid, compile_model=args.compile, **dist_kw)
    if world > 1:       # every rank evaluates its shard with rank 0's BN running statistics
        ddist.broadcast_buffers_(res.model)
    bf16, channels_last, _ = _flags(cfg, train.x.device)
    ev = evaluate(res.model, test, r["attacks"], steps=args.attack_steps, restarts=args.restarts,
                  batch_size=args.eval_batch_size, seed=cfg.seed, channels_last=channels_last,
                  progress=not args.no_progress, loss=args.attack_loss, n_robust=args.n_robust)
    result = {
        "run_id": rid, "dataset": cfg.dataset, "method": cfg.method,
        "rho": cfg.rho if cfg.method == "sam" else None,
        "eps": cfg.eps if cfg.method == "at" else None,
        "norm": norm_name(cfg.norm) if cfg.method == "at" else None,
        "arch": cfg.arch, "at_variant": at_variant(cfg), "stopped_early": res.stopped_early,
        "seed": cfg.seed, "epochs": cfg.epochs, "clean_acc": ev["clean_acc"], "robust": ev["robust"],
        "wall_time_s": res.train_time_s,
        "images_per_s": res.images_per_s if res.images_per_s is not None and math.isfinite(res.images_per_s)
        else None,
        "total_time_s": time.perf_counter() - t0,
        "probes": probes(res.model, cfg.synthetic_spec, r["probe_n"], 2 * args.synthetic_seed + 1,
                         train.x.device, args.eval_batch_size) if cfg.dataset == "synthetic" and is_main
        else None,
        "history": res.history, "eval": _eval_settings(args, r), "config": cfg.to_dict(),
        "device": str(train.x.device) + (f" ({torch.cuda.get_device_name(train.x.device)})"
                                         if train.x.device.type == "cuda" else ""),
        "torch": torch.__version__, "world_size": world, "per_process_batch": fit_cfg.batch_size,
        "compile": bool(args.compile), "train_precision": "bf16 autocast" if bf16 else "fp32",
        "bn_stats": cfg.bn_stats,
        "channels_last": channels_last, "threads": torch.get_num_threads(), "profile": args.profile,
        "n_clean": ev.get("n_clean", len(test)), "n_robust": ev.get("n_robust", len(test)),
    }
    if args.autoattack != "off":        # every rank computes it (no collectives), rank 0 stores it
        from .autoattack import run_autoattack
        result["autoattack"] = run_autoattack(res.model, test, r["attacks"], args.autoattack, n=args.aa_n,
                                              device=train.x.device, seed=cfg.seed,
                                              batch_size=min(args.eval_batch_size, 250))
    if is_main:
        write_json_atomic(path, result)
    return result


# ------------------------------------------------------------------------------------------- tables

def method_label(res: Dict) -> str:
    """st, sam, asam (adaptive SAM), at or an AT variant (fgsm-rs, pgd1, pgd2); prefixed by the
    architecture unless PreActResNet-18 (e.g. "vit sam")."""
    cfg = res.get("config") or {}
    label = res["method"]
    if label == "sam" and cfg.get("adaptive"):
        label = "asam"
    elif label == "at" and cfg:
        try:
            label = at_variant(TrainConfig(**cfg)) or label
        except (TypeError, ValueError):
            pass
    arch = cfg.get("arch", DEFAULT_ARCH)
    return label if arch == DEFAULT_ARCH else f"{arch} {label}"


def _per_s(val) -> str:
    return "" if val is None or not math.isfinite(val) else f"{val:.0f}"


def _strength(res: Dict) -> str:
    if res["method"] == "sam":
        return f"rho={res['rho']:g}"
    if res["method"] == "at":
        return f"{res['norm']} eps={format_eps(res['eps'])}"
    return "-"


def results_table(results: Sequence[Dict]) -> str:
    """Markdown table: one row per run (with the settings column of :func:`aggregate_table` when runs of
    the same method and strength differ in other settings)."""
    groups: Dict[str, List[Dict]] = {}
    for res in results:
        groups.setdefault(_group_key(res), []).append(res)
    settings = _group_settings(groups)
    extra = any(settings.values())
    labels = []
    for res in results:
        labels += [k for k in res["robust"] if k not in labels]
    probe_cols = []
    for res in results:
        probe_cols += [k for k in (res.get("probes") or {}) if k not in probe_cols and k != "clean"]
    head = ["method", "strength"] + (["settings"] if extra else []) + ["seed", "clean"] + labels + \
        [f"probe {p}" for p in probe_cols] + ["train time (s)", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        row = [method_label(res), _strength(res)] + ([settings[_group_key(res)]] if extra else [])
        row += [str(res["seed"]), f"{100 * res['clean_acc']:.2f}"]
        row += [f"{100 * res['robust'][k]:.2f}" if k in res["robust"] else "" for k in labels]
        row += [f"{100 * res['probes'][p]:.2f}" if res.get("probes") and p in res["probes"] else ""
                for p in probe_cols]
        row += [f"{res['wall_time_s']:.1f}", _per_s(res.get("images_per_s"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _mean_sd(vals: List[float]) -> str:
    if len(vals) == 1:
        return f"{100 * vals[0]:.2f}"
    return f"{100 * statistics.mean(vals):.2f} ± {100 * statistics.stdev(vals):.2f}"


_CONFIG_DEFAULTS: List[Dict] = []


def _run_config(res: Dict) -> Dict:
    """The run's training configuration without the seed; fields that an older result lacks get their
    default (as config_matches reads them), so old and new results of one configuration group together."""
    cfg = res.get("config")
    if not isinstance(cfg, dict):       # no stored configuration: what the result itself says
        return {k: res.get(k) for k in ("method", "rho", "eps", "norm", "epochs")}
    if not _CONFIG_DEFAULTS:
        _CONFIG_DEFAULTS.append(TrainConfig().to_dict())
    full = dict(_CONFIG_DEFAULTS[0], **cfg)
    full.pop("seed", None)
    return full


def _group_key(res: Dict) -> str:
    """Runs that differ in the seed only: the whole configuration but the seed, and the evaluation."""
    return json.dumps([_run_config(res), res.get("eval")], sort_keys=True, default=str)


def _eval_text(ev) -> str:
    if not isinstance(ev, dict):
        return "not recorded"
    text = (f"PGD-{ev.get('attack_steps')} x {ev.get('restarts')} restart(s), {ev.get('loss') or 'ce'} loss, "
            f"{ev.get('n_test') or 'all'} test images")
    if ev.get("n_robust"):
        text += f" (robust on the first {ev['n_robust']})"
    return text + ", attacks " + ", ".join(ev.get("attacks") or [])


def _setting_value(val) -> str:
    if isinstance(val, float):
        return f"{val:g}"
    if isinstance(val, (dict, list)):
        return json.dumps(val, sort_keys=True, separators=(",", ":"))
    return str(val)


def _group_settings(groups: Dict[str, List[Dict]]) -> Dict[str, str]:
    """For rows that would otherwise look alike (same method and strength, different configuration or
    evaluation): the settings that tell them apart, e.g. "epochs=10, eval E2"; "" for the other rows."""
    evals = _distinct_evals([rs[0] for rs in groups.values()])
    rows: Dict[tuple, List[str]] = {}
    for key, rs in groups.items():
        rows.setdefault((method_label(rs[0]), _strength(rs[0])), []).append(key)
    out = {key: "" for key in groups}
    for keys in rows.values():
        if len(keys) < 2:
            continue
        cfgs = {k: _run_config(groups[k][0]) for k in keys}
        names = sorted({n for c in cfgs.values() for n in c})
        varying = [n for n in names if len({_setting_value(c.get(n)) for c in cfgs.values()}) > 1]
        for k in keys:
            parts = [f"{n}={_setting_value(cfgs[k].get(n))}" for n in varying]
            ev = json.dumps(groups[k][0].get("eval"), sort_keys=True)
            if len({json.dumps(groups[j][0].get("eval"), sort_keys=True) for j in keys}) > 1:
                parts.append(f"eval {evals[ev]}")
            out[k] = ", ".join(parts)
    return out


def _distinct_evals(results: Sequence[Dict]) -> Dict[str, str]:
    """JSON of each distinct evaluation setting -> its name E1, E2, ... in order of appearance."""
    names: Dict[str, str] = {}
    for res in results:
        names.setdefault(json.dumps(res.get("eval"), sort_keys=True), f"E{len(names) + 1}")
    return names


def aggregate_table(results: Sequence[Dict]) -> str:
    """Markdown table: mean ± sd over seeds per configuration. Runs are averaged only when they differ
    in the seed alone (same training configuration and evaluation); ASAM rows are labelled asam. Rows of
    the same method and strength that differ in other settings get a "settings" column naming them."""
    groups: Dict[str, List[Dict]] = {}
    for res in results:
        groups.setdefault(_group_key(res), []).append(res)
    settings = _group_settings(groups)
    labels = []
    for res in results:
        labels += [k for k in res["robust"] if k not in labels]
    extra = ["settings"] if any(settings.values()) else []
    head = ["method", "strength"] + extra + ["seeds", "clean"] + labels + ["train time (s)", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups.items():
        row = [method_label(rs[0]), _strength(rs[0])] + ([settings[key]] if extra else [])
        row += [str(len(rs)), _mean_sd([x["clean_acc"] for x in rs])]
        row += [_mean_sd([x["robust"][k] for x in rs if k in x["robust"]]) if any(k in x["robust"] for x in rs)
                else "" for k in labels]
        ips = [x["images_per_s"] for x in rs
               if x.get("images_per_s") is not None and math.isfinite(x["images_per_s"])]
        row += [f"{statistics.mean(x['wall_time_s'] for x in rs):.1f}",
                _per_s(statistics.mean(ips)) if ips else ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _summary_header(results: Sequence[Dict]) -> List[str]:
    """What the runs of the tables share, and where they differ: evaluation settings (each distinct one
    listed when they differ), epochs, devices."""
    evals = _distinct_evals(results)
    if len(evals) == 1:
        lines = [f"Evaluation: {_eval_text(results[0].get('eval'))}."]
    else:
        lines = [f"The runs in these tables were evaluated with {len(evals)} different settings; robust "
                 f"accuracies of different settings are not comparable (the settings column names each "
                 f"row's):"]
        for ev, name in evals.items():
            lines.append(f"- {name}: {_eval_text(json.loads(ev))}")
    epochs = sorted({res.get("epochs") for res in results},
                    key=lambda e: (not isinstance(e, (int, float)), e if isinstance(e, (int, float)) else 0, str(e)))
    devices = list(dict.fromkeys(str(res.get("device")) for res in results))
    lines += ["", (f"Epochs {epochs[0]}" if len(epochs) == 1 else
                   f"Epochs differ between runs ({', '.join(map(str, epochs))}; see the settings column)")
              + "; device" + ("s " if len(devices) > 1 else " ") + "; ".join(devices) + "."]
    return lines


def write_summary(out_dir: Path) -> Path:
    """summary.md from every run JSON in ``out_dir`` (accuracies in %)."""
    results = []
    for p in sorted(out_dir.glob("*.json")):
        try:
            res = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(res, dict) and "clean_acc" in res:
            results.append(res)
    order = {"st": 0, "sam": 1, "asam": 2, "fgsm-rs": 3, "pgd1": 4, "pgd2": 5, "at": 6}
    results.sort(key=lambda x: ((x.get("config") or {}).get("arch", DEFAULT_ARCH) != DEFAULT_ARCH,
                                (x.get("config") or {}).get("arch", ""),
                                order.get(method_label(x).split()[-1], 9), x.get("rho") or 0, x.get("eps") or 0,
                                x.get("norm") or "", x["seed"]))
    text = [f"# deep results: {out_dir.name}", "",
            "Accuracies in % on the test set; robust columns are PGD (random start, worst case over restarts);"
            " train time and images/s cover training only.", ""]
    if results:
        text += _summary_header(results) + [
            "", "## Mean over seeds", "", aggregate_table(results), "", "## Runs", "", results_table(results), ""]
        text.append(masking_markdown(results))
    else:
        text.append("(no finished runs)")
    return write_text_atomic(out_dir / "summary.md", "\n".join(text))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    r = _resolve(parser, args)
    old_threads = torch.get_num_threads()
    if r["threads"] > 0:
        torch.set_num_threads(r["threads"])
    try:
        return _run_all(parser, args, r)
    finally:
        torch.set_num_threads(old_threads)


def _run_all(parser, args, r) -> int:
    try:
        ctx = ddist.init_distributed(device=args.device)   # torchrun: process group; else single process
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    rc = None
    try:
        rc = _run_grid(parser, args, r, ctx)
        return rc
    finally:
        # every rank waits for the others before the process group goes (gloo teardown race), except
        # on an interrupt or an exception, where a peer may never reach the barrier
        ddist.teardown(ctx, sync=rc is not None and rc != 130)


def _run_grid(parser, args, r, ctx: ddist.DistContext) -> int:
    cfgs = make_configs(args, r)
    if ctx.distributed:
        r["device"] = ctx.device                    # under torchrun on CUDA: cuda:LOCAL_RANK
    if r["batch"] % ctx.world_size:
        parser.error(f"--batch-size {r['batch']} must be divisible by the number of processes {ctx.world_size}")
    err = None
    if ctx.is_main:                                 # rank 0 first, so that a --download happens once
        try:
            train, test = load_data(r, args)
        except DataError as e:
            err = str(e)
    err = ddist.broadcast_object(err)
    if err is None and not ctx.is_main:
        try:
            train, test = load_data(r, args)
        except DataError as e:
            err = str(e)
    if err is not None:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    say = print if ctx.is_main else (lambda *a, **k: None)
    say(f"deep.run: {len(cfgs)} run(s) on {r['dataset']} ({len(train)} train / {len(test)} test images), "
          f"device {r['device']}" + (f" x {ctx.world_size} processes (DDP)" if ctx.distributed else "")
        + f", results in {r['out_dir']}", flush=True)
    c0 = cfgs[0]
    bf16, channels_last, augment = _flags(c0, train.x.device)
    say(f"settings: profile {args.profile or '-'}, width {c0.width}, epochs {c0.epochs}, batch {c0.batch_size}, "
        f"lr {c0.lr}, training images {len(train)}, augment {augment}, training in "
        f"{'bf16 autocast' if bf16 else 'fp32'}{' + channels_last' if channels_last else ''}, "
        f"{torch.get_num_threads()} thread(s); evaluation fp32 PGD-{args.attack_steps} x {args.restarts} "
        f"({args.attack_loss}, best iterate), clean on {len(test)} and robust on "
        f"{min(args.n_robust or len(test), len(test))} test images", flush=True)
    results = []
    t0 = time.perf_counter()
    for cfg in cfgs:
        try:
            res = run_one(cfg, train, test, args, r, is_main=ctx.is_main, ctx=ctx)
        except DivergenceError as err:
            print(f"{parser.prog}: {run_id(cfg)}: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\n{parser.prog}: interrupted in {run_id(cfg)}; the last finished epoch is checkpointed, "
                  f"rerun the same command with --resume to continue", file=sys.stderr)
            return 130
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        if res.get("skipped"):
            say(f"{run_id(cfg)}: finished earlier, skipped ({r['out_dir'] / (run_id(cfg) + '.json')})")
        results.append(res)
    if not ctx.is_main:
        return 0
    summary = write_summary(r["out_dir"])
    print()
    print(results_table(results))
    print(f"\n{len(results)} run(s) in {time.perf_counter() - t0:.1f} s; JSON per run and {summary}")
    return 0


if __name__ == "__main__":
    ddist.exit_process(main())
