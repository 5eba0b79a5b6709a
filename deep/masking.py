"""Gradient-masking checks computed from the robust accuracies stored in deep's result JSONs.

Every attack gives an upper bound on a model's true robust accuracy. A run's estimates ("sources"):

* the PGD of its training-time evaluation (``robust``; PGD-10 x 1 by default), the *baseline*;
* ``autoattack`` (``python -m deep.run --autoattack``) and every entry of ``extra_evals``
  (``python -m deep.evaluate``: PGD with more steps/restarts/another loss, AutoAttack).

Three checks per configuration, i.e. runs that differ in the seed only
(docs/protocol.md, "Robust evaluation: PGD, AutoAttack, masking checks"):

1. **gap**: at each radius, baseline minus the lowest other estimate, in points (mean over seeds, and the
   largest single seed). A baseline that a stronger attack lowers by more than ``GAP_FLAG`` = 2 points in
   some seed is not trusted (flag "gap"). Estimates on different numbers of images (n is shown) also differ
   by sampling noise, about 100 sqrt(p (1 - p) / n) points.
2. **monotone**: within each source and norm, robust accuracy must not rise with eps (the larger ball
   contains the smaller one) by more than ``MONOTONE_TOL`` = 0.5 points (flag "monotone").
3. **sanity**: at the large radii ``SANITY_RADII`` of the data set, the lowest estimate must be at most
   ``SANITY_MAX`` = 5 %: a working attack with so large a budget breaks about every image (flag
   "sanity"). Not evaluated (no source has the radius) is reported as such, not flagged.
"""
from __future__ import annotations

import json
import statistics
from typing import Dict, List, Optional, Sequence

from samrobust.tables import table_lines

from .robustness import Attack, format_eps, parse_attack
from .train import AT_VARIANTS

__all__ = ["GAP_FLAG", "MONOTONE_TOL", "SANITY_MAX", "SANITY_RADII", "sanity_attacks", "label_attack",
           "sources", "gap_points", "monotone_violations", "sanity_check", "masking_checks", "masking_markdown"]

GAP_FLAG = 2.0          # points
MONOTONE_TOL = 0.5      # points
SANITY_MAX = 0.05       # accuracy (5 %)
_LARGE = ("linf:64/255", "l2:4")
SANITY_RADII = {"fashion-mnist": ("linf:0.3", "l2:3"), "digits": ("linf:0.3", "l2:2"),
                "cifar10": _LARGE, "cifar100": _LARGE, "synthetic": _LARGE}


def sanity_attacks(dataset: str) -> tuple:
    """The large-eps sanity radii of ``dataset`` as Attacks (() for an unknown data set)."""
    return tuple(parse_attack(s) for s in SANITY_RADII.get(dataset, ()))


def label_attack(label: str) -> Attack:
    """Inverse of Attack.label: 'linf_8/255' -> Attack('inf', 8/255), 'l2_1' -> Attack('l2', 1.0)."""
    norm, _, eps = label.partition("_")
    return parse_attack(f"{norm}:{eps}")


def sources(res: Dict) -> Dict[str, Dict]:
    """name -> {"robust": {label: acc}, "n": images, "kind": "baseline" | "pgd" | "autoattack"} of one run."""
    ev = res.get("eval") or {}
    base = f"pgd-{ev.get('attack_steps', 10)}x{ev.get('restarts', 1)}-{ev.get('loss') or 'ce'}"
    out = {f"{base} (run)": {"robust": res.get("robust") or {}, "n": res.get("n_robust"), "kind": "baseline"}}
    aa = res.get("autoattack")
    if isinstance(aa, dict) and aa.get("robust"):
        out[f"autoattack-{aa.get('version')} (run)"] = {"robust": aa["robust"], "n": aa.get("n"),
                                                       "kind": "autoattack"}
    for key, entry in (res.get("extra_evals") or {}).items():
        if isinstance(entry, dict) and entry.get("robust"):
            kind = "autoattack" if key.startswith("autoattack") else "pgd"
            out[key] = {"robust": entry["robust"], "n": entry.get("n"), "kind": kind}
    return out


def _baseline_name(res: Dict) -> str:
    ev = res.get("eval") or {}
    return f"pgd-{ev.get('attack_steps', 10)}x{ev.get('restarts', 1)}-{ev.get('loss') or 'ce'}"


