"""Beyond the paper (docs/protocol.md, "Beyond the paper"), whole: the data, verdicts, figures and
tables of four questions, as pure functions of the saved runs (raw result dicts of deep.run).

* equal cost: SAM against cheap AT (fgsm-rs, pgd1, pgd2) and PGD-10 AT at measured training cost;
* architectures: SAM's robust gain over ST for PreActResNet-18, an MLP, a small CNN and a small ViT;
* rho sweep: clean and robust accuracy of SAM against rho, with the linear theory's T6 shape;
* saliency: how image-like the input gradients of ST, SAM and AT are (deep.saliency).

Figures:

* ``beyond_equal_cost``: robust accuracy (PGD-10, l_inf 0.02 and 0.05) against the measured training cost
  relative to ST, per method (ST, SAM per rho, fgsm-rs, pgd1, pgd2, PGD-10 AT);
* ``beyond_arch``: clean and robust accuracy of ST, SAM (rho 0.1) and AT per architecture;
* ``beyond_rho``: clean and robust accuracy of SAM against rho (log axis) beside the linear theory's T6
  curves against its own rho (shapes compared, not values);
* ``beyond_saliency``: input-gradient maps of ST, SAM and AT on the same test images, and the fraction of
  gradient mass on the object per configuration.

Runs come from ``<results>/deep/<dataset>/`` (the main grid: ST, SAM, AT of PreActResNet-18) and
``<results>/beyond/<experiment>/<dataset>/`` (EXPERIMENTS). Every verdict is computed from the numbers.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from deep.aggregate import group_runs, method_label
from deep.archs import DEFAULT_ARCH
from deep.evaluate import read_run_json

from . import palette as pal
from . import theory as th
from .aggregate import Stat
from .figures import FigureContext, FigureResult, SkipFigure, save
from .report import figure_block, markdown_table
from .verdicts import Verdict, no_data

__all__ = ["EXPERIMENTS", "BEYOND_DATASET", "Group", "load_beyond", "groups", "acc", "equal_cost_rows",
           "equal_cost_verdict", "EQUAL_COST_RHO", "arch_gains", "arch_verdict", "rho_points", "rho_zero", "rho_shape_verdict", "shape_reasons", "clean_free_reason", "theory_rho",
           "theory_rho_shape", "shape_summary", "FREE_CLEAN", "saliency_rows",
           "saliency_verdict", "train_time", "SMALL_EPS", "MID_EPS", "BeyondSection", "beyond_section",
           "fig_equal_cost", "fig_arch", "fig_rho", "fig_saliency"]


BEYOND_DATASET = "fashion-mnist"


# The command that produces each experiment's runs (docs/protocol.md lists the settings).
EXPERIMENTS = {
    "equal-cost": "python -m deep.run --profile cpu --methods fgsm-rs,pgd1,pgd2 --seeds 0,1,2 "
                  "--out results/beyond/equal-cost",
    "arch": "python -m deep.run --profile cpu --methods st,sam,at --rho 0.1 --archs mlp,cnn --seeds 0,1 --out "
            "results/beyond/arch (cnn with --lr 0.02; vit: --methods st,sam --seeds 0)",
    "rho-sweep": "python -m deep.run --profile cpu --methods sam --rho 0.01,0.025,0.8,1.6 --seeds 0,1,2 "
                 "--out results/beyond/rho-sweep (control: --rho 0 --seeds 0,1)",
}


SMALL_EPS, MID_EPS = "linf_0.02", "linf_0.05"       # the attacks the verdicts use (Fashion-MNIST radii)


AA_KEY = "autoattack-cpu"


@dataclass
class Group:
    """Runs that differ only in the seed: architecture, method label (st, sam, fgsm-rs, ..., at) and
    strength (rho or eps)."""

    arch: str
    label: str
    strength: float | None
    runs: list

    @property
    def name(self) -> str:
        arch = "" if self.arch == DEFAULT_ARCH else f"{self.arch} "
        if self.label in ("sam", "asam"):
            return f"{arch}{self.label.upper()} rho={self.strength:g}"
        if self.strength is not None:
            return f"{arch}{self.label.upper() if self.label == 'at' else self.label} eps={self.strength:g}"
        return f"{arch}{self.label.upper()}"


def _read(folder: Path) -> list:
    """Every deep.run result in ``folder`` (unreadable files and non-results skipped), in file-name order."""
    return [r for r in map(read_run_json, sorted(folder.glob("*.json"))) if r is not None]


def load_beyond(results_dir, dataset: str = BEYOND_DATASET) -> dict:
    """{"main": runs of <results>/deep/<dataset>, experiment: runs of <results>/beyond/<exp>/<dataset>}
    (lists of raw result dicts; an absent folder gives an empty list)."""
    root = Path(results_dir)
    out = {"main": _read(root / "deep" / dataset)}
    for exp in EXPERIMENTS:
        out[exp] = _read(root / "beyond" / exp / dataset)
    return out


def groups(runs) -> list:
    """Runs grouped by the package's one rule (:func:`deep.aggregate.group_key`: the seed is the only
    difference), in order of first appearance, each named by architecture, method label and strength."""
    out = []
    for rs in group_runs(runs).values():
        r = rs[0]
        out.append(Group((r.get("config") or {}).get("arch", DEFAULT_ARCH), method_label(r).split()[-1],
                         r.get("rho") if r["method"] == "sam" else r.get("eps"), rs))
    return out


def acc(g: Group, key: str | None = None, extra: str | None = None) -> Stat:
    """Clean accuracy (key None), PGD robust accuracy ``key`` as stored by deep.run, or the accuracy
    ``key`` of extra_evals[extra] (e.g. AutoAttack on the first 50 images) over the group's seeds."""
    vals = []
    for r in g.runs:
        if key is None:
            vals.append(r["clean_acc"])
        elif extra is None:
            vals.append((r.get("robust") or {}).get(key))
        else:
            vals.append((((r.get("extra_evals") or {}).get(extra) or {}).get("robust") or {}).get(key))
    return Stat.of([v for v in vals if v is not None])


