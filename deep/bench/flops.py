"""FLOP counting and the peaks they are compared with: counted FLOPs of real steps (torch's
FlopCounterMode: convolutions and matrix products, 2 per multiply-add), the dense bf16 peak of known GPUs
(vendors' data sheets; an H200 counts 989.4 TFLOP/s), and an assumed CPU peak from /proc/cpuinfo."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["DENSE_BF16_PEAK_TFLOPS", "peak_tflops_for", "read_cpuinfo", "cpuinfo_field", "cpu_peak_gflops",
           "count_flops", "count_flops_and_ops", "model_flops_per_image", "CPU_FP32_FLOPS_PER_CYCLE", "CPU_BF16_FLOPS_PER_CYCLE"]

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.  Matched in order
# against torch.cuda.get_device_name(); the first substring that occurs wins (more specific first).
DENSE_BF16_PEAK_TFLOPS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),          # SXM5
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

# FLOPs per cycle and core (2 per fused multiply-add) assumed for the CPU peak, widest unit first:
# fp32: 2 FMA units x 16 lanes (AVX-512) / 8 lanes (AVX2+FMA); bf16: AMX-BF16 TMUL 1,024 (Intel: 1,024 bf16
# ops/cycle/core), AVX512-BF16 VDPBF16PS 2 units x 32 bf16 products x 2 = 128 (twice fp32).
CPU_FP32_FLOPS_PER_CYCLE = (("avx512f", 2 * 16 * 2, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"),
                            ("fma", 2 * 8 * 2, "AVX2: 2 FMA units x 8 fp32 lanes x 2"))
CPU_BF16_FLOPS_PER_CYCLE = (("amx_bf16", 1024, "AMX-BF16: 1,024 bf16 FLOP/cycle (TMUL)"),
                            ("avx512_bf16", 2 * 32 * 2, "AVX512-BF16: 2 units x 32 bf16 products x 2"))


def peak_tflops_for(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a GPU by name (see DENSE_BF16_PEAK_TFLOPS), None when unknown."""
    for key, tflops in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    """The text of /proc/cpuinfo ("" where there is none)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpuinfo_field(cpuinfo: str, key: str) -> Optional[str]:
    for line in cpuinfo.splitlines():
        name, sep, val = line.partition(":")
        if sep and name.strip() == key:
            return val.strip()
    return None


def cpu_peak_gflops(cpuinfo: str, cores: int, clock_mhz: Optional[float] = None) -> Dict:
    """Assumed peak GFLOP/s of ``cores`` cores: cores x clock x FLOP/cycle of the widest unit in the flags.

    Clock: ``clock_mhz`` or the first "cpu MHz" of ``cpuinfo`` (the nominal clock in a VM; turbo and the
    lower AVX-512/AMX frequency licences are not modelled).  FLOP/cycle: CPU_FP32_FLOPS_PER_CYCLE and
    CPU_BF16_FLOPS_PER_CYCLE (bf16: None without native bf16).  An assumption stated in the output, not a
    measurement; the fp32 and bf16 peaks are None when the clock or the vector unit is unknown."""
    flags = set((cpuinfo_field(cpuinfo, "flags") or "").split())
    if clock_mhz is None:
        try:
            clock_mhz = float(cpuinfo_field(cpuinfo, "cpu MHz"))
        except (TypeError, ValueError):
            clock_mhz = None
    out: Dict = {"cores": int(cores), "clock_mhz": clock_mhz, "model": cpuinfo_field(cpuinfo, "model name")}
    parts = []
    for kind, table in (("fp32", CPU_FP32_FLOPS_PER_CYCLE), ("bf16", CPU_BF16_FLOPS_PER_CYCLE)):
        unit = next(((f, n, why) for f, n, why in table if f in flags), None)
        out[f"{kind}_flops_per_cycle"] = unit[1] if unit else None
        out[f"{kind}_gflops"] = cores * clock_mhz * 1e-3 * unit[1] if unit and clock_mhz else None
        parts.append(f"{kind} {out[f'{kind}_gflops']:.0f} GFLOP/s = {cores} cores x {clock_mhz:.0f} MHz x "
                     f"{unit[2]}" if out[f"{kind}_gflops"] else f"{kind}: unknown")
    out["assumption"] = "assumed CPU peak (nominal clock from /proc/cpuinfo, no turbo): " + "; ".join(parts)
    return out



class _OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched (forward, backward and optimizer alike)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_flops_and_ops(fn: Callable[[], object]) -> Tuple[int, int]:
    """(FLOPs as :func:`count_flops`, aten operations dispatched) of ``fn``. Operations per step matter
    where the host issuing kernels limits a step (a GPU running an eager loop: ~20-30 us each on an H200);
    a CUDA graph replays them all with one launch."""
    ctr = _OpCounter()
    with FlopCounterMode(display=False) as fc:
        with ctr:
            fn()
    return int(fc.get_total_flops()), ctr.ops


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the torch operations ``fn`` runs (FlopCounterMode: conv / matmul, 2 per multiply-add)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def model_flops_per_image(model: torch.nn.Module, image_shape=(3, 32, 32), batch: int = 2) -> Dict[str, float]:
    """Counted forward and forward+backward FLOPs of ``model`` per image (train mode, fp32)."""
    device = next(model.parameters()).device
    x = torch.rand((batch,) + tuple(image_shape), device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    fwd = count_flops(lambda: model(x))
    fwd_bwd = count_flops(lambda: F.cross_entropy(model(x), y).backward())
    model.zero_grad(set_to_none=True)
    return {"forward": fwd / batch, "forward_backward": fwd_bwd / batch}
