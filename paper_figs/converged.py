"""The converged Fashion-MNIST evidence (issue 18; docs/protocol.md, "Converged protocol"): data, verdicts,
figure and report section in one module.

Reads the runs of ``deep.run --profile converged`` (result JSONs, copied under ``results/converged/<device>/``;
the doubled-budget runs of the plateau test in its ``plateau/`` subfolder) and their worst-case evaluations
(``deep.evaluate --attacks worst:cpu`` / ``worst:standard``: per image, PGD-10 best iterate and AutoAttack
both failed to break it).

Verdicts follow the statistics: each claim is judged on the paired-by-seed difference (SAM - ST, AT - SAM)
with a two-sided 95% interval, mean +- t_{0.975, n-1} sd / sqrt(n) over the n seeds both runs have:

* holds when the whole interval is on the claim's side of its threshold, fails when the whole interval is on
  the other side, undecided when it covers the threshold (or n < 2);
* (a) SAM - ST robust accuracy at the small radius (l_inf 0.02) > 0 points;
* (b) "no clean cost": SAM - ST clean accuracy > -0.5 points;
* (c) AT - SAM robust accuracy at the larger radius (l_inf 0.05) > 0 and AT - SAM clean accuracy < 0;
* (d) SAM's measured step cost relative to ST's is below AT's (``python -m deep.cost``: median of interleaved
  rounds; no interval over seeds, the cost does not depend on the seed);
* (e) equal cost: SAM at the radius fixed in advance (``beyond.EQUAL_COST_RHO``) against each cheap AT variant
  (deep.train.AT_VARIANTS) whose measured step cost is at most SAM's: SAM - cheap AT robust accuracy at the
  larger radius > 0 ("SAM stands in for cheap AT") and SAM - cheap AT clean accuracy > 0. Nothing is chosen on
  the test images: every radius and eps is fixed before training; a costlier variant is listed, not judged.
  Its runs sit in the folder's ``equal-cost/`` subfolder.

Robust numbers are the per-image worst case where every run of the comparison has one, else PGD-10. A
gradient-masking flag (PGD-10 minus the worst case, in points, mean over the runs involved) larger than the
effect a verdict rests on makes that verdict undecided.

The plateau test: with the epoch budget doubled (one seed), the final clean accuracy moves by less than
PLATEAU_CLEAN points and the robust accuracy at the headline radius by less than PLATEAU_ROBUST points.
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from deep.aggregate import group_key
from deep.archs import DEFAULT_ARCH
from deep.record import read_record, record_files
from deep.train import AT_VARIANTS
from samrobust.tables import markdown_table

from .beyond import EQUAL_COST_RHO, FREE_CLEAN, clean_free_reason, shape_reasons, shape_summary, within_sam_cost

__all__ = ["Run", "load_runs", "folder_runs", "config_key", "config_label", "paired", "interval", "judge",
           "ClaimVerdict", "claims", "equal_cost_claims", "RhoSweep", "rho_sweep", "rho_sweep_block", "MIN_RHOS",
           "equal_cost_block", "arch_block", "stopped_note", "summary_header", "VERDICT_HEADER", "overview",
           "plateau_rows", "plateau_block", "plateau_intervals", "budget_rows", "plateau_epoch", "folder_note",
           "summary_rows", "curves_figure", "section", "plateau_cell", "PLATEAU_CLEAN", "PLATEAU_ROBUST", "SMALL",
           "LARGE", "CLEAN_TOL"]

PLATEAU_CLEAN = 0.5         # points
PLATEAU_ROBUST = 2.0        # points
CLEAN_TOL = -0.5            # claim (b): SAM - ST clean accuracy above this (points)
SMALL = "linf_0.02"         # claim (a)'s radius and the learning curves' headline radius
LARGE = "linf_0.05"         # claim (c)'s radius
WORST_KEYS = ("worst-cpu", "worst-standard")


@dataclass
class Run:
    """One finished run: what the tables and verdicts read from its result JSON (accuracies as fractions)."""
    run_id: str
    method: str                 # st | sam | at
    rho: Optional[float]
    eps: Optional[float]
    seed: int
    epochs: int
    width: int
    n_train: Optional[int]
    clean: float
    pgd: Dict[str, float]       # PGD-10 (deep.run's evaluation) on n_robust images
    n_robust: Optional[int]
    history: List[dict]
    worst: Dict[str, dict] = field(default_factory=dict)   # extra_evals' worst-case entries by key
    device: str = ""
    train_s: float = 0.0
    group: str = ""             # deep.aggregate.group_key of the result: equal for runs that differ in the seed only
    arch: str = DEFAULT_ARCH    # deep.archs name
    stopped_early: Optional[int] = None   # AT: the epoch whose weights the catastrophic-overfitting guard kept

    def robust(self, label: str, prefer: str = "worst-cpu") -> Tuple[Optional[float], str]:
        """(accuracy, source) at ``label``: the worst case of ``prefer`` when stored, else PGD-10."""
        w = self.worst.get(prefer)
        if w and label in (w.get("robust") or {}):
            return w["robust"][label], f"worst case n={w.get('n')}"
        if label in self.pgd:
            return self.pgd[label], f"PGD-10 n={self.n_robust or 'all'}"
        return None, "missing"

    def gap(self, label: str, key: str = "worst-cpu") -> Optional[float]:
        """PGD-10 minus worst case at ``label``, in points, on the worst case's images (None if absent)."""
        w = self.worst.get(key)
        return None if not w or label not in (w.get("gap_points") or {}) else float(w["gap_points"][label])


def _run(raw: dict, path: Path) -> Run:
    cfg = raw.get("config") or {}
    extra = raw.get("extra_evals") or {}
    return Run(run_id=raw.get("run_id", path.stem), method=raw["method"], rho=raw.get("rho"), eps=raw.get("eps"),
               seed=int(raw["seed"]), epochs=int(raw["epochs"]), width=int(cfg.get("width", 0)),
               n_train=cfg.get("n_train"), clean=float(raw["clean_acc"]), pgd=dict(raw.get("robust") or {}),
               n_robust=(raw.get("eval") or {}).get("n_robust"), history=list(raw.get("history") or []),
               worst={k: v for k, v in extra.items() if k in WORST_KEYS}, device=str(raw.get("device", "")),
               train_s=float(raw.get("wall_time_s") or 0.0), group=group_key(raw),
               arch=str(cfg.get("arch") or DEFAULT_ARCH), stopped_early=raw.get("stopped_early"))


def _read(p: Path) -> dict:
    """The deep.run result at ``p`` as a dict of the current record layout (deep.record.read_record);
    ValueError naming the file when it is not one."""
    return read_record(p).to_dict()


