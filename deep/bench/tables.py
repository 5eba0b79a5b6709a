"""Markdown tables of ``python -m deep.bench`` results and the result files."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from samrobust.files import write_json_atomic, write_text_atomic
from samrobust.tables import table_lines

from ..datasets import dataset_info
from .accuracy import format_accuracy
from .precision import format_precision
from .harness import COMPILED, GRAPHED

__all__ = ["format_table", "write_results", "write_precision", "RATIO_NAMES"]


def _fmt(v, spec=".2f", none="-") -> str:
    return none if v is None else format(v, spec)


def _header(meta: Dict) -> str:
    c = meta["config"]
    title = dataset_info(meta["dataset"]).title
    n_train, n_test = meta["epoch_images"]
    ours = ("bf16 autocast" if c["bf16"] else "fp32") + (" + channels_last" if c["channels_last"] else "")
    text = (f"Device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
            f"{meta['cpu_threads']} torch threads ({meta['cores_allowed']} cores allowed), "
            f"{title} shape {'x'.join(map(str, meta['image_shape']))}, batch {c['batch_size']}, width {c['width']}, "
            f"{c['steps']} timed steps after {c['warmup']} warm-up; ours trains in {ours} (evaluation fp32); "
            f"torch.compile {'measured' if c['compile'] else 'not measured (--compile)'}; "
            f"model {meta['model_flops_per_image']['forward_backward'] / 1e9:.3f} GFLOP fwd+bwd per image "
            f"(counted). {title} epoch = {n_train:,} training images (eval: the {n_test:,} test images) at the "
            f"measured rate. ops/step: aten operations dispatched in one eager step (forward, backward, optimizer; "
            f"counted). Memory: {meta['memory_kind']}.")
    if meta.get("cpu_peak"):
        text += f" GFLOP/s vs the {meta['cpu_peak']['assumption']}."
    if meta.get("peak_bf16_tflops"):
        text += (f" % of peak: of a dense bf16 peak of {meta['peak_bf16_tflops']:g} TFLOP/s "
                 f"({meta['peak_source']}).")
    if meta.get("graphed_note"):
        text += f" {meta['graphed_note'][0].upper()}{meta['graphed_note'][1:]}."
    return text


def _ops(r: Dict) -> str:
    """Operations per step: aten operations dispatched in one eager step (a graphed step launches them as one
    graph)."""
    n = r.get("ops_per_step")
    if n is None:
        return "-"
    return f"{n:,} in 1 graph" if r["loop"] == GRAPHED and r["flags"].get("cuda_graph") else f"{n:,}"


_LOOP_LABEL = {"ours": "ours", "reference": "reference", COMPILED: "ours (compiled)", GRAPHED: "ours (CUDA graph)"}


def _row_table(meta: Dict, rows: Sequence[Dict]) -> List[str]:
    gpu = meta["device"].startswith("cuda")
    cpu_peak = bool(meta.get("cpu_peak"))
    title = dataset_info(meta["dataset"]).title
    head = ["phase", "loop", "images/s", f"{title} epoch (s)", "ops/step", "GFLOP/image",
            "TFLOP/s" if gpu else "GFLOP/s"] + (["% bf16 peak"] if gpu else []) + \
        (["% assumed peak (kind)"] if cpu_peak else []) + ["peak memory (MiB)"]
    body = []
    label = {"st": "train ST", "sam": "train SAM", "at": f"train AT PGD-{meta['config']['attack_steps']}",
             "eval": f"eval PGD-{meta['config']['attack_steps']}"}
    for r in rows:
        row = [label[r["phase"]], _LOOP_LABEL[r["loop"]], f"{r['images_per_s']:.1f}",
               f"{r.get('epoch_s', r['cifar_epoch_s']):.1f}", _ops(r), f"{r['flops_per_image'] / 1e9:.3f}",
               f"{r['tflops']:.3g}" if gpu else f"{r['tflops'] * 1e3:.3g}"]
        if gpu:
            row.append(_fmt(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"], ".1f"))
        if cpu_peak:
            f = r.get("fraction_of_cpu_peak")
            row.append(f"{_fmt(None if f is None else 100 * f, '.2f')} ({r.get('cpu_peak_kind')})")
        row.append(f"{r['peak_mem_bytes'] / 2 ** 20:.0f}")
        body.append(row)
    return table_lines(head, body)


RATIO_NAMES = [("st_ours_vs_ref", "ST: ours / reference images/s"),
               ("sam_ours_vs_ref", "SAM: ours / reference images/s"),
               ("at_ours_vs_ref", "AT: ours / reference images/s"),
               ("eval_ours_vs_ref", "PGD eval: ours / reference images/s"),
               ("st_graphed_vs_eager", "ST: ours CUDA graph / ours eager"),
               ("sam_graphed_vs_eager", "SAM: ours CUDA graph / ours eager"),
               ("at_graphed_vs_eager", "AT: ours CUDA graph / ours eager"),
               ("sam_cost_vs_st", "SAM / ST cost, ours"), ("at_cost_vs_st", "AT / ST cost, ours"),
               ("eager_sam_cost_vs_st", "SAM / ST cost, ours eager"),
               ("graphed_sam_cost_vs_st", "SAM / ST cost, ours CUDA graph"),
               ("ref_sam_cost_vs_st", "SAM / ST cost, reference"), ("ref_at_cost_vs_st", "AT / ST cost, reference")]
# "ours" = the fastest of our loops measured (eager; compiled with --compile; CUDA graph on CUDA)


def _verdict(met) -> str:
    return "-" if met is None else ("met" if met else "not met")


def _ratio_table(result: Dict) -> List[str]:
    gpu = result["meta"]["device"].startswith("cuda")
    rt, tg = result["ratios"], result["targets"]
    body = []
    names = list(RATIO_NAMES) + [(f"concurrent_{k}_vs_1", f"{k} concurrent processes / one process, aggregate images/s")
                                 for k in sorted(int(k) for k in (result.get("concurrency") or {}).get("aggregate_vs_one", {}))
                                 if k > 1]
    for key, text in names:
        if rt.get(key) is None and key not in tg:
            continue                    # not measured here (e.g. the CUDA graph on CPU)
        t = tg.get(key)
        ts = "" if t is None else f"{t['target']} ({_verdict(t['met'])})"
        if t is not None and "stretch" in t:
            ts += f"; stretch {t['stretch']} ({_verdict(t['stretch_met'])})"
        body.append([text, _fmt(rt.get(key)), ts])
    return table_lines(["ratio", "value", "the package's target " + ("(one H100/H200)" if gpu else "(CPU)")], body)


def _compile_lines(result: Dict) -> List[str]:
    comp = result.get("compile")
    if not comp:
        return []
    lines = ["", "torch.compile of our training loop (PGD inside AT and the evaluation stay eager): "
             "used in a phase where it compiled and is faster in steady state. Compile time: the longest "
             "warm-up beyond the eager rate (inductor's on-disk cache can shorten it).", ""]
    body = []
    for phase, c in comp.items():
        even = "-" if c["break_even_images"] is None else \
            f"{c['break_even_images']:,.0f} ({c['break_even_epochs']:.2f})"
        used = "yes" if c["used"] else ("no" if c["compiled"] else "no (compile failed)")
        body.append([phase, f"{c['speedup']:.2f}", used, f"{c['compile_s']:.0f}", even])
    return lines + table_lines(["phase", "compiled / eager images/s", "used", "compile time (s)",
                                "pays back after (images, epochs)"], body)


def _concurrency_lines(result: Dict) -> List[str]:
    conc = result.get("concurrency")
    if not conc:
        return []
    where = "each pinned to one core" if conc["pinned_to_cores"] else "sharing the device"
    lines = ["", f"Concurrent training processes: K processes of our eager {conc['method'].upper()} loop, "
             f"{conc['threads_per_process']} torch thread each, {where}, {conc['steps_per_process']} timed steps "
             f"of batch {conc['batch_size']} each after their own warm-up, released together; aggregate = all "
             f"timed images / (latest end - earliest start).", ""]
    spin = conc.get("spin_ceiling")
    body = [[r["k"], f"{r['aggregate_images_per_s']:.1f}", f"{conc['aggregate_vs_one'][str(r['k'])]:.2f}",
             ", ".join(f"{v:.0f}" for v in r["per_process_images_per_s"])]
            + ([f"{spin[str(r['k'])]:.2f}"] if spin else []) for r in conc["runs"]]
    lines += table_lines(["K", "aggregate images/s", "x one process", "per-process images/s"]
                         + (["ceiling now: K busy loops / one"] if spin else []), body)
    if conc.get("spin_ceiling"):
        lines += ["", "Ceiling: K pure-Python busy loops started together, their aggregate speed over one alone - "
                      "the most K CPU-bound processes can gain on this machine at the time of the run (Linux "
                      "autogroup scheduling gives another session's busy job its share whatever our nice level)."]
    return lines


def format_table(result: Dict) -> str:
    """Markdown: one row per (phase, loop), then the ratios and targets (and torch.compile, the concurrent
    processes, the accuracy check where measured)."""
    lines = [_header(result["meta"]), ""] + _row_table(result["meta"], result["rows"]) + [""] + \
        _ratio_table(result) + _compile_lines(result) + _concurrency_lines(result)
    if result.get("accuracy_check"):
        lines += ["", format_accuracy(result["accuracy_check"])]
    return "\n".join(lines)


def write_results(result: Dict, out: Path) -> Path:
    """JSON at ``out`` and markdown at ``out`` with suffix .md, each written atomically."""
    write_json_atomic(out, result)
    return write_text_atomic(out.with_suffix(".md"), "# deep/ training throughput: ours vs reference-style loop\n\n"
                             + format_table(result) + "\n")


def write_precision(result: Dict, out: Path) -> Path:
    """The ``--precision-check`` result: JSON at ``out`` and markdown at ``out`` with suffix .md, each written
    atomically; returns the markdown's path."""
    write_json_atomic(out, result)
    return write_text_atomic(out.with_suffix(".md"), "# deep/ training step: bf16 autocast vs fp32\n\n"
                             + format_precision(result) + "\n")
