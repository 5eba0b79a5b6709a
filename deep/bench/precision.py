"""``--precision-check``: our training step in bf16 autocast and in fp32, per architecture, side by side.

bf16 autocast is the CPU fast path of ``deep.run`` (on where the CPU computes bf16 natively) because it pays
for convolutions; it need not pay for every model. On the AVX512-BF16 CPU of the converged grid the small
ViT trained about 4x slower in bf16 than in fp32 (scaled dot-product attention, LayerNorm and GELU take slow
bf16 paths), so its converged runs were trained with ``--no-bf16``: this check measures that choice, with
channels_last as resolved for the device in both precisions so that precision is the only difference.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Optional

from samrobust.tables import table_lines

from ..archs import ARCHS, DEFAULT_ARCH
from .config import BenchConfig
from .harness import time_ours_train, setup_bench
from .timing import make_data

__all__ = ["PrecisionCheckConfig", "precision_check", "format_precision", "ARCH_WIDTHS"]

#: widths of the converged grid: PreActResNet-18 at 8 (the CPU budget), the other models at 16 (their design)
ARCH_WIDTHS = {DEFAULT_ARCH: 8, "cnn": 16, "mlp": 16, "vit": 16}


@dataclass
class PrecisionCheckConfig:
    """Which models and steps ``--precision-check`` times (each precision ``repeats`` times, interleaved,
    median reported)."""
    archs: tuple = tuple(ARCH_WIDTHS)
    methods: tuple = ("st", "sam")
    steps: int = 5                       # timed steps per measurement
    repeats: int = 3

    def __post_init__(self):
        self.archs, self.methods = tuple(self.archs), tuple(self.methods)
        bad = [a for a in self.archs if a not in ARCHS]
        if bad or not self.archs:
            raise ValueError(f"precision-check archs must be a non-empty subset of {', '.join(ARCHS)}, got "
                             f"{', '.join(self.archs) or 'none'}")
        if not self.methods or any(m not in ("st", "sam", "at") for m in self.methods):
            raise ValueError(f"precision-check methods must be a non-empty subset of st, sam, at, got "
                             f"{self.methods!r}")
        for name in ("steps", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"precision-check {name} must be >= 1, got {getattr(self, name)!r}")


def precision_check(cfg: BenchConfig, pcfg: PrecisionCheckConfig,
                    progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Per (architecture, method): our training step's images/s with bf16 autocast and in fp32 (the rest of
    ``cfg`` as resolved for its device), interleaved ``repeats`` times, the medians and bf16 / fp32."""
    device, base = setup_bench(cfg)
    data = make_data(base.dataset, (2 + base.warmup + pcfg.steps) * base.batch_size, base.seed).to(device)
    rows = []
    for arch in pcfg.archs:
        for method in pcfg.methods:
            ips: Dict[str, list] = {"bf16": [], "fp32": []}
            for rep in range(pcfg.repeats):
                for prec in ("bf16", "fp32"):
                    if progress:
                        progress(f"precision check {arch} {method} {prec} ({rep + 1}/{pcfg.repeats})")
                    c = replace(base, arch=arch, width=ARCH_WIDTHS.get(arch, base.width), bf16=prec == "bf16",
                                steps=pcfg.steps)
                    r = time_ours_train(c, method, data, device)
                    ips[prec].append(r["images"] / r["seconds"])
            b, f = statistics.median(ips["bf16"]), statistics.median(ips["fp32"])
            rows.append({"arch": arch, "method": method, "width": ARCH_WIDTHS.get(arch, base.width),
                         "bf16_images_per_s": b, "fp32_images_per_s": f, "bf16_vs_fp32": b / f,
                         "all_bf16": ips["bf16"], "all_fp32": ips["fp32"]})
    return {"config": asdict(pcfg), "device": str(device), "dataset": base.dataset, "batch_size": base.batch_size,
            "threads": base.threads, "channels_last": base.channels_last, "rows": rows}


def format_precision(res: Dict) -> str:
    """Markdown: images/s of bf16 autocast and fp32 per architecture and method, and their ratio."""
    c = res["config"]
    lines = [f"Precision check: our training step with bf16 autocast vs fp32 ({res['dataset']} shape, batch "
             f"{res['batch_size']}, {res['threads']} thread(s), channels_last {res['channels_last']} in both, "
             f"{c['steps']} timed steps, median of {c['repeats']} interleaved repeats). Above 1: bf16 is faster.",
             ""]
    body = [[r["arch"], r["width"], r["method"].upper(), f"{r['bf16_images_per_s']:.0f}",
             f"{r['fp32_images_per_s']:.0f}", f"{r['bf16_vs_fp32']:.2f}"] for r in res["rows"]]
    return "\n".join(lines + table_lines(["architecture", "width", "method", "bf16 images/s", "fp32 images/s",
                                          "bf16 / fp32"], body))
