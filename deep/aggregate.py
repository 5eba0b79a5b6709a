"""Runs summarised over seeds: the one grouping rule, the one statistic and the one set of labels that
summary.md (:mod:`deep.summary`) and REPORT.md (:mod:`paper_figs.aggregate`) both use.

Grouping rule (:func:`group_key`): runs are averaged only when they differ in the seed alone, i.e. the
science settings of the training configuration (deep.train.science_fields) but the seed, and the
evaluation settings, are equal. Two architectures, two
epoch budgets or two evaluations in one folder therefore stay apart; :func:`group_settings` names what
tells apart groups that share a label. Every function takes result dicts as ``deep.run`` writes them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np

from samrobust.threat import format_eps

from .archs import DEFAULT_ARCH
from .train import AT_VARIANTS, TrainConfig, is_adversarial, science_fields

__all__ = ["Stat", "method_label", "strength_text", "run_config", "group_key", "group_runs", "group_settings",
           "distinct_evals", "eval_text"]


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one seed) and number of seeds of the finite values given."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: Iterable) -> "Stat":
        vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        if vals.size == 0:
            return cls(float("nan"), float("nan"), 0)
        sd = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        return cls(float(vals.mean()), sd, int(vals.size))

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """'91.5 ± 0.2' (``scale`` * mean ± sd), the mean alone for one seed, '-' for none."""
        if self.n == 0:
            return "-"
        if self.n == 1:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.sd:.{digits}f}"


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


def strength_text(res: Dict) -> str:
    """The strength of a run in plain text: "rho=0.1" (SAM), "linf eps=8/255" (AT; radius by
    :func:`samrobust.threat.format_eps`, the package's one radius formatter), "-" (ST)."""
    if res["method"] == "sam":
        return f"rho={res['rho']:g}"
    if is_adversarial(res["method"]):
        return f"{res['norm']} eps={format_eps(res['eps'])}"
    return "-"


_CONFIG_DEFAULTS: List[Dict] = []


def run_config(res: Dict) -> Dict:
    """The run's training configuration without the seed and the runtime settings (deep.train.RUNTIME_FIELDS:
    device, channels_last, check_every change the numbers by rounding at most); fields that an older result lacks get their
    default (as config_matches reads them), so old and new results of one configuration group together."""
    cfg = res.get("config")
    if not isinstance(cfg, dict):       # no stored configuration: what the result itself says
        return {k: res.get(k) for k in ("method", "rho", "eps", "norm", "epochs")}
    if not _CONFIG_DEFAULTS:
        _CONFIG_DEFAULTS.append(TrainConfig().to_dict())
    full = science_fields(dict(_CONFIG_DEFAULTS[0], **cfg))
    full.pop("seed", None)
    return full


_IDENTITY = ("method", "rho", "eps", "norm")


def group_key(res: Dict) -> str:
    """The grouping rule: runs with equal keys differ in the seed only (the result's method and radii,
    the whole configuration but the seed, and the evaluation)."""
    identity = {k: res.get(k) for k in _IDENTITY}
    return json.dumps([identity, run_config(res), res.get("eval")], sort_keys=True, default=str)


def group_runs(results: Iterable, record=lambda r: r) -> Dict[str, List]:
    """Results grouped by :func:`group_key`, groups and members in order of first appearance. ``record``
    maps an item to its result dict (e.g. ``lambda run: run.raw`` for paper_figs' DeepRun)."""
    groups: Dict[str, List] = {}
    for item in results:
        groups.setdefault(group_key(record(item)), []).append(item)
    return groups


def eval_text(ev) -> str:
    """One line describing an evaluation setting ("PGD-10 x 1 restart(s), ce loss, ...")."""
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


def distinct_evals(results: Sequence[Dict]) -> Dict[str, str]:
    """JSON of each distinct evaluation setting -> its name E1, E2, ... in order of appearance."""
    names: Dict[str, str] = {}
    for res in results:
        names.setdefault(json.dumps(res.get("eval"), sort_keys=True), f"E{len(names) + 1}")
    return names


def _summary_label(res: Dict) -> tuple:
    return method_label(res), strength_text(res)


def group_settings(groups: Dict[str, List[Dict]], label: Callable[[Dict], object] = _summary_label) -> Dict[str, str]:
    """For groups that would otherwise look alike (equal ``label`` of their first result: by default
    summary.md's method and strength; different configuration or evaluation): the settings that tell them
    apart, e.g. "epochs=10, eval E2"; "" for the other groups."""
    evals = distinct_evals([rs[0] for rs in groups.values()])
    rows: Dict[object, List[str]] = {}
    for key, rs in groups.items():
        rows.setdefault(label(rs[0]), []).append(key)
    out = {key: "" for key in groups}
    for keys in rows.values():
        if len(keys) < 2:
            continue
        cfgs = {k: run_config(groups[k][0]) for k in keys}
        names = sorted({n for c in cfgs.values() for n in c})
        varying = [n for n in names if len({_setting_value(c.get(n)) for c in cfgs.values()}) > 1]
        for k in keys:
            parts = [f"{n}={_setting_value(cfgs[k].get(n))}" for n in varying]
            ev = json.dumps(groups[k][0].get("eval"), sort_keys=True)
            if len({json.dumps(groups[j][0].get("eval"), sort_keys=True) for j in keys}) > 1:
                parts.append(f"eval {evals[ev]}")
            out[k] = ", ".join(parts)
    return out
