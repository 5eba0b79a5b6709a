"""Scale-free statistics of learned weights and the theory-vs-simulation comparison rows.

Every comparison row states its tolerance as the sum of two parts, each with a reason:

* the sampling part: the half-width of the 95% Student-t interval of the mean over seeds (each seed
  is an independent data stream and SGD trajectory), or the binomial interval of a Monte-Carlo accuracy;
* the optimisation part: a fixed allowance per statistic for the error SGD leaves after the run's
  budget (measured in the convergence study documented in simulations/README.md).

A row holds when |sim_mean - theory| <= tolerance (relation "="), or, for one-sided claims
(relation ">"), when the lower end of the 95% interval exceeds the theory value.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.special import stdtrit  # = scipy.stats.t.ppf, without importing scipy.stats (~0.3 s)

__all__ = ["mean_ci", "weight_ratio", "compare", "measure", "binomial_ci"]


def mean_ci(values: Iterable[float], level: float = 0.95):
    """Mean, (lo, hi) Student-t interval of the mean and its half-width. One value: half-width 0."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("values must not be empty")
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN statistics (e.g. ratio with v_N = 0)
        mean = float(x.mean())
        if x.size < 2:
            return mean, (mean, mean), 0.0
        half = float(stdtrit(x.size - 1, 0.5 + level / 2) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, (mean - half, mean + half), half


def binomial_ci(p_hat: float, n: int, z: float = 1.959963984540054):
    """Normal-approximation interval p_hat +- z sqrt(p(1-p)/n) and its half-width."""
    half = float(z * math.sqrt(max(p_hat * (1 - p_hat), 1e-12) / n))
    return (p_hat - half, p_hat + half), half


def weight_ratio(model, v) -> float:
    """Mean robust weight / mean non-robust weight (scale-free; 1.25 for T1 at the reference model)."""
    v = np.asarray(v, dtype=float)
    mask = np.asarray(model.robust_mask)
    with np.errstate(divide="ignore", invalid="ignore"):  # inf when the non-robust weights vanish (T3)
        return float(np.float64(v[mask].mean()) / np.float64(v[~mask].mean()))


def _clean(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def compare(row_id: str, claim: str, description: str, theory: float, values: Sequence[float],
            opt_tol: float, opt_reason: str, relation: str = "=", config: Optional[dict] = None) -> dict:
    """A checked row: theory vs the seed mean of ``values`` with tolerance = t-CI half-width + opt_tol.

    relation "=": holds iff |mean - theory| <= tolerance; ">": holds iff the 95% lower end > theory
    (opt_tol unused); "<": iff the 95% upper end < theory.
    """
    mean, (lo, hi), half = mean_ci(values)
    if relation == "=":
        tol = half + opt_tol
        holds = abs(mean - theory) <= tol
        reason = (f"95% t-interval half-width over {len(values)} seeds ({half:.3g}) + optimisation "
                  f"allowance {opt_tol:.3g} ({opt_reason})")
    elif relation in (">", "<"):
        tol = half
        holds = lo > theory if relation == ">" else hi < theory
        reason = f"one-sided: the 95% t-interval over {len(values)} seeds must lie {relation} {theory:g}"
    else:
        raise ValueError(f"relation must be '=', '>' or '<', got {relation!r}")
    return {"id": row_id, "claim": claim, "description": description, "relation": relation,
            "theory": _clean(theory), "sim_mean": mean, "ci95": [lo, hi], "diff": mean - theory,
            "tolerance": tol, "tolerance_reason": reason, "holds": bool(holds),
            "per_seed": [float(v) for v in values], "config": config or {}}


def measure(row_id: str, claim: str, description: str, values: Sequence[float],
            theory: Optional[float] = None, config: Optional[dict] = None) -> dict:
    """A measurement row without a pass/fail check (holds = None), e.g. SAM's strength for m > 1, for
    which docs/theory.md predicts only a direction ("weaker"). ``theory`` may give a reference value."""
    mean, (lo, hi), _ = mean_ci(values)
    return {"id": row_id, "claim": claim, "description": description, "relation": "measure",
            "theory": _clean(theory), "sim_mean": mean, "ci95": [lo, hi],
            "diff": None if theory is None else mean - theory, "tolerance": None,
            "tolerance_reason": "measurement only (no closed-form prediction)", "holds": None,
            "per_seed": [float(v) for v in values], "config": config or {}}