def train_time(g: Group) -> Stat:
    """Training wall time of the group's runs (seconds; mean and sd over seeds)."""
    return Stat.of([r.get("wall_time_s") for r in g.runs if r.get("wall_time_s") is not None])


def _beyond(a: Stat, b: Stat) -> bool:
    """a above b beyond the seed spread (mean - sd > mean + sd, both with >= 2 seeds)."""
    return a.n >= 2 and b.n >= 2 and a.mean - a.sd > b.mean + b.sd


EQUAL_COST_ORDER = ("st", "sam", "fgsm-rs", "pgd1", "pgd2", "at")


def _method_order(g: Group) -> tuple:
    return (EQUAL_COST_ORDER.index(g.label) if g.label in EQUAL_COST_ORDER else 9, g.strength or 0)


def equal_cost_groups(data: dict) -> list:
    """PreActResNet-18 groups of the main grid and the equal-cost runs, in EQUAL_COST_ORDER."""
    return sorted((g for g in groups(data["main"] + data["equal-cost"]) if g.arch == DEFAULT_ARCH),
                  key=_method_order)


def equal_cost_rows(data: dict, cost: dict | None = None) -> tuple:
    """(header, rows) of the equal-cost table: clean, PGD-10 at small/mid/large eps, AutoAttack (cpu
    subset, first 50 images) at small/mid eps, training wall time and its ratio to ST, and the measured
    time per step relative to ST from ``cost`` (deep.cost) when given."""
    gs = equal_cost_groups(data)
    st = next((g for g in gs if g.label == "st"), None)
    header = ["method", "seeds", "clean", f"PGD {SMALL_EPS}", f"PGD {MID_EPS}", "PGD linf_0.1",
              f"AA {SMALL_EPS} (50)", f"AA {MID_EPS} (50)", "train time (s)", "time / ST",
              "step cost / ST"]
    rows = []
    for g in gs:
        t = train_time(g)
        ratio = t.mean / train_time(st).mean if st is not None and train_time(st).n else float("nan")
        step = (cost or {}).get("relative", {}).get(g.label)
        rows.append([g.name, str(len(g.runs)), acc(g).fmt(), acc(g, SMALL_EPS).fmt(), acc(g, MID_EPS).fmt(),
                     acc(g, "linf_0.1").fmt(), acc(g, SMALL_EPS, AA_KEY).fmt(), acc(g, MID_EPS, AA_KEY).fmt(),
                     f"{t.mean:.0f}" if t.n else "-", f"{ratio:.2f}" if math.isfinite(ratio) else "-",
                     f"{step:.2f}" if step else "-"])
    return header, rows


