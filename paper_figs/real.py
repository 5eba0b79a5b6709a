"""The real-data section of the report, whole: data, claims, figures and tables per real data set.

For every data set under ``results/deep/`` that ``deep.datasets.DATASETS`` marks as real
(Fashion-MNIST, digits, CIFAR-10/100):

* ``real_<dataset>_accuracy``: clean accuracy per configuration (ST, SAM per rho, AT per eps) and
  robust accuracy against the attack radius, one panel per norm (l_inf, l2); mean and sd over seeds;
* ``real_<dataset>_tradeoff``: the clean-vs-robust plane of the runs (one point per configuration,
  sd error bars, at :func:`comparison_attack`) beside the linear theory's
  trade-off curves (T6: SAM(rho) at fixed scale, AT l_inf(eps); ST star), to compare shapes;
* the accuracy, claims and cost tables.

The verdicts are computed from the runs: the accuracy figure carries the claims (a)-(d), the
trade-off figure the per-configuration orderings of :func:`deep_figures.deep_ordering_checks`.

Claims
------
Pure functions of the saved runs (:class:`paper_figs.loaders.DeepRun`, summarised per configuration
by :func:`paper_figs.aggregate.summarise_runs`: mean, sample sd and number of seeds). The claims
of Wei, Zhu & Zhang (2023) are checked one configuration at a time, and each verdict is computed
from the numbers:

* (a) SAM's robust accuracy is above ST's at small eps (:func:`small_attacks`), per rho;
* (b) SAM's clean accuracy is within 0.5 point of ST's or higher, per rho;
* (c) AT has the highest robust accuracy (at the attacks that are not small) and the lowest clean
  accuracy, per AT configuration;
* (d) SAM's training costs less than AT's, both relative to ST (wall time and throughput ratios).

"Beyond the seed spread" means the two mean ± sd intervals do not overlap (both with >= 2 seeds).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from deep.aggregate import group_key

from . import palette as pal
from . import theory as th
from .aggregate import Stat, summarise_runs
from .deep_figures import deep_ordering_checks
from .figures import (FigureContext, FigureResult, SkipFigure, eps_grid, eval_label, place_labels, save,
                      strength_ticks)
from .report import figure_block, markdown_table
from .verdicts import Verdict, no_data, ordering_verdict

__all__ = ["Claim", "CLAIM_TEXT", "SAM_CLEAN_TOL", "attack_parts", "sorted_attacks", "is_real", "real_datasets",
           "small_attacks", "comparison_attack", "config_runs", "extra_robust", "separated", "cost_ratios",
           "claim_sam_robust", "claim_sam_clean", "claim_at_extremes", "claim_cost", "all_claims",
           "claims_verdict", "accuracy_table", "claims_markdown", "cost_table", "settings_note",
           "differing_settings", "SPEED_SETTINGS", "RealSection", "real_section", "fig_real_accuracy",
           "fig_real_tradeoff", "slug", "config_colors"]


#: Claim (b): SAM's clean accuracy may be this much (0.5 point) below ST's.
SAM_CLEAN_TOL = 0.005


CLAIM_TEXT = {
    "a": "SAM's robust accuracy is above ST's at small eps",
    "b": "SAM's clean accuracy is within 0.5 point of ST's or higher",
    "c": "AT has the highest robust and the lowest clean accuracy",
    "d": "SAM's training costs less than AT's (both relative to ST)",
}


@dataclass(frozen=True)
class Claim:
    """One claim (``cid`` in CLAIM_TEXT) checked on one ``scope`` (a configuration, or "SAM vs AT");
    ``holds`` True / False, or None when the runs needed are missing; ``detail``: the numbers."""

    cid: str
    scope: str
    holds: bool | None
    detail: str


def attack_parts(key) -> tuple | None:
    """'linf_0.05' -> ('linf', 0.05), 'l2_16/255' -> ('l2', 16/255); None for any other name."""
    norm, sep, radius = str(key).partition("_")
    if not sep or norm not in ("linf", "l2"):
        return None
    try:
        eps = float(Fraction(radius))
    except (ValueError, ZeroDivisionError):
        return None
    return (norm, eps) if eps >= 0 else None


def sorted_attacks(keys) -> list:
    """Attack names ordered l_inf by radius, then l2 by radius, then any other name."""
    keys = list(dict.fromkeys(keys))
    parsed = sorted((k for k in keys if attack_parts(k)),
                    key=lambda k: ({"linf": 0, "l2": 1}[attack_parts(k)[0]], attack_parts(k)[1]))
    return parsed + sorted(k for k in keys if not attack_parts(k))


def is_real(name) -> bool:
    """Whether ``deep.datasets.DATASETS`` marks the data set ``name`` as real (unknown: False)."""
    from deep.datasets import DATASETS   # imports torch: only when there are deep runs to sort

    info = DATASETS.get(str(name))
    return bool(info is not None and info.real)


def real_datasets(deep) -> dict:
    """The entries of :func:`paper_figs.loaders.load_deep` whose runs are on a real data set
    (the runs' own ``dataset`` field decides, not the folder name)."""
    return {key: runs for key, runs in (deep or {}).items()
            if runs and is_real(runs[0].raw.get("dataset"))}


def small_attacks(keys, n_linf: int = 2, n_l2: int = 1) -> list:
    """Where claim (a) is checked: the ``n_linf`` smallest l_inf radii and the ``n_l2`` smallest
    l2 radii among the attack names ``keys`` (radius 0 excluded)."""
    out = []
    for norm, n in (("linf", n_linf), ("l2", n_l2)):
        ks = [k for k in sorted_attacks(keys) if attack_parts(k) and attack_parts(k)[0] == norm
              and attack_parts(k)[1] > 0]
        out += ks[:n]
    return out


def comparison_attack(configs) -> tuple:
    """(attack, rule in words) of the trade-off panel: among the l_inf attacks every configuration
    was evaluated at, the largest radius <= half the largest l_inf AT training eps (the middle of
    AT's range); without l_inf AT, the middle l_inf radius (upper of two); else the first attack
    common to all; (None, reason) when there is none."""
    common = set.intersection(*(set(k for k, s in c.robust.items() if s.n) for c in configs)) \
        if configs else set()
    keys = sorted_attacks(common)
    linf = [k for k in keys if attack_parts(k) and attack_parts(k)[0] == "linf"]
    at_eps = [c.eps for c in configs if c.method == "at-linf" and c.eps]
    if linf and at_eps:
        below = [k for k in linf if attack_parts(k)[1] <= max(at_eps) / 2 + 1e-12]
        if below:
            return below[-1], ("the largest l_inf radius evaluated for every configuration that "
                               f"is at most half the AT training eps {max(at_eps):g}")
        return linf[0], "the smallest l_inf radius evaluated for every configuration"
    if linf:
        return linf[len(linf) // 2], ("no l_inf AT run yet: the middle l_inf radius evaluated "
                                      "for every configuration")
    if keys:
        return keys[0], "no l_inf attack common to all configurations: the first common attack"
    return None, "no attack common to all configurations"


def config_runs(runs, config) -> list:
    """The runs summarised in ``config`` (the grouping rule of :func:`summarise_runs`,
    :func:`deep.aggregate.group_key`)."""
    return [r for r in runs if group_key(r.raw) == config.key]


def _is_acc(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


_NOT_ACCURACY = ("second", "time", "warning", "setting", "steps", "count", "clean")


def _collect(out: dict, prefix: str, obj, depth: int = 0) -> None:
    name = (lambda k: f"{prefix} {k}".strip())
    if depth > 3 or not isinstance(obj, (dict, list)):
        return
    if isinstance(obj, list):
        for i, el in enumerate(obj):
            label = (el.get("name") or el.get("label")) if isinstance(el, dict) else None
            _collect(out, name(label or i), el, depth + 1)
        return
    for k, v in obj.items():
        if k == "robust" and isinstance(v, dict):
            out.update({name(a): float(acc) for a, acc in v.items() if _is_acc(acc)})
        elif attack_parts(k) and _is_acc(v):
            out[name(k)] = float(v)
        elif isinstance(v, (dict, list)) and not any(w in str(k).lower() for w in _NOT_ACCURACY):
            _collect(out, name(k), v, depth + 1)


def extra_robust(raw: dict) -> dict:
    """{column: accuracy} of a run's optional extra evaluations: ``autoattack`` (columns
    'AA <attack>') and ``extra_evals`` (columns '<name> <attack>'). Each may be a mapping whose
    'robust' is {attack: accuracy}, a mapping {attack: accuracy}, named such mappings, or a list
    of them; absent or unrecognised entries (timings, settings, warnings) give no column."""
    out: dict = {}
    _collect(out, "AA", raw.get("autoattack"))
    _collect(out, "", raw.get("extra_evals"))
    return out


def separated(a: Stat, b: Stat) -> bool | None:
    """Whether a's mean - sd lies above b's mean + sd (None unless both have >= 2 seeds)."""
    if a.n < 2 or b.n < 2:
        return None
    return a.mean - a.sd > b.mean + b.sd


def _pm(s: Stat) -> str:
    if s is None or s.n == 0:
        return "-"
    return f"{s.fmt()} (n={s.n})"


def _spread(a: Stat, b: Stat) -> str:
    """How a difference a - b compares with the seeds' spread, in words."""
    hi, lo = (a, b) if a.mean >= b.mean else (b, a)
    sep = separated(hi, lo)
    return {True: "beyond the seed spread", False: "within the seed spread",
            None: "spread not estimated (one seed)"}[sep]


def _st(configs):
    return next((c for c in configs if c.method == "st"), None)


def claim_sam_robust(configs, small) -> list:
    """Claim (a), one :class:`Claim` per SAM rho: robust accuracy above ST's at every attack of
    ``small`` (both evaluated there); the detail gives each gap and whether it exceeds the seeds'
    spread."""
    st, out = _st(configs), []
    for c in (c for c in configs if c.method == "sam"):
        if st is None:
            out.append(Claim("a", c.text, None, "no ST run"))
            continue
        parts, above, apart = [], 0, 0
        pairs = [(k, c.robust.get(k), st.robust.get(k)) for k in small]
        pairs = [(k, a, b) for k, a, b in pairs if a is not None and b is not None and a.n and b.n]
        for k, a, b in pairs:
            gap = a.mean - b.mean
            above += gap > 0
            apart += gap > 0 and separated(a, b) is True
            parts.append(f"{k}: {_pm(a)} vs ST {_pm(b)}, {100 * gap:+.1f} pt, {_spread(a, b)}")
        if not pairs:
            out.append(Claim("a", c.text, None, f"no common small-eps attack ({', '.join(small)})"))
            continue
        out.append(Claim("a", c.text, above == len(pairs),
                         f"above ST at {above} of {len(pairs)} small-eps attacks, beyond the seed "
                         f"spread at {apart}: " + "; ".join(parts)))
    return out


def claim_sam_clean(configs, tol: float = SAM_CLEAN_TOL) -> list:
    """Claim (b), one :class:`Claim` per SAM rho: clean accuracy >= ST's - ``tol``."""
    st, out = _st(configs), []
    for c in (c for c in configs if c.method == "sam"):
        if st is None or not c.clean.n or not st.clean.n:
            out.append(Claim("b", c.text, None, "no ST run"))
            continue
        diff = c.clean.mean - st.clean.mean
        out.append(Claim("b", c.text, diff >= -tol - 1e-12,
                         f"clean {_pm(c.clean)} vs ST {_pm(st.clean)}: {100 * diff:+.2f} pt "
                         f"(limit {-100 * tol:.1f} pt), {_spread(c.clean, st.clean)}"))
    return out


def _extreme(c, others, key, stat_of, higher: bool):
    """(holds, words) of 'c is the highest (lowest) at key' among ``others``."""
    mine = stat_of(c)
    rivals = [(o, stat_of(o)) for o in others]
    rivals = [(o, s) for o, s in rivals if s is not None and s.n]
    if mine is None or not mine.n or not rivals:
        return None, ""
    best_o, best = (max if higher else min)(rivals, key=lambda t: t[1].mean)
    ok = mine.mean > best.mean if higher else mine.mean < best.mean
    return ok, f"{key} {100 * mine.mean:.1f} vs {best_o.text} {100 * best.mean:.1f}"


def _robust_extremes(a, others, keys) -> list:
    """(attack, holds, words) of 'a has the highest robust accuracy at attack' among
    ``others``, for each of ``keys`` where both sides have runs."""
    found = [(k, *_extreme(a, others, k, lambda c, k=k: c.robust.get(k), True)) for k in keys]
    return [t for t in found if t[1] is not None]


def _extremes_detail(big, low, clean_ok, clean_txt, failed) -> str:
    """The words of claim (c) for one AT configuration: counts of the robust comparisons beyond
    small eps (``big``) and at small eps (``low``, not counted), the clean one, what fails."""
    return (f"robust highest at {sum(t[1] for t in big)} of {len(big)} attacks beyond small "
            f"eps; clean lowest: {'yes' if clean_ok else 'no'} ({clean_txt})"
            + (f"; not holding: {'; '.join(failed)}" if failed else "")
            + (f"; at small eps (not counted) highest at {sum(t[1] for t in low)} of "
               f"{len(low)}" if low else ""))


def _extremes_claim(a, others, keys, small) -> Claim:
    """Claim (c) for AT configuration ``a`` against the non-AT configurations ``others``."""
    big = _robust_extremes(a, others, [k for k in keys if k not in small])
    low = _robust_extremes(a, others, small)
    clean_ok, clean_txt = _extreme(a, others, "clean", lambda c: c.clean, False)
    failed = [t[2] for t in big if not t[1]] + ([clean_txt] if clean_ok is False else [])
    holds = None if clean_ok is None or not big else (clean_ok and all(t[1] for t in big))
    return Claim("c", a.text, holds, _extremes_detail(big, low, clean_ok, clean_txt, failed))


def claim_at_extremes(configs, small) -> list:
    """Claim (c), one :class:`Claim` per AT configuration: robust accuracy above every other
    configuration at each attack not in ``small``, and clean accuracy below every other; the
    small-eps attacks are reported but not counted."""
    out = []
    keys = sorted_attacks({k for c in configs for k in c.robust})
    for a in (c for c in configs if c.method.startswith("at")):
        others = [c for c in configs if not c.method.startswith("at")]
        if not others:
            out.append(Claim("c", a.text, None, "no ST or SAM run to compare with"))
            continue
        out.append(_extremes_claim(a, others, keys, small))
    return out


def _nominal_passes(config, runs) -> float | None:
    """Forward-backward passes per training step relative to ST: SAM 2, AT 1 + the PGD steps of
    its training attack (the runs' config ``attack_steps``), ST 1."""
    if config.method == "st":
        return 1.0
    if config.method == "sam":
        return 2.0
    steps = {(r.raw.get("config") or {}).get("attack_steps") for r in config_runs(runs, config)}
    steps.discard(None)
    return 1.0 + float(steps.pop()) if len(steps) == 1 else None


def _ratio(num: Stat, den: Stat) -> float | None:
    if not num.n or not den.n or not den.mean > 0 or not num.mean > 0:
        return None
    return num.mean / den.mean


def cost_ratios(configs, runs) -> list:
    """(config, wall-time ratio to ST, ST images/s / its images/s, nominal pass ratio) for each
    configuration; ratios None where ST or the timing is missing."""
    st = _st(configs)
    return [(c, _ratio(c.wall_time_s, st.wall_time_s) if st else None,
             _ratio(st.images_per_s, c.images_per_s) if st else None, _nominal_passes(c, runs))
            for c in configs]


def claim_cost(configs, runs) -> list:
    """Claim (d), one :class:`Claim`: every SAM configuration's wall-time ratio to ST is below
    every AT configuration's; the detail lists all ratios (wall time and throughput, with the
    nominal pass ratio) and the recorded run settings (:func:`settings_note`)."""
    rows = [t for t in cost_ratios(configs, runs) if t[0].method != "st"]
    sam = [t[1] for t in rows if t[0].method == "sam" and t[1] is not None]
    at = [t[1] for t in rows if t[0].method.startswith("at") and t[1] is not None]

    def words(c, rt, rp, nom):
        f = (lambda x: "-" if x is None else f"{x:.2f}")
        return f"{c.text}: time x{f(rt)}, throughput x{f(rp)} (nominal passes x{f(nom)})"

    differ = differing_settings(runs)
    detail = "; ".join(words(*t) for t in rows) + ". " + (
        f"Not like for like, settings differ between runs: {differ}." if differ else
        "Recorded settings the same for all runs (listed under the cost table).")
    if not sam or not at:
        return [Claim("d", "SAM vs AT", None, "needs timed ST, SAM and AT runs. " + detail)]
    return [Claim("d", "SAM vs AT", max(sam) < min(at),
                  f"largest SAM time ratio {max(sam):.2f}, smallest AT {min(at):.2f}; " + detail)]


#: Recorded run settings that change training speed (deep.run writes them into each result).
SPEED_SETTINGS = ("device", "threads", "train_precision", "world_size", "compile", "channels_last",
                  "per_process_batch", "torch")


_LOAD_KEYS = ("load_avg", "loadavg", "load_average", "cpu_load")


def _setting_values(runs) -> dict:
    """{setting: sorted distinct values} of SPEED_SETTINGS recorded in ``runs``."""
    vals = {k: sorted({str(r.raw.get(k)) for r in runs if r.raw.get(k) is not None})
            for k in SPEED_SETTINGS}
    return {k: v for k, v in vals.items() if v}


def differing_settings(runs) -> str:
    """The timing-relevant settings (SPEED_SETTINGS) that differ between ``runs``, in words
    ('threads 1, 2'); empty when all runs agree."""
    return "; ".join(f"{k} {', '.join(v)}" for k, v in _setting_values(runs).items() if len(v) > 1)


def settings_note(runs) -> str:
    """One sentence on the settings recorded in the runs that change timings: the common values,
    those that differ between runs, and the machine load where a run records one."""
    vals = _setting_values(runs)
    same = [f"{k} {v[0]}" for k, v in vals.items() if len(v) == 1]
    differ = [f"{k} {', '.join(v)}" for k, v in vals.items() if len(v) > 1]
    loads = [r.raw[k] for r in runs for k in _LOAD_KEYS if r.raw.get(k) is not None]
    text = "Timings are comparable only as far as the runs' recorded settings are the same: " + (
        ", ".join(same) or "none recorded") + "."
    if differ:
        text += " Settings that differ between runs: " + "; ".join(differ) + "."
    text += (f" Recorded machine load: {', '.join(map(str, loads))}." if loads else
             " The machine load during training is not recorded in the result files.")
    return text


def all_claims(configs, runs) -> list:
    """Claims (a)-(d) of one data set, in order (:class:`Claim` list); a claim without any
    configuration to check gets one row that says which runs are missing."""
    small = small_attacks({k for c in configs for k in c.robust})
    out = []
    for cid, got, who in (("a", claim_sam_robust(configs, small), "SAM"),
                          ("b", claim_sam_clean(configs), "SAM"),
                          ("c", claim_at_extremes(configs, small), "AT"),
                          ("d", claim_cost(configs, runs), "")):
        out += got or [Claim(cid, who, None, f"no {who} run (yet)")]
    return out


def claims_verdict(claims) -> Verdict:
    """One line over the claims: per claim how many scopes hold; agree True when every
    evaluable scope holds, False when one does not, None when none could be evaluated."""
    done = [c for c in claims if c.holds is not None]
    if not done:
        return no_data("no claim could be evaluated (ST, SAM and AT runs are needed)")
    parts = []
    for cid in CLAIM_TEXT:
        got = [c for c in done if c.cid == cid]
        if got:
            bad = [c.scope for c in got if not c.holds]
            parts.append(f"({cid}) {sum(c.holds for c in got)} of {len(got)} hold"
                         + (f" (not: {', '.join(bad)})" if bad else ""))
        elif any(c.cid == cid for c in claims):
            parts.append(f"({cid}) not evaluated")
    ok = all(c.holds for c in done)
    return Verdict(ok, ("The paper's claims hold: " if ok else "Not all of the paper's claims "
                        "hold: ") + "; ".join(parts) + ".")


def _fmt_ratio(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def accuracy_table(configs, runs) -> str:
    """Markdown table: per configuration the seeds, clean and PGD robust accuracy per attack and
    any extra evaluations (:func:`extra_robust`), in %, mean ± sd over seeds."""
    keys = sorted_attacks({k for c in configs for k in c.robust})
    extras = []
    for c in configs:
        per = [extra_robust(r.raw) for r in config_runs(runs, c)]
        extras.append({k: Stat.of(p.get(k) for p in per) for k in {k for p in per for k in p}})
    ecols = sorted({k for e in extras for k in e})
    head = ["setting", "seeds", "clean"] + [f"PGD {k}" for k in keys] + ecols
    rows = [[c.text, f"{len(c.seeds)} ({', '.join(map(str, c.seeds))})", c.clean.fmt()]
            + [c.robust[k].fmt() if k in c.robust else "-" for k in keys]
            + [extras[i][k].fmt() if k in extras[i] else "-" for k in ecols]
            for i, c in enumerate(configs)]
    return markdown_table(head, rows)


def cost_table(configs, runs) -> str:
    """Markdown table: training wall time and throughput per configuration (mean ± sd over
    seeds) and their ratios to ST next to the nominal pass ratio."""
    head = ["setting", "seeds", "train wall time (s)", "images/s", "time / ST",
            "ST images/s / images/s", "nominal passes / ST"]
    rows = [[c.text, str(len(c.seeds)), c.wall_time_s.fmt(1.0, 1), c.images_per_s.fmt(1.0, 0),
             _fmt_ratio(rt), _fmt_ratio(rp), _fmt_ratio(nom)]
            for c, rt, rp, nom in cost_ratios(configs, runs)]
    return markdown_table(head, rows)


def claims_markdown(claims) -> str:
    """Markdown: the claims table (claim, scope, holds, numbers) and one finding per claim that
    does not hold, with its numbers."""
    rows = [[f"({c.cid}) {CLAIM_TEXT[c.cid]}", c.scope, c.holds, c.detail] for c in claims]
    text = markdown_table(["claim", "scope", "holds", "numbers (accuracies in %, mean ± sd)"],
                          rows)
    bad = [c for c in claims if c.holds is False]
    if bad:
        text += "\n\nFindings (claims that do not hold on these runs):\n\n" + "\n".join(
            f"* ({c.cid}) {CLAIM_TEXT[c.cid]}: not for {c.scope}: {c.detail}" for c in bad)
    return text


REAL_COMMAND = "python -m deep.run --profile cpu (Fashion-MNIST; --dataset digits for a tiny grid)"


def slug(name: str) -> str:
    """File-name form of a data-set key: 'fashion-mnist (quick)' -> 'fashion-mnist-quick'."""
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")


def config_colors(configs) -> list:
    """One colour per configuration: its method's colour, lightened towards white with the
    strength rank inside the method (the weakest SAM rho darkest)."""
    counts = {m: sum(c.method == m for c in configs) for m in {c.method for c in configs}}
    seen: dict = {}
    out = []
    for c in configs:
        rank = seen.get(c.method, 0)
        seen[c.method] = rank + 1
        mix = 0.6 * rank / max(counts[c.method] - 1, 1) if counts[c.method] > 1 else 0.0
        base = np.array(to_rgb(pal.style(c.method).color))
        out.append(tuple(base + (1.0 - base) * mix))
    return out


def _short(c) -> str:
    """Axis label of a configuration: 'ST', 'ρ=0.1', 'AT ε=0.1'."""
    lab = c.label
    return lab.replace(pal.style("sam").label, "").strip() if c.method == "sam" else lab


def _norm_points(c, norm):
    """(radii, means, sds) of configuration c's robust accuracy under ``norm``, with the clean
    accuracy at radius 0."""
    pts = sorted((attack_parts(k)[1], s) for k, s in c.robust.items()
                 if s.n and attack_parts(k) and attack_parts(k)[0] == norm)
    if not pts:
        return None
    eps = [0.0] + [e for e, _ in pts]
    mean = [c.clean.mean] + [s.mean for _, s in pts]
    sd = [c.clean.sd] + [s.sd for _, s in pts]
    return np.array(eps), 100 * np.array(mean), 100 * np.array(sd)


def _clean_panel(ax, configs, colors):
    """Clean accuracy per configuration with sd error bars; grey band: ST's mean - 0.5 pt up."""
    st = next((c for c in configs if c.method == "st"), None)
    if st is not None and st.clean.n:
        ax.axhspan(100 * (st.clean.mean - SAM_CLEAN_TOL), 100 * st.clean.mean, color="0.85",
                   linewidth=0, zorder=0)
    for i, c in enumerate(configs):
        ax.errorbar(i, 100 * c.clean.mean, yerr=100 * c.clean.sd if c.clean.n > 1 else None,
                    marker=pal.style(c.method).marker, color=colors[i], mfc="white", mew=1.0,
                    linestyle="none", elinewidth=0.8, markersize=4.5)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels([_short(c) for c in configs], rotation=60, ha="right", fontsize=5.5)
    ax.set_xlim(-0.6, len(configs) - 0.4)
    ax.set_ylabel("clean acc. (%)")
    ax.set_title("clean (band: ST - 0.5 pt)", fontsize=7, pad=2)


def _eps_panel(ax, configs, colors, norm, small):
    """Robust accuracy vs radius of ``norm`` per configuration; shaded: the small-eps attacks."""
    radii = [attack_parts(k)[1] for k in small if attack_parts(k)[0] == norm]
    if radii:
        ax.axvspan(0, max(radii) * 1.08, color="0.92", linewidth=0, zorder=0)
    drawn = False
    for i, c in enumerate(configs):
        pts = _norm_points(c, norm)
        if pts is None:
            continue
        eps, mean, sd = pts
        multi = c.clean.n > 1
        ax.errorbar(eps, mean, yerr=sd if multi else None, color=colors[i], linewidth=0.8,
                    marker=pal.style(c.method).marker, mfc="white", mew=0.8, markersize=3.2,
                    elinewidth=0.6)
        drawn = True
    ax.set_xlabel(r"attack radius $\epsilon$" + (r" ($\ell_\infty$)" if norm == "linf"
                                                 else r" ($\ell_2$)"))
    ax.set_ylim(-3, 103)
    if not drawn:
        ax.text(0.5, 0.5, "not evaluated", transform=ax.transAxes, ha="center", fontsize=7)


def _legend(ax, configs, colors):
    hs = [Line2D([], [], color=colors[i], marker=pal.style(c.method).marker, mfc="white",
                 linewidth=0.8, markersize=4, label=c.label + f" (n={c.clean.n})")
          for i, c in enumerate(configs)]
    ax.axis("off")
    ax.legend(handles=hs, loc="center", fontsize=6, title="mean ± sd over n seeds",
              title_fontsize=6)


def fig_real_accuracy(ctx: FigureContext, ds: str, configs, claims) -> FigureResult:
    """Clean accuracy per configuration and robust accuracy vs radius (l_inf, l2) of data set
    ``ds``; the verdict is :func:`claims_verdict` of ``claims``."""
    colors = config_colors(configs)
    small = small_attacks({k for c in configs for k in c.robust})
    fig, axes = plt.subplots(2, 2, figsize=(pal.COLUMN_WIDTH_IN, 3.9))
    _clean_panel(axes[0, 0], configs, colors)
    _legend(axes[0, 1], configs, colors)
    for ax, norm in ((axes[1, 0], "linf"), (axes[1, 1], "l2")):
        _eps_panel(ax, configs, colors, norm, small)
        ax.grid(alpha=0.25, linewidth=0.5)
    axes[0, 0].grid(axis="y", alpha=0.25, linewidth=0.5)
    axes[1, 0].set_ylabel("accuracy (%)")
    fig.suptitle(ds, fontsize=8, y=0.995)
    fig.tight_layout(h_pad=0.5, w_pad=0.6)
    files = save(fig, ctx.out_dir, f"real_{slug(ds)}_accuracy", ctx.formats)
    n_seeds = sorted({c.clean.n for c in configs})
    return FigureResult(
        f"real_{slug(ds)}_accuracy", f"{ds}: clean and robust accuracy per method", files,
        f"Real data ({ds}): top, clean accuracy per configuration (ST, SAM per rho, AT per eps; "
        "grey band = ST's mean minus 0.5 point, the margin of claim (b)); bottom, PGD robust "
        "accuracy against the attack radius for l_inf and l2, starting at the clean accuracy "
        "(radius 0, all test images; robust accuracies on the robust subset); shaded: the "
        f"small-eps attacks of claim (a) ({', '.join(small) or 'none'}). Mean and sd over seeds "
        f"(seeds per configuration: {n_seeds}; no bar for one seed). Verdict: the paper's claims "
        "(a)-(d), computed from the runs (table below).",
        claims_verdict(claims))


def _real_plane(ax, configs, colors, attack):
    """Clean vs robust accuracy at ``attack`` per configuration, sd error bars; thin lines join
    ST to SAM by increasing rho and ST to AT by increasing eps (as the theory curves run)."""
    st = next((c for c in configs if c.method == "st"), None)
    for method in ("sam", "at-linf", "at-l2"):
        chain = ([st] if st else []) + [c for c in configs if c.method == method]
        chain = [c for c in chain if attack in c.robust and c.robust[attack].n]
        if len(chain) > 1 and any(c.method == method for c in chain):
            ax.plot([100 * c.clean.mean for c in chain],
                    [100 * c.robust[attack].mean for c in chain],
                    color=pal.style(method).color, linewidth=0.7, alpha=0.7, zorder=2)
    for i, c in enumerate(configs):
        r = c.robust.get(attack)
        if r is None or not r.n:
            continue
        ax.errorbar(100 * c.clean.mean, 100 * r.mean,
                    xerr=100 * c.clean.sd if c.clean.n > 1 else None,
                    yerr=100 * r.sd if r.n > 1 else None, marker=pal.style(c.method).marker,
                    color=colors[i], mfc="white", mew=1.0, linestyle="none", elinewidth=0.7,
                    markersize=4, zorder=5)
        if c.method != "st":
            ax.annotate(_short(c).replace("AT ", "").replace(r"$\ell_\infty$ ", ""),
                        (100 * c.clean.mean, 100 * r.mean), xytext=(3, 2),
                        textcoords="offset points", fontsize=5, color=colors[i])
    ax.set_xlabel("clean acc. (%)")
    ax.set_ylabel("robust acc. (%)")
    ax.margins(0.12)
    ax.grid(alpha=0.25, linewidth=0.5)


def _theory_plane(ax, ctx, rhos):
    """The linear theory's T6 curves at the simulations' first evaluation attack: SAM at fixed
    scale over rho in [0, max(0.4, rhos)], AT l_inf over eps up to 3 eta; ST star; dots at the
    runs' nominal rhos."""
    s = ctx.settings
    key = s.eval_keys[0]
    sam = th.method_curve(s, "sam", th.rho_grid(max([0.4] + list(rhos))))
    at = th.method_curve(s, "at-linf", eps_grid(s, None, "at-linf"))
    for method, rows in (("sam", sam), ("at-linf", at)):
        rows = [r for r in rows if math.isfinite(r["clean"])]
        ax.plot([100 * r["clean"] for r in rows], [100 * r["robust"][key] for r in rows],
                **pal.style(method).line(), zorder=3 if method == "sam" else 2)
    st = th.theory_point(s, "st", 0.0)
    ax.plot(100 * st["clean"], 100 * st["robust"][key], marker="*", color="k", markersize=7,
            linestyle="none", zorder=6)
    labels = []
    strength_ticks(ax, ctx, "sam", sorted(rhos), key, r"$\rho$=", (-3, 3), "right", labels)
    eta = s.model().eta
    strength_ticks(ax, ctx, "at-linf", [0.5 * eta, 1.5 * eta], key, r"$\epsilon$=", (3, -6),
                    "left", labels)
    ax.margins(0.08)
    place_labels(ax, labels, box_pt=(20.0, 6.0))
    ax.set_xlabel("clean acc. (%)")
    ax.set_title(f"linear theory (T6), {eval_label(key)}", fontsize=6.5, pad=2)
    ax.grid(alpha=0.25, linewidth=0.5)
    return key


def fig_real_tradeoff(ctx: FigureContext, ds: str, configs) -> FigureResult:
    """Clean vs robust accuracy of data set ``ds`` (left) beside the linear theory's trade-off
    curves (right); verdict: per-configuration orderings, deep runs against the theory."""
    attack, rule = comparison_attack(configs)
    if attack is None:
        raise SkipFigure(f"real_{slug(ds)}_tradeoff skipped: {rule} of {ds}")
    colors = config_colors(configs)
    fig, (ax_d, ax_t) = plt.subplots(1, 2, figsize=(pal.COLUMN_WIDTH_IN, 2.3))
    _real_plane(ax_d, configs, colors, attack)
    ax_d.set_title(f"{ds} runs, {eval_label(attack)}", fontsize=6.5, pad=2)
    tkey = _theory_plane(ax_t, ctx, [c.rho for c in configs if c.method == "sam" and c.rho])
    methods = [m for m in ("st", "sam", "at-linf", "at-l2") if any(c.method == m for c in configs)]
    hs = [Line2D([], [], color=pal.style(m).color, marker=pal.style(m).marker, mfc="white",
                 linestyle="none", label=pal.style(m).label) for m in methods]
    hs += [Line2D([], [], **pal.style(m).line(), label=pal.style(m).label + " theory")
           for m in ("sam", "at-linf")]
    fig.legend(handles=hs, loc="upper center", ncol=3, fontsize=5.5, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.84), w_pad=0.8)
    files = save(fig, ctx.out_dir, f"real_{slug(ds)}_tradeoff", ctx.formats)
    theory = th.representative_points(ctx.settings)
    verdict = ordering_verdict(deep_ordering_checks(configs, attack, theory, tkey),
                               "per-configuration comparisons")
    return FigureResult(
        f"real_{slug(ds)}_tradeoff", f"{ds}: trade-off beside the linear theory", files,
        f"Left: clean vs robust accuracy ({attack.replace('_', ' eps=')}: {rule}) of the {ds} "
        "runs, mean and sd over seeds; lines join ST to SAM by increasing rho and ST to AT. Right: the linear model's trade-off curves (T6: SAM at fixed scale "
        f"tau={ctx.settings.tau:g} over rho, AT l_inf over eps; star = ST) at "
        f"{tkey.replace('_', ' eps=')}, dots at the runs' nominal rhos and at AT eps = eta/2 "
        "and 1.5 eta. The two models' scales "
        "differ: compare shapes (SAM leaves ST upwards at little clean cost, AT trades clean for "
        "robust accuracy), not values. Verdict: each configuration's ordering against ST, SAM and "
        "AT as the linear theory predicts it (SAM at the same nominal rho, T5; AT: T3 above eta).",
        verdict)


@dataclass
class RealSection:
    """The real-data part of the report: its figures (listed in the verdicts table), its markdown
    ``text`` and the one-line reasons of anything skipped."""

    figures: list = field(default_factory=list)
    text: str = ""
    skipped: list = field(default_factory=list)


_INTRO = (
    "For each real data set under `results/deep/`: accuracy per configuration (mean ± sd over "
    "seeds, n seeds stated), the paper's claims (a)-(d) each with a verdict computed from the runs, "
    "and the training cost. Small eps (claim (a)): the two smallest l_inf radii and the smallest "
    "l2 radius evaluated. Claim (c) is counted at the other attacks. 'Beyond the seed spread': "
    "the two mean ± sd intervals do not overlap (needs >= 2 seeds each). Runs still missing are "
    "simply absent; the seeds per configuration show how complete a grid is.")


def _dataset_lines(ctx, ds, runs, base, number: int) -> tuple:
    """(figures, markdown lines, skipped lines) of one real data set; its figures are numbered
    R<number>, R<number + 1>."""
    configs = summarise_runs(runs)
    claims = all_claims(configs, runs)
    figs, skipped = [], []
    lines = [f"### {ds}", ""]
    if "(" in ds:
        lines += ["Runs from a folder not named after the data set (e.g. `deep.run --profile "
                  "quick`): smoke runs, not evidence about the methods.", ""]
    lines += [f"{len(runs)} runs; accuracies in %, mean ± sd over seeds (PGD as stored by "
              "deep.run; extra columns: AutoAttack / extra evaluations where the runs store them).",
              "", accuracy_table(configs, runs), "", "Claims:", "",
              claims_markdown(claims), "", "Training cost:", "",
              cost_table(configs, runs), "", settings_note(runs), ""]
    for make in (lambda: fig_real_accuracy(ctx, ds, configs, claims),
                 lambda: fig_real_tradeoff(ctx, ds, configs)):
        try:
            f = make()
        except SkipFigure as exc:
            skipped.append(str(exc))
            continue
        figs.append(f)
        lines += figure_block(f, f"Figure R{number + len(figs) - 1}: {f.title}", base)
    return figs, lines, skipped


def real_section(ctx: FigureContext, report_path) -> RealSection:
    """Figures, tables and claims of every real data set in ``ctx.deep`` (:class:`RealSection`);
    SkipFigure with one line when there is none. ``report_path`` places the image links."""
    real = real_datasets(ctx.deep)
    if not real:
        why = ctx.deep_skip or "no run on a real data set under " + \
            f"{Path(ctx.results_dir) / 'deep'}"
        raise SkipFigure(f"real-data section skipped: {why}; produce it with: {REAL_COMMAND}")
    base = Path(report_path).parent.resolve()
    sec = RealSection()
    lines = ["## Real data: the paper's claims (short training, not converged)", "", _INTRO, ""]
    for ds, runs in real.items():
        figs, more, skipped = _dataset_lines(ctx, ds, runs, base, len(sec.figures) + 1)
        sec.figures += figs
        sec.skipped += skipped
        lines += more
    sec.text = "\n".join(lines).rstrip()
    return sec
