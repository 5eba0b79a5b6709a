"""``python -m deep.cost``: measured training cost per method, side by side in one process.

The wall times stored by deep.run depend on what else ran on the machine at the time. This measures the
seconds per training step of ST, SAM, the cheap AT variants (fgsm-rs, pgd1, pgd2) and PGD-10 AT on the same
model, data and threads, in interleaved rounds (round r times every method once, so a change of machine load
hits all methods alike), and reports the median per method and its ratio to ST. The numbers feed the
equal-cost comparison of paper_figs (docs/protocol.md, "Beyond the paper").
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Dict, Optional, Sequence

import torch

from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common
from samrobust.files import write_json_atomic

from .train import (AT_VARIANTS, TrainConfig, runtime_flags, at_variant_config, build_model, build_optimizer,
                    time_steps)

__all__ = ["METHOD_CONFIGS", "step_seconds", "measure", "build_parser", "main"]

# method label -> TrainConfig fields (SAM at rho 0.1; AT and the variants at the Fashion-MNIST eps 0.1)
METHOD_CONFIGS: Dict[str, dict] = {"st": dict(method="st"), "sam": dict(method="sam", rho=0.1),
                                   **{v: at_variant_config(v, 0.1) for v in AT_VARIANTS},
                                   "at": dict(method="at", eps=0.1)}


def step_seconds(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, steps: int, state: dict) -> float:
    """Seconds per training step of cfg.method over ``steps`` steps (model and optimiser built once per
    method and kept in ``state``, so later rounds measure warm steps)."""
    device = x.device
    bf16, channels_last, _ = runtime_flags(cfg, device)
    key = (cfg.method, cfg.attack_steps, cfg.attack_step_size, cfg.attack_random_start)
    if key not in state:
        model = build_model(cfg, device).train()
        state[key] = (model, build_optimizer(cfg, model))
    model, opt = state[key]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.Generator(device=device).manual_seed(0)
    return time_steps(model, opt, x, y, cfg, steps, g, bf16)


def measure(base: TrainConfig, methods: Sequence[str], steps: int, rounds: int, say=print) -> Dict:
    """Median seconds per step per method over ``rounds`` interleaved rounds (after one warm-up step
    each), images/s and the ratio to ST; ``base`` gives data set, width, batch and precision."""
    from .datasets import dataset_info

    info = dataset_info(base.dataset)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(base.batch_size, info.channels, info.image_size, info.image_size, generator=gen)
    y = torch.randint(0, info.num_classes, (base.batch_size,), generator=gen)
    cfgs = {m: TrainConfig(**dict(base.to_dict(), **METHOD_CONFIGS[m])) for m in methods}
    state: dict = {}
    for m in methods:
        step_seconds(cfgs[m], x, y, 1, state)
    times: Dict[str, list] = {m: [] for m in methods}
    for r in range(rounds):
        for m in methods:
            times[m].append(step_seconds(cfgs[m], x, y, steps, state))
        say(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} {times[m][-1] * 1e3:.0f} ms" for m in methods))
    med = {m: statistics.median(v) for m, v in times.items()}
    st = med.get("st")
    return {"seconds_per_step": med, "images_per_s": {m: base.batch_size / s for m, s in med.items()},
            "relative": {m: s / st for m, s in med.items()} if st else {},
            "settings": {"dataset": base.dataset, "width": base.width, "batch_size": base.batch_size,
                         "arch": base.arch, "bf16": base.bf16, "channels_last": base.channels_last,
                         "threads": torch.get_num_threads(), "steps": steps, "rounds": rounds}}


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m deep.cost", formatter_class=DefaultsHelpFormatter,
                                description="Seconds per training step of each method, measured side by "
                                            "side (interleaved rounds) on the CPU preset's shapes.")
    p.add_argument("--methods", default=",".join(METHOD_CONFIGS),
                   help="comma list among " + ", ".join(METHOD_CONFIGS) + " (default: all)")
    p.add_argument("--dataset", default="fashion-mnist", help="data set shape")
    p.add_argument("--width", type=int, default=16, help="model width")
    p.add_argument("--batch-size", type=int, default=128, help="batch size")
    p.add_argument("--steps", type=int, default=5, help="steps per method per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1, as the grids)")
    p.add_argument("--no-bf16", action="store_true", help="fp32 instead of bf16 autocast + channels_last")
    p.add_argument("--out", default="runs/cost.json",
                   help="JSON written atomically (the shipped numbers: --out results/beyond/cost.json)")
    return add_common(p, (
        "python -m deep.cost                               # ST, SAM, fgsm-rs, pgd1, pgd2, AT -> runs/cost.json",
        "python -m deep.cost --methods st,sam --rounds 3",
        "python -m deep.cost --out results/beyond/cost.json   # regenerate the shipped numbers"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHOD_CONFIGS]
    if bad or not methods:
        parser.error(f"--methods: unknown {bad}; choose from {', '.join(METHOD_CONFIGS)}")
    if min(args.width, args.batch_size, args.steps, args.rounds, args.threads) < 1:
        parser.error("--width, --batch-size, --steps, --rounds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        base = TrainConfig(dataset=args.dataset, width=args.width, batch_size=args.batch_size,
                           bf16=not args.no_bf16, channels_last=not args.no_bf16, device="cpu")
    except ValueError as err:
        parser.error(str(err))
    res = measure(base, methods, args.steps, args.rounds)
    for m in methods:
        print(f"{m:8s} {res['seconds_per_step'][m] * 1e3:8.1f} ms/step  {res['images_per_s'][m]:7.0f} images/s  "
              f"x{res['relative'].get(m, float('nan')):.2f} ST")
    write_json_atomic(args.out, res)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
