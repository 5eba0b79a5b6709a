"""Accuracies, losses and perturbation strengths of a linear classifier f(x) = v.x (docs/theory.md section 2, L4).

All quantities are exact functions of the margin law z = y v.x (a Gaussian, or a Gaussian mixture for the
Tsipras variant); only the population loss needs a one-dimensional quadrature.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from samrobust import threat

from .model import check_weights

__all__ = [
    "logistic_loss",
    "dual_exponent",
    "lp_norm",
    "attack_margin_shift",
    "gaussian_expectation",
    "clean_accuracy",
    "robust_accuracy",
    "robust_reliance",
    "population_loss",
    "SamStrength",
    "sam_strength",
    "check_nonnegative",
]


def logistic_loss(z):
    """l(z) = log(1 + exp(-z)), computed stably."""
    return np.logaddexp(0.0, -np.asarray(z, dtype=float))


def check_nonnegative(name: str, value) -> float:
    """Return float(value) or raise ValueError naming the parameter if it is negative, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def _parse_norm(norm) -> float:
    """Attack norm p in [1, inf]: the spellings of samrobust.threat.parse_norm ("inf"/"linf" -> inf,
    "2"/"l2" -> 2), or any other p >= 1 ("1", "l3", 1.5; linear_theory allows every l_p norm)."""
    if isinstance(norm, str):
        try:
            return math.inf if threat.parse_norm(norm) is threat.Norm.LINF else 2.0
        except ValueError:
            pass                        # not l_inf or l2: read p itself
        key = norm.strip().lower()
        if key.startswith("l"):
            key = key[1:]
        try:
            p = float(key)
        except ValueError:
            raise ValueError(f"norm must be 'inf', 2 or a number p >= 1, got {norm!r}") from None
    elif isinstance(norm, numbers.Real) and not isinstance(norm, bool):
        p = float(norm)
    else:
        raise ValueError(f"norm must be 'inf', 2 or a number p >= 1, got {norm!r}")
    if math.isnan(p) or p < 1.0:
        raise ValueError(f"norm must be 'inf', 2 or a number p >= 1, got {norm!r}")
    return p


def dual_exponent(norm) -> float:
    """q with 1/p + 1/q = 1 for the attack norm p (p=inf -> q=1, p=1 -> q=inf)."""
    p = _parse_norm(norm)
    if math.isinf(p):
        return 1.0
    if p == 1.0:
        return math.inf
    return p / (p - 1.0)


def lp_norm(v, q: float) -> float:
    v = np.abs(np.asarray(v, dtype=float))
    if math.isinf(q):
        return float(v.max(initial=0.0))
    if q == 1.0:
        return float(v.sum())
    if q == 2.0:
        return float(np.sqrt(v @ v))
    return float(np.sum(v**q) ** (1.0 / q))


def attack_margin_shift(v, eps, norm="inf") -> float:
    """L1: the worst l_p attack of radius eps lowers every margin by exactly eps*||v||_q."""
    eps = check_nonnegative("eps", eps)
    return eps * lp_norm(v, dual_exponent(norm))


def _prob_positive(means, stds, shift):
    """P(z - shift > 0) per Gaussian component; a zero-variance component is a point mass (ties count 1/2)."""
    means = np.asarray(means, dtype=float) - shift
    stds = np.asarray(stds, dtype=float)
    out = np.where(means > 0, 1.0, np.where(means < 0, 0.0, 0.5))
    pos = stds > 0
    out = np.where(pos, ndtr(np.divide(means, np.where(pos, stds, 1.0))), out)
    return out


def clean_accuracy(model, v) -> float:
    """P(y v.x > 0) = Phi(v.mu / sqrt(v.Sigma.v)) for ``FeatureModel`` (docs/theory.md section 2)."""
    w, m, s = model.margin_components(v)
    return float(np.sum(w * _prob_positive(m, s, 0.0)))


