"""Theory-vs-simulation figures (PNG, matplotlib Agg backend, no display needed)."""
from __future__ import annotations

import os
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from samrobust.files import write_atomic  # noqa: E402

from .parallel import Forked, can_fork  # noqa: E402

__all__ = ["write_figures", "tradeoff_figure", "weight_ratio_figure", "sam_vs_m_figure"]

_LABEL = {"sam-fixed-scale": "SAM (fixed scale), rho", "at-linf": "PGD-AT l_inf, eps"}
_COLOR = {"sam-fixed-scale": "tab:blue", "at-linf": "tab:red"}


def _err(sim: dict):
    m = sim["mean"]
    return [[a - lo for a, lo in zip(m, sim["lo"])], [hi - a for a, hi in zip(m, sim["hi"])]]


def _save(fig, path: str) -> str:
    """PNG written atomically (``samrobust.files.write_atomic``); the figure is closed."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def write_figures(data: dict, fig_dir: str, workers: int = 1) -> List[str]:
    """Write sim_tradeoff.png, sim_weight_ratio.png, sim_sam_vs_m.png (those whose data exist).

    ``workers`` > 1: the figures are drawn by that many processes at once (forked; each writes its own
    files atomically), about 0.2 s apart each on one core, which the main job would otherwise wait for
    after training."""
    os.makedirs(fig_dir, exist_ok=True)
    tasks = []
    curves = data.get("curves") or {}
    if curves:
        tasks.append((tradeoff_figure, curves, os.path.join(fig_dir, "sim_tradeoff.png")))
        tasks.append((weight_ratio_figure, curves, os.path.join(fig_dir, "sim_weight_ratio.png")))
    svm = data.get("sam_vs_m") or []
    if svm:
        tasks.append((sam_vs_m_figure, svm, os.path.join(fig_dir, "sim_sam_vs_m.png")))
    k = max(1, min(int(workers), len(tasks))) if can_fork() else 1
    children = [Forked(_draw, tasks[i::k]) for i in range(1, k)]
    try:
        mine = _draw(tasks[0::k])
        theirs = [c.result() for c in children]
    finally:
        for c in children:
            c.cancel()
    done = set(mine).union(*theirs)
    return [path for _, _, path in tasks if path in done]


def _draw(tasks) -> List[str]:
    """Draw and write each (figure function, data, path) task; the paths written."""
    return [fn(arg, path) for fn, arg, path in tasks]


# ------------------------------------------------------------------------------ sim_tradeoff.png

def tradeoff_figure(curves: dict, path: str) -> str:
    """sim_tradeoff.png: robust against clean accuracy along each T6 curve (S5), one panel per robust
    statistic: theory line (and the projected-norm theory, dashed), SGD means with 95% CIs."""
    keys = [k for k in next(iter(curves.values()))["theory"] if k.startswith("robust")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2))
    axes = [axes] if len(keys) == 1 else list(axes)
    for ax, key in zip(axes, keys):
        for method, cur in curves.items():
            _tradeoff_curve(ax, key, method, cur)
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(f"T6 trade-off: {key.replace('_', ' ')}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _tradeoff_curve(ax, key: str, method: str, cur: dict) -> None:
    """One method's curve in the trade-off panel of robust statistic ``key``."""
    c = _COLOR.get(method, None)
    th = cur.get("theory_grid", cur["theory"])
    ax.plot(th["clean"], th[key], "-", color=c, alpha=0.6,
            label=f"{_LABEL.get(method, method)} (theory)")
    proj = cur.get("theory_projected_grid")
    if proj:  # T5 with the exact ascent's ||P_w x|| (simulations/README.md, finding 6)
        ax.plot(proj["clean"], proj[key], "--", color=c, alpha=0.8, lw=1,
                label=f"{_LABEL.get(method, method)} (theory, ||P_w x||)")
    ax.errorbar(cur["sim"]["clean"]["mean"], cur["sim"][key]["mean"], xerr=_err(cur["sim"]["clean"]),
                yerr=_err(cur["sim"][key]), fmt="o", color=c, ms=4, capsize=2,
                label=f"{_LABEL.get(method, method)} (SGD, 95% CI)")
    for s, x, y in zip(cur["strength"], cur["sim"]["clean"]["mean"], cur["sim"][key]["mean"]):
        ax.annotate(f"{s:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")


# -------------------------------------------------------------------------- sim_weight_ratio.png

def weight_ratio_figure(curves: dict, path: str) -> str:
    """sim_weight_ratio.png: robust/non-robust weight ratio (log axis) and robust reliance r(v) against
    the strength (rho or eps), theory line and SGD means with 95% CIs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, cur in curves.items():
        for ax, key in zip(axes, ("ratio", "reliance")):
            _strength_curve(ax, key, method, cur)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("robust / non-robust weight ratio (clipped at 1e3)")
    axes[1].set_ylabel("robust reliance r(v)")
    for ax in axes:
        ax.set_xlabel("strength (rho or eps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def _strength_curve(ax, key: str, method: str, cur: dict) -> None:
    """One method's ``key`` ("ratio" or "reliance") against the strength."""
    c = _COLOR.get(method, None)
    grid = cur.get("theory_grid", {"strength": cur["strength"], **cur["theory"]})
    th = grid[key]
    sim = cur["sim"][key]
    if key == "ratio":  # non-robust weights vanish for AT eps >= eta: clip for the log axis
        th = [min(abs(t), 1e3) for t in th]
        sim = {k: [min(abs(x), 1e3) for x in sim[k]] for k in ("mean", "lo", "hi")}
    ax.plot(grid["strength"], th, "-", color=c, alpha=0.6, label=f"{_LABEL[method]} (theory)")
    proj = cur.get("theory_projected_grid")
    if proj and key == "reliance":
        ax.plot(proj["strength"], proj[key], "--", color=c, alpha=0.8, lw=1,
                label=f"{_LABEL[method]} (theory, ||P_w x||)")
    ax.errorbar(cur["strength"], sim["mean"], yerr=_err(sim), fmt="o", color=c, ms=4, capsize=2,
                label=f"{_LABEL[method]} (SGD, 95% CI)")


# ------------------------------------------------------------------------------ sim_sam_vs_m.png

def sam_vs_m_figure(svm: List[dict], path: str) -> str:
    """sim_sam_vs_m.png: matched ridge lambda and effective rho of SAM against m (S4), with T5's m = 1
    prediction."""
    ms = [e["m"] for e in svm]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, ylabel in ((axes[0], "lambda_eff", "matched ridge lambda"),
                            (axes[1], "rho_eff", "effective rho (via T5)")):
        mean = [e[key]["mean"] for e in svm]
        err = [[a - e[key]["lo"] for a, e in zip(mean, svm)], [e[key]["hi"] - a for a, e in zip(mean, svm)]]
        ax.errorbar(ms, mean, yerr=err, fmt="o-", capsize=3, label="SGD + SAM (95% CI)")
        ref = svm[0]["theory_lambda_m1"] if key == "lambda_eff" else svm[0]["rho"]
        ax.axhline(ref, color="k", ls="--", lw=1, label="T5 prediction for m = 1")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("m (examples per SAM ascent)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SAM effective strength vs m (rho = {svm[0]['rho']:g})")
    return _save(fig, path)