def load_runs(folder) -> List[Run]:
    """Every run JSON directly in ``folder`` (sorted by name); ValueError naming a file that is not a
    readable run."""
    out = []
    for p in record_files(folder):
        try:
            out.append(_run(_read(p), p))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(err if str(p) in str(err) else f"{p}: {err}") from None
    return out


def folder_runs(folder, loader=None) -> List[Run]:
    """``loader(folder)`` (default :func:`load_runs`) when ``folder`` is a directory, else no runs: a
    protocol folder's optional subfolders (plateau/, equal-cost/, arch/) may be absent."""
    return (loader or load_runs)(folder) if Path(folder).is_dir() else []


def config_key(r: Run) -> Tuple:
    """(architecture, method, rho, eps, width, training images, epochs): the doubled-budget run of a
    configuration is the one whose key differs in the epochs only, so ``config_key(r)[:-1]`` pairs them
    (:func:`plateau_rows`)."""
    return (r.arch, r.method, r.rho, r.eps, r.width, r.n_train, r.epochs)


def config_label(r: Run) -> str:
    """"SAM rho 0.1", "AT l_inf 0.1", "fgsm-rs AT l_inf 0.1", "ST"; prefixed by the architecture unless
    PreActResNet-18 ("cnn SAM rho 0.1")."""
    if r.method == "sam":
        label = f"SAM rho {r.rho:g}"
    elif r.method == "at":
        label = f"AT l_inf {r.eps:g}"
    elif r.method in AT_VARIANTS:
        label = f"{r.method} AT l_inf {r.eps:g}"
    else:
        label = "ST"
    return label if r.arch == DEFAULT_ARCH else f"{r.arch} {label}"


def _groups(runs: Sequence[Run]) -> Dict[Tuple, List[Run]]:
    """Runs grouped by the package's one rule (deep.aggregate.group_key: the seed is the only difference),
    keyed (method, rho, eps, group key), ST first, then SAM and AT by radius, then the cheap AT variants."""
    order = {"st": 0, "sam": 1, "at": 2, **{m: 3 + i for i, m in enumerate(AT_VARIANTS)}}
    out: Dict[Tuple, List[Run]] = {}
    for r in sorted(runs, key=lambda r: (order.get(r.method, 9), r.rho or 0, r.eps or 0, r.seed)):
        out.setdefault((r.method, r.rho, r.eps, r.group), []).append(r)
    return out


# ------------------------------------------------------------------------------------- statistics

def t_quantile(df: int, p: float = 0.975) -> float:
    """Student-t quantile (scipy.special.stdtrit)."""
    from scipy.special import stdtrit
    return float(stdtrit(df, p))