#: The SAM radius of the equal-cost comparison, fixed before any result was seen (the package's default rho and
#: the paper's CIFAR choice): comparing a fixed rho chooses nothing on the test images.
EQUAL_COST_RHO = 0.1
CHEAP_AT = ("fgsm-rs", "pgd1", "pgd2")


def within_sam_cost(cost: dict | None, method: str) -> bool | None:
    """The equal-cost rule (claim e): whether ``method``'s measured step cost (``cost["relative"]``, x ST's step,
    from ``python -m deep.cost``) is at most SAM's; None when either of the two was not measured. The one
    owner of the rule: the short preset's verdict here and the converged one (paper_figs.converged) use it."""
    rel = (cost or {}).get("relative", {})
    if "sam" not in rel or method not in rel:
        return None
    return rel[method] <= rel["sam"]


def _eligible(cheap: list, cost: dict | None) -> tuple:
    """(the cheap AT groups not known to cost more than SAM per step (:func:`within_sam_cost`), a note saying
    which were compared, which were left out as costlier and which had no measured cost)."""
    rel = (cost or {}).get("relative", {})
    rule = [(g, within_sam_cost(cost, g.label)) for g in cheap]
    unmeasured = [g for g, w in rule if w is None]
    if len(unmeasured) == len(cheap):
        return cheap, "no measured step cost for every method: every cheap AT variant compared"
    ok = [g for g, w in rule if w is not False]
    out = [g for g, w in rule if w is False]
    note = (f"measured step cost (python -m deep.cost) at most SAM's x{rel['sam']:.2f} ST: "
            + (", ".join(f"{g.label} x{rel[g.label]:.2f}" for g, w in rule if w) or "none"))
    if unmeasured:
        note += "; compared without a measured cost: " + ", ".join(g.label for g in unmeasured)
    return ok, note + ("; costlier, left out: " + ", ".join(f"{g.label} x{rel[g.label]:.2f}" for g in out)
                       if out else "")


def equal_cost_verdict(data: dict, cost: dict | None = None) -> tuple:
    """(holds, text) for "SAM can stand in for cheap AT at equal cost". Nothing is chosen on the test images:
    SAM is the radius fixed in advance (:data:`EQUAL_COST_RHO`) and it is compared with every cheap AT variant
    whose measured step cost is at most SAM's (:func:`_eligible`). Holds when SAM's PGD accuracy at the mid
    eps matches or beats each of them (means over seeds); None when a side is missing. The other SAM radii
    are listed in the text, not judged."""
    gs = equal_cost_groups(data)
    sam = next((g for g in gs if g.label == "sam" and g.strength == EQUAL_COST_RHO and acc(g, MID_EPS).n), None)
    cheap = [g for g in gs if g.label in CHEAP_AT and acc(g, MID_EPS).n]
    if sam is None or not cheap:
        return None, (f"not enough runs (needs SAM rho={EQUAL_COST_RHO:g} and at least one cheap AT variant)")
    eligible, cost_note = _eligible(cheap, cost)
    if not eligible:
        return None, f"no cheap AT variant costs at most SAM's step ({cost_note})"
    s = acc(sam, MID_EPS)
    holds = all(acc(g, MID_EPS).mean <= s.mean for g in eligible)
    others = [g for g in gs if g.label == "sam" and g is not sam and acc(g, MID_EPS).n]
    text = (f"SAM rho={EQUAL_COST_RHO:g} (fixed in advance; nothing chosen on the test images) PGD {MID_EPS} "
            f"{s.fmt()}, clean {acc(sam).fmt()} vs "
            + "; ".join(f"{g.name} {acc(g, MID_EPS).fmt()}, clean {acc(g).fmt()}" for g in eligible)
            + f"; {cost_note}"
            + ("; other SAM radii (listed, not judged): "
               + ", ".join(f"rho={g.strength:g} {acc(g, MID_EPS).fmt()}" for g in others) if others else ""))
    return holds, text


