"""Figures 5 and 6: deep-network results against the linear theory's predictions.

Deep numbers come only from ``results/deep/<dataset>/*.json`` (summarised over seeds by
:mod:`paper_figs.aggregate`); the theory side is the linear model evaluated by ``linear_theory``
at representative strengths (:func:`paper_figs.theory.representative_points`). The two live on
different scales (different data, attacks, chance levels), so what is compared is the *ordering*
of the methods, which the verdicts check configuration by configuration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from . import palette as pal
from . import theory as th
from .aggregate import PROBE_KEYS, pick_attack, summarise_runs
from .figures import FigureContext, FigureResult, SkipFigure, eval_label, save
from .loaders import is_smoke
from .verdicts import ordering_verdict

__all__ = ["fig5_deep", "fig6_probes", "deep_ordering_checks", "probe_ordering_checks"]

_ATTACK_TEX = {"linf": r"$\ell_\infty$", "l2": r"$\ell_2$"}
#: Where each method's strength label sits next to its marker (points), to avoid overlaps.
_LABEL_OFFSET = {"st": (4, 3), "sam": (4, 3), "at-linf": (4, -8), "at-l2": (-4, 3)}


def _attack_label(key: str) -> str:
    norm, _, radius = key.partition("_")
    return f"{_ATTACK_TEX.get(norm, norm)} {radius}"


def _theory_label(key: str, p: dict) -> str:
    if key == "st":
        return "ST"
    if key == "sam":
        return f"SAM $\\rho$={p['strength']:g}"
    return f"AT $\\ell_\\infty$ $\\epsilon$={p['strength']:g}"


def _theory_method(key: str) -> str:
    return {"st": "st", "sam": "sam"}.get(key, "at-linf")


def _sam_theory(theory: dict, c):
    """The linear theory's SAM point for deep configuration ``c``: T5 at fixed scale at the same
    nominal rho (the two models' rho are not calibrated to each other; the rule is stated in the
    caption), or the representative SAM point when the configuration has no rho."""
    if c.rho is None:
        return theory["sam"]
    return th.theory_point(theory["st"]["settings"], "sam", c.rho)


def _pct_pair(a: float, b: float) -> str:
    return f"{100 * a:.1f} vs {100 * b:.1f}"


def _detail(what, a, b, ta, tb) -> str:
    return f"{what} measured {_pct_pair(a, b)}, theory {_pct_pair(ta, tb)}"


@dataclass
class _Orderings:
    """The deep ordering checks at one attack: measured robust accuracies at ``attack``, theory
    ones at ``tk``; ``t_st``/``t_at`` are the theory's ST and AT-above-eta points; clean
    accuracies count as 'not lower' within ``tol`` plus the seeds' sd."""

    attack: str
    tk: str
    tol: float
    t_st: dict
    t_at: dict

    def rob(self, c) -> float:
        """Mean measured robust accuracy of configuration ``c`` (nan without runs)."""
        s = c.robust.get(self.attack)
        return s.mean if s is not None and s.n else float("nan")

    def cmp_rob(self, a, b):
        """Whether ``a`` is measured more robust than ``b``; None when either is unknown."""
        ra, rb = self.rob(a), self.rob(b)
        return None if math.isnan(ra) or math.isnan(rb) else ra > rb

    def clean_not_lower(self, a, b) -> bool:
        """Whether ``a``'s mean clean accuracy is not below ``b``'s by more than ``tol`` plus the
        larger seed sd."""
        slack = self.tol + max(a.clean.sd if a.clean.n > 1 else 0.0,
                               b.clean.sd if b.clean.n > 1 else 0.0)
        return a.clean.mean >= b.clean.mean - slack

    def sam_checks(self, c, tp, st, at) -> list:
        """SAM configuration ``c`` (theory point ``tp``): more robust than and clean within
        ``tol`` of each ST configuration; less robust than each AT configuration."""
        tk, t_st, t_at, checks = self.tk, self.t_st, self.t_at, []
        for s in st:
            checks.append((f"{c.text} robust > {s.text}", tp["robust"][tk] > t_st["robust"][tk],
                           self.cmp_rob(c, s),
                           _detail("robust", self.rob(c), self.rob(s), tp["robust"][tk],
                                   t_st["robust"][tk])))
            checks.append((f"{c.text} clean within 0.5 pt of {s.text} (measured: + seed sd)",
                           tp["clean"] >= t_st["clean"] - self.tol, self.clean_not_lower(c, s),
                           _detail("clean", c.clean.mean, s.clean.mean, tp["clean"], t_st["clean"])))
        for a in at:
            checks.append((f"{a.text} robust > {c.text}", t_at["robust"][tk] > tp["robust"][tk],
                           self.cmp_rob(a, c),
                           _detail("robust", self.rob(a), self.rob(c), t_at["robust"][tk],
                                   tp["robust"][tk])))
        return checks

    def at_checks(self, a, st) -> list:
        """AT configuration ``a``: clean accuracy below each ST configuration's."""
        t_at, t_st = self.t_at, self.t_st
        return [(f"{a.text} clean < {s.text}", t_at["clean"] < t_st["clean"],
                 a.clean.mean < s.clean.mean,
                 _detail("clean", a.clean.mean, s.clean.mean, t_at["clean"], t_st["clean"]))
                for s in st]


