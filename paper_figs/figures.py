"""The figure machinery every section of the report shares: the context a figure is drawn in, its result,
the skip signal, the one writer of figure files and the label and axis helpers.

Each ``fig*`` function of a section (:mod:`paper_figs.simulation`, :mod:`paper_figs.deep_figures`,
:mod:`paper_figs.real`, :mod:`paper_figs.beyond`, :mod:`paper_figs.converged`) takes a :class:`FigureContext`
and returns a :class:`FigureResult` (files written, a one-line description, a data-derived verdict) or
raises :class:`SkipFigure` with a one-line reason naming the command that produces the missing input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import palette as pal  # noqa: E402
from . import theory as th  # noqa: E402
from .verdicts import Verdict  # noqa: E402

__all__ = ["FigureContext", "FigureResult", "SkipFigure", "save", "eval_label", "pct", "eps_grid", "strength_ticks",
           "place_labels"]


class SkipFigure(Exception):
    """A figure cannot be drawn; the message is the one line the CLI prints."""


@dataclass
class FigureResult:
    name: str
    title: str
    files: list
    shows: str
    verdict: Verdict
    notes: list = field(default_factory=list)


@dataclass
class FigureContext:
    """Inputs of every figure. ``sim_points``/``sim_m``/``deep`` are None when absent, with
    ``sim_skip``/``deep_skip`` the line that says how to produce them."""

    settings: th.TheorySettings
    out_dir: Path
    sim_points: list | None = None
    sim_m: list | None = None
    sim_skip: str | None = None
    deep: dict | None = None
    deep_skip: str | None = None
    formats: tuple = ("png", "pdf")
    sim_tol: dict = field(default_factory=dict)   # simulations' meta["opt_tol"]
    results_dir: Path = Path("results")

    def tol(self, quantity: str, theory: float) -> float:
        """Allowance for systematic (optimisation) error of a simulated quantity, from the
        simulations' own ``opt_tol``: absolute for accuracies and reliance, relative for the
        weight ratio and (via lambda_rel) for the effective rho."""
        t = self.sim_tol
        if quantity in ("clean", "robust"):
            return float(t.get("accuracy", 0.0))
        if quantity == "reliance":
            return float(t.get("reliance", 0.0))
        if quantity == "ratio":
            return float(t.get("ratio_rel", 0.0)) * abs(theory)
        if quantity == "rho_eff":
            return float(t.get("lambda_rel", 0.0)) * abs(theory)
        return 0.0


# No creation date in PDF / SVG files: rerunning paper_figs on the same results gives the same bytes, so
# the committed figures show as changed only when a figure does.
_STABLE_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save(fig, out_dir: Path, name: str, formats=("png", "pdf")) -> list:
    """Write ``fig`` as out_dir/name.<fmt> for each format (reproducible bytes: no creation date);
    returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        tmp = path.with_name(path.stem + ".tmp." + fmt)
        fig.savefig(tmp, format=fmt, metadata=_STABLE_METADATA.get(fmt))
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- helpers
_NORM_TEX = {"linf": r"\ell_\infty", "l2": r"\ell_2"}


def eval_label(key: str) -> str:
    """'linf_0.1' -> TeX label of the attack, e.g. ℓ∞, ε=0.1."""
    name, _, eps = key.partition("_")
    return rf"${_NORM_TEX.get(name, name)}$, $\epsilon={eps}$"


def pct(x):
    return 100.0 * np.asarray(x, dtype=float)


def eps_grid(settings, points, method) -> list:
    eta = settings.model().eta
    top = 3 * eta if method == "at-linf" else 2.2 * eta * math.sqrt(settings.model().D)
    top = max([top] + [p["strength"] for p in points or [] if p["method"] == method])
    grid = set(np.round(np.linspace(0.0, top, 31), 6))
    if method == "at-linf":  # resolve the steep approach to eps = eta (T3)
        grid |= {eta, eta * (1 - 1e-6)} | {round(eta * (1 - 0.015 * k), 8) for k in range(1, 10)}
    return sorted(grid)


def strength_ticks(ax, ctx, method, strengths, key, prefix, offset, ha, labels: list):
    """Small dots along a theory curve of the trade-off plane; their labels are queued in
    ``labels`` and drawn by :func:`place_labels` once the axes limits are final."""
    st = pal.style(method)
    for k in strengths:
        p = th.theory_point(ctx.settings, method, k)
        if not math.isfinite(p["clean"]):
            continue
        xy = pct([p["clean"], p["robust"][key]])
        ax.plot(*xy, marker="o", markersize=2.5, color=st.color, linestyle="none", zorder=4)
        labels.append((f"{prefix}{k:g}", xy, offset, ha, st.color))


def place_labels(ax, labels, box_pt=(30.0, 7.0)):
    """Annotate queued (text, xy, offset, ha, color) labels, dropping any whose text anchor lies
    within a ``box_pt`` (width, height in points) box of an already placed one (the dot stays)."""
    ax.autoscale_view()
    placed = []
    to_pt = 72.0 / ax.figure.dpi
    for text, xy, offset, ha, color in labels:
        pos = ax.transData.transform(xy) * to_pt + np.asarray(offset, dtype=float)
        if any(abs(pos[0] - q[0]) < box_pt[0] and abs(pos[1] - q[1]) < box_pt[1]
               for q in placed):
            continue
        placed.append(pos)
        ax.annotate(text, xy, xytext=offset, textcoords="offset points", fontsize=5.5,
                    color=color, ha=ha)
