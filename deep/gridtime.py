"""``python -m deep.gridtime``: measured training time per epoch of each method, and the projected time of a
whole grid run one after another (docs/protocol.md; issue 19's "time of the paper's full grid").

Each method's step (deep.train.train_step: the real ST / SAM / PGD-10 AT step, with the protocol's width,
batch, bf16 autocast and channels_last) is timed on random images of the data set's shape after a few
warm-up steps, with the device synchronised around the timed span. An epoch is ceil(n_train / batch) steps;
a grid's time is the sum over its runs of epochs x epoch time (training only: evaluation not included).

Examples::

    python -m deep.gridtime --device cuda                 # CIFAR-10 protocol and the converged FM grid
    python -m deep.gridtime --device cpu --steps 3 --width 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common
from samrobust.files import write_json_atomic
from samrobust.tables import markdown_table

from .spec import PROFILES
from .train import TrainConfig, runtime_flags, build_model, build_optimizer, resolve_device, time_steps

__all__ = ["Grid", "GRIDS", "step_seconds", "project", "main"]


@dataclass(frozen=True)
class Grid:
    """A grid to project: data shape, training images, epochs and runs per method (runs x epochs)."""
    name: str
    dataset: str
    n_train: int
    epochs: int
    runs: Dict[str, int]            # method -> number of runs (radii x seeds)
    plateau: Dict[str, int]         # method -> doubled-budget runs


GRIDS = (
    # the paper's CIFAR-10 grid as docs/protocol.md sets it: 100 epochs; ST, SAM rho 0.1/0.2/0.4, AT 8/255; 3 seeds
    Grid("CIFAR-10 protocol (100 epochs; ST, SAM x 3 rho, AT; 3 seeds)", "cifar10", 50000, 100,
         {"st": 3, "sam": 9, "at": 3}, {}),
    # the converged Fashion-MNIST grid (deep.spec PROFILES["converged"]) with its plateau runs
    Grid(f"Fashion-MNIST converged ({PROFILES['converged']['epochs']} epochs; ST x 3, SAM x 3 rho x 3, AT x 2; "
         "plateau ST, SAM, AT)",
         "fashion-mnist", 60000, PROFILES["converged"]["epochs"], {"st": 3, "sam": 9, "at": 2},
         {"st": 1, "sam": 1, "at": 1}),
)


def step_seconds(cfg: TrainConfig, device: torch.device, steps: int = 20, warmup: int = 5) -> float:
    """Seconds per training step of ``cfg`` (its method, width, batch, bf16 / channels_last flags) on random
    images of its data set's shape, after ``warmup`` steps."""
    from .datasets import dataset_info
    info = dataset_info(cfg.dataset)
    size = info.image_size
    chans = info.channels
    bf16, channels_last, _ = runtime_flags(cfg, device)
    model = build_model(cfg, device)
    opt = build_optimizer(cfg, model)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    x = torch.rand(cfg.batch_size, chans, size, size, device=device, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device, generator=g)
    model.train()
    time_steps(model, opt, x, y, cfg, warmup, g, bf16)
    return time_steps(model, opt, x, y, cfg, steps, g, bf16)


def project(grid: Grid, epoch_s: Dict[str, float]) -> Dict:
    """Seconds of the grid's training run one after another: sum over methods of runs x epochs x epoch time
    (+ plateau runs at twice the epochs)."""
    main = sum(n * grid.epochs * epoch_s[m] for m, n in grid.runs.items())
    plateau = sum(n * 2 * grid.epochs * epoch_s[m] for m, n in grid.plateau.items())
    return {"grid": grid.name, "runs_s": main, "plateau_s": plateau, "total_s": main + plateau}


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m deep.gridtime", formatter_class=DefaultsHelpFormatter,
                                description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (after 5 warm-up steps)")
    p.add_argument("--width", type=int, default=64, help="PreActResNet-18 width (the protocol's 64)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (the protocol's 128)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--table", default=None, metavar="DIR",
                   help="instead: print the timing table (markdown) of the finished deep.run runs in DIR")
    return add_common(p, ("python -m deep.gridtime --device cuda",
                          "python -m deep.gridtime --device cpu --steps 3 --width 8"))


def timing_table(folder) -> str:
    """Markdown table of the finished runs in ``folder`` (deep.run result JSONs): run, epochs, training
    time, images/s, time with evaluation, device."""
    from pathlib import Path
    rows = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(r, dict) or "wall_time_s" not in r:
            continue
        ips = r.get("images_per_s")
        rows.append([r.get('run_id', p.stem), r.get('epochs'), f"{r['wall_time_s']:.1f}",
                     '' if ips is None else f'{ips:.0f}', f"{r.get('total_time_s', float('nan')):.1f}",
                     r.get('device', '')])
    return markdown_table(["run", "epochs", "train (s)", "images/s", "with evaluation (s)", "device"], rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table is not None:
        print(timing_table(args.table))
        return 0
    if args.steps < 1 or args.width < 1 or args.batch_size < 2:
        parser.error("--steps and --width must be >= 1, --batch-size >= 2")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    out: Dict = {"device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                          else ""), "torch": torch.__version__, "width": args.width,
                 "batch_size": args.batch_size, "steps": args.steps, "grids": []}
    lines: List[str] = []
    for grid in GRIDS:
        epoch_s = {}
        for m in ("st", "sam", "at"):
            cfg = TrainConfig(dataset=grid.dataset, method=m, width=args.width, batch_size=args.batch_size,
                              eps=0.1 if grid.dataset == "fashion-mnist" else 8 / 255, bf16=True,
                              channels_last=True, device=str(device))
            s = step_seconds(cfg, device, steps=args.steps)
            epoch_s[m] = s * math.ceil(grid.n_train / args.batch_size)
        proj = project(grid, epoch_s)
        out["grids"].append(dict(proj, epoch_s=epoch_s))
        lines.append(f"{grid.name}: epoch ST {epoch_s['st']:.1f} s, SAM {epoch_s['sam']:.1f} s, "
                     f"AT {epoch_s['at']:.1f} s; grid one run after another {proj['runs_s'] / 60:.1f} min"
                     + (f" + plateau runs {proj['plateau_s'] / 60:.1f} min" if proj["plateau_s"] else ""))
    print(f"deep.gridtime on {out['device']}, width {args.width}, batch {args.batch_size}, bf16 + channels_last, "
          f"{args.steps} timed steps per method (training only)")
    print("\n".join(lines))
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
