"""The threat-model vocabulary: norms, radii and attack labels, in one place.

* :class:`Norm` (``LINF`` = "inf", ``L2`` = "l2") and :func:`parse_norm`, which accepts every spelling
  used in the package: "inf", "linf", "l_inf", "infinity", float('inf'), 2, "2", "l2", "l_2";
* :func:`dual`: the dual exponent q of the attack norm (l_inf <-> l1, l2 <-> l2);
* :func:`parse_eps` / :func:`format_eps`: radii written as decimals or fractions ("8/255");
* :func:`attack_label`: the one name of an attack, "linf_8/255", "l2_0.5", "linf_0.1".
"""
from __future__ import annotations

import enum
import math
from fractions import Fraction
from typing import Union

__all__ = ["Norm", "parse_norm", "normalize_norm", "norm_name", "dual", "parse_eps", "format_eps",
           "attack_label"]


class Norm(str, enum.Enum):
    """Attack norm; the value is what configs and result files store ("inf" / "l2")."""
    LINF = "inf"
    L2 = "l2"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def name_(self) -> str:
        """Prefix of the attack label: "linf" or "l2"."""
        return "linf" if self is Norm.LINF else "l2"


NormLike = Union[Norm, str, int, float]


def parse_norm(norm: NormLike) -> Norm:
    """Map the accepted spellings of a norm to :class:`Norm`; ValueError otherwise."""
    if isinstance(norm, Norm):
        return norm
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in ("inf", "linf", "l_inf", "infinity"):
            return Norm.LINF
        if key in ("2", "l2", "l_2"):
            return Norm.L2
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm == 2:
            return Norm.L2
        if norm == float("inf"):
            return Norm.LINF
    raise ValueError(f"norm must be 'inf' (or 'linf') or 2 (or 'l2'), got {norm!r}")


def normalize_norm(norm: NormLike) -> str:
    """``parse_norm(norm).value``: the plain string "inf" or "l2" (what configs and JSON store)."""
    return parse_norm(norm).value


def norm_name(norm: NormLike) -> str:
    """Label prefix of a norm: "linf" or "l2"."""
    return parse_norm(norm).name_


def dual(norm: NormLike) -> float:
    """Dual exponent q (1/p + 1/q = 1) of the attack norm p: l_inf -> 1, l2 -> 2."""
    return 1.0 if parse_norm(norm) is Norm.LINF else 2.0


def parse_eps(text) -> float:
    """'8/255' -> 0.0313..., '0.5' -> 0.5; ValueError naming eps when not a finite non-negative number
    (inf and nan are refused: a radius is stored in JSON, where they do not exist)."""
    try:
        val = float(Fraction(str(text).strip())) if "/" in str(text) else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps must be a number or a fraction like 8/255, got {text!r}") from None
    if not val >= 0:
        raise ValueError(f"eps must be >= 0, got {text!r}")
    if math.isinf(val):
        raise ValueError(f"eps must be finite, got {text!r}")
    return val


def format_eps(eps: float) -> str:
    """0.0313... -> '8/255' when eps*255 is (nearly) an integer and the decimal is long, else the shortest
    decimal (0.5, 0.25, 1)."""
    k = eps * 255.0
    if len(f"{eps:g}") <= 5:            # short decimals stay decimals: 0.5, 0.2, 1 (not 51/255, 255/255)
        return f"{eps:g}"
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


def attack_label(norm: NormLike, eps: float, fmt: str = "frac") -> str:
    """The name of an attack: "linf_8/255", "l2_0.5". ``fmt`` writes the radius: "frac" (deep/:
    :func:`format_eps`, n/255 for long decimals) or "g" (linear_theory/, simulations/, paper_figs/ theory:
    ``f"{eps:g}"``, e.g. "linf_0.1")."""
    if fmt == "frac":
        radius = format_eps(eps)
    elif fmt == "g":
        radius = f"{float(eps):g}"
    else:
        raise ValueError(f"fmt must be 'frac' or 'g', got {fmt!r}")
    return f"{norm_name(norm)}_{radius}"
