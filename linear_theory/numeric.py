"""Independent numeric routes: direct minimisation of population objectives (no closed forms used).

* ``minimize_margin_objective``: minimises E l(y v.x - eps*||v||_q - c) over v = B theta for a basis B:
  B = I (the full weight vector; use small D) or B = block indicators (the symmetric two-parameter
  reduction: robust weight a, common non-robust weight b). Works for any model whose margin law is a
  Gaussian mixture (``FeatureModel``, ``TsiprasModel``); gradients are analytic, the optimiser is L-BFGS-B.
  For q = 1 the weights are split as theta = theta+ - theta- (both >= 0) so that the l1 penalty is smooth.
* ``minimize_sam_symmetric``: minimises the per-example SAM objective E l(y v.x - rho*||x||) over (a, b).
* ``minimize_sam_sphere``: minimises E l(y v.x - rho*tau*||x||) over block vectors on the sphere ||v|| = tau
  (one angle), the check for T5's ridge-path form.
* ``minimize_sam_full_mc``: full-vector minimisation of the fixed-scale SAM objective on a fixed Monte-Carlo
  sample (small D), the check that T5's minimiser is a ridge direction even without imposing symmetry.
Both fixed-scale routes take ``sam_norm="projected"`` for the margin drop rho*tau*||P_w x|| (w = v/tau).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit

from .metrics import trapezoid_nodes, check_nonnegative, dual_exponent, logistic_loss
from .model import FeatureModel, TsiprasModel
from .sam_objective import block_vector, check_sam_norm, sam_loss

__all__ = [
    "block_basis",
    "minimize_margin_objective",
    "minimize_sam_symmetric",
    "minimize_sam_sphere",
    "minimize_sam_full_mc",
]


def block_basis(model) -> np.ndarray:
    """D x 2 matrix of block indicators (robust, non-robust)."""
    B = np.zeros((model.D, 2))
    B[: model.k, 0] = 1.0
    B[model.k:, 1] = 1.0
    return B


def _margin_components_grad(model, v):
    """(w, m, s, dm, ds): margin mixture and the gradients of each component's mean and std w.r.t. v."""
    if isinstance(model, FeatureModel):
        s = math.sqrt(float(v * v @ model.sigma2))
        ds = model.sigma2 * v / s if s > 0 else np.zeros_like(v)
        return np.array([1.0]), np.array([v @ model.mu]), np.array([s]), model.mu[None, :], ds[None, :]
    if isinstance(model, TsiprasModel):
        vn = v[1:]
        s = float(model.sigma_n * np.linalg.norm(vn))
        mn = float(model.eta * vn.sum())
        dm = np.zeros((2, model.D))
        dm[0, 0], dm[1, 0] = 1.0, -1.0
        dm[:, 1:] = model.eta
        ds = np.zeros(model.D)
        if s > 0:
            ds[1:] = model.sigma_n**2 * vn / s
        return (np.array([model.p, 1 - model.p]), np.array([v[0] + mn, -v[0] + mn]), np.array([s, s]),
                dm, np.vstack([ds, ds]))
    raise ValueError(f"unsupported model type {type(model).__name__}")


def _gaussian_loss_and_grads(mean, std):
    """E l(mean + std*g), and its derivatives with respect to mean and std."""
    u, w = trapezoid_nodes(std)
    z = mean + std * u
    lp = -expit(-z)  # l'(z)
    return float(w @ logistic_loss(z)), float(w @ lp), float(w @ (lp * u))


def margin_objective(model, v, eps=0.0, norm="inf", const_shift=0.0):
    """E l(y v.x - eps*||v||_q - const_shift) and its gradient in v (q dual to ``norm``; q = 1 uses sign(v))."""
    q = dual_exponent(norm)
    w, m, s, dm, ds = _margin_components_grad(model, v)
    if eps > 0:
        if q == 1.0:
            nq, dnq = float(np.abs(v).sum()), np.sign(v)
        elif q == 2.0:
            nq = float(np.linalg.norm(v))
            dnq = v / nq if nq > 0 else np.zeros_like(v)
        else:
            av = np.abs(v)
            nq = float(np.sum(av**q) ** (1 / q))
            dnq = np.sign(v) * (av / nq) ** (q - 1) if nq > 0 else np.zeros_like(v)
    else:
        nq, dnq = 0.0, np.zeros_like(v)
    f, g = 0.0, np.zeros_like(v)
    for j in range(len(w)):
        fj, dfm, dfs = _gaussian_loss_and_grads(m[j] - eps * nq - const_shift, s[j])
        f += w[j] * fj
        g += w[j] * (dfm * (dm[j] - eps * dnq) + dfs * ds[j])
    return f, g