def arch_gains(data: dict, key: str = SMALL_EPS) -> list:
    """Per architecture: (arch, ST group, SAM group, AT group or None, gain = SAM - ST robust at ``key``
    (Stat of the mean difference, sd as the larger of the two sds), clean change SAM - ST)."""
    runs = [r for r in data["main"] if r["method"] == "st" or (r["method"] == "sam" and r.get("rho") == 0.1)
            or (r["method"] == "at" and method_label(r) == "at")] + data["arch"]
    by_arch: dict = {}
    for g in groups(runs):
        by_arch.setdefault(g.arch, {})[g.label if g.label != "sam" else "sam"] = g
    out = []
    for arch, d in by_arch.items():
        st, sam = d.get("st"), d.get("sam")
        if st is None or sam is None:
            continue
        a, b = acc(sam, key), acc(st, key)
        gain = Stat(a.mean - b.mean, max(a.sd, b.sd), min(a.n, b.n))
        out.append((arch, st, sam, d.get("at"), gain, acc(sam).mean - acc(st).mean))
    return out


def arch_verdict(gains: list) -> tuple:
    """(holds, text): SAM gains robustness over ST on every architecture (mean gain > 0)."""
    if not gains:
        return None, "no architecture has both ST and SAM runs"
    pos = [a for a, *_, gain, _c in gains if gain.mean > 0]
    text = "; ".join(f"{a}: {100 * gain.mean:+.1f} pts (clean {100 * dc:+.1f})"
                     for a, _st, _sam, _at, gain, dc in gains)
    return len(pos) == len(gains), f"SAM - ST robust at {SMALL_EPS}: {text}"


def rho_points(data: dict) -> tuple:
    """(ST group or None, [(rho, SAM group)] sorted by rho, rho > 0) of PreActResNet-18 from the main grid
    and the rho sweep (same settings; the sweep adds rhos outside the protocol's 0.05-0.4)."""
    gs = [g for g in groups(data["main"] + data["rho-sweep"]) if g.arch == DEFAULT_ARCH]
    st = next((g for g in gs if g.label == "st"), None)
    sams = sorted(((g.strength, g) for g in gs if g.label == "sam" and g.strength), key=lambda t: t[0])
    return st, sams


def rho_zero(data: dict):
    """The SAM rho = 0 control group (SAM's code path with a zero ascent, i.e. ST at twice the cost), or
    None: it separates the effect of the perturbation from that of SAM's second pass (BatchNorm statistics
    frozen in it, bf16 rounding)."""
    gs = [g for g in groups(data["main"] + data["rho-sweep"]) if g.arch == DEFAULT_ARCH]
    return next((g for g in gs if g.label == "sam" and g.strength == 0), None)


def shape_summary(xs, clean, robust) -> dict:
    """Shape of a trade-off curve along increasing strength ``xs``: where robust accuracy peaks (its
    strength and value), and the clean accuracy change from the first point to that peak."""
    i = max(range(len(robust)), key=lambda k: robust[k])
    return {"peak_at": xs[i], "peak_robust": robust[i], "peak_index": i, "robust_first": robust[0],
            "interior": 0 < i < len(xs) - 1,
            "clean_drop_to_peak": clean[0] - clean[i], "robust_end_minus_peak": robust[-1] - robust[i]}


#: Clean accuracy counts as free at the robust peak when it is at most this far (0.5 point) below ST's.
FREE_CLEAN = 0.005


def shape_reasons(meas: dict, theo: dict, rise_sd: float, fall_sd: float) -> list:
    """Why the measured rho sweep does not have T6's shape, on robust accuracy alone (empty: it has): both
    curves peak inside the rho range, and the measured rise from ST to the peak and the fall from the peak to
    the largest rho both exceed two seed sds (``rise_sd``, ``fall_sd``: the larger sd of the two points
    compared), so noise alone cannot make the peak. ``meas``/``theo``: :func:`shape_summary`."""
    reasons = []
    if not (meas["interior"] and theo["interior"]):
        reasons.append(f"peak inside the range: measured {meas['interior']}, T6 {theo['interior']}")
    rise = meas["peak_robust"] - meas["robust_first"]
    if not rise > 2 * rise_sd:
        reasons.append(f"measured rise to the peak {100 * rise:.1f} pts is within 2 seed sds ({200 * rise_sd:.1f})")
    fall = -meas["robust_end_minus_peak"]
    if meas["interior"] and not fall > 2 * fall_sd:
        reasons.append(f"measured fall after the peak {100 * fall:.1f} pts is within 2 seed sds "
                       f"({200 * fall_sd:.1f})")
    return reasons


