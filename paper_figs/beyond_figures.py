"""The "beyond the paper" section of the report: four figures with verdicts computed from the runs
(:mod:`paper_figs.beyond` holds the data and the verdicts).

* ``beyond_equal_cost``: robust accuracy (PGD-10, l_inf 0.02 and 0.05) against the measured training cost
  relative to ST, per method (ST, SAM per rho, fgsm-rs, pgd1, pgd2, PGD-10 AT);
* ``beyond_arch``: clean and robust accuracy of ST, SAM (rho 0.1) and AT per architecture;
* ``beyond_rho``: clean and robust accuracy of SAM against rho (log axis) beside the linear theory's T6
  curves against its own rho (shapes compared, not values);
* ``beyond_saliency``: input-gradient maps of ST, SAM and AT on the same test images, and the fraction of
  gradient mass on the object per configuration.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import beyond as bd
from . import palette as pal
from . import theory as th
from .figures import FigureContext, FigureResult, SkipFigure, save
from .report import figure_block
from .verdicts import Verdict, no_data

__all__ = ["BeyondSection", "beyond_section", "fig_equal_cost", "fig_arch", "fig_rho", "fig_saliency"]

COLORS = {"st": "#000000", "sam": "#0072B2", "fgsm-rs": "#009E73", "pgd1": "#CC79A7", "pgd2": "#E69F00",
          "at": "#D55E00"}
MARKERS = {"st": "o", "sam": "s", "fgsm-rs": "D", "pgd1": "v", "pgd2": "P", "at": "^"}


@dataclass
class BeyondSection:
    figures: list = field(default_factory=list)
    text: str = ""
    skipped: list = field(default_factory=list)


def _verdict(holds, text) -> Verdict:
    return no_data(text) if holds is None else Verdict(bool(holds), text)


def _load_cost(results_dir) -> dict | None:
    p = Path(results_dir) / "beyond" / "cost.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cost_x(g, cost, st_time) -> float:
    """Training cost relative to ST: the measured step-cost ratio (deep.cost) when available, else the
    ratio of the runs' mean wall times."""
    rel = (cost or {}).get("relative", {}).get(g.label)
    if rel:
        return rel
    t = bd.train_time(g)
    return t.mean / st_time if t.n and st_time else float("nan")


SAM_MARKERS = ("s", "p", "h", "*", "X", "d")


def _equal_cost_styles(groups) -> dict:
    """(colour, marker) per group: the method's, except that the SAM radii get shades of SAM's blue
    (light: small rho) and markers of their own, so that each rho can be told apart."""
    sams = [g for g in groups if g.label == "sam"]
    shades = plt.cm.Blues(np.linspace(0.45, 0.95, max(len(sams), 1)))
    out = {id(g): (COLORS.get(g.label, "grey"), MARKERS.get(g.label, "x")) for g in groups}
    for i, g in enumerate(sorted(sams, key=lambda g: g.strength or 0)):
        out[id(g)] = (shades[i], SAM_MARKERS[i % len(SAM_MARKERS)])
    return out


