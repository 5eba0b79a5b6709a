"""Beyond the paper (docs/protocol.md, "Beyond the paper"): the data, verdicts and tables of four
questions, as pure functions of the saved runs (raw result dicts of deep.run).

* equal cost: SAM against cheap AT (fgsm-rs, pgd1, pgd2) and PGD-10 AT at measured training cost;
* architectures: SAM's robust gain over ST for PreActResNet-18, an MLP, a small CNN and a small ViT;
* rho sweep: clean and robust accuracy of SAM against rho, with the linear theory's T6 shape;
* saliency: how image-like the input gradients of ST, SAM and AT are (deep.saliency).

Runs come from ``<results>/deep/<dataset>/`` (the main grid: ST, SAM, AT of PreActResNet-18) and
``<results>/beyond/<experiment>/<dataset>/`` (EXPERIMENTS). Every verdict is computed from the numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from deep.archs import DEFAULT_ARCH
from deep.evaluate import read_run_json
from deep.aggregate import group_runs, method_label

from .aggregate import Stat
from .report import markdown_table

__all__ = ["EXPERIMENTS", "BEYOND_DATASET", "Group", "load_beyond", "groups", "acc", "equal_cost_rows",
           "equal_cost_verdict", "arch_gains", "arch_verdict", "rho_points", "rho_zero", "saliency_rows",
           "saliency_verdict", "train_time", "SMALL_EPS", "MID_EPS"]

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


# ----------------------------------------------------------------------------------------- equal cost

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


def _cost_text(a: Group, b: Group, cost: dict | None) -> str:
    rel = (cost or {}).get("relative", {})
    if a.label in rel and b.label in rel:
        return f"measured step cost x{rel[a.label]:.2f} vs x{rel[b.label]:.2f} ST (python -m deep.cost)"
    return f"train time {train_time(a).mean:.0f} s vs {train_time(b).mean:.0f} s (runs under different machine load)"


def equal_cost_verdict(data: dict, cost: dict | None = None) -> tuple:
    """(holds, text) for "SAM can stand in for AT at equal cost": True when the best SAM configuration
    matches or beats every cheap AT variant at the mid eps (PGD) while costing no more; computed."""
    gs = equal_cost_groups(data)
    sams = [g for g in gs if g.label == "sam" and acc(g, MID_EPS).n]
    cheap = [g for g in gs if g.label in ("fgsm-rs", "pgd1", "pgd2") and acc(g, MID_EPS).n]
    if not sams or not cheap:
        return None, "not enough runs (needs SAM and at least one cheap AT variant)"
    best_sam = max(sams, key=lambda g: acc(g, MID_EPS).mean)
    best_cheap = max(cheap, key=lambda g: acc(g, MID_EPS).mean)
    s, c = acc(best_sam, MID_EPS), acc(best_cheap, MID_EPS)
    sc, cc = acc(best_sam), acc(best_cheap)
    holds = s.mean >= c.mean
    small_sam = max(sams, key=lambda g: acc(g, SMALL_EPS).mean)
    small_cheap = max(cheap, key=lambda g: acc(g, SMALL_EPS).mean)
    text = (f"best SAM ({best_sam.name}) PGD {MID_EPS} {s.fmt()} vs best cheap AT ({best_cheap.name}) "
            f"{c.fmt()}; clean {sc.fmt()} vs {cc.fmt()}; {_cost_text(best_sam, best_cheap, cost)}; at {SMALL_EPS}: best SAM ({small_sam.name}) "
            f"{acc(small_sam, SMALL_EPS).fmt()} vs {small_cheap.name} {acc(small_cheap, SMALL_EPS).fmt()}; "
            f"highest clean: SAM {max(acc(g).mean for g in sams) * 100:.1f} vs cheap AT "
            f"{max(acc(g).mean for g in cheap) * 100:.1f}")
    return holds, text


# -------------------------------------------------------------------------------------- architectures

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


# ------------------------------------------------------------------------------------------ rho sweep

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
    return {"peak_at": xs[i], "peak_robust": robust[i], "interior": 0 < i < len(xs) - 1,
            "clean_drop_to_peak": clean[0] - clean[i], "robust_end_minus_peak": robust[-1] - robust[i]}


# ------------------------------------------------------------------------------------------- saliency

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


def table(header, rows) -> str:
    return markdown_table(header, rows)
