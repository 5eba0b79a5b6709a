"""The measurements of ``python -m deep.bench``: our training loop (eager, torch.compile'd, CUDA-graphed)
and evaluation, side by side with the reference-style loop (deep/bench/reference.py), then ratios and the
package's targets."""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..images import ImageData
from ..robustness import evaluate, parse_attack
from ..graphed import GRAPH_ATTR, WARMUP_STEPS
from ..train import (TrainConfig, runtime_flags, build_model, build_optimizer, compile_for, cpu_has_native_bf16,
                     resolve_device, setup_device, train_epoch)
from .concurrency import run_concurrency
from .config import (CIFAR_TEST, CIFAR_TRAIN, CPU_STRETCH, CPU_TARGETS, EPOCH_IMAGES, PHASES, TARGETS,
                     BenchConfig, default_threads, image_shape)
from .flops import count_flops_and_ops, cpu_peak_gflops, cpuinfo_field, model_flops_per_image, peak_tflops_for, read_cpuinfo
from .reference import measure_reference, reference_model
from .timing import make_data, peak_bytes, reset_peak, sync

__all__ = ["run_bench", "time_ours_train", "setup_bench", "compute_ratios", "compile_summary", "judge_targets",
           "COMPILED", "GRAPHED"]


def train_cfg(cfg: BenchConfig, method: str, device: torch.device) -> TrainConfig:
    return TrainConfig(dataset=cfg.dataset, method=method, rho=cfg.rho, eps=cfg.eps, norm="inf",
                       attack_steps=cfg.attack_steps, epochs=1, batch_size=cfg.batch_size, width=cfg.width,
                       seed=cfg.seed, augment=True, bf16=cfg.bf16, channels_last=cfg.channels_last,
                       device=str(device), check_every=10 ** 9, arch=cfg.arch)


def time_ours_train(cfg: BenchConfig, method: str, data: ImageData, device: torch.device,
                compile_model: bool = False, graphed: bool = False) -> Dict:
    """Time train_epoch on ``steps`` full batches after ``warmup`` batches (at least 2 when compiling: the
    compile happens there, and is timed as ``warmup_s``; with ``graphed`` at least the graph's eager
    warm-up steps + 1, so the capture happens there and the timed steps are all replays); FLOPs of one
    real (eager) step."""
    tc = train_cfg(cfg, method, device)
    bf16, channels_last, augment = runtime_flags(tc, device)
    setup_device(device)
    model = build_model(tc, device)
    opt = build_optimizer(tc, model)
    B = cfg.batch_size
    kw = dict(bf16=bf16, channels_last=channels_last, augment=augment)
    net = model

    def run(lo, hi, epoch, cuda_graph=graphed):
        return train_epoch(net, opt, data, tc, epoch, indices=torch.arange(lo * B, hi * B), cuda_graph=cuda_graph,
                           **kw)

    flops, ops = count_flops_and_ops(lambda: run(0, 1, 0, cuda_graph=False))   # one real step, untimed, eager
    warmup = _warmup_steps(cfg, compile_model, graphed)
    t_w = time.perf_counter()
    compiled = False
    if compile_model:
        net = compile_for(model, data, bf16, channels_last)
        compiled = net is not model
    if warmup:
        int(run(1, 1 + warmup, 0)["count"])
    sync(device)
    warmup_s = time.perf_counter() - t_w
    reset_peak(device)
    t0 = time.perf_counter()
    m = run(1 + warmup, 1 + warmup + cfg.steps, 0)
    int(m["count"])                                         # the loop's own end-of-epoch sync
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "ops_per_step": ops, "batch": B,
            "peak_mem_bytes": peak_bytes(device), "warmup_s": warmup_s, "warmup_images": warmup * B,
            "flags": {"bf16": bf16, "channels_last": channels_last, "augment": augment, "compiled": compiled,
                      "cuda_graph": _graph_used(opt) if graphed else False,
                      "data": "device-resident uint8", "metrics": "on device"}}


def _warmup_steps(cfg: BenchConfig, compile_model: bool = False, graphed: bool = False) -> int:
    """Untimed steps before timing: cfg.warmup, at least 2 when compiling, at least the graph's eager
    warm-up + 1 (the capture) with a CUDA graph."""
    w = cfg.warmup
    if compile_model:
        w = max(w, 2)
    if graphed:
        w = max(w, WARMUP_STEPS + 1)
    return w