def deep_ordering_checks(configs, attack: str, theory: dict, theory_key: str,
                         tol: float = 0.005):
    """(description, predicted by theory, observed in the deep runs, numbers) per configuration.

    ``theory`` = :func:`paper_figs.theory.representative_points`; its robust accuracies are taken
    at evaluation attack ``theory_key``, the deep ones at ``attack``. Each SAM configuration is
    compared with the linear SAM optimum at its own rho (T5, :func:`_sam_theory`), so a large rho
    for which the theory itself predicts a clean loss or no robust gain is checked against that
    prediction; each AT configuration with T3 above eta (``theory["at-large"]``). One check per
    (configuration, ST) pair and per (AT configuration, SAM configuration) pair; clean
    accuracies count as 'not lower' within ``tol`` (0.5 pt; measured: plus the seeds' sd).
    """
    st = [c for c in configs if c.method == "st"]
    sam = [c for c in configs if c.method == "sam"]
    at = [c for c in configs if c.method.startswith("at")]
    orderings = _Orderings(attack, theory_key, tol, theory["st"], theory["at-large"])
    checks = []
    for c in sam:
        tp = _sam_theory(theory, c)
        if tp is not None:
            checks += orderings.sam_checks(c, tp, st, at)
    for a in at:
        checks += orderings.at_checks(a, st)
    return checks


# Label placement of figure 5: candidate offsets (points) tried in turn until a label's box overlaps no
# label placed before it in the panel; _PT_X / _PT_Y: a point as a fraction of the panel's data span (a
# panel is about 110 x 95 points, the data spanning two thirds of it after the margins).
_LABEL_TRIES = ((0, 0), (0, -10), (0, 10), (0, -20), (0, 20))
_PT_X, _PT_Y = 1 / 75.0, 1 / 65.0


def _label_box(x, y, off, text, ha):
    """(x0, y0, x1, y1) of a label in panel-span units: anchor (x, y) already in span units."""
    w, h = 3.0 * len(text) * _PT_X, 6.0 * _PT_Y
    x0 = x + off[0] * _PT_X - (w if ha == "right" else 0.0)
    y0 = y + off[1] * _PT_Y
    return x0, y0, x0 + w, y0 + h


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(points):
    """Offsets (points) for labels [(x, y, method, text)] in data units, so that no two labels of a panel
    overlap where avoidable (e.g. "rho=0.1" and "eps=8/255" at nearby points)."""
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    sx, sy = max(max(xs) - min(xs), 1.0), max(max(ys) - min(ys), 1.0)
    placed, out = [], []
    for x, y, method, text in points:
        base = _LABEL_OFFSET[method]
        ha = "left" if base[0] > 0 else "right"
        for dx, dy in _LABEL_TRIES:
            off = (base[0] + dx, base[1] + dy)
            box = _label_box((x - min(xs)) / sx, (y - min(ys)) / sy, off, text, ha)
            if not any(_overlaps(box, b) for b in placed):
                break
        placed.append(box)
        out.append((off, ha))
    return out


def _scatter_configs(ax, configs, attack):
    labels = []
    for c in configs:
        st = pal.style(c.method)
        r = c.robust.get(attack)
        if r is None or not r.n:
            continue
        multi = c.clean.n > 1   # no error bar from a single seed
        ax.errorbar(100 * c.clean.mean, 100 * r.mean, xerr=100 * c.clean.sd if multi else None,
                    yerr=100 * r.sd if r.n > 1 else None,
                    marker=st.marker, color=st.color, mfc="white", mew=1.0, linestyle="none",
                    elinewidth=0.8, markersize=5, zorder=5)
        labels.append((100 * c.clean.mean, 100 * r.mean, c.method, c.label.replace(st.label, "").strip()))
    for (x, y, method, text), (off, ha) in zip(labels, _place_labels(labels)):
        ax.annotate(text, (x, y), xytext=off, textcoords="offset points", fontsize=5.5,
                    color=pal.style(method).color, ha=ha)


