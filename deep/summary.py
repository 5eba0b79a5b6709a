"""The summary of a results folder: summary.md (mean over seeds per configuration, one row per run, the
gradient-masking checks) and the method labels its rows use. Written by ``python -m deep.run`` after a grid and by
``python -m deep.evaluate`` after a re-evaluation.

Runs are averaged only when they differ in the seed alone (the whole training configuration but the seed,
and the evaluation settings): :func:`group_key` is that rule.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from samrobust.files import JsonFileError, warn_unreadable, write_text_atomic

from .archs import DEFAULT_ARCH
from .masking import masking_markdown
from .record import NotARecord, read_record, record_files
from .robustness import format_eps
from .train import AT_VARIANTS, TrainConfig, is_adversarial


def method_label(res: Dict) -> str:
    """st, sam, asam (adaptive SAM), at or an AT variant (fgsm-rs, pgd1, pgd2); prefixed by the
    architecture unless PreActResNet-18 (e.g. "vit sam"). ``res``: a record's dict (deep/record.py), or a
    result dict of an earlier layout (the variant in "at_variant" or in the configuration's method)."""
    cfg = res.get("config") or {}
    label = res["method"]
    if label == "sam" and cfg.get("adaptive"):
        label = "asam"
    elif label == "at":
        label = next((v for v in (res.get("at_variant"), cfg.get("method")) if v in AT_VARIANTS), label)
    arch = cfg.get("arch", DEFAULT_ARCH)
    return label if arch == DEFAULT_ARCH else f"{arch} {label}"


def _per_s(val) -> str:
    return "" if val is None or not math.isfinite(val) else f"{val:.0f}"


def _strength(res: Dict) -> str:
    if res["method"] == "sam":
        return f"rho={res['rho']:g}"
    if is_adversarial(res["method"]):
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


def result_problem(res: Dict) -> Optional[str]:
    """Why a stored run result cannot go into the tables (e.g. a radius stored as null: an inf that older
    versions accepted), or None when it can (or when it is not a run result at all)."""
    if "clean_acc" not in res:
        return None
    for key in ("clean_acc", "seed"):
        if not isinstance(res.get(key), (int, float)):
            return f"{key} is {json.dumps(res.get(key))}, not a number"
    need = "rho" if res.get("method") == "sam" else "eps" if is_adversarial(res.get("method") or "") else None
    if need and not isinstance(res.get(need), (int, float)):
        return f"{need} is {json.dumps(res.get(need))}, not a number (an inf or nan radius?)"
    if not isinstance(res.get("robust"), dict):
        return "robust is not an object"
    return None


def write_summary(out_dir: Path) -> Path:
    """summary.md from every run JSON in ``out_dir`` (accuracies in %)."""
    results = []
    for p in record_files(out_dir):
        try:
            res = read_record(p).to_dict()
        except NotARecord:                  # another JSON file in the folder
            continue
        except JsonFileError as err:        # one line naming the file, the other runs are still summarised
            warn_unreadable(err, "summary")
            continue
        problem = result_problem(res)
        if problem is not None:
            warn_unreadable(JsonFileError(f"{p}: {problem}"), "summary")
        else:
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