def clean_free_reason(free_measured: bool, theo: dict) -> list:
    """[] when the clean accuracy at the robust peak is free (at most :data:`FREE_CLEAN` below ST's) in
    both the measurement and T6 (``theo``: :func:`shape_summary`) or in neither, else the one reason."""
    free_t = theo["clean_drop_to_peak"] <= FREE_CLEAN
    if free_measured == free_t:
        return []
    return [f"clean accuracy at the peak is {'free' if free_measured else 'not free'} measured but "
            f"{'free' if free_t else 'not free'} in T6"]


def rho_shape_verdict(meas: dict, theo: dict, rise_sd: float, fall_sd: float) -> tuple:
    """(same, reasons) for "the measured rho sweep has T6's shape": the robust-accuracy shape of
    :func:`shape_reasons`, and the clean accuracy at the peak free (at most :data:`FREE_CLEAN` below ST's,
    on the means) in both or in neither (:func:`clean_free_reason`)."""
    reasons = (shape_reasons(meas, theo, rise_sd, fall_sd)
               + clean_free_reason(meas["clean_drop_to_peak"] <= FREE_CLEAN, theo))
    return not reasons, reasons


def theory_rho_shape(settings) -> tuple:
    """(shape, radius label): :func:`shape_summary` of T6's SAM-at-fixed-scale curve against rho (0 and
    15 radii from 0.01 to 1.6, log-spaced) at the theory settings' first robust radius."""
    tr, tc, trob, key = theory_rho(settings)
    return shape_summary(tr, tc, trob), key


def saliency_rows(data: dict) -> list:
    """(group, object_mass Stat, object_area Stat, image_corr Stat) for main-grid groups with a stored
    saliency entry (python -m deep.saliency)."""
    out = []
    for g in sorted(groups(data["main"]), key=_method_order):
        ents = [r["saliency"] for r in g.runs if r.get("saliency")]
        if ents:
            out.append((g, Stat.of([e["object_mass"] for e in ents]), Stat.of([e["object_area"] for e in ents]),
                        Stat.of([e["image_corr"] for e in ents])))
    return out


def saliency_verdict(rows: list) -> tuple:
    """(holds, text): the feature-perturbation view predicts ST < SAM < AT in object mass; checked for
    every SAM rho against the ST and AT groups."""
    st = next((r for r in rows if r[0].label == "st"), None)
    at = next((r for r in rows if r[0].label == "at"), None)
    sams = [r for r in rows if r[0].label == "sam"]
    if st is None or at is None or not sams:
        return None, "needs saliency entries of ST, SAM and AT runs"
    between = [r for r in sams if st[1].mean < r[1].mean < at[1].mean]
    text = (f"object mass ST {st[1].fmt(1, 3)}, AT {at[1].fmt(1, 3)}; SAM " +
            ", ".join(f"rho={r[0].strength:g} {r[1].fmt(1, 3)}" for r in sams) +
            f"; SAM between ST and AT for {len(between)} of {len(sams)} rho")
    return len(between) == len(sams), text


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
    t = train_time(g)
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
    gs = equal_cost_groups(data)
    if not any(g.label in ("fgsm-rs", "pgd1", "pgd2") for g in gs):
        raise SkipFigure("beyond_equal_cost skipped: no cheap-AT runs; produce them with: "
                         + EXPERIMENTS["equal-cost"])
    st = next((g for g in gs if g.label == "st"), None)
    st_time = train_time(st).mean if st is not None else None
    holds, text = equal_cost_verdict(data, cost)
    styles = _equal_cost_styles(gs)
    fig, axes = plt.subplots(1, 2, figsize=(pal.COLUMN_WIDTH_IN * 1.6, 2.3), sharey=True)
    for ax, key in zip(axes, (SMALL_EPS, MID_EPS)):
        for g in gs:
            a = acc(g, key)
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
    gains = arch_gains(data)
    if len(gains) < 2:
        raise SkipFigure("beyond_arch skipped: fewer than two architectures with ST and SAM runs; produce "
                         "them with: " + EXPERIMENTS["arch"])
    fig, axes = plt.subplots(1, 3, figsize=(pal.COLUMN_WIDTH_IN * 1.8, 2.2), sharey=True)
    xs = np.arange(len(gains))
    for ax, key, title in zip(axes, (None, SMALL_EPS, MID_EPS), ("clean", "PGD linf 0.02", "PGD linf 0.05")):
        for j, lab in enumerate(("st", "sam", "at")):
            groups = [dict(st=g[1], sam=g[2], at=g[3])[lab] for g in gains]
            vals = [acc(g, key) if g is not None else None for g in groups]
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
    holds, text = arch_verdict(gains)
    return FigureResult("beyond_arch", "Architectures: does SAM gain robustness over ST for each?", files,
                        "Fashion-MNIST, CPU preset: clean and PGD-10 robust accuracy of ST, SAM (rho 0.1) and "
                        "PGD-10 AT (eps 0.1) per architecture (ResNet18 = PreActResNet-18 of the main grid); "
                        "mean and sd over seeds.",
                        _verdict(holds, ("SAM gains on every architecture: " if holds else
                                         "SAM does not gain on every architecture: ") + text))


