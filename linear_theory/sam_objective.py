"""The per-example SAM objective E l(y v.x - c*||x||_2) (L2, T2, T5), evaluated without approximating ||x||,
and its projected-norm variant E l(y v.x - c*||P_w x||_2) (fixed-scale SAM without T5's ||P_w x|| ~ ||x||).

||x||_2 is not constant (for the reference model ||x||^2 = 136 +- 42), and it is correlated with the margin
through the robust coordinate, so replacing it by its mean is not exact. We evaluate the expectation exactly
(up to quadrature error) for *block-structured* weights v = (a 1_k, b 1_d), which is all T2/T5 need (every
ridge direction and every symmetric minimiser is block-structured). With u = y x:

  S_R = sum_{i in R} u_i ~ N(k mu_r, k sigma_r^2),  S_N = sum_{i in N} u_i ~ N(d eta, d sigma_n^2),
  ||u||^2 = S_R^2/k + sigma_r^2 C_R + S_N^2/d + sigma_n^2 C_N,  C_R ~ chi2_{k-1}, C_N ~ chi2_{d-1}

(Cochran's theorem: within-block sums of squares are independent of the block sums), and z = a S_R + b S_N.
So E l(z - c||u||) is a 3- or 4-dimensional integral: trapezoidal rule in the two Gaussian sums and
generalised Gauss-Laguerre in the chi-square variables. For the Tsipras variant x_0 = +-y is a two-point
law. A Monte-Carlo evaluator for arbitrary v is given for cross-checks.

Projected norm (``sam_norm="projected"``): at fixed scale the SAM ascent moves w (unit vector v/||v||) orthogonally
to itself, so the margin drops by c*||P_w x|| with P_w = I - w w^T (T5 then approximates ||P_w x|| by ||x||).
Since ||P_w u||^2 = ||u||^2 - (w.u)^2 = ||u||^2 - z^2/||v||^2 and z is a function of the block sums, the same
quadrature grids evaluate it exactly; by Cauchy-Schwarz the argument of the square root is >= 0 on every node.
For v = 0 (no direction) P_w is taken as the identity.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import roots_genlaguerre

from .metrics import check_nonnegative, logistic_loss
from .model import TsiprasModel, check_weights

__all__ = ["SAM_NORMS", "check_sam_norm", "block_weights", "block_vector", "sam_loss", "sam_loss_mc", "norm_moments"]

SAM_NORMS = ("full", "projected")


def check_sam_norm(sam_norm) -> str:
    """Validate the SAM perturbation norm: "full" (||x||, T5 as stated) or "projected" (||P_w x||)."""
    if sam_norm not in SAM_NORMS:
        raise ValueError(f"sam_norm must be one of {', '.join(SAM_NORMS)}, got {sam_norm!r}")
    return sam_norm


def block_weights(model, v, rtol: float = 1e-12):
    """Return (a, b) if v = (a 1_k, b 1_d) (up to rtol), else raise ValueError."""
    v = check_weights(model, v)
    r, n = v[: model.k], v[model.k:]
    scale = max(float(np.abs(v).max()), 1e-300)
    if np.ptp(r) > rtol * scale or np.ptp(n) > rtol * scale:
        raise ValueError("v must be block-structured (equal robust weights, equal non-robust weights); use sam_loss_mc")
    return float(r.mean()), float(n.mean())


def block_vector(model, a: float, b: float) -> np.ndarray:
    return np.concatenate([np.full(model.k, float(a)), np.full(model.d, float(b))])


@functools.lru_cache(maxsize=64)
def _chi2_nodes(dof: int, n: int):
    """Nodes and weights of E g(C), C ~ chi2_dof, by generalised Gauss-Laguerre (dof = 0: point mass at 0)."""
    if dof == 0:
        return np.zeros(1), np.ones(1)
    t, w = roots_genlaguerre(n, dof / 2.0 - 1.0)
    w = w / w.sum()
    return 2.0 * t, w


def _normal_nodes(spread: float, fine: float):
    """Trapezoidal nodes/weights for a standard normal g whose effect on the loss argument is about ``spread``.

    Step h = min(0.35, fine/spread) on [-8.5, 8.5]; with fine = 1.2 the error from the loss's poles is
    about exp(-2*pi^2/1.2) ~ 1e-7 relative (measured in tests against finer grids and Monte-Carlo).
    """
    h = min(0.35, fine / spread) if spread > 0 else 0.35
    n = int(math.ceil(8.5 / h))
    g = np.arange(-n, n + 1) * h
    return g, h * np.exp(-0.5 * g * g) / math.sqrt(2.0 * math.pi)


def _block_grid(n: int, mean: float, sd: float, weight: float, c: float, fine: float, laguerre: int):
    """Quadrature grid of one block of n iid N(mean, sd^2) coordinates with common weight ``weight``:
    returns (weight * block sum, block sum of squares, quadrature weights), flattened over (sum, chi2)."""
    g, wg = _normal_nodes(abs(weight) * math.sqrt(n) * sd + c * sd + 1e-300, fine)
    S = n * mean + math.sqrt(n) * sd * g
    C, wc = _chi2_nodes(n - 1, laguerre)
    q = (S[:, None] ** 2 / n + sd**2 * C[None, :]).ravel()
    return np.repeat(weight * S, C.size), q, (wg[:, None] * wc[None, :]).ravel()


def _grids(model, a: float, b: float, c: float, fine: float, laguerre: int):
    """[(prob, z_R, q_R, w_R)] for the robust block (two point masses for Tsipras) and (z_N, q_N, w_N)."""
    nonrobust = _block_grid(model.d, model.eta, float(model.sigma_n), b, c, fine, laguerre)
    if isinstance(model, TsiprasModel):
        robust = [(model.p, np.array([a]), np.ones(1), np.ones(1)), (1.0 - model.p, np.array([-a]), np.ones(1), np.ones(1))]
    else:
        robust = [(1.0, *_block_grid(model.k, model.mu_r, float(model.sigma_r), a, c, fine, laguerre))]
    return robust, nonrobust


def _inv_norm_sq(v) -> float:
    """1/||v||^2 for the projection P_w, w = v/||v|| (0 for v = 0: P_w = I)."""
    nsq = float(np.dot(v, v))
    return 1.0 / nsq if nsq > 0 else 0.0


_BLOCK = 16_384  # grid nodes per row block of _grid_loss: its temporaries stay in cache
# logaddexp(0, s) = s + log1p(exp(-s)) rounds to s itself once exp(-s) < ulp(s)/2: for s >= 34,
# exp(-s) <= 1.8e-15 < 2^-48 = ulp(32)/2. There _grid_loss keeps s (bit for bit the same value).
_LINEAR_FROM = 34.0


def _grid_loss(zR, qR, zN, qN, c: float, inv: float, proj: bool) -> np.ndarray:
    """l(z - c*sqrt(q)) on the outer grid z = zR + zN, q = qR + qN (q - inv*z^2, floored at 0, if ``proj``),
    shape (zR.size, zN.size); l = logistic_loss, evaluated as logaddexp(0, c*sqrt(q) - z), the same
    floating-point operations as logistic_loss(z - c*np.sqrt(q)) (negation is exact), bit for bit.
    Computed a block of rows at a time, in place."""
    out = np.empty((zR.size, zN.size))
    rows = max(1, _BLOCK // max(zN.size, 1))
    z = np.empty((min(rows, zR.size), zN.size))
    for i in range(0, zR.size, rows):
        arg, zb = out[i:i + rows], z[: min(rows, zR.size - i)]
        np.add(zR[i:i + rows, None], zN[None, :], out=zb)
        np.add(qR[i:i + rows, None], qN[None, :], out=arg)
        if proj:  # q - (inv*z)*z, as the expression q - inv * z * z
            arg -= np.multiply(zb, inv) * zb
            np.maximum(arg, 0.0, out=arg)
        np.sqrt(arg, out=arg)
        arg *= c
        arg -= zb
        np.logaddexp(0.0, arg, out=arg, where=arg < _LINEAR_FROM)
    return out


def sam_loss(model, v, c, fine: float = 1.2, laguerre: int = 24, sam_norm: str = "full") -> float:
    """E l(y v.x - c*||x||_2) for block-structured v (L2 with c = rho; T5 with c = rho*tau); with
    ``sam_norm="projected"`` E l(y v.x - c*||P_w x||_2), w = v/||v|| (fixed-scale SAM's exact ascent, T5).

    Exact up to quadrature error (see module docstring); raises ValueError for non-block v.
    """
    c = check_nonnegative("c", c)
    proj = check_sam_norm(sam_norm) == "projected"
    a, b = block_weights(model, v)
    inv = _inv_norm_sq(block_vector(model, a, b)) if proj else 0.0
    robust, (zN, qN, wN) = _grids(model, a, b, c, fine, laguerre)
    total = 0.0
    for prob, zR, qR, wR in robust:
        total += prob * float(wR @ _grid_loss(zR, qR, zN, qN, c, inv, proj) @ wN)
    return total


def sam_loss_mc(model, v, c, n: int = 200_000, seed=0, return_se: bool = False, sam_norm: str = "full"):
    """Monte-Carlo estimate of E l(y v.x - c*||x||_2) (or c*||P_w x||_2 for ``sam_norm="projected"``) for any v,
    computed from the definition on a fixed sample (fixed seed: common random numbers)."""
    c = check_nonnegative("c", c)
    proj = check_sam_norm(sam_norm) == "projected"
    v = check_weights(model, v)
    X, y = model.sample(n, seed)
    if proj and np.any(v):
        w = v / np.linalg.norm(v)
        X_perp = X - np.outer(X @ w, w)  # P_w x, computed as a projection (not via the block-sum identity)
        norms = np.linalg.norm(X_perp, axis=1)
    else:
        norms = np.linalg.norm(X, axis=1)
    vals = logistic_loss(y * (X @ v) - c * norms)
    if return_se:
        return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(n))
    return float(vals.mean())


def norm_moments(model):
    """E||x||^2 (exact) and, on the block quadrature grids, E||x|| and sd(||x||) (L4/T5 strength scale)."""
    msq = float(np.sum(model.mu**2 + model.sigma2))
    robust, (_, qN, wN) = _grids(model, 0.0, 0.0, 1.0, 1.2, 24)
    mean = sum(prob * float(wR @ np.sqrt(qR[:, None] + qN[None, :]) @ wN) for prob, _, qR, wR in robust)
    return {"mean_sq": msq, "mean": mean, "sd": math.sqrt(max(msq - mean**2, 0.0))}