def gap_points(res: Dict, label: str) -> Optional[float]:
    """Baseline PGD minus the lowest other estimate at ``label`` *on the same images*, in points.

    The baseline is the run's own PGD or the same PGD re-run on the subset the stronger attacks used
    (an extra_evals entry named like the run's attack, e.g. pgd-10x1-ce); only estimates with the same
    number of images n are compared (the first n test images in both), so sampling differences between
    the 2,000-image PGD and a 100-image AutoAttack never pass as a gap. The largest matched gap; None
    without a matched pair."""
    src = sources(res)
    same_attack = _baseline_name(res)
    bases = [(name, s) for name, s in src.items()
             if (s["kind"] == "baseline" or name == same_attack) and label in s["robust"]]
    gaps = []
    for bname, b in bases:
        others = [s["robust"][label] for name, s in src.items()
                  if name != bname and name != same_attack and s["kind"] != "baseline"
                  and label in s["robust"] and s["n"] == b["n"]]
        if others:
            gaps.append(100.0 * (b["robust"][label] - min(others)))
    return max(gaps) if gaps else None


def monotone_violations(robust: Dict[str, float], tol: float = MONOTONE_TOL) -> List[str]:
    """Pairs where accuracy rises with eps (same norm) by more than ``tol`` points, as text
    'l2_1 (12.00) > l2_0.5 (10.00)'; [] when monotone non-increasing."""
    out = []
    by_norm: Dict[str, List] = {}
    for label, acc in robust.items():
        a = label_attack(label)
        by_norm.setdefault(a.norm, []).append((a.eps, label, acc))
    for rows in by_norm.values():
        rows.sort()
        for i, (_, lo_label, lo_acc) in enumerate(rows):
            for _, hi_label, hi_acc in rows[i + 1:]:
                if 100.0 * (hi_acc - lo_acc) > tol:
                    out.append(f"{hi_label} ({100 * hi_acc:.2f}) > {lo_label} ({100 * lo_acc:.2f})")
    return out


def sanity_check(res: Dict) -> List[Dict]:
    """Per sanity radius of the run's data set: {"label", "acc" (lowest estimate or None), "ok" (None when
    no source evaluated the radius)}."""
    out = []
    for a in sanity_attacks(res.get("dataset") or (res.get("config") or {}).get("dataset", "")):
        vals = [s["robust"][a.label] for s in sources(res).values() if a.label in s["robust"]]
        acc = min(vals) if vals else None
        out.append({"label": a.label, "acc": acc, "ok": None if acc is None else acc <= SANITY_MAX})
    return out


def _config_name(res: Dict) -> str:
    m = res.get("method")
    if m == "sam":
        name = "asam" if (res.get("config") or {}).get("adaptive") else "sam"
        return f"{name} rho={res['rho']:g}"
    if m == "at" or m in AT_VARIANTS:     # a cheap AT variant under its own name (not pooled with PGD AT)
        return f"{m} {res['norm']} eps={format_eps(res['eps'])}"
    return str(m)


def _mean(vals: List[float]) -> Optional[float]:
    return statistics.mean(vals) if vals else None


def _radius_row(runs: Sequence[Dict], label: str) -> Dict:
    """Means over seeds at one radius: baseline, lowest extra PGD, lowest AutoAttack, gap (mean, worst)."""
    row: Dict = {"label": label}
    for kind in ("baseline", "pgd", "autoattack"):
        vals, names, ns = [], set(), set()
        for res in runs:
            hit = {k: s for k, s in sources(res).items() if s["kind"] == kind and label in s["robust"]}
            if hit:
                best = min(hit, key=lambda k: hit[k]["robust"][label])
                vals.append(hit[best]["robust"][label])
                names.add(best)
                ns.add(hit[best]["n"])
        row[kind] = {"acc": _mean(vals), "sources": sorted(names), "n": sorted(n for n in ns if n is not None)}
    gaps = [g for g in (gap_points(res, label) for res in runs) if g is not None]
    row["gap"], row["worst_gap"] = _mean(gaps), (max(gaps) if gaps else None)
    row["flagged"] = bool(gaps) and max(gaps) > GAP_FLAG
    return row