def _deep_panel(ax, ds, configs, attack):
    """Panel of deep dataset ``ds``: its configurations in the clean-robust plane at ``attack``,
    axes limited to [-2, 102] %."""
    _scatter_configs(ax, configs, attack)
    ax.set_title(ds)
    ax.set_xlabel("clean acc. (%)")
    ax.set_ylabel(f"robust acc. (%), {_attack_label(attack)}" if attack else "robust acc.")
    ax.margins(0.25)
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -2.0), min(hi, 102.0))
    lo, hi = ax.get_xlim()
    ax.set_xlim(max(lo, -2.0), min(hi, 102.0))
    ax.grid(alpha=0.25, linewidth=0.5)


def _deep_note(ds, attack, configs) -> str:
    """Figure 5's note on dataset ``ds``: attack, seeds per configuration, smoke-run warning."""
    nseeds = sorted({c.clean.n for c in configs})
    return (f"{ds}: robust accuracy under PGD {attack}; seeds per configuration "
            f"{nseeds}; error bars = sd over seeds."
            + (" Smoke runs (deep.run --quick): not evidence about the methods."
               if is_smoke(ds) else ""))


def _theory_panel(ax, theory, tkey):
    """Panel of the linear theory's representative optima (filled markers), clean vs robust
    accuracy at attack ``tkey``."""
    for key, p in theory.items():
        if p is None:
            continue
        st = pal.style(_theory_method(key))
        ax.plot(100 * p["clean"], 100 * p["robust"][tkey], marker=st.marker, color=st.color,
                linestyle="none", markersize=5)
        off = _LABEL_OFFSET[_theory_method(key)]
        ax.annotate(_theory_label(key, p).replace(st.label, "").strip(),
                    (100 * p["clean"], 100 * p["robust"][tkey]), xytext=off,
                    textcoords="offset points", fontsize=5.5, color=st.color,
                    ha="left" if off[0] > 0 else "right")
    ax.set_title("linear theory")
    ax.set_xlabel("clean acc. (%)")
    ax.set_ylabel(f"robust acc. (%), {eval_label(tkey)}")
    ax.margins(0.25)
    ax.grid(alpha=0.25, linewidth=0.5)


def _deep_legend_handles(deep) -> list:
    """Legend entries of figure 5: each deep method present (open markers), then the theory."""
    present = {c.method for runs in deep.values() for c in summarise_runs(runs)}
    hs = [Line2D([], [], color=pal.style(m).color, marker=pal.style(m).marker, mfc="white",
                 linestyle="none", label=pal.style(m).label + " (deep)")
          for m in ("st", "sam", "at-linf", "at-l2") if m in present]
    hs += [Line2D([], [], color="0.3", marker="o", linestyle="none",
                  label="filled: linear theory")]  # noqa: E501
    return hs


def _deep_legend(fig, axes, n, height, hs):
    """Hide the panels after the first ``n``; put the legend in the first of them, or above the
    panels when there is none; then lay out the figure (``height`` in inches)."""
    spare = list(axes.flat)[n:]
    for extra in spare:
        extra.axis("off")
    if spare:
        spare[0].legend(handles=hs, loc="center", fontsize=6.5)
        fig.tight_layout()
    else:
        fig.legend(handles=hs, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.0),
                   fontsize=6)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height), h_pad=0.6)


