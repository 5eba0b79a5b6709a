"""The real-data section of the report: per real data set two figures, three tables and the claims.

For every data set under ``results/deep/`` that ``deep.datasets.DATASETS`` marks as real
(Fashion-MNIST, digits, CIFAR-10/100):

* ``real_<dataset>_accuracy``: clean accuracy per configuration (ST, SAM per rho, AT per eps) and
  robust accuracy against the attack radius, one panel per norm (l_inf, l2); mean and sd over seeds;
* ``real_<dataset>_tradeoff``: the clean-vs-robust plane of the runs (one point per configuration,
  sd error bars, at :func:`paper_figs.realdata.comparison_attack`) beside the linear theory's
  trade-off curves (T6: SAM(rho) at fixed scale, AT l_inf(eps); ST star), to compare shapes;
* the accuracy, claims and cost tables of :mod:`paper_figs.realdata`.

The verdicts are computed from the runs: the accuracy figure carries the claims (a)-(d), the
trade-off figure the per-configuration orderings of :func:`deep_figures.deep_ordering_checks`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from . import palette as pal
from . import realdata as rd
from . import theory as th
from .aggregate import summarise_runs
from .deep_figures import deep_ordering_checks
from .figures import (FigureContext, FigureResult, SkipFigure, eps_grid, place_labels,
                      strength_ticks, eval_label, save)
from .report import figure_block
from .verdicts import ordering_verdict

__all__ = ["RealSection", "real_section", "fig_real_accuracy", "fig_real_tradeoff", "slug",
           "config_colors"]

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
    pts = sorted((rd.attack_parts(k)[1], s) for k, s in c.robust.items()
                 if s.n and rd.attack_parts(k) and rd.attack_parts(k)[0] == norm)
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
        ax.axhspan(100 * (st.clean.mean - rd.SAM_CLEAN_TOL), 100 * st.clean.mean, color="0.85",
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
    radii = [rd.attack_parts(k)[1] for k in small if rd.attack_parts(k)[0] == norm]
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
    ``ds``; the verdict is :func:`realdata.claims_verdict` of ``claims``."""
    colors = config_colors(configs)
    small = rd.small_attacks({k for c in configs for k in c.robust})
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
        rd.claims_verdict(claims))


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
    attack, rule = rd.comparison_attack(configs)
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
    claims = rd.all_claims(configs, runs)
    figs, skipped = [], []
    lines = [f"### {ds}", ""]
    if "(" in ds:
        lines += ["Runs from a folder not named after the data set (e.g. `deep.run --profile "
                  "quick`): smoke runs, not evidence about the methods.", ""]
    lines += [f"{len(runs)} runs; accuracies in %, mean ± sd over seeds (PGD as stored by "
              "deep.run; extra columns: AutoAttack / extra evaluations where the runs store them).",
              "", rd.accuracy_table(configs, runs), "", "Claims:", "",
              rd.claims_markdown(claims), "", "Training cost:", "",
              rd.cost_table(configs, runs), "", rd.settings_note(runs), ""]
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
    real = rd.real_datasets(ctx.deep)
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