def _graph_used(opt) -> bool:
    """Whether the timed steps replayed a CUDA graph (False after a fallback to eager)."""
    gs = opt.__dict__.get(GRAPH_ATTR)
    return bool(gs is not None and gs.failed is None and gs.graphed_steps > 0)


def _ours_eval(cfg: BenchConfig, data: ImageData, device: torch.device) -> Dict:
    tc = train_cfg(cfg, "st", device)
    _, channels_last, _ = runtime_flags(tc, device)
    model = build_model(tc, device)
    attack = (parse_attack(f"linf:{cfg.eps!r}"),)
    B = cfg.batch_size

    def run(lo, hi):
        sub = ImageData(data.x[lo * B:hi * B], data.y[lo * B:hi * B], data.num_classes)
        return evaluate(model, sub, attack, steps=cfg.attack_steps, batch_size=B, seed=cfg.seed,
                        bf16=False, channels_last=channels_last, sharded=False, fixed_work=True)

    flops, ops = count_flops_and_ops(lambda: run(0, 1))
    if cfg.warmup:
        run(1, 1 + cfg.warmup)
    sync(device)
    reset_peak(device)
    t0 = time.perf_counter()
    run(1 + cfg.warmup, 1 + cfg.warmup + cfg.steps)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": cfg.steps * B, "flops_per_step": flops, "ops_per_step": ops, "batch": B,
            "peak_mem_bytes": peak_bytes(device),
            "flags": {"bf16": False, "channels_last": channels_last, "attack": attack[0].label,
                      "note": "as deep.run evaluates: fp32 attack"}}


COMPILED = "ours-compiled"           # loop name of our training loop under torch.compile (--compile)
GRAPHED = "ours-graphed"             # loop name of our training loop replaying a CUDA graph (CUDA only)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpuinfo_field(read_cpuinfo(), "model name") or platform.processor() or platform.machine() or "cpu"


def setup_bench(cfg: BenchConfig):
    """(device, resolved config); sets the torch threads and the seed."""
    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return device, cfg


def _jobs(cfg: BenchConfig, data_cpu: ImageData, data_dev: ImageData, device: torch.device) -> Dict:
    """(phase, loop) -> a function measuring it; with --compile also (training phase, COMPILED)."""
    jobs: Dict = {}
    for phase in cfg.phases:
        for loop in cfg.loops:
            if loop == "reference":
                jobs[(phase, loop)] = lambda p=phase: measure_reference(cfg, p, data_cpu, device)
            elif loop == "graphed":
                # CUDA graphs exist only on CUDA; evaluation is not graphed (its survivor batches shrink)
                if device.type == "cuda" and phase != "eval":
                    jobs[(phase, GRAPHED)] = lambda p=phase: time_ours_train(cfg, p, data_dev, device, graphed=True)
            elif phase == "eval":
                jobs[(phase, loop)] = lambda: _ours_eval(cfg, data_dev, device)
            else:
                jobs[(phase, loop)] = lambda p=phase: time_ours_train(cfg, p, data_dev, device)
                if cfg.compile:
                    jobs[(phase, COMPILED)] = lambda p=phase: time_ours_train(cfg, p, data_dev, device, True)
    return jobs


def _measure(cfg: BenchConfig, jobs: Dict, progress: Optional[Callable[[str], None]]) -> Dict:
    """Every job ``cfg.repeats`` times, interleaved: ours and reference see the same machine state."""
    runs: Dict = {key: [] for key in jobs}
    for rep in range(cfg.repeats):
        for key, fn in jobs.items():
            if progress:
                progress(f"{key[1]} {key[0]}" + (f" (repeat {rep + 1}/{cfg.repeats})" if cfg.repeats > 1 else ""))
            runs[key].append(fn())
    return runs