def fig5_deep(ctx: FigureContext) -> FigureResult:
    """Deep clean vs robust accuracy per method and dataset, with the linear theory's ordering."""
    if not ctx.deep:
        raise SkipFigure(f"fig5_deep skipped: {ctx.deep_skip}")
    datasets = list(ctx.deep)
    n = len(datasets) + 1
    ncols = 2
    nrows = math.ceil(n / ncols)
    height = 1.75 * nrows + 0.35
    fig, axes = plt.subplots(nrows, ncols, figsize=(pal.COLUMN_WIDTH_IN, height), squeeze=False)
    checks_all, notes = [], []
    counted = _counted(datasets)
    theory = th.representative_points(ctx.settings)
    tkey = ctx.settings.eval_keys[0]
    for ax, ds in zip(axes.flat, datasets):
        configs = summarise_runs(ctx.deep[ds])
        attack = pick_attack(configs)
        _deep_panel(ax, ds, configs, attack)
        if attack:
            checks = deep_ordering_checks(configs, attack, theory, tkey)
            if ds in counted:
                checks_all += [(f"{ds}: {c[0]}", *c[1:]) for c in checks]
            notes.append(_deep_note(ds, attack, configs))
    _theory_panel(axes.flat[len(datasets)], theory, tkey)
    _deep_legend(fig, axes, n, height, _deep_legend_handles(ctx.deep))
    files = save(fig, ctx.out_dir, "fig5_deep", ctx.formats)
    verdict = _smoke_prefix(ordering_verdict(checks_all, _UNIT), counted)
    return FigureResult(
        "fig5_deep", "Deep networks vs the linear theory's ordering", files,
        "Clean vs robust accuracy of deep networks per method and dataset (mean, sd over seeds), "
        "next to the linear theory's optima (ST, SAM at the largest rho within 0.5 pt of ST's "
        "clean accuracy, AT l_inf below and above eta). Verdict: one comparison per "
        "configuration; each SAM configuration against the linear SAM optimum at the same "
        "nominal rho (T5, tau as in the simulations; at large rho T5 itself predicts a clean "
        "loss and no robust gain), AT against T3 above eta.", verdict, notes)


def probe_ordering_checks(configs, theory: dict):
    """Orderings of the probes predicted by the linear theory and observed, per configuration.

    Reliance on the non-robust pattern shows as a low 'nonrobust_swapped' accuracy. Theory:
    ST < SAM (SAM moves weight to the robust feature) < AT with eps above the non-robust
    amplitude; each SAM configuration is compared with the linear SAM optimum at its own rho
    (:func:`_sam_theory`). 'robust_removed' in the linear model is Phi(eta sqrt(d) / sigma_n) for
    any weights with non-zero (all equal) non-robust part and chance when AT beyond eta zeroes
    that part, so the only ordering it predicts there is AT < ST.
    """
    def probes(p):
        return th.probe_accuracies_from_point(p)

    t_st, t_at = probes(theory["st"]), probes(theory["at-large"])
    st = [c for c in configs if c.method == "st" and c.probes]
    sam = [c for c in configs if c.method == "sam" and c.probes]
    at = [c for c in configs if c.method.startswith("at") and c.probes]
    sw, rr = "nonrobust_swapped", "robust_removed"
    checks = []

    def add(name, a, b, key, ta, tb, sign):
        if key not in a.probes or key not in b.probes:
            return
        ma, mb = a.probes[key].mean, b.probes[key].mean
        rel = ">" if sign > 0 else "<"
        checks.append((f"{name}: {a.text} {rel} {b.text}", sign * (ta - tb) > 0,
                       sign * (ma - mb) > 0,
                       f"measured {_pct_pair(ma, mb)}, theory {_pct_pair(ta, tb)}"))

    for c in sam:
        tp = _sam_theory(theory, c)
        if tp is None:
            continue
        t_c = probes(tp)
        for s in st:
            add("swapped", c, s, sw, t_c[sw], t_st[sw], +1)
        for a in at:
            add("swapped", a, c, sw, t_at[sw], t_c[sw], +1)
    for a in at:
        for s in st:
            add("swapped", a, s, sw, t_at[sw], t_st[sw], +1)
            add("robust-removed", a, s, rr, t_at[rr], t_st[rr], -1)
    return checks


_UNIT = "per-configuration comparisons"


def _counted(datasets):
    """The data sets whose comparisons count in a verdict: every one but smoke runs (deep.run --quick),
    which count only when nothing else is there (and the verdict then says so: :func:`_smoke_prefix`)."""
    real = [ds for ds in datasets if not is_smoke(ds)]
    return real or list(datasets)


def _smoke_prefix(verdict, datasets):
    """Flag verdicts that rest only on ``deep.run --quick`` smoke runs."""
    if datasets and all(is_smoke(ds) for ds in datasets):
        return type(verdict)(verdict.agree, "Smoke runs only (deep.run --quick), not evidence: "
                             + verdict.text)
    return verdict


def _chance(runs):
    """1 / number of classes from the runs' config (generated data), else None."""
    for r in runs:
        k = ((r.raw.get("config") or {}).get("synthetic") or {}).get("num_classes")
        if k:
            return 1.0 / float(k)
    return None


def _probe_configs(ctx) -> dict:
    """Deep configurations that store probes, by dataset (datasets without any left out);
    SkipFigure when there is none."""
    with_probes = {ds: [c for c in summarise_runs(runs) if c.probes]
                   for ds, runs in ctx.deep.items()}
    with_probes = {ds: cs for ds, cs in with_probes.items() if cs}
    if not with_probes:
        raise SkipFigure("fig6_probes skipped: no deep run stores probes (generated data only); "
                         "produce them with: python -m deep.run --dataset synthetic --out "
                         f"{ctx.results_dir}/deep")
    return with_probes


