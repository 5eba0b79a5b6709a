"""Closed-form population optima (docs/theory.md T1, T3, T4) and the ridge path used by T4/T5.

Valid for ``FeatureModel`` (Gaussian classes, diagonal Sigma). Every formula here has an independent
numeric route in ``linear_theory.numeric`` and a test comparing the two.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from .metrics import check_nonnegative
from .model import FeatureModel, check_weights

__all__ = [
    "st_weights",
    "at_linf_weights",
    "at_l2_lambda",
    "at_l2_weights",
    "ridge_vector",
    "ridge_direction",
    "match_ridge_lambda",
    "ridge_lambda_to_l2_eps",
]


def _require_gaussian(model) -> None:
    if not isinstance(model, FeatureModel):
        raise ValueError(f"closed forms need a FeatureModel, got {type(model).__name__}; use numeric routes")


def st_weights(model) -> np.ndarray:
    """T1: the population logistic-regression optimum v_ST = 2 Sigma^{-1} mu."""
    _require_gaussian(model)
    return 2.0 * model.mu / model.sigma2


def at_linf_weights(model, eps) -> np.ndarray:
    """T3: l_inf AT optimum, soft thresholding v_i = 2 sign(mu_i) (|mu_i| - eps)_+ / sigma_i^2."""
    _require_gaussian(model)
    eps = check_nonnegative("eps", eps)
    mu = model.mu
    return 2.0 * np.sign(mu) * np.maximum(np.abs(mu) - eps, 0.0) / model.sigma2


def _at_l2_radius(model, lam: float) -> float:
    """lambda*||v(lambda)||_2 with v(lambda) = (Sigma/2 + lambda I)^{-1} mu; increasing from 0 to ||mu||."""
    return float(np.linalg.norm(lam * model.mu / (0.5 * model.sigma2 + lam)))


def at_l2_lambda(model, eps) -> float:
    """T4: the unique root lambda >= 0 of lambda*||(Sigma/2 + lambda I)^{-1} mu||_2 = eps (inf if eps >= ||mu||).

    lambda*||v(lambda)|| = ||(Sigma/(2 lambda) + I)^{-1} mu|| is strictly increasing in lambda, from 0 at
    lambda = 0 to ||mu|| as lambda -> inf, hence the root exists and is unique exactly when eps < ||mu||.
    """
    _require_gaussian(model)
    eps = check_nonnegative("eps", eps)
    if eps == 0.0:
        return 0.0
    if eps >= float(np.linalg.norm(model.mu)):
        return math.inf
    hi = float(model.sigma2.max())
    while _at_l2_radius(model, hi) < eps:
        hi *= 4.0
    return brentq(lambda lam: _at_l2_radius(model, lam) - eps, 0.0, hi, xtol=1e-15, rtol=1e-15, maxiter=500)


def at_l2_weights(model, eps) -> tuple[np.ndarray, float]:
    """T4: l2 AT optimum v = (Sigma/2 + lambda I)^{-1} mu with lambda from ``at_l2_lambda``; v = 0 if eps >= ||mu||."""
    lam = at_l2_lambda(model, eps)
    if math.isinf(lam):
        return np.zeros(model.D), lam
    return model.mu / (0.5 * model.sigma2 + lam), lam


def ridge_vector(model, lam) -> np.ndarray:
    """(Sigma + lam I)^{-1} mu (unnormalised). lam may be negative down to > -min(sigma^2); lam = inf gives mu."""
    lam = float(lam)
    if math.isnan(lam) or lam <= -float(model.sigma2.min()):
        raise ValueError(f"lam must exceed -min(sigma^2) = {-float(model.sigma2.min())}, got {lam!r}")
    if math.isinf(lam):
        return np.array(model.mu, dtype=float)
    return model.mu / (model.sigma2 + lam)


def ridge_direction(model, lam) -> np.ndarray:
    """Unit vector proportional to (Sigma + lam I)^{-1} mu, lam >= 0 (inf allowed: the direction of mu).

    T4's AT solution (Sigma/2 + lambda I)^{-1} mu lies on this path at lam = 2*lambda.
    """
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or math.isnan(lam) or lam < 0:
        raise ValueError(f"lam must be a non-negative number (inf allowed), got {lam!r}")
    r = ridge_vector(model, lam)
    return r / np.linalg.norm(r)


def _log_lam_grid(model):
    scale = float(np.mean(model.sigma2))
    return scale * np.exp(np.linspace(-18.0, 18.0, 241))


def match_ridge_lambda(model, v) -> float:
    """lambda >= 0 whose ridge direction has the largest cosine with v (T5/S4: SAM's effective strength).

    Grid search over log(lambda) (241 points spanning exp(+-18) times the mean variance) plus lambda = 0,
    then Brent refinement on the bracketing cell. Returns 0.0 if lambda = 0 is best and inf if the direction
    of mu (lambda -> inf) is strictly better than every finite grid point.
    """
    v = check_weights(model, v)
    nv = float(np.linalg.norm(v))
    if nv == 0.0:
        raise ValueError("v must be non-zero to match a ridge direction")
    v = v / nv

    def cos(lam):
        return float(ridge_direction(model, lam) @ v)

    grid = _log_lam_grid(model)
    vals = np.array([cos(lam) for lam in grid])
    i = int(np.argmax(vals))
    c0, cinf = cos(0.0), cos(math.inf)
    if cinf > vals.max() and cinf > c0:
        return math.inf
    lo = math.log(grid[max(i - 1, 0)])
    hi = math.log(grid[min(i + 1, len(grid) - 1)])
    res = minimize_scalar(lambda t: -cos(math.exp(t)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12, "maxiter": 500})
    best_lam, best = math.exp(res.x), -res.fun
    if vals[i] > best:
        best_lam, best = float(grid[i]), float(vals[i])
    if c0 >= best - 1e-14:  # cosines equal to rounding: lambda = 0 is (one of) the best
        return 0.0
    return float(best_lam)


def ridge_lambda_to_l2_eps(model, lam) -> float:
    """The l2 AT radius whose T4 solution lies at ridge parameter lam: eps = (lam/2)*||(Sigma/2 + lam/2)^{-1} mu||."""
    _require_gaussian(model)
    lam = float(lam)
    if math.isinf(lam):
        return float(np.linalg.norm(model.mu))
    if lam <= 0:
        return 0.0
    return _at_l2_radius(model, lam / 2.0)