def masking_checks(results: Sequence[Dict]) -> List[Dict]:
    """The three checks of the module docstring per configuration (runs grouped by method, strength and
    evaluation settings): [{"configuration", "seeds", "radii": [row per radius (:func:`_radius_row`)],
    "monotone": [violations, 's<seed> <source>: ...'], "sanity": [{"seed", "label", "acc", "ok"}],
    "flags": sorted subset of {"gap", "monotone", "sanity"}}]. For paper_figs and summary.md."""
    groups: Dict[tuple, List[Dict]] = {}
    for res in results:
        key = (_config_name(res), json.dumps(res.get("eval"), sort_keys=True, default=str))
        groups.setdefault(key, []).append(res)
    out = []
    for (name, _), runs in groups.items():
        labels: List[str] = []
        for res in runs:
            for s in sources(res).values():
                labels += [k for k in s["robust"] if k not in labels]
        labels.sort(key=lambda k: (label_attack(k).norm != "inf", label_attack(k).eps))
        radii = [_radius_row(runs, k) for k in labels]
        mono = [f"s{res.get('seed')} {src}: {v}" for res in runs for src, s in sources(res).items()
                for v in monotone_violations(s["robust"])]
        sanity = [dict(seed=res.get("seed"), **c) for res in runs for c in sanity_check(res)]
        flags = {"gap"} if any(r["flagged"] for r in radii) else set()
        flags |= {"monotone"} if mono else set()
        flags |= {"sanity"} if any(c["ok"] is False for c in sanity) else set()
        out.append({"configuration": name, "seeds": sorted(r.get("seed") for r in runs), "radii": radii,
                    "monotone": mono, "sanity": sanity, "flags": sorted(flags)})
    return out


def _pct(cell: Dict, names: bool = True) -> str:
    if cell["acc"] is None:
        return ""
    n = "n " + "/".join(str(v) for v in cell["n"])
    return f"{100 * cell['acc']:.2f} (" + (", ".join(cell["sources"]) + "; " if names else "") + n + ")"


def masking_markdown(results: Sequence[Dict]) -> str:
    """summary.md's section "Gradient-masking checks": the rules, a gap table per radius and a verdict
    table per configuration."""
    checks = masking_checks(results)
    lines = ["## Gradient-masking checks", "",
             f"Robust accuracy in %, mean over seeds. gap = the run's PGD (or the same PGD re-run on the same images) minus the lowest other estimate on the same images "
             f"(points; worst seed in brackets), flagged above {GAP_FLAG:g} points in any seed; monotone: no "
             f"estimate rises with eps by more than {MONOTONE_TOL:g} points; sanity: at the large radii the "
             f"lowest estimate is at most {100 * SANITY_MAX:g} % (deep.masking).", ""]
    extra = any(s["kind"] != "baseline" for res in results for s in sources(res).values())
    if extra:
        lines += table_lines(
            ["configuration", "radius", "run's PGD", "strongest extra PGD", "AutoAttack", "gap", "flag"],
            [[c["configuration"], r["label"], _pct(r["baseline"], False), _pct(r["pgd"]), _pct(r["autoattack"]),
              "" if r["gap"] is None else f"{r['gap']:.2f} ({r['worst_gap']:.2f})", "gap" if r["flagged"] else ""]
             for c in checks for r in c["radii"]])
    else:
        lines.append("No stronger attack is stored yet, so no gap can be computed: python -m deep.evaluate "
                     "<this folder> --attacks pgd:50x5,autoattack:cpu adds one.")
    lines += [""] + table_lines(["configuration", "seeds", "monotone in eps", "large-eps sanity", "flags"],
                                [_verdict_row(c) for c in checks])
    return "\n".join(lines) + "\n"


def _verdict_row(c: Dict) -> List[str]:
    """One row of the per-configuration verdict table of :func:`masking_markdown`."""
    mono = "yes" if not c["monotone"] else "no: " + "; ".join(c["monotone"])
    done = [s for s in c["sanity"] if s["ok"] is not None]
    sanity = "not evaluated" if not done else "; ".join(
        f"s{s['seed']} {s['label']} {100 * s['acc']:.2f}{'' if s['ok'] else ' FAIL'}" for s in done)
    return [c["configuration"], ",".join(map(str, c["seeds"])), mono, sanity, ", ".join(c["flags"]) or "none"]