def _deep_probe_bars(ax, ds, configs, chance):
    """Top panel: probe accuracies of the deep configurations of dataset ``ds`` (mean, sd over
    seeds; repeated methods fainter), with ``chance`` dotted when known."""
    x = np.arange(len(PROBE_KEYS))
    width = 0.8 / max(len(configs), 1)
    for i, c in enumerate(configs):
        st = pal.style(c.method)
        means = [c.probes[k].mean if k in c.probes else np.nan for k in PROBE_KEYS]
        sds = [c.probes[k].sd if k in c.probes else np.nan for k in PROBE_KEYS]
        rank = sum(1 for d in configs[:i] if d.method == c.method)
        ax.bar(x - 0.4 + width * (i + 0.5), 100 * np.array(means), width * 0.92,
               yerr=100 * np.array(sds) if c.clean.n > 1 else None, color=st.color,
               alpha=1.0 / (1 + 0.8 * rank),
               edgecolor=st.color, linewidth=0.6, label=c.label, error_kw={"elinewidth": 0.6})
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"deep network, generated data: {ds}", pad=2)
    if chance is not None:
        ax.axhline(100 * chance, color="0.4", linewidth=0.6, linestyle=":")
    ax.legend(ncol=2, fontsize=6, loc="upper center")


def _theory_probe_bars(ax, theory):
    """Bottom panel: the same probes of the linear theory's representative optima, labelled
    with their robust reliance; chance (50%) dotted; probe names on the x axis."""
    x = np.arange(len(PROBE_KEYS))
    tkeys = [k for k in ("st", "sam", "at-small", "at-large") if theory.get(k) is not None]
    width = 0.8 / len(tkeys)
    for i, key in enumerate(tkeys):
        p = theory[key]
        st = pal.style(_theory_method(key))
        acc = th.probe_accuracies_from_point(p)
        ax.bar(x - 0.4 + width * (i + 0.5), [100 * acc[k] for k in PROBE_KEYS], width * 0.92,
               color=st.color, alpha=0.55 if key == "at-small" else 1.0, edgecolor=st.color,
               linewidth=0.6, label=f"{_theory_label(key, p)}, r={p['reliance']:.2f}")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("linear theory (r = robust reliance)", pad=2)
    ax.legend(ncol=2, fontsize=6, loc="upper center")
    ax.axhline(50, color="0.4", linewidth=0.6, linestyle=":")
    ax.set_xticks(x)
    ax.set_xticklabels(["clean", "non-robust\nremoved", "non-robust\nswapped",
                        "robust\nremoved"])


def fig6_probes(ctx: FigureContext) -> FigureResult:
    """Feature-reliance probes on generated data (deep) next to their linear-theory analogue."""
    if not ctx.deep:
        raise SkipFigure(f"fig6_probes skipped: {ctx.deep_skip}")
    with_probes = _probe_configs(ctx)
    ds = next((d for d in with_probes if not is_smoke(d)), next(iter(with_probes)))
    configs = with_probes[ds]
    theory = th.representative_points(ctx.settings)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(pal.COLUMN_WIDTH_IN, 3.6), sharex=True)
    _deep_probe_bars(ax1, ds, configs, _chance(ctx.deep[ds]))
    _theory_probe_bars(ax2, theory)
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.25, linewidth=0.5)
        ax.set_ylim(0, 150)
        ax.set_yticks([0, 25, 50, 75, 100])
    files = save(fig, ctx.out_dir, "fig6_probes", ctx.formats)
    verdict = _smoke_prefix(ordering_verdict(probe_ordering_checks(configs, theory), _UNIT), [ds])
    notes = [f"Probes from dataset '{ds}'" + (f"; also present: {', '.join(list(with_probes)[1:])}"
                                              if len(with_probes) > 1 else "") + "."]
    return FigureResult(
        "fig6_probes", "Feature-reliance probes", files,
        "Accuracy of deep networks on generated data with the non-robust pattern removed or swapped "
        "to another class, or the robust pattern removed (top), against the same probes of the "
        "linear-theory optima, whose robust reliance r(v) is given (bottom); dotted: chance. "
        "Verdict: one comparison per configuration pair, each SAM configuration against the "
        "linear SAM optimum at the same nominal rho (T5), AT against T3 above eta.",
        verdict, notes)