@functools.lru_cache(maxsize=4)   # one build asks twice (the rho figure and the converged rho sweep)
def theory_rho(settings):
    """T6 against rho: (radii, clean, robust at the first robust radius, that radius's label), rho = 0 (ST)
    first; tuples, computed once per (frozen) settings."""
    rhos = [0.0] + list(np.geomspace(0.01, 1.6, 15))
    rows = [r for r in th.method_curve(settings, "sam", rhos) if math.isfinite(r["clean"])]
    key = settings.eval_keys[0]
    return (tuple(r["strength"] for r in rows), tuple(r["clean"] for r in rows),
            tuple(r["robust"][key] for r in rows), key)


def _measured_rho_panel(ax, st, sams, zero) -> None:
    """Clean and PGD accuracy of SAM against rho (log axis), ST as horizontal lines, the rho = 0 control
    (when run) as a grey dot at the left edge."""
    rhos = [r for r, _ in sams]
    for key, style, lab in ((None, "-", "clean"), (SMALL_EPS, "--", "PGD linf 0.02"),
                            (MID_EPS, ":", "PGD linf 0.05")):
        m = [acc(g, key) for _, g in sams]
        ax.errorbar(rhos, [100 * s.mean for s in m], yerr=[100 * s.sd for s in m], color=COLORS["sam"],
                    linestyle=style, marker="s", markersize=3, capsize=1.5, label=lab)
        ax.axhline(100 * acc(st, key).mean, color="k", linestyle=style, linewidth=0.7)
        if zero is not None:
            z = acc(zero, key)
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
    st, sams = rho_points(data)
    if len(sams) < 5 or st is None:
        raise SkipFigure("beyond_rho skipped: fewer than 5 SAM radii; produce them with: "
                         + EXPERIMENTS["rho-sweep"])
    rhos = [r for r, _ in sams]
    fig, axes = plt.subplots(1, 2, figsize=(pal.COLUMN_WIDTH_IN * 1.6, 2.3))
    _measured_rho_panel(axes[0], st, sams, rho_zero(data))
    tr, tc, trob, key = theory_rho(ctx.settings)
    _theory_rho_panel(axes[1], tr, tc, trob, key)
    fig.tight_layout()
    files = save(fig, ctx.out_dir, "beyond_rho", ctx.formats)
    meas = shape_summary([0.0] + rhos, [acc(st).mean] + [acc(g).mean for _, g in sams],
                            [acc(st, SMALL_EPS).mean] + [acc(g, SMALL_EPS).mean for _, g in sams])
    theo = shape_summary(tr, tc, trob)
    stats = [acc(st, SMALL_EPS)] + [acc(g, SMALL_EPS) for _, g in sams]
    peak = stats[meas["peak_index"]]
    same, reasons = rho_shape_verdict(meas, theo, max(stats[0].sd, peak.sd), max(stats[-1].sd, peak.sd))
    text = (f"robust accuracy peaks at rho={meas['peak_at']:g} (measured, {SMALL_EPS}; clean accuracy there "
            f"{_below(meas['clean_drop_to_peak'])} ST's, so {'not ' if meas['clean_drop_to_peak'] > 0.005 else ''}"
            f"free) vs rho={theo['peak_at']:.3g} in T6 ({key}; clean {_below(theo['clean_drop_to_peak'])} ST's); "
            f"at the largest rho, robust {100 * meas['robust_end_minus_peak']:+.1f} pts from the peak (T6: "
            f"{100 * theo['robust_end_minus_peak']:+.1f})"
            + ("; both rise then fall beyond 2 seed sds, clean cost alike" if same else
               "; " + "; ".join(reasons)))
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
    order = sorted(pick, key=lambda k: (EQUAL_COST_ORDER.index(k[0]) if k[0] in EQUAL_COST_ORDER else 9,
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
    rows = saliency_rows(data)
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
    holds, text = saliency_verdict(rows)
    return FigureResult("beyond_saliency", "What the models look at: input-gradient maps", files,
                        "Left: -d loss / d x of seed-0 models on the same first test images (red: raises the "
                        "true class; each map scaled to max 1). Right: fraction of the gradient mass |g| on the "
                        "object (pixels > 0.1) per configuration, mean and sd over seeds (dotted: the object's "
                        "area, the value of a map that ignores the image). python -m deep.saliency, 1000 images.",
                        _verdict(holds, ("As predicted (ST < SAM < AT): " if holds else
                                         "Not as predicted (ST < SAM < AT): ") + text))


def beyond_section(ctx: FigureContext, report_path, number: int = 1) -> BeyondSection:
    """Figures and text of the section; figures numbered B<number>, B<number + 1>, ..."""
    data = load_beyond(ctx.results_dir)
    cost = _load_cost(ctx.results_dir)
    base = Path(report_path).parent.resolve()
    sec = BeyondSection()
    lines = ["## Beyond the paper (Fashion-MNIST, CPU preset; short training, not converged)", "",
             "Four questions the paper leaves open, on the settings of the real-data grid (PreActResNet-18 "
             "width 16, 10,000 training images, 6 epochs, bf16 training; PGD-10 best iterate on 2,000 test "
             "images; AutoAttack cpu subset on the first 50). Commands: " +
             "; ".join(f"`{c}`" for c in EXPERIMENTS.values()) + "; `python -m deep.cost`; "
             "`python -m deep.saliency results/deep/fashion-mnist`.", ""]
    h, rows = equal_cost_rows(data, cost)
    lines += ["### Equal cost", "", markdown_table(h, rows), ""]
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
    gains = arch_gains(data)
    rows = [[a, str(len(sam.runs)), acc(st).fmt(), acc(sam).fmt(), acc(st, SMALL_EPS).fmt(),
             acc(sam, SMALL_EPS).fmt(), f"{100 * gain.mean:+.1f}",
             acc(at, SMALL_EPS).fmt() if at else "-"] for a, st, sam, at, gain, _ in gains]
    head = ["architecture", "seeds", "ST clean", "SAM clean", f"ST {SMALL_EPS}", f"SAM {SMALL_EPS}",
            "SAM gain (pts)", f"AT {SMALL_EPS}"]
    return ["### Architectures", "", markdown_table(head, rows), ""] if rows else []


def _rho_table(data) -> list:
    st, sams = rho_points(data)
    if not sams:
        return []
    head = ["rho", "seeds", "clean", f"PGD {SMALL_EPS}", f"PGD {MID_EPS}", "train time (s)"]
    rows = [["0 (ST)", str(len(st.runs)), acc(st).fmt(), acc(st, SMALL_EPS).fmt(),
             acc(st, MID_EPS).fmt(), f"{train_time(st).mean:.0f}"]] if st else []
    zero = rho_zero(data)
    if zero is not None:
        rows.append(["0 (SAM, control)", str(len(zero.runs)), acc(zero).fmt(), acc(zero, SMALL_EPS).fmt(),
                     acc(zero, MID_EPS).fmt(), f"{train_time(zero).mean:.0f}"])
    rows += [[f"{r:g}", str(len(g.runs)), acc(g).fmt(), acc(g, SMALL_EPS).fmt(), acc(g, MID_EPS).fmt(),
              f"{train_time(g).mean:.0f}"] for r, g in sams]
    return ["### rho sweep", "", markdown_table(head, rows), ""]


def _saliency_table(data) -> list:
    rows = [[g.name, str(m.n), m.fmt(1, 3), a.fmt(1, 3), c.fmt(1, 3)] for g, m, a, c in saliency_rows(data)]
    head = ["configuration", "seeds", "object mass", "object area", "gradient-image corr."]
    return ["### Saliency", "", markdown_table(head, rows), ""] if rows else []
