"""One colour, marker and label per method, shared by every figure of the package.

Colours are from the Okabe-Ito colour-blind-safe palette. Theory is always drawn as a line,
measurements (simulations, deep runs) always as markers with error bars, so the two routes stay
distinguishable in print and in grey scale (markers differ per method too).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib as mpl

from samrobust.threat import Norm, parse_norm

__all__ = [
    "MethodStyle", "style", "canonical_method", "FEATURE_COLORS", "COLUMN_WIDTH_IN",
    "THEORY_LINE", "apply_paper_style", "ETA_LINE",
]

#: Paper column width in inches; every figure is laid out for this width.
COLUMN_WIDTH_IN = 3.3


#: Width of theory curves (measurements are markers).
THEORY_LINE = {"linewidth": 1.3}


@dataclass(frozen=True)
class MethodStyle:
    """Display attributes of one training method."""

    label: str          # TeX label for figures
    color: str
    marker: str
    linestyle: object = "-"
    text: str = ""      # plain-text label for tables and captions

    def line(self) -> dict:
        """Keyword arguments of a theory line of this method."""
        return {"color": self.color, "linestyle": self.linestyle, **THEORY_LINE}


_STYLES = {
    "st": MethodStyle("ST", "#000000", "o", "-", "ST"),
    "sam": MethodStyle("SAM", "#0072B2", "s", "-", "SAM"),
    "at-linf": MethodStyle(r"AT $\ell_\infty$", "#D55E00", "^", (0, (4, 1.5)), "AT l_inf"),
    "at-l2": MethodStyle(r"AT $\ell_2$", "#E69F00", "v", (0, (5, 1.5, 1, 1.5)), "AT l2"),
}

_ALIASES = {
    "st": "st", "standard": "st", "erm": "st",
    "sam": "sam", "sam-fixed-scale": "sam", "sam_fixed_scale": "sam", "sam-fixed": "sam",
    "at": "at-linf", "at-linf": "at-linf", "at_linf": "at-linf", "at-inf": "at-linf",
    "at-l2": "at-l2", "at_l2": "at-l2",
}

#: Colours of the two feature blocks (robust / non-robust) in weight and probe plots.
FEATURE_COLORS = {"robust": "#009E73", "nonrobust": "#CC79A7"}

ETA_LINE = {"color": "#777777", "linestyle": ":", "linewidth": 1.0}


def canonical_method(method: str, norm: str | None = None) -> str:
    """Map a method name from any results file to one of "st", "sam", "at-linf", "at-l2".

    Deep runs store ``method="at"`` plus a ``norm``; an l2 ``norm`` ("l2", "2", any spelling of
    samrobust.threat.parse_norm) selects "at-l2".
    ValueError for an unknown method.
    """
    key = str(method).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"method must be one of {sorted(set(_ALIASES))}, got {method!r}")
    canon = _ALIASES[key]
    if canon == "at-linf" and norm is not None and _is_l2(norm):
        canon = "at-l2"
    return canon


def _is_l2(norm) -> bool:
    """True for any spelling of l2 (samrobust.threat.parse_norm); any other value counts as l_inf."""
    try:
        return parse_norm(norm) is Norm.L2
    except ValueError:
        return False


def style(method: str, norm: str | None = None) -> MethodStyle:
    """The :class:`MethodStyle` of a method (aliases accepted, see :func:`canonical_method`)."""
    return _STYLES[canonical_method(method, norm)]


def apply_paper_style() -> None:
    """Set matplotlib defaults for figures read at column width (8 pt text, thin axes)."""
    mpl.rcParams.update({
        "font.size": 8,
        "axes.labelsize": 8,
        "axes.titlesize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "axes.linewidth": 0.6,
        "lines.linewidth": 1.3,
        "lines.markersize": 4,
        "errorbar.capsize": 2,
        "legend.frameon": False,
        "legend.handlelength": 1.6,
        "figure.dpi": 200,
        "savefig.dpi": 200,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.02,
        "pdf.fonttype": 42,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
