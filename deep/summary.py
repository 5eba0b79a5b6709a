"""The summary of a results folder: summary.md (mean over seeds per configuration, one row per run, the
gradient-masking checks). Written by ``python -m deep.run`` after a grid and by ``python -m deep.evaluate`` after
a re-evaluation. Grouping, statistics and labels are :mod:`deep.aggregate`'s, shared with REPORT.md.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from samrobust.files import JsonFileError, warn_unreadable, write_text_atomic
from samrobust.tables import markdown_table

from .aggregate import (Stat, distinct_evals, eval_text, group_key, group_runs, group_settings, method_label,
                        strength_text)
from .archs import DEFAULT_ARCH
from .masking import masking_markdown
from .record import NotARecord, read_record, record_files
from .train import is_adversarial

def _per_s(val) -> str:
    return "" if val is None or not math.isfinite(val) else f"{val:.0f}"


def results_table(results: Sequence[Dict]) -> str:
    """Markdown table: one row per run (with the settings column of :func:`aggregate_table` when runs of
    the same method and strength differ in other settings)."""
    groups = group_runs(results)
    settings = group_settings(groups)
    extra = any(settings.values())
    labels = []
    for res in results:
        labels += [k for k in res["robust"] if k not in labels]
    probe_cols = []
    for res in results:
        probe_cols += [k for k in (res.get("probes") or {}) if k not in probe_cols and k != "clean"]
    head = ["method", "strength"] + (["settings"] if extra else []) + ["seed", "clean"] + labels + \
        [f"probe {p}" for p in probe_cols] + ["train time (s)", "images/s"]
    rows = []
    for res in results:
        row = [method_label(res), strength_text(res)] + ([settings[group_key(res)]] if extra else [])
        row += [str(res["seed"]), f"{100 * res['clean_acc']:.2f}"]
        row += [f"{100 * res['robust'][k]:.2f}" if k in res["robust"] else "" for k in labels]
        row += [f"{100 * res['probes'][p]:.2f}" if res.get("probes") and p in res["probes"] else ""
                for p in probe_cols]
        row += [f"{res['wall_time_s']:.1f}", _per_s(res.get("images_per_s"))]
        rows.append(row)
    return markdown_table(head, rows)


def aggregate_table(results: Sequence[Dict]) -> str:
    """Markdown table: mean ± sd over seeds per configuration (:func:`deep.aggregate.group_key`: runs are
    averaged only when they differ in the seed alone); ASAM rows are labelled asam. Rows of the same
    method and strength that differ in other settings get a "settings" column naming them."""
    groups = group_runs(results)
    settings = group_settings(groups)
    labels = []
    for res in results:
        labels += [k for k in res["robust"] if k not in labels]
    extra = ["settings"] if any(settings.values()) else []
    head = ["method", "strength"] + extra + ["seeds", "clean"] + labels + ["train time (s)", "images/s"]
    rows = []
    for key, rs in groups.items():
        row = [method_label(rs[0]), strength_text(rs[0])] + ([settings[key]] if extra else [])
        row += [str(len(rs)), Stat.of(x["clean_acc"] for x in rs).fmt(digits=2)]
        row += [Stat.of(x["robust"][k] for x in rs if k in x["robust"]).fmt(digits=2)
                if any(k in x["robust"] for x in rs) else "" for k in labels]
        ips = Stat.of(x.get("images_per_s") for x in rs)
        row += [f"{Stat.of(x['wall_time_s'] for x in rs).mean:.1f}", _per_s(ips.mean) if ips.n else ""]
        rows.append(row)
    return markdown_table(head, rows)


def _summary_header(results: Sequence[Dict]) -> List[str]:
    """What the runs of the tables share, and where they differ: evaluation settings (each distinct one
    listed when they differ), epochs, devices."""
    evals = distinct_evals(results)
    if len(evals) == 1:
        lines = [f"Evaluation: {eval_text(results[0].get('eval'))}."]
    else:
        lines = [f"The runs in these tables were evaluated with {len(evals)} different settings; robust "
                 f"accuracies of different settings are not comparable (the settings column names each "
                 f"row's):"]
        for ev, name in evals.items():
            lines.append(f"- {name}: {eval_text(json.loads(ev))}")
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