def robust_accuracy(model, v, eps, norm="inf") -> float:
    """Accuracy under the worst l_p attack of radius eps: Phi((v.mu - eps*||v||_q) / sqrt(v.Sigma.v)).

    ``norm`` is "inf", 2, or any p >= 1; q is its dual exponent. Exact (L1), not a bound.
    """
    w, m, s = model.margin_components(v)
    shift = attack_margin_shift(check_weights(model, v), eps, norm)
    return float(np.sum(w * _prob_positive(m, s, shift)))


def robust_reliance(model, v) -> float:
    """r(v) = sum_{i in R} v_i mu_i / v.mu, the share of the mean margin carried by robust features."""
    v = check_weights(model, v)
    total = float(v @ model.mu)
    if total == 0.0:
        raise ValueError("robust_reliance is undefined for v with v.mu = 0 (e.g. v = 0)")
    return float(v[model.robust_mask] @ model.mu[model.robust_mask]) / total


def trapezoid_nodes(std: float):
    """Nodes u and weights of E g(U), U ~ N(0,1), by the trapezoidal rule on [-9.5, 9.5].

    Step h = min(0.25, 0.56/std): the logistic loss has poles at +-i*pi, i.e. at distance pi/std from the
    real u-axis, and the trapezoidal rule's error decays like exp(-2*pi*(pi/std)/h) < 1e-15.
    """
    h = min(0.25, 0.56 / std) if std > 0 else 0.25
    n = int(math.ceil(9.5 / h))
    if n > 200_000:
        raise ValueError(f"margin standard deviation {std!r} too large for the quadrature")
    u = np.arange(-n, n + 1) * h
    return u, h * np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)


def gaussian_expectation(fn, mean: float, std: float) -> float:
    """E fn(Z) for Z ~ N(mean, std^2), fn vectorised and at most linearly growing, analytic in |Im z| < pi.

    Quadrature in the Gauss-Hermite weight exp(-u^2/2): the trapezoidal rule with a step adapted to std.
    (Plain Gauss-Hermite with 64-256 nodes was measured to lose accuracy, 1e-4 to 1e-3 relative, once
    std >~ 20 because of the loss's poles; the trapezoidal rule stays at 1e-15, checked against scipy.quad
    in tests/test_linear_numeric.py.)
    """
    u, w = trapezoid_nodes(std)
    return float(w @ fn(mean + std * u))


def population_loss(model, v, shift=0.0) -> float:
    """E l(y v.x - shift) with l the logistic loss; a one-dimensional Gaussian integral per mixture component.

    ``shift`` is a constant margin reduction (e.g. eps*||v||_q for AT, L1).
    """
    w, m, s = model.margin_components(v)
    shift = float(shift)
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {shift!r}")
    return float(sum(wi * gaussian_expectation(logistic_loss, mi - shift, si) for wi, mi, si in zip(w, m, s)))


@dataclass(frozen=True)
class SamStrength:
    """L4: per-example SAM = l2 AT on the features with radius s_SAM(x) = rho*||x||_2 / ||v||_2.

    Fields: ``l2_rms`` = rho*sqrt(E||x||^2)/||v|| (the strength used in docs/theory.md T5), ``per_coordinate`` =
    l2_rms/sqrt(D) (compare with an l_inf AT radius eps, whose l2 size is eps*sqrt(D)), ``mean_sq_norm``
    = E||x||^2. ``float(s)`` gives ``l2_rms``.
    """

    rho: float
    weight_norm: float
    mean_sq_norm: float
    l2_rms: float
    per_coordinate: float

    def __float__(self) -> float:
        return self.l2_rms


def sam_strength(model, rho, v) -> SamStrength:
    """L4 perturbation strength of per-example SAM with radius rho at weights v (see ``SamStrength``)."""
    rho = check_nonnegative("rho", rho)
    v = check_weights(model, v)
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("v must be non-zero for the SAM strength rho*||x||/||v||")
    msq = float(np.sum(model.mu**2 + model.sigma2))
    rms = rho * math.sqrt(msq) / norm
    return SamStrength(rho=rho, weight_norm=norm, mean_sq_norm=msq, l2_rms=rms, per_coordinate=rms / math.sqrt(model.D))