def fig_equal_cost(ctx: FigureContext, data: dict, cost) -> FigureResult:
    gs = bd.equal_cost_groups(data)
    if not any(g.label in ("fgsm-rs", "pgd1", "pgd2") for g in gs):
        raise SkipFigure("beyond_equal_cost skipped: no cheap-AT runs; produce them with: "
                         + bd.EXPERIMENTS["equal-cost"])
    st = next((g for g in gs if g.label == "st"), None)
    st_time = bd.train_time(st).mean if st is not None else None
    holds, text = bd.equal_cost_verdict(data, cost)
    styles = _equal_cost_styles(gs)
    fig, axes = plt.subplots(1, 2, figsize=(pal.COLUMN_WIDTH_IN * 1.6, 2.3), sharey=True)
    for ax, key in zip(axes, (bd.SMALL_EPS, bd.MID_EPS)):
        for g in gs:
            a = bd.acc(g, key)
            x = _cost_x(g, cost, st_time)
            color, marker = styles[id(g)]
            ax.errorbar(x, 100 * a.mean, yerr=100 * a.sd if a.n > 1 else None, color=color,
                        marker=marker, linestyle="none", markersize=4, capsize=2, label=g.name)
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        ax.minorticks_off()
        ax.set_xlabel("training cost / ST" + (" (measured per step)" if cost else " (wall time)"))
        ax.set_title(f"PGD-10 robust accuracy at {key.replace('_', ' ')}", fontsize=7)
        ax.grid(alpha=0.25, linewidth=0.5)
    axes[0].set_ylabel("robust acc. (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=5, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    files = save(fig, ctx.out_dir, "beyond_equal_cost", ctx.formats)
    return FigureResult("beyond_equal_cost", "Equal cost: SAM vs cheap adversarial training", files,
                        "Fashion-MNIST, PreActResNet-18 (CPU preset): robust accuracy against training cost "
                        "relative to ST, per method; mean and sd over seeds. Cost: seconds per training step "
                        "measured side by side (python -m deep.cost) when present, else the runs' wall times.",
                        _verdict(holds, {True: "Yes, SAM stands in for AT at equal cost: ",
                                         False: "No, SAM does not stand in for AT at equal cost: ",
                                         None: ""}[holds] + text))


def fig_arch(ctx: FigureContext, data: dict) -> FigureResult:
    gains = bd.arch_gains(data)
    if len(gains) < 2:
        raise SkipFigure("beyond_arch skipped: fewer than two architectures with ST and SAM runs; produce "
                         "them with: " + bd.EXPERIMENTS["arch"])
    fig, axes = plt.subplots(1, 3, figsize=(pal.COLUMN_WIDTH_IN * 1.8, 2.2), sharey=True)
    xs = np.arange(len(gains))
    for ax, key, title in zip(axes, (None, bd.SMALL_EPS, bd.MID_EPS), ("clean", "PGD linf 0.02", "PGD linf 0.05")):
        for j, lab in enumerate(("st", "sam", "at")):
            groups = [dict(st=g[1], sam=g[2], at=g[3])[lab] for g in gains]
            vals = [bd.acc(g, key) if g is not None else None for g in groups]
            ax.bar(xs + (j - 1) * 0.27, [100 * v.mean if v and v.n else 0 for v in vals], width=0.27,
                   yerr=[100 * v.sd if v and v.n > 1 else 0 for v in vals], color=COLORS[lab],
                   label=lab.upper(), error_kw={"elinewidth": 0.6, "capsize": 1.5})
        ax.set_xticks(xs, [g[0].replace("preact-resnet18", "ResNet18") for g in gains], fontsize=5.5, rotation=20)
        ax.set_title(title, fontsize=7)
        ax.grid(axis="y", alpha=0.25, linewidth=0.5)
    axes[0].set_ylabel("accuracy (%)")
    axes[2].legend(fontsize=5.5, loc="upper right")
    fig.tight_layout()
    files = save(fig, ctx.out_dir, "beyond_arch", ctx.formats)
    holds, text = bd.arch_verdict(gains)
    return FigureResult("beyond_arch", "Architectures: does SAM gain robustness over ST for each?", files,
                        "Fashion-MNIST, CPU preset: clean and PGD-10 robust accuracy of ST, SAM (rho 0.1) and "
                        "PGD-10 AT (eps 0.1) per architecture (ResNet18 = PreActResNet-18 of the main grid); "
                        "mean and sd over seeds.",
                        _verdict(holds, ("SAM gains on every architecture: " if holds else
                                         "SAM does not gain on every architecture: ") + text))


def _theory_rho(settings):
    rhos = [0.0] + list(np.geomspace(0.01, 1.6, 15))
    rows = [r for r in th.method_curve(settings, "sam", rhos) if math.isfinite(r["clean"])]
    key = settings.eval_keys[0]
    return [r["strength"] for r in rows], [r["clean"] for r in rows], [r["robust"][key] for r in rows], key


def _measured_rho_panel(ax, st, sams, zero) -> None:
    """Clean and PGD accuracy of SAM against rho (log axis), ST as horizontal lines, the rho = 0 control
    (when run) as a grey dot at the left edge."""
    rhos = [r for r, _ in sams]
    for key, style, lab in ((None, "-", "clean"), (bd.SMALL_EPS, "--", "PGD linf 0.02"),
                            (bd.MID_EPS, ":", "PGD linf 0.05")):
        m = [bd.acc(g, key) for _, g in sams]
        ax.errorbar(rhos, [100 * s.mean for s in m], yerr=[100 * s.sd for s in m], color=COLORS["sam"],
                    linestyle=style, marker="s", markersize=3, capsize=1.5, label=lab)
        ax.axhline(100 * bd.acc(st, key).mean, color="k", linestyle=style, linewidth=0.7)
        if zero is not None:
            z = bd.acc(zero, key)
            ax.errorbar(rhos[0] / 2, 100 * z.mean, yerr=100 * z.sd, color="grey", marker="o", markersize=3,
                        capsize=1.5, label="SAM rho=0" if key is None else None)
    ax.set_xscale("log")
    ax.set_xlabel(r"$\rho$ (per batch)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("PreActResNet-18 (black: ST)", fontsize=7)
    ax.legend(fontsize=5.5)
    ax.grid(alpha=0.25, linewidth=0.5)


def _theory_rho_panel(ax, tr, tc, trob, key) -> None:
    """T6: clean and robust accuracy of SAM at fixed scale against its rho; ST (rho = 0) as lines."""
    ax.plot(tr[1:], [100 * c for c in tc[1:]], color=COLORS["sam"], label="clean")
    ax.plot(tr[1:], [100 * c for c in trob[1:]], color=COLORS["sam"], linestyle="--", label=key)
    ax.axhline(100 * tc[0], color="k", linewidth=0.7)
    ax.axhline(100 * trob[0], color="k", linestyle="--", linewidth=0.7)
    ax.set_xscale("log")
    ax.set_xlabel(r"$\rho$ (per example, theory)")
    ax.set_title("linear theory (T6)", fontsize=7)
    ax.legend(fontsize=5.5)
    ax.grid(alpha=0.25, linewidth=0.5)


def _below(drop: float) -> str:
    return f"{100 * abs(drop):.2f} pts {'below' if drop > 0 else 'above'}"


def fig_rho(ctx: FigureContext, data: dict) -> FigureResult:
    st, sams = bd.rho_points(data)
    if len(sams) < 5 or st is None:
        raise SkipFigure("beyond_rho skipped: fewer than 5 SAM radii; produce them with: "
                         + bd.EXPERIMENTS["rho-sweep"])
    rhos = [r for r, _ in sams]
    fig, axes = plt.subplots(1, 2, figsize=(pal.COLUMN_WIDTH_IN * 1.6, 2.3))
    _measured_rho_panel(axes[0], st, sams, bd.rho_zero(data))
    tr, tc, trob, key = _theory_rho(ctx.settings)
    _theory_rho_panel(axes[1], tr, tc, trob, key)
    fig.tight_layout()
    files = save(fig, ctx.out_dir, "beyond_rho", ctx.formats)
    meas = bd.shape_summary([0.0] + rhos, [bd.acc(st).mean] + [bd.acc(g).mean for _, g in sams],
                            [bd.acc(st, bd.SMALL_EPS).mean] + [bd.acc(g, bd.SMALL_EPS).mean for _, g in sams])
    theo = bd.shape_summary(tr, tc, trob)
    same = meas["interior"] == theo["interior"]
    text = (f"robust accuracy peaks at rho={meas['peak_at']:g} (measured, {bd.SMALL_EPS}; clean accuracy there "
            f"{_below(meas['clean_drop_to_peak'])} ST's, so {'not ' if meas['clean_drop_to_peak'] > 0.005 else ''}"
            f"free) vs rho={theo['peak_at']:.3g} in T6 ({key}; clean {_below(theo['clean_drop_to_peak'])} ST's); "
            f"both {'rise then fall' if same and meas['interior'] else 'differ in shape'}; at the largest rho, "
            f"robust {100 * meas['robust_end_minus_peak']:+.1f} pts from the peak (T6: "
            f"{100 * theo['robust_end_minus_peak']:+.1f})")
    return FigureResult("beyond_rho", "The rho sweep against T6", files,
                        "Left: SAM on Fashion-MNIST (CPU preset) for rho from 0.01 to 1.6 (8 values, log axis), "
                        "mean and sd over seeds; black lines: ST; grey dot at the left edge: SAM at rho = 0 "
                        "(the control: SAM's code path with a zero ascent), when run. Right: the linear theory's SAM at fixed "
                        "scale against its rho (T6). The theory's rho is per example and the network's per "
                        "batch, so only the shapes are compared: where robust accuracy peaks and what clean "
                        "accuracy costs there.", Verdict(same, ("Same shape: " if same else "Different shape: ") + text))


def _saliency_panels(rows) -> list:
    """(row name, maps, colormap, vmin) per row of the map grid: the images first (when stored), then the
    seed-0 maps of each configuration in method order."""
    pick = {}
    for g, *_ in rows:
        for r in g.runs:
            if r.get("seed") == 0 and r.get("saliency", {}).get("maps"):
                pick[(g.label, g.strength)] = (g.name, r["saliency"]["maps"])
    order = sorted(pick, key=lambda k: (bd.EQUAL_COST_ORDER.index(k[0]) if k[0] in bd.EQUAL_COST_ORDER else 9,
                                        k[1] or 0))
    images = next((r["saliency"].get("map_images") for g, *_ in rows for r in g.runs
                   if r.get("saliency", {}).get("map_images")), None)
    return ([("image", images, "gray_r", 0.0)] if images else []) + \
        [(pick[k][0].replace(" rho=", "\n"), pick[k][1], "RdBu_r", -1.0) for k in order]


def _map_grid(fig, gsp, panels, ncol: int):
    """The maps, one row per panel; returns the last gradient-map image (for the colour bar) or None."""
    grad = None
    for i, (name, maps, cmap, vmin) in enumerate(panels):
        for j in range(ncol):
            ax = fig.add_subplot(gsp[i, j])
            im = ax.imshow(np.asarray(maps[j]), cmap=cmap, vmin=vmin, vmax=1)
            grad = im if cmap == "RdBu_r" else grad
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=5, rotation=0, ha="right", va="center")
    return grad


def _map_colorbar(fig, cax, im) -> None:
    """Colour bar of the gradient maps saying what red and blue mean."""
    cb = fig.colorbar(im, cax=cax, ticks=[-1, 0, 1], orientation="horizontal")
    cb.ax.tick_params(labelsize=5)
    cb.set_label("-d loss / d pixel (each map scaled to max 1): red = brightening the pixel raises the "
                 "true class's score, blue = lowers it", fontsize=5)


def _mass_bars(ax, rows) -> None:
    """Object mass per configuration (mean and sd over seeds); dotted: the object's mean area."""
    ax.barh(range(len(rows)), [m.mean for _, m, _a, _c in rows], xerr=[m.sd for _, m, _a, _c in rows],
            color=[COLORS.get(g.label, "grey") for g, *_ in rows])
    ax.axvline(float(np.mean([a.mean for _, _m, a, _c in rows])), color="grey", linestyle=":", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [g.name for g, *_ in rows], fontsize=5)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of |gradient| on the object\n(dotted: object area)", fontsize=6)


def fig_saliency(ctx: FigureContext, data: dict) -> FigureResult:
    rows = bd.saliency_rows(data)
    if not rows:
        raise SkipFigure("beyond_saliency skipped: no saliency entries; produce them with: python -m "
                         "deep.saliency results/deep/fashion-mnist")
    panels = _saliency_panels(rows)
    ncol = min([6] + [len(p[1]) for p in panels])
    n = len(panels)
    fig = plt.figure(figsize=(pal.COLUMN_WIDTH_IN * 1.8, 0.55 * n + 1.0))
    gsp = fig.add_gridspec(n + 1, ncol + 3, height_ratios=[1] * n + [0.6])   # last row: the colour bar
    grad = _map_grid(fig, gsp, panels, ncol)
    _mass_bars(fig.add_subplot(gsp[:n, ncol + 1:]), rows)
    cax = fig.add_subplot(gsp[n, 1:ncol - 1]) if grad is not None else None
    fig.tight_layout()
    if cax is not None:                 # a thin horizontal bar under the maps, its label below it
        pos = cax.get_position()
        cax.set_position([pos.x0, pos.y0 + 0.55 * pos.height, pos.width, 0.3 * pos.height])
        _map_colorbar(fig, cax, grad)
    files = save(fig, ctx.out_dir, "beyond_saliency", ctx.formats)
    holds, text = bd.saliency_verdict(rows)
    return FigureResult("beyond_saliency", "What the models look at: input-gradient maps", files,
                        "Left: -d loss / d x of seed-0 models on the same first test images (red: raises the "
                        "true class; each map scaled to max 1). Right: fraction of the gradient mass |g| on the "
                        "object (pixels > 0.1) per configuration, mean and sd over seeds (dotted: the object's "
                        "area, the value of a map that ignores the image). python -m deep.saliency, 1000 images.",
                        _verdict(holds, ("As predicted (ST < SAM < AT): " if holds else
                                         "Not as predicted (ST < SAM < AT): ") + text))


def beyond_section(ctx: FigureContext, report_path, number: int = 1) -> BeyondSection:
    """Figures and text of the section; figures numbered B<number>, B<number + 1>, ..."""
    data = bd.load_beyond(ctx.results_dir)
    cost = _load_cost(ctx.results_dir)
    base = Path(report_path).parent.resolve()
    sec = BeyondSection()
    lines = ["## Beyond the paper (Fashion-MNIST, CPU preset; short training, not converged)", "",
             "Four questions the paper leaves open, on the settings of the real-data grid (PreActResNet-18 "
             "width 16, 10,000 training images, 6 epochs, bf16 training; PGD-10 best iterate on 2,000 test "
             "images; AutoAttack cpu subset on the first 50). Commands: " +
             "; ".join(f"`{c}`" for c in bd.EXPERIMENTS.values()) + "; `python -m deep.cost`; "
             "`python -m deep.saliency results/deep/fashion-mnist`.", ""]
    h, rows = bd.equal_cost_rows(data, cost)
    lines += ["### Equal cost", "", bd.table(h, rows), ""]
    if cost:
        lines += ["Measured step cost (python -m deep.cost, interleaved rounds, "
                  f"{cost['settings'].get('threads')} thread(s)): " + ", ".join(
                      f"{m} {v * 1e3:.0f} ms ({cost['images_per_s'][m]:.0f} images/s)"
                      for m, v in cost["seconds_per_step"].items()) + ".", ""]
    for make in (lambda: fig_equal_cost(ctx, data, cost), lambda: fig_arch(ctx, data),
                 lambda: fig_rho(ctx, data), lambda: fig_saliency(ctx, data)):
        try:
            f = make()
        except SkipFigure as exc:
            sec.skipped.append(str(exc))
            continue
        sec.figures.append(f)
        lines += figure_block(f, f"Figure B{number + len(sec.figures) - 1}: {f.title}", base)
    lines += _arch_table(data) + _rho_table(data) + _saliency_table(data)
    sec.text = "\n".join(lines).rstrip()
    return sec


def _arch_table(data) -> list:
    gains = bd.arch_gains(data)
    rows = [[a, str(len(sam.runs)), bd.acc(st).fmt(), bd.acc(sam).fmt(), bd.acc(st, bd.SMALL_EPS).fmt(),
             bd.acc(sam, bd.SMALL_EPS).fmt(), f"{100 * gain.mean:+.1f}",
             bd.acc(at, bd.SMALL_EPS).fmt() if at else "-"] for a, st, sam, at, gain, _ in gains]
    head = ["architecture", "seeds", "ST clean", "SAM clean", f"ST {bd.SMALL_EPS}", f"SAM {bd.SMALL_EPS}",
            "SAM gain (pts)", f"AT {bd.SMALL_EPS}"]
    return ["### Architectures", "", bd.table(head, rows), ""] if rows else []


def _rho_table(data) -> list:
    st, sams = bd.rho_points(data)
    if not sams:
        return []
    head = ["rho", "seeds", "clean", f"PGD {bd.SMALL_EPS}", f"PGD {bd.MID_EPS}", "train time (s)"]
    rows = [["0 (ST)", str(len(st.runs)), bd.acc(st).fmt(), bd.acc(st, bd.SMALL_EPS).fmt(),
             bd.acc(st, bd.MID_EPS).fmt(), f"{bd.train_time(st).mean:.0f}"]] if st else []
    zero = bd.rho_zero(data)
    if zero is not None:
        rows.append(["0 (SAM, control)", str(len(zero.runs)), bd.acc(zero).fmt(), bd.acc(zero, bd.SMALL_EPS).fmt(),
                     bd.acc(zero, bd.MID_EPS).fmt(), f"{bd.train_time(zero).mean:.0f}"])
    rows += [[f"{r:g}", str(len(g.runs)), bd.acc(g).fmt(), bd.acc(g, bd.SMALL_EPS).fmt(), bd.acc(g, bd.MID_EPS).fmt(),
              f"{bd.train_time(g).mean:.0f}"] for r, g in sams]
    return ["### rho sweep", "", bd.table(head, rows), ""]


def _saliency_table(data) -> list:
    rows = [[g.name, str(m.n), m.fmt(1, 3), a.fmt(1, 3), c.fmt(1, 3)] for g, m, a, c in bd.saliency_rows(data)]
    head = ["configuration", "seeds", "object mass", "object area", "gradient-image corr."]
    return ["### Saliency", "", bd.table(head, rows), ""] if rows else []