def minimize_margin_objective(model, eps=0.0, norm="inf", const_shift=0.0, basis=None, v0=None, gtol=1e-13):
    """Directly minimise E l(y v.x - eps*||v||_q - const_shift) over v = basis @ theta (default: full v).

    Returns the minimising v (numpy array of shape (D,)). For q = 1 the columns of ``basis`` must have
    disjoint supports (true for the identity and for ``block_basis``).
    """
    eps = check_nonnegative("eps", eps)
    const_shift = check_nonnegative("const_shift", const_shift)
    B = np.eye(model.D) if basis is None else np.asarray(basis, dtype=float)
    P = B.shape[1]
    q = dual_exponent(norm)
    theta0 = np.linalg.lstsq(B, model.mu / model.sigma2 if v0 is None else np.asarray(v0, float), rcond=None)[0]
    if q == 1.0 and eps > 0:
        colnorm = np.abs(B).sum(axis=0)

        def fun(x):
            theta = x[:P] - x[P:]
            v = B @ theta
            f, g = margin_objective(model, v, 0.0, norm, const_shift + eps * float(colnorm @ (x[:P] + x[P:])))
            gt = B.T @ g
            # d/dx of the l1 penalty: dF/dshift = -dF/dm-part; recompute via the mean derivative
            dshift = _dshift(model, v, const_shift + eps * float(colnorm @ (x[:P] + x[P:])))
            return f, np.concatenate([gt + dshift * eps * colnorm, -gt + dshift * eps * colnorm])

        x0 = np.concatenate([np.maximum(theta0, 0), np.maximum(-theta0, 0)])
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * P),
                       options={"gtol": gtol, "ftol": 1e-16, "maxiter": 20000, "maxcor": 30})
        return B @ (res.x[:P] - res.x[P:])

    def fun(theta):
        f, g = margin_objective(model, B @ theta, eps, norm, const_shift)
        return f, B.T @ g

    res = minimize(fun, theta0, jac=True, method="L-BFGS-B",
                   options={"gtol": gtol, "ftol": 1e-16, "maxiter": 20000, "maxcor": 30})
    return B @ res.x


def _dshift(model, v, shift):
    """d/dshift E l(y v.x - shift) = -E l'(.)."""
    w, m, s, _, _ = _margin_components_grad(model, v)
    return -float(sum(w[j] * _gaussian_loss_and_grads(m[j] - shift, s[j])[1] for j in range(len(w))))


def minimize_sam_symmetric(model, rho, x0=None):
    """Minimise the unconstrained per-example SAM objective E l(y v.x - rho*||x||) over v = (a 1_k, b 1_d).

    The objective is convex in v and symmetric within blocks, so this symmetric minimiser is the global one.
    """
    rho = check_nonnegative("rho", rho)
    start = (model.mu / model.sigma2)[[0, model.k]] if x0 is None else np.asarray(x0, float)

    def fun(ab):
        return sam_loss(model, block_vector(model, ab[0], ab[1]), rho)

    res = minimize(fun, start, method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-15, "maxiter": 4000, "adaptive": True})
    return block_vector(model, res.x[0], res.x[1])


def _sphere_vector(model, tau, theta):
    return tau * block_vector(model, math.cos(theta) / math.sqrt(model.k), math.sin(theta) / math.sqrt(model.d))


def minimize_sam_sphere(model, rho, tau, n_grid: int = 181, sam_norm: str = "full"):
    """Minimise E l(y v.x - rho*tau*||x||) (``sam_norm="projected"``: ||P_w x||) over block vectors with
    ||v||_2 = tau, parametrised by one angle.

    Coarse grid over the angle in (-pi, pi], then bounded Brent refinement around the best grid point.
    """
    rho = check_nonnegative("rho", rho)
    c = rho * tau
    f = lambda t: sam_loss(model, _sphere_vector(model, tau, t), c, sam_norm=sam_norm)  # noqa: E731
    grid = np.linspace(-math.pi, math.pi, n_grid, endpoint=False)
    vals = np.array([f(t) for t in grid])
    i = int(np.argmin(vals))
    h = grid[1] - grid[0]
    res = minimize_scalar(f,
                          bounds=(grid[i] - h, grid[i] + h), method="bounded", options={"xatol": 1e-11})
    return _sphere_vector(model, tau, float(res.x))


def minimize_sam_full_mc(model, rho, tau, n: int = 20000, seed=0, v0=None, sam_norm: str = "full"):
    """Minimise the fixed-scale SAM objective over the full vector on the sphere ||v|| = tau, Monte-Carlo.

    Objective: mean over a fixed sample of l(y v.x - rho*tau*r) with v = tau*w/||w|| (so the constraint
    is built in), r = ||x|| (``sam_norm="full"``) or r = ||P_w x|| = sqrt(||x||^2 - (v.x/tau)^2) ("projected");
    L-BFGS on w with the analytic gradient. Meant for small D.
    """
    rho = check_nonnegative("rho", rho)
    proj = check_sam_norm(sam_norm) == "projected"
    X, y = model.sample(n, seed)
    U = y[:, None] * X
    c = rho * tau
    sq = np.sum(X * X, axis=1)

    def fun(w):
        nw = np.linalg.norm(w)
        v = tau * w / nw
        s = U @ v
        if proj:
            r = np.sqrt(np.maximum(sq - (s / tau) ** 2, 1e-300))
            z = s - c * r
            dz = 1.0 + c * s / (tau**2 * r)  # dz/dv = dz_factor * u
        else:
            z = s - c * np.sqrt(sq)
            dz = 1.0
        f = float(logistic_loss(z).mean())
        gv = U.T @ (-expit(-z) * dz) / n
        gw = tau / nw * (gv - (gv @ w) * w / nw**2)
        return f, gw

    w0 = model.mu / model.sigma2 if v0 is None else np.asarray(v0, float)
    res = minimize(fun, w0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 5000})
    return tau * res.x / np.linalg.norm(res.x)