def interval(diffs: Sequence[float]) -> Tuple[float, float, float, int]:
    """(mean, low, high, n): the two-sided 95% t interval of the mean of ``diffs`` (low = high = mean for
    n = 1: no interval)."""
    n = len(diffs)
    m = statistics.mean(diffs)
    if n < 2:
        return m, m, m, n
    half = t_quantile(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return m, m - half, m + half, n


def judge(low: float, high: float, threshold: float, above: bool, n: int) -> str:
    """holds / fails / undecided for the claim "difference above (or below) threshold"."""
    if n < 2:
        return "undecided"
    if above:
        return "holds" if low > threshold else "fails" if high < threshold else "undecided"
    return "holds" if high < threshold else "fails" if low > threshold else "undecided"


def paired(a: Sequence[Run], b: Sequence[Run], value) -> List[float]:
    """value(run_a) - value(run_b) in points for every seed both have (value None: seed left out)."""
    bs = {r.seed: r for r in b}
    out = []
    for r in a:
        if r.seed in bs:
            va, vb = value(r), value(bs[r.seed])
            if va is not None and vb is not None:
                out.append(100 * (va - vb))
    return out


@dataclass
class ClaimVerdict:
    """One claim judged on paired-by-seed differences (holds / fails / undecided with its 95% t interval)."""
    claim: str
    scope: str
    measure: str
    n: int
    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    threshold: str
    verdict: str
    note: str = ""


def _source(runs: Sequence[Run], label: str) -> str:
    """"worst" when every run has the worst case at ``label``, else "pgd"."""
    return "worst" if all(r.robust(label)[1].startswith("worst") for r in runs) else "pgd"


def _rob(src: str, label: str):
    if src == "worst":
        return lambda r: r.robust(label)[0]
    return lambda r: r.pgd.get(label)


def _mask_gap(runs: Sequence[Run], label: str) -> Optional[float]:
    gaps = [g for g in (r.gap(label) for r in runs) if g is not None]
    return statistics.mean(gaps) if gaps else None


def _diff_verdict(cid, scope, measure, diffs, thr, above, thr_text, gap=None) -> ClaimVerdict:
    if not diffs:
        return ClaimVerdict(cid, scope, measure, 0, None, None, None, thr_text, "undecided", "no paired seeds")
    m, lo, hi, n = interval(diffs)
    v = judge(lo, hi, thr, above, n)
    note = ""
    if gap is not None and gap > abs(m - thr):
        v, note = "undecided", f"masking flag: PGD-10 - worst case = {gap:.1f} points > effect {abs(m - thr):.1f}"
    elif gap is not None:
        note = f"PGD-10 - worst case {gap:.1f} points"
    return ClaimVerdict(cid, scope, measure, n, m, lo, hi, thr_text, v, note)


def claims(runs: Sequence[Run], cost: Optional[dict] = None) -> List[ClaimVerdict]:
    """The paper's claims (a)-(d) on the runs of one protocol (module docstring)."""
    groups = _groups(runs)
    st = next((g for k, g in groups.items() if k[0] == "st"), [])
    sams = [g for k, g in groups.items() if k[0] == "sam"]
    ats = [g for k, g in groups.items() if k[0] == "at"]
    out = []
    for sam in sams:
        scope = f"{config_label(sam[0])} vs ST"
        src = _source(list(sam) + list(st), SMALL)
        out.append(_diff_verdict("a", scope, f"robust {SMALL} ({'worst case' if src == 'worst' else 'PGD-10'})",
                                 paired(sam, st, _rob(src, SMALL)), 0.0, True, "> 0",
                                 gap=_mask_gap(sam, SMALL)))
        out.append(_diff_verdict("b", scope, "clean", paired(sam, st, lambda r: r.clean), CLEAN_TOL, True,
                                 f"> {CLEAN_TOL}"))
    for at in ats:
        for sam in sams:
            scope = f"{config_label(at[0])} vs {config_label(sam[0])}"
            src = _source(list(at) + list(sam), LARGE)
            out.append(_diff_verdict("c", scope, f"robust {LARGE} ({'worst case' if src == 'worst' else 'PGD-10'})",
                                     paired(at, sam, _rob(src, LARGE)), 0.0, True, "> 0",
                                     gap=_mask_gap(list(sam), LARGE)))
            out.append(_diff_verdict("c", scope, "clean", paired(at, sam, lambda r: r.clean), 0.0, False, "< 0"))
    if cost and "relative" in cost:
        rel = cost["relative"]
        if "sam" in rel and "at" in rel:
            holds = rel["sam"] < rel["at"]
            out.append(ClaimVerdict("d", "SAM vs AT", "step cost / ST's (deep.cost, median of interleaved rounds)", 0,
                               rel["sam"], None, rel["at"], "SAM < AT", "holds" if holds else "fails",
                               f"SAM x{rel['sam']:.2f}, AT x{rel['at']:.2f} ST's step ({_cost_where(cost)})"))
    return out


def equal_cost_claims(runs: Sequence[Run], cheap: Sequence[Run], cost: Optional[dict] = None) -> List[ClaimVerdict]:
    """Claim (e) (module docstring): SAM rho ``EQUAL_COST_RHO`` of ``runs`` against each cheap AT configuration
    of ``cheap``, paired by seed. A variant whose measured step cost (``cost["relative"]``, deep.cost) exceeds
    SAM's gets one "not judged" row saying so; without a measured cost for both, the variant is judged and the
    note says that the cost was not checked. The masking flag is the mean PGD-10 - worst-case gap over the runs
    of both sides."""
    sam = next((g for k, g in _groups(runs).items() if k[0] == "sam" and k[1] == EQUAL_COST_RHO), [])
    rel = (cost or {}).get("relative", {})
    out = []
    for key, g in _groups(cheap).items():
        if key[0] not in AT_VARIANTS:
            continue
        scope = f"SAM rho {EQUAL_COST_RHO:g} vs {config_label(g[0])}"
        c_sam, c_cheap = rel.get("sam"), rel.get(key[0])
        within = within_sam_cost(cost, key[0])
        if within is False:
            out.append(ClaimVerdict("e", scope, "step cost / ST's", 0, None, None, None, "<= SAM's", "not judged",
                                    f"{key[0]} x{c_cheap:.2f} > SAM x{c_sam:.2f} ST's step: costlier than SAM"))
            continue
        cost_note = ("cost not measured" if within is None
                     else f"step cost {key[0]} x{c_cheap:.2f} <= SAM x{c_sam:.2f}")
        src = _source(list(sam) + list(g), LARGE)
        rob = _diff_verdict("e", scope, f"robust {LARGE} ({'worst case' if src == 'worst' else 'PGD-10'})",
                            paired(sam, g, _rob(src, LARGE)), 0.0, True, "> 0", gap=_mask_gap(list(sam) + list(g), LARGE))
        rob.note = "; ".join(x for x in (rob.note, cost_note) if x)
        out.append(rob)
        out.append(_diff_verdict("e", scope, "clean", paired(sam, g, lambda r: r.clean), 0.0, True, "> 0"))
    return out


def _cost_where(cost: dict) -> str:
    s = cost.get("settings") or {}
    return ", ".join(f"{k} {s[k]}" for k in ("dataset", "width", "threads", "rounds") if k in s)


# -------------------------------------------------------------------------------------- rho sweep

#: a folder's runs make a rho sweep when PreActResNet-18 SAM has at least this many radii beside ST
#: (the short preset's figure needs 5 too: beyond.fig_rho)
MIN_RHOS = 5


@dataclass
class RhoSweep:
    """The rho sweep of one converged folder against T6's shape (beyond.shape_reasons): per radius (ST
    first, rho 0) the seeds, the seed-mean clean and robust accuracy at SMALL and their sd over seeds (None
    with one seed); the peak; the clean cost there judged like claim (b); the verdict and its reasons."""
    rows: List[dict]
    measure: str                # "worst case on 500 images", "PGD-10 on 1000 images" ("worst case" when mixed)
    peak_rho: float
    clean_at_peak: ClaimVerdict
    verdict: str                # "same shape" | "different shape" | "undecided"
    reasons: List[str]


def rho_sweep(runs: Sequence[Run], theo: dict) -> Optional[RhoSweep]:
    """The measured SAM-vs-rho curve of ``runs`` (PreActResNet-18 ST and SAM; robust accuracy the worst case
    at SMALL when every run has it, else PGD-10) against ``theo`` (beyond.theory_rho_shape's shape of T6).

    The shape (an interior robust peak; rise from ST and fall to the largest rho each beyond two seed sds, the
    sd the larger of the two points' where a point has two or more seeds) is beyond.shape_reasons'. The clean
    cost at the peak is claim (b)'s paired SAM - ST interval with its -0.5-point threshold: holds = free,
    fails = not free, undecided (or one seed) = unknown, and it must match T6's (beyond.clean_free_reason).
    Verdict "different shape" with any reason, else "undecided" while the clean cost is unknown, else "same
    shape". None with fewer than MIN_RHOS SAM radii or no ST."""
    pre = [r for r in runs if r.arch == DEFAULT_ARCH and r.method in ("st", "sam")]
    groups = list(_groups(pre).values())
    st = next((g for g in groups if g[0].method == "st"), None)
    sams = sorted((g for g in groups if g[0].method == "sam" and g[0].rho), key=lambda g: g[0].rho)
    if st is None or len(sams) < MIN_RHOS:
        return None
    curve = [st] + sams                          # rho = 0 (ST) first, then SAM by rho
    src = _source([r for g in curve for r in g], SMALL)
    rob = _rob(src, SMALL)
    rows = []
    for g in curve:
        c, r = [x.clean for x in g], [rob(x) for x in g]
        rows.append(dict(rho=g[0].rho if g[0].method == "sam" else 0.0, label=config_label(g[0]), seeds=len(g),
                         clean=statistics.mean(c), robust=statistics.mean(r),
                         robust_sd=statistics.stdev(r) if len(r) > 1 else None))
    meas = shape_summary([x["rho"] for x in rows], [x["clean"] for x in rows], [x["robust"] for x in rows])
    peak = rows[meas["peak_index"]]
    peak_group = curve[meas["peak_index"]]

    def sd(*pts):
        return max([p["robust_sd"] for p in pts if p["robust_sd"] is not None], default=0.0)

    reasons = shape_reasons(meas, theo, sd(rows[0], peak), sd(rows[-1], peak))
    clean = _diff_verdict("b", f"{peak['label']} vs ST", "clean", paired(peak_group, st, lambda r: r.clean),
                          CLEAN_TOL, True, f"> {CLEAN_TOL}")
    if clean.verdict in ("holds", "fails"):
        reasons += clean_free_reason(clean.verdict == "holds", theo)
        verdict = "different shape" if reasons else "same shape"
    else:
        verdict = "different shape" if reasons else "undecided"
    where = {x.robust(SMALL)[1] if src == "worst" else f"PGD-10 n={x.n_robust or 'all'}"
             for g in curve for x in g}
    measure = (where.pop() if len(where) == 1 else "worst case" if src == "worst" else "PGD-10").replace("n=", "on ")
    return RhoSweep(rows, measure + (" images" if " on " in measure else ""), peak["rho"], clean, verdict, reasons)


def rho_sweep_block(sweep: RhoSweep, theo: dict, key: str) -> List[str]:
    """The report lines of :func:`rho_sweep`: a table per radius and the verdict against T6."""
    def pm(x):
        return f"{100 * x['robust']:.1f}" + ("" if x["robust_sd"] is None else f" ± {100 * x['robust_sd']:.1f}")
    c = sweep.clean_at_peak
    cost = ("one seed: no interval" if c.n < 2 else f"{c.mean:+.2f} [{c.low:+.2f}, {c.high:+.2f}], n={c.n}")
    t_free = theo["clean_drop_to_peak"] <= FREE_CLEAN
    lines = [f"**The rho sweep against T6** (PreActResNet-18 SAM at every radius of this budget beside ST; robust "
             f"= {sweep.measure} at {SMALL}; mean ± sd over seeds):", "",
             markdown_table(["rho", "seeds", "clean", f"robust {SMALL}"],
                            [["0 (ST)" if x["rho"] == 0 else f"{x['rho']:g}", str(x["seeds"]),
                              f"{100 * x['clean']:.1f}", pm(x)] for x in sweep.rows]), "",
             f"Robust accuracy peaks at rho {sweep.peak_rho:g} (T6: {theo['peak_at']:.3g} at {key}); clean cost "
             f"there, SAM - ST: {cost}, claim (b)'s rule: **{c.verdict}** (T6: "
             f"{'free' if t_free else 'not free'}, {100 * theo['clean_drop_to_peak']:.2f} points). "
             f"Verdict: **{sweep.verdict}**" + ("" if not sweep.reasons else " (" + "; ".join(sweep.reasons) + ")")
             + "."]
    return lines


# ---------------------------------------------------------------------------------------- plateau

def plateau_rows(runs: Sequence[Run], doubled: Sequence[Run]) -> List[dict]:
    """One row per doubled-budget run: its configuration's run of the same seed at the protocol's budget,
    the changes of clean accuracy and of robust accuracy at the headline radius (points), whether both are
    inside the plateau tolerances, and the sd over seeds of that robust accuracy at the protocol's budget (the
    noise a one-seed robust change is to be read against; None with one seed).

    Robust accuracy is the reported one: the per-image worst case of PGD-10 and AutoAttack when both runs
    have it (``measure`` "worst case"; the sd then over the seeds that have it), else PGD-10 (``measure``
    "PGD-10"). ``pgd`` keeps the PGD-10 pair either way (:func:`budget_rows` compares on it)."""
    key = (lambda r: config_key(r)[:-1])          # the configuration but its epochs
    base = {(key(r), r.seed): r for r in runs}
    rows = []
    for d in doubled:
        r = base.get((key(d), d.seed))
        if r is None:
            continue
        pgd = (r.pgd.get(SMALL), d.pgd.get(SMALL))
        src = _source((r, d), SMALL)                 # the claims' rule: worst case when both have it, else PGD-10
        pick = _rob(src, SMALL)
        rob = (pick(r), pick(d))
        # in points, rounded to 1e-6 so that a change of exactly the tolerance (10 of 500 images: 2 points) is
        # not let through by the binary rounding of 100 * (0.06 - 0.04) = 1.9999999999999996
        dc = round(100 * (d.clean - r.clean), 6)
        dr = round(100 * (rob[1] - rob[0]), 6) if None not in rob else None
        ok = abs(dc) < PLATEAU_CLEAN and dr is not None and abs(dr) < PLATEAU_ROBUST
        seeds = [100 * pick(x) for x in runs if key(x) == key(d) and _source((x,), SMALL) in (src, "worst")
                 and pick(x) is not None]         # a worst-case sd: only the seeds that have the worst case
        rows.append(dict(label=config_label(d), arch=d.arch, method=d.method, seed=d.seed, epochs=(r.epochs, d.epochs),
                         clean=(r.clean, d.clean),
                         d_clean=dc, robust=rob, pgd=pgd, measure="worst case" if src == "worst" else "PGD-10",
                         d_robust=dr, plateau=ok,
                         robust_seed_sd=statistics.stdev(seeds) if len(seeds) > 1 else None))
    return rows


def _inside(iv, tol: float) -> bool:
    """The interval (mean, low, high, n) lies inside (-tol, +tol)."""
    return iv is not None and -tol < iv[1] and iv[2] < tol


def _outside(iv, tol: float) -> bool:
    """The interval lies wholly outside (-tol, +tol)."""
    return iv is not None and (iv[1] >= tol or iv[2] <= -tol)


def plateau_intervals(prow: Sequence[dict]) -> List[dict]:
    """The plateau test over seeds, for each configuration with two or more doubled-budget seeds (rows of
    :func:`plateau_rows`): the 95% t interval of the paired change of clean accuracy and of robust accuracy
    (points, same measure in every row of the configuration, else None). Verdict "yes" when both intervals
    lie inside (-tolerance, +tolerance), "no" when either lies wholly outside it, else "undecided"."""
    by: Dict[str, List[dict]] = {}
    for p in prow:
        by.setdefault(p["label"], []).append(p)
    out = []
    for label, ps in by.items():
        if len(ps) < 2:
            continue
        c = interval([p["d_clean"] for p in ps])
        same = len({p["measure"] for p in ps}) == 1 and all(p["d_robust"] is not None for p in ps)
        r = interval([p["d_robust"] for p in ps]) if same else None
        verdict = ("yes" if _inside(c, PLATEAU_CLEAN) and _inside(r, PLATEAU_ROBUST) else
                   "no" if _outside(c, PLATEAU_CLEAN) or _outside(r, PLATEAU_ROBUST) else "undecided")
        out.append(dict(label=label, n=len(ps), epochs=ps[0]["epochs"], clean=c, robust=r,
                        measure=ps[0]["measure"] if same else None, verdict=verdict))
    return out


def budget_rows(prow: Sequence[dict]) -> List[dict]:
    """Whether a one-seed difference against ST keeps its sign when the budget doubles: for each row of
    :func:`plateau_rows` that is not ST's, paired with ST's row of the same seed and budgets, the method - ST
    differences of PGD-10 at the headline radius and of clean accuracy (points) at both budgets, within one
    architecture. ``same_sign``: the robust difference has the same sign at both budgets (None when one is
    missing)."""
    st = {(p["arch"], p["seed"], p["epochs"]): p for p in prow if p["method"] == "st"}
    out = []
    for p in prow:
        s = st.get((p["arch"], p["seed"], p["epochs"]))
        if p["method"] == "st" or s is None:
            continue
        rob = [None if p["pgd"][i] is None or s["pgd"][i] is None else 100 * (p["pgd"][i] - s["pgd"][i])
               for i in (0, 1)]
        cln = [100 * (p["clean"][i] - s["clean"][i]) for i in (0, 1)]
        same = None if None in rob else (rob[0] > 0) == (rob[1] > 0)
        out.append(dict(label=p["label"], seed=p["seed"], epochs=p["epochs"], robust=tuple(rob), clean=tuple(cln),
                        same_sign=same))
    return out


def plateau_epoch(group: Sequence[Run], tol: float = PLATEAU_CLEAN) -> Optional[int]:
    """First epoch from which the seed-mean test clean accuracy stays within ``tol`` points of its final
    value (learning curves; None without curves)."""
    curves = [[h.get("test_clean_acc") for h in r.history] for r in group]
    if not curves or any(c is None for cur in curves for c in cur):
        return None
    n = min(len(c) for c in curves)
    mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
    for i in range(n):
        if all(abs(100 * (m - mean[-1])) < tol for m in mean[i:]):
            return i + 1
    return n


# ----------------------------------------------------------------------------------------- tables

def _pm(vals: Sequence[Optional[float]]) -> str:
    vals = [100 * v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


#: PGD-10 columns of the summary table, in this order (others that the runs have follow)
PGD_ORDER = (SMALL, LARGE, "l2_0.5")


def pgd_labels(runs: Sequence[Run]) -> List[str]:
    """The PGD-10 radii of ``runs``: PGD_ORDER first, then any other in sorted order."""
    have = {k for r in runs for k in r.pgd}
    return [k for k in PGD_ORDER if k in have] + sorted(have - set(PGD_ORDER))


def _aa_seconds(w: dict) -> float:
    """The seconds AutoAttack took in one worst-case evaluation, summed over its radii."""
    return sum((w.get("seconds_per_attack") or {}).values())


def summary_rows(runs: Sequence[Run]) -> List[List[str]]:
    """Per configuration: seeds, clean, PGD-10 at each radius of :func:`pgd_labels`, and at SMALL and LARGE
    the worst case with its PGD-only and AutoAttack-only numbers on the same images (mean ± sd over seeds),
    the seconds AutoAttack took per model (both radii, mean ± sd over seeds) and the plateau epoch."""
    labels = pgd_labels(runs)
    rows = []
    for g in _groups(runs).values():
        row = [config_label(g[0]), str(len(g)), _pm([r.clean for r in g])]
        row += [_pm([r.pgd.get(lab) for r in g]) for lab in labels]
        ws = [r.worst.get("worst-cpu") for r in g]
        for lab in (SMALL, LARGE):
            if all(w and lab in w.get("robust", {}) for w in ws):
                row.append(f"{_pm([w['pgd'][lab] for w in ws])} / {_pm([w['autoattack'][lab] for w in ws])} / "
                           f"**{_pm([w['robust'][lab] for w in ws])}** (n={ws[0]['n']}, {len(ws)} seed{'s' if len(ws) > 1 else ''})")
            else:
                row.append("not run")
        secs = [_aa_seconds(w) for w in ws if w]
        row.append("-" if not secs else f"{statistics.mean(secs):.0f}" if len(secs) == 1
                   else f"{statistics.mean(secs):.0f} ± {statistics.stdev(secs):.0f}")
        plat = plateau_epoch(g)
        row.append("-" if plat is None else str(plat))
        rows.append(row)
    return rows


def summary_header(runs: Sequence[Run]) -> List[str]:
    """The column names of :func:`summary_rows`."""
    return (["configuration", "seeds", "clean"] + [f"PGD-10 {lab}" for lab in pgd_labels(runs)]
            + [f"{SMALL}: PGD / AA / worst", f"{LARGE}: PGD / AA / worst", "AutoAttack s per model (both radii)",
               "plateau epoch"])


def _wall_ratios(runs: Sequence[Run]) -> Dict[str, float]:
    """Mean training wall time of each configuration relative to ST's mean (empty without ST runs)."""
    gs = {config_label(g[0]): statistics.mean(r.train_s for r in g) for g in _groups(runs).values()}
    st = gs.get("ST")
    return {k: v / st for k, v in gs.items()} if st else {}


def _para(text: Optional[str]) -> List[str]:
    """[text, ""] (a paragraph of report lines), or nothing when ``text`` is None or empty."""
    return [text, ""] if text else []


def stopped_note(runs: Sequence[Run]) -> Optional[str]:
    """One sentence naming the runs that the catastrophic-overfitting guard stopped (deep.train: a drop of the
    per-epoch PGD check below its best) with the guard's own words; None when none stopped."""
    out = []
    for r in runs:
        if r.stopped_early is None:
            continue
        why = next((h["co_stop"] for h in r.history if h.get("co_stop")), f"kept epoch {r.stopped_early}")
        last = max((int(h["epoch"]) for h in r.history), default=r.stopped_early)
        out.append(f"{config_label(r)} seed {r.seed} at epoch {last} of {r.epochs} ({why})")
    return None if not out else ("**Stopped early** by the catastrophic-overfitting guard, its numbers those of the "
                                 "kept weights: " + "; ".join(out) + ".")


def rho_sensitivity(runs: Sequence[Run], cheap: Sequence[Run], cost: Optional[dict] = None) -> Optional[str]:
    """Could another SAM radius have decided the robust half of claim (e)? The seed-mean robust accuracy at
    ``LARGE`` (worst case where every run has it, else PGD-10) of every SAM radius in ``runs`` beside the least
    robust cheap AT configuration that :func:`equal_cost_claims` judges. A check on the test images, not a
    choice: the verdict stays at ``EQUAL_COST_RHO``. None when either side is missing."""
    def mean_rob(g):
        src = _source(g, LARGE)
        vals = [v for v in map(_rob(src, LARGE), g) if v is not None]
        return (100 * statistics.mean(vals), src) if vals else (None, src)
    sams = sorted(((k[1], mean_rob(g)) for k, g in _groups(runs).items() if k[0] == "sam"), key=lambda t: t[0])
    sams = [(rho, m) for rho, m in sams if m[0] is not None]
    judged = [(config_label(g[0]), mean_rob(g)) for k, g in _groups(cheap).items()
              if k[0] in AT_VARIANTS and within_sam_cost(cost, k[0]) is not False]
    judged = [(lab, m) for lab, m in judged if m[0] is not None]
    if not sams or not judged:
        return None
    low_lab, (low, _) = min(judged, key=lambda t: t[1][0])
    beat = [rho for rho, (m, _) in sams if m >= low]
    what = " / ".join(sorted({{"worst": "worst case", "pgd": "PGD-10"}[src] for _, (_, src) in sams + judged}))
    return (f"Sensitivity to the fixed radius (a check on the test images, not a choice): robust accuracy at {LARGE} "
            f"({what}, seed means) of every SAM radius in the grid: "
            + ", ".join(f"rho {rho:g} {m:.1f}%" for rho, (m, _) in sams)
            + f"; the least robust cheap variant judged, {low_lab}: {low:.1f}%. "
            + ("No SAM radius in the grid reaches it, so no choice among them changes the robust half of (e)."
               if not beat else "SAM rho " + ", ".join(f"{r:g}" for r in beat) + " reaches it: the robust half of "
               "(e) depends on the radius fixed in advance."))


def equal_cost_block(runs: Sequence[Run], cheap: Sequence[Run], cost: Optional[dict] = None,
                     note: Optional[str] = None) -> List[str]:
    """Report lines of claim (e): the cheap AT runs beside SAM rho EQUAL_COST_RHO and AT of ``runs`` (same
    table as the section's), the measured step costs and the training wall times relative to ST, and the
    paired verdicts of :func:`equal_cost_claims`."""
    shown = [r for r in runs if (r.method == "sam" and r.rho == EQUAL_COST_RHO) or r.method == "at"] + list(cheap)
    rel = (cost or {}).get("relative", {})
    walls = _wall_ratios(list(runs) + list(cheap))
    costs = ", ".join(f"{m} x{rel[m]:.2f}" for m in ("sam", *AT_VARIANTS, "at") if m in rel)
    lines = [f"**Equal cost (claim e):** the cheap adversarial training variants (l_inf eps and SAM's rho {EQUAL_COST_RHO:g} "
             "fixed before training, so nothing is chosen on the test images) on the same profile, epoch budget and "
             "worst-case evaluation as the runs above:", ""]
    lines += _para(note) + [markdown_table(summary_header(shown), summary_rows(shown)), ""] + _para(stopped_note(shown))
    lines.append("Cost relative to ST: measured step cost (python -m deep.cost, " + (_cost_where(cost) if cost else "") + "): "
                 + (costs or "not measured") + "; training wall time of these runs (two runs at a time on two cores): "
                 + (", ".join(f"{k} x{v:.2f}" for k, v in walls.items() if k != "ST") or "-") + ".")
    lines += ["", markdown_table(VERDICT_HEADER, verdict_rows(equal_cost_claims(runs, cheap, cost))), ""]
    lines += _para(rho_sensitivity(runs, cheap, cost))
    return lines


def arch_block(runs: Sequence[Run], arch_runs: Sequence[Run], note: Optional[str] = None,
               doubled: Sequence[Run] = ()) -> List[str]:
    """Report lines of the architecture question at the section's budget: per architecture of ``arch_runs``
    the summary table, the plateau test of its doubled-budget runs (``doubled``: the ``arch/plateau/``
    subfolder; :func:`plateau_block`, which says so when there are none) and the claims (a)-(c) of
    :func:`claims` on that architecture's runs alone, paired by seed."""
    by: Dict[str, List[Run]] = {}
    for r in arch_runs:
        by.setdefault(r.arch, []).append(r)
    lines = ["**Other architectures (same claims, same budget):** " + ", ".join(sorted(by)) + " on the same data, "
             "epoch budget and worst-case evaluation as the runs above; each claim paired by seed within one "
             "architecture:", ""] + _para(note)
    rows = [row for _, rs in sorted(by.items()) for row in summary_rows(rs)]
    lines += [markdown_table(summary_header(arch_runs), rows), ""] + _para(stopped_note(arch_runs))
    lines += plateau_block(arch_runs, doubled) + [""]
    vs = []
    for arch, rs in sorted(by.items()):
        for v in claims(rs):
            v.scope = f"{arch}: {v.scope.replace(arch + ' ', '')}"
            vs.append(v)
    lines += [markdown_table(VERDICT_HEADER, verdict_rows(vs)), ""]
    return lines


def standard_rows(runs: Sequence[Run]) -> List[List[str]]:
    """Runs with the standard AutoAttack worst case: PGD / AA / worst at SMALL and LARGE, AA seconds."""
    rows = []
    for r in runs:
        w = r.worst.get("worst-standard")
        if not w:
            continue
        cells = [f"{100 * w['pgd'][lab]:.1f} / {100 * w['autoattack'][lab]:.1f} / **{100 * w['robust'][lab]:.1f}**"
                 if lab in w.get("robust", {}) else "-" for lab in (SMALL, LARGE)]
        rows.append([f"{config_label(r)} (seed {r.seed})", str(w.get("n"))] + cells + [f"{_aa_seconds(w):.0f}"])
    return rows


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:+.2f}"


#: the columns of every claims table (:func:`verdict_rows`)
VERDICT_HEADER = ["claim", "comparison", "measure", "n", "mean", "95% interval", "threshold", "verdict", "note"]


def verdict_rows(vs: Sequence[ClaimVerdict]) -> List[List[str]]:
    out = []
    for v in vs:
        if v.claim == "d":
            out.append([v.claim, v.scope, v.measure, "-", "-", "-", v.threshold, f"**{v.verdict}**", v.note])
            continue
        ci = "-" if v.n < 2 or v.low is None else f"[{v.low:+.2f}, {v.high:+.2f}]"
        out.append([v.claim, v.scope, v.measure, str(v.n), _fmt(v.mean), ci, v.threshold, f"**{v.verdict}**",
                    v.note])
    return out


# ----------------------------------------------------------------------------------------- figure

def curves_figure(groups: Dict[str, List[Run]], path_png: Path, title: str) -> Optional[Path]:
    """Learning curves: test clean accuracy every epoch and PGD-10 at SMALL on the curve images, mean ±
    sd over seeds per configuration; doubled-budget runs dashed. Written to ``path_png`` (and .pdf)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.get_cmap("tab10")
    for i, (label, runs) in enumerate(groups.items()):
        style = "--" if label.endswith("(2x epochs)") else "-"
        base = label.replace(" (2x epochs)", "")
        colour = colours(list(dict.fromkeys(lab.replace(" (2x epochs)", "") for lab in groups)).index(base))
        for ax, key in ((axes[0], "test_clean_acc"), (axes[1], "curve_robust")):
            pts: Dict[int, List[float]] = {}
            for r in runs:
                for h in r.history:
                    v = h.get(key)
                    if isinstance(v, dict):
                        v = v.get(SMALL)
                    if v is not None:
                        pts.setdefault(int(h["epoch"]), []).append(100 * v)
            if not pts:
                continue
            xs = sorted(pts)
            m = [statistics.mean(pts[x]) for x in xs]
            sd = [statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0.0 for x in xs]
            ax.plot(xs, m, style, marker="o", ms=3, color=colour, label=f"{label} (n={len(runs)})")
            ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=colour,
                            alpha=0.15, lw=0)
    axes[0].set(xlabel="epoch", ylabel="clean test accuracy (%)", title="clean, all 10,000 test images")
    axes[1].set(xlabel="epoch", ylabel=f"robust accuracy (%)",
                title=f"PGD-10 at {SMALL.replace('_', ' ')}, first 200 test images")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path_png = Path(path_png)
    with matplotlib.rc_context({"savefig.dpi": 130}):
        save(fig, path_png.parent, path_png.stem)  # atomic, PDF without a creation date; closes the figure
    return path_png


# ---------------------------------------------------------------------------------------- section

def _settings_line(runs: Sequence[Run]) -> str:
    r = runs[0]
    seeds = {config_label(g[0]): len(g) for g in _groups(runs).values()}
    hours = sum(x.train_s for x in runs) / 3600
    return (f"PreActResNet-18 width {r.width}, {r.n_train or 'all 60,000'} training images, {r.epochs} epochs for "
            f"every method (batch 128, lr 0.1 with x0.1 at 75% and 90%), bf16 training; device {r.device}; seeds: "
            + ", ".join(f"{k} {v}" for k, v in seeds.items())
            + f"; {hours:.2f} h of training in all (one process per run). Clean accuracy on all 10,000 test "
              f"images; PGD-10 (best iterate, 1 restart) on the first {r.n_robust} test images.")


def plateau_block(runs: Sequence[Run], doubled: Sequence[Run]) -> List[str]:
    """The report lines of the plateau test: one row per doubled-budget run (:func:`plateau_rows`), the
    failures named, the test over seeds (:func:`plateau_intervals`), the method - ST differences at both
    budgets (:func:`budget_rows`) and the configurations without a doubled run."""
    prow = plateau_rows(runs, doubled)
    lines = []
    lines += ["**Plateau test** (the epoch budget doubled, one row per doubled seed; passes when clean moves < "
              f"{PLATEAU_CLEAN} and robust accuracy at {SMALL} < {PLATEAU_ROBUST} points; robust = the worst case of "
              "PGD-10 and AutoAttack where both runs have it, else PGD-10):", ""]
    if prow:
        lines.append(markdown_table(["configuration", "seed", "epochs", "clean", "Δ clean", f"robust {SMALL}", "measure",
                             "Δ robust", "seed sd of robust", "plateau"],
                            [[p["label"], str(p["seed"]), f"{p['epochs'][0]} → {p['epochs'][1]}",
                              f"{100 * p['clean'][0]:.2f} → {100 * p['clean'][1]:.2f}", f"{p['d_clean']:+.2f}",
                              "-" if None in p["robust"] else
                              f"{100 * p['robust'][0]:.1f} → {100 * p['robust'][1]:.1f}", p["measure"],
                              "-" if p["d_robust"] is None else f"{p['d_robust']:+.1f}",
                              "-" if p["robust_seed_sd"] is None else f"{p['robust_seed_sd']:.1f}",
                              "**yes**" if p["plateau"] else "**no**"] for p in prow]))
        failed = [p for p in prow if not p["plateau"]]
        if failed:
            lines += ["", f"**Not at the plateau:** with twice the epochs, clean accuracy moved by "
                      + ", ".join(f"{p['d_clean']:+.2f} ({p['label']}, seed {p['seed']})" for p in failed)
                      + f" points and robust accuracy at {SMALL} by "
                      + ", ".join("-" if p["d_robust"] is None else f"{p['d_robust']:+.1f}" for p in failed)
                      + " points; the verdicts below hold for this budget, not for training to convergence."]
            noisy = [p for p in failed if abs(p["d_clean"]) < PLATEAU_CLEAN and p["d_robust"] is not None
                     and p["robust_seed_sd"] is not None and abs(p["d_robust"]) < 2 * p["robust_seed_sd"]]
            if noisy:
                lines += ["", "Of these, " + ", ".join(f"{p['label']} seed {p['seed']}" for p in noisy) + " passed on clean accuracy and "
                          "failed on a robust change smaller than two seed sds of that accuracy: one seed cannot "
                          "tell that change from seed noise."]
        else:
            lines += ["", "Every configuration tested passed the plateau test."]
        pint = plateau_intervals(prow)
        if pint:
            def iv_text(iv):
                return "-" if iv is None else f"{iv[0]:+.2f} [{iv[1]:+.2f}, {iv[2]:+.2f}]"
            lines += ["", f"**Plateau test over seeds** (paired change from the protocol's budget to twice it, 95% t "
                      f"interval over n seeds; at the plateau when both intervals lie inside ±{PLATEAU_CLEAN} "
                      f"(clean) and ±{PLATEAU_ROBUST} (robust) points, not when either lies wholly outside):", "",
                      markdown_table(["configuration", "n", "epochs", "Δ clean", f"Δ robust {SMALL}", "measure", "plateau"],
                             [[q["label"], str(q["n"]), f"{q['epochs'][0]} → {q['epochs'][1]}", iv_text(q["clean"]),
                               iv_text(q["robust"]), q["measure"] or "mixed",
                               {"yes": "**yes**", "no": "**no**"}.get(q["verdict"], q["verdict"])] for q in pint])]
        brow = budget_rows(prow)
        if brow:
            lines += ["", f"**Does the difference from ST depend on the budget?** Method - ST on the same seed, "
                      f"points, at the protocol's budget and at twice it (PGD-10 at {SMALL}; clean):", "",
                      markdown_table(["configuration", "seed", "epochs", f"PGD-10 {SMALL}: method - ST", "clean: method - ST",
                              "same sign"],
                             [[b["label"], str(b["seed"]), f"{b['epochs'][0]} → {b['epochs'][1]}",
                               " → ".join("-" if x is None else f"{x:+.1f}" for x in b["robust"]),
                               " → ".join(f"{x:+.2f}" for x in b["clean"]),
                               "-" if b["same_sign"] is None else ("yes" if b["same_sign"] else "**no**")]
                              for b in brow])]
        missing = sorted({config_label(g[0]) for g in _groups(runs).values()}
                         - {p["label"] for p in prow})
        if missing:
            lines += ["", "No doubled-budget run (plateau not tested): " + ", ".join(missing) + "."]
    else:
        lines.append("No doubled-budget runs: the plateau was not tested.")
    return lines


def section(folder, title: str, fig_path: Path, report_dir: Path, cost: Optional[dict] = None,
            theory_rho: Optional[Tuple[dict, str]] = None) -> Optional[str]:
    """The report section of one converged-protocol folder (None when it holds no runs). ``theory_rho``:
    (T6's shape, its radius label) from beyond.theory_rho_shape, for the rho sweep (:func:`rho_sweep`) of a
    folder that has one."""
    folder = Path(folder)
    runs = folder_runs(folder)
    if not runs:
        return None
    doubled = folder_runs(folder / "plateau")
    groups = {config_label(g[0]): g for g in _groups(runs).values()}
    groups.update({f"{config_label(g[0])} (2x epochs)": g for g in _groups(doubled).values()})
    png = curves_figure(groups, fig_path, title)
    note = folder_note(folder)
    lines = [f"### {title}", "", _settings_line(runs), ""] + _para(note) + [
             "Mean ± sd over seeds, accuracies in %. Worst case = per image, PGD-10 best iterate and AutoAttack "
             "(APGD-CE + APGD-T, 3 target classes, 100 iterations) both fail to break it, on the first n test "
             "images; shown as PGD-10 / AutoAttack / **worst case** on those images, with AutoAttack's time per "
             "model (one CPU thread). Plateau epoch: first epoch "
             f"from which the seed-mean clean test accuracy stays within {PLATEAU_CLEAN} points of its final "
             "value.", "",
             markdown_table(summary_header(runs), summary_rows(runs)), ""] + _para(stopped_note(runs))
    lines += plateau_block(runs, doubled)
    std = standard_rows(runs)
    if std:
        lines += ["", "**Standard AutoAttack** (APGD-CE, APGD-T, FAB-T, Square) in the worst case, PGD-10 / AA / "
                  "**worst case**:", "",
                  markdown_table(["run", "images", SMALL, LARGE, "AutoAttack seconds (both radii)"], std)]
    vs = claims(runs, cost)
    lines += ["", "**The paper's claims**, paired by seed (difference in points, 95% t interval over the n seeds "
              "both configurations have; holds / fails only when the whole interval is on one side of the "
              "threshold):", "",
              markdown_table(VERDICT_HEADER, verdict_rows(vs))]
    sweep = rho_sweep(runs, theory_rho[0]) if theory_rho else None
    if sweep:
        lines += [""] + rho_sweep_block(sweep, *theory_rho)
    cheap = folder_runs(folder / "equal-cost")
    if cheap:
        lines += [""] + equal_cost_block(runs, cheap, cost, folder_note(folder / "equal-cost"))
    archs = folder_runs(folder / "arch")
    if archs:
        lines += [""] + arch_block(runs, archs, folder_note(folder / "arch"), folder_runs(folder / "arch" / "plateau"))
    rel = os.path.relpath(Path(png).resolve(), Path(report_dir).resolve())
    lines += ["", f"![learning curves]({rel})", "",
              f"*Learning curves of the runs above (mean ± sd over seeds; dashed: the doubled-budget runs).*", ""]
    return "\n".join(lines)


def plateau_cell(runs: Sequence[Run], doubled: Sequence[Run]) -> str:
    """The plateau state of one protocol in a word or two: how many of its doubled-budget runs
    (:func:`plateau_rows`) pass, and which configurations; "not tested" without any."""
    prow = plateau_rows(runs, doubled)
    if not prow:
        return "not tested"
    ok = sorted({p["label"] for p in prow if p["plateau"]})
    return f"{sum(p['plateau'] for p in prow)} of {len(prow)} doubled runs pass" + (f" ({', '.join(ok)})" if ok else "")


def overview(columns: Sequence[Tuple[str, Sequence[Run]]], cost: Optional[dict] = None,
             doubled: Optional[Sequence[Sequence[Run]]] = None) -> Optional[str]:
    """One table of the claims (a)-(c) across protocols: a row per claim and comparison, a column per
    (name, runs) in ``columns``, each cell the paired mean, its 95% t interval, n and the verdict of
    :func:`claims` on that protocol's runs ("-" where the protocol lacks the comparison). Robust cells say
    whether they rest on the worst case or on PGD-10. With ``doubled`` (each column's doubled-budget runs,
    in column order) a first row states each protocol's plateau state (:func:`plateau_cell`). None when no
    protocol has a claim."""
    per = [{(v.claim, v.scope, v.measure.split(" (")[0]): v for v in claims(runs, cost) if v.claim != "d"}
           for _, runs in columns]
    keys: List[Tuple[str, str, str]] = []
    for d in per:
        keys += [k for k in d if k not in keys]
    if not keys:
        return None

    keys.sort(key=lambda k: k[0] == "c")       # (a), (b) per SAM radius first, then (c); else first seen

    def cell(v: Optional[ClaimVerdict]) -> str:
        if v is None:
            return "-"
        d = 2 if v.measure == "clean" else 1     # clean differences near the -0.5 threshold need 2 decimals
        src = " (PGD-10)" if v.measure.endswith("(PGD-10)") else ""
        ci = "" if v.n < 2 or v.low is None else f" [{v.low:+.{d}f}, {v.high:+.{d}f}]"
        flag = ", masking flag" if v.note.startswith("masking flag") else ""
        return f"{v.mean:+.{d}f}{ci}{src}, n={v.n}{flag}: **{v.verdict}**"
    rows = [[k[0], k[1], k[2]] + [cell(d.get(k)) for d in per] for k in keys]
    if doubled is not None:
        rows.insert(0, ["-", "plateau test: the budget doubled", f"clean < {PLATEAU_CLEAN}, robust < {PLATEAU_ROBUST} "
                        "points"] + [plateau_cell(runs, dbl) for (_, runs), dbl in zip(columns, doubled)])
    return markdown_table(["claim", "comparison", "measure"] + [name for name, _ in columns], rows)


def folder_note(folder) -> Optional[str]:
    """The text of ``folder``/NOTE.md (how the runs were obtained, what is missing and why), stripped; None
    when absent. Written by hand beside the results, printed under the section's settings line."""
    p = Path(folder) / "NOTE.md"
    return (p.read_text().strip() or None) if p.is_file() else None


def verdicts_only(folder, title: str, cost: Optional[dict] = None) -> Optional[str]:
    """The claims table alone (same rule as :func:`section`) for a folder of runs of another protocol, e.g. the
    short CPU preset, so that the verdicts can be compared one to one."""
    runs = folder_runs(folder, load_runs_lenient)
    if not runs:
        return None
    return "\n".join([f"### {title}", "", _settings_line(runs), "",
                      markdown_table(VERDICT_HEADER, verdict_rows(claims(runs, cost))), ""])


def load_runs_lenient(folder) -> List[Run]:
    """The runs of ``folder`` that are readable deep.run results of plain ST, SAM or PGD AT (ASAM and the cheap
    AT variants left out, as are files that are not results)."""
    out = []
    for p in record_files(folder):
        try:
            raw = _read(p)
            if raw.get("method") in ("st", "sam", "at") and not (raw.get("config") or {}).get("adaptive"):
                out.append(_run(raw, p))
        except (KeyError, TypeError, ValueError):
            continue
    return out