def _row(phase: str, loop: str, rs: List[Dict], cfg: BenchConfig, peak: Optional[float],
         cpu_peak: Optional[Dict]) -> Dict:
    """One table row from the repeats of (phase, loop): the median run by images/s."""
    rs = sorted(rs, key=lambda r: r["images"] / r["seconds"])
    r = rs[len(rs) // 2]                # median (upper median for an even count)
    ips = r["images"] / r["seconds"]
    tflops = r["flops_per_step"] * (r["images"] / r["batch"]) / r["seconds"] / 1e12
    n_train, n_test = EPOCH_IMAGES[cfg.dataset]
    row = {"loop": loop, "phase": phase, "images_per_s": ips, "seconds": r["seconds"],
           "images": r["images"], "images_per_s_all": [x["images"] / x["seconds"] for x in rs],
           "flops_per_image": r["flops_per_step"] / r["batch"], "ops_per_step": r.get("ops_per_step"),
           "tflops": tflops, "gflops": tflops * 1e3,
           "fraction_of_peak": tflops / peak if peak else None,
           "peak_mem_bytes": max(x["peak_mem_bytes"] for x in rs), "flags": r["flags"],
           "cifar_epoch_s": (CIFAR_TEST if phase == "eval" else CIFAR_TRAIN) / ips,
           "epoch_s": (n_test if phase == "eval" else n_train) / ips}
    if cpu_peak is not None:
        kind = "bf16" if r["flags"].get("bf16") else "fp32"
        pk = cpu_peak.get(f"{kind}_gflops")
        row.update(cpu_peak_kind=kind, cpu_peak_gflops=pk, fraction_of_cpu_peak=tflops * 1e3 / pk if pk else None)
    if "warmup_s" in r:     # the longest warm-up: the first compile (later repeats reuse dynamo's cache)
        row.update(warmup_s=max(x["warmup_s"] for x in rs), warmup_images=r["warmup_images"])
    return row


def _gpu_peak(cfg: BenchConfig, device: torch.device, name: str):
    """(dense bf16 peak TFLOP/s, where it came from) of a GPU; (None, None) on CPU without --peak-tflops."""
    if cfg.peak_tflops is not None:
        return cfg.peak_tflops, "--peak-tflops"
    peak = peak_tflops_for(name) if device.type == "cuda" else None
    return peak, ("table DENSE_BF16_PEAK_TFLOPS" if peak is not None else None)


def _meta(cfg: BenchConfig, device: torch.device, name: str, peak, peak_source, mf: Dict,
          cpu_peak: Optional[Dict]) -> Dict:
    gpu = device.type == "cuda"
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "python": sys.version.split()[0], "cpu_threads": torch.get_num_threads(),
            "cores_allowed": default_threads(), "config": asdict(cfg), "dataset": cfg.dataset,
            "image_shape": list(image_shape(cfg.dataset)), "epoch_images": list(EPOCH_IMAGES[cfg.dataset]),
            "cpu_native_bf16": None if gpu else cpu_has_native_bf16(),
            "peak_bf16_tflops": peak, "peak_source": peak_source, "cpu_peak": cpu_peak,
            "model_flops_per_image": mf,
            "cuda_settings": {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                              "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32} if gpu else None,
            "memory_kind": "torch.cuda.max_memory_allocated per phase" if gpu else
            "process ru_maxrss high-water mark (cumulative over the run, DataLoader workers not included)",
            "targets_note": "the package's GPU targets are stated for one H100/H200 and judged only on CUDA (on other "
                            "GPUs indicative); its CPU targets are judged on CPU"}


def run_bench(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Measure every (loop, phase); returns the JSON-ready result (see the module docstring)."""
    device, cfg = setup_bench(cfg)
    warmup = _warmup_steps(cfg, cfg.compile, "graphed" in cfg.loops)
    data_cpu = make_data(cfg.dataset, cfg.batch_size * (1 + warmup + cfg.steps), cfg.seed)  # FLOP step + warm-up + timed
    data_dev = data_cpu.to(device)
    name = _device_name(device)
    peak, peak_source = _gpu_peak(cfg, device, name)
    cpu_peak = None if device.type == "cuda" else \
        cpu_peak_gflops(read_cpuinfo(), min(cfg.threads, default_threads()), cfg.clock_mhz)
    mf = model_flops_per_image(reference_model(cfg, device), image_shape(cfg.dataset))
    runs = _measure(cfg, _jobs(cfg, data_cpu, data_dev, device), progress)
    rows = [_row(phase, loop, rs, cfg, peak, cpu_peak) for (phase, loop), rs in runs.items()]
    conc = run_concurrency(cfg, device, progress) if cfg.concurrency else None
    ratios = compute_ratios(rows, conc)
    meta = _meta(cfg, device, name, peak, peak_source, mf, cpu_peak)
    if "graphed" in cfg.loops and device.type != "cuda":
        meta["graphed_note"] = "ours with a CUDA graph: CUDA only, not measured on this device"
    return {"meta": meta, "rows": rows, "ratios": ratios, "concurrency": conc,
            "targets": judge_targets(ratios, device.type),
            "compile": compile_summary(rows, EPOCH_IMAGES[cfg.dataset][0]) if cfg.compile else None}


def _find(rows, loop, phase) -> Optional[Dict]:
    return next((r for r in rows if r["loop"] == loop and r["phase"] == phase), None)


def _ips(rows, loop, phase) -> Optional[float]:
    r = _find(rows, loop, phase)
    return r["images_per_s"] if r else None


def _ours_ips(rows, phase) -> Optional[float]:
    """Our images/s in ``phase``: the fastest of eager, torch.compile'd and CUDA-graphed (where measured)."""
    vals = [v for v in (_ips(rows, "ours", phase), _ips(rows, COMPILED, phase), _ips(rows, GRAPHED, phase)) if v]
    return max(vals) if vals else None


def _ratio(a, b) -> Optional[float]:
    return a / b if a and b else None


def compute_ratios(rows: Sequence[Dict], concurrency: Optional[Dict] = None) -> Dict[str, Optional[float]]:
    """ours/reference images/s per phase; cost of SAM and AT relative to ST (= ST img/s / X img/s).
    Ours is the fastest of our eager, compiled and graphed loop where measured (--compile, CUDA); the eager
    and graphed loops also get their own ratios (``*_eager_vs_ref``, ``*_graphed_vs_ref``,
    ``*_graphed_vs_eager``). With ``concurrency``: ``concurrent_K_vs_1``, the aggregate images/s of K
    processes over one process."""
    out: Dict[str, Optional[float]] = {}
    for phase in PHASES:
        ref = _ips(rows, "reference", phase)
        out[f"{phase}_ours_vs_ref"] = _ratio(_ours_ips(rows, phase), ref)
        out[f"{phase}_eager_vs_ref"] = _ratio(_ips(rows, "ours", phase), ref)
        out[f"{phase}_graphed_vs_ref"] = _ratio(_ips(rows, GRAPHED, phase), ref)
        out[f"{phase}_graphed_vs_eager"] = _ratio(_ips(rows, GRAPHED, phase), _ips(rows, "ours", phase))
    for k, v in ((concurrency or {}).get("aggregate_vs_one") or {}).items():
        out[f"concurrent_{k}_vs_1"] = v
    for prefix, get in (("", _ours_ips), ("eager_", lambda rs, p: _ips(rs, "ours", p)),
                        ("graphed_", lambda rs, p: _ips(rs, GRAPHED, p)),
                        ("ref_", lambda rs, p: _ips(rs, "reference", p))):
        st = get(rows, "st")
        for phase in ("sam", "at"):
            x = get(rows, phase)
            out[f"{prefix}{phase}_cost_vs_st"] = st / x if st and x else None
    return out


def compile_summary(rows: Sequence[Dict], epoch_images: int) -> Dict[str, Dict]:
    """Per training phase with both loops measured: compiled/eager speed, whether the compiled loop is used
    (it compiled and is faster in steady state), the compile time (warm-up time beyond the eager rate) and
    the images (and epochs of ``epoch_images``) after which it is paid back."""
    out = {}
    for phase in ("st", "sam", "at"):
        e, c = _find(rows, "ours", phase), _find(rows, COMPILED, phase)
        if e is None or c is None:
            continue
        speedup = c["images_per_s"] / e["images_per_s"]
        used = bool(c["flags"].get("compiled")) and speedup > 1
        compile_s = max(0.0, c["warmup_s"] - c["warmup_images"] / e["images_per_s"])
        gain = 1 / e["images_per_s"] - 1 / c["images_per_s"]             # seconds saved per image
        even = compile_s / gain if used and gain > 0 else None
        out[phase] = {"speedup": speedup, "compiled": bool(c["flags"].get("compiled")), "used": used,
                      "compile_s": compile_s, "break_even_images": even,
                      "break_even_epochs": even / epoch_images if even is not None else None}
    return out


def judge_targets(ratios: Dict, device_type: str) -> Dict[str, Dict]:
    """The package's targets for the device (TARGETS on CUDA, CPU_TARGETS on CPU), judged."""
    table = TARGETS if device_type == "cuda" else CPU_TARGETS
    out = {}
    for key, (op, val) in table.items():
        got = ratios.get(key)
        ok = (lambda v: got >= v if op == ">=" else got <= v) if got is not None else (lambda v: None)
        out[key] = {"target": f"{op} {val}", "measured": got, "met": ok(val)}
        if device_type != "cuda" and key in CPU_STRETCH:
            out[key].update(stretch=f"{op} {CPU_STRETCH[key]}", stretch_met=ok(CPU_STRETCH[key]))
    return out
