"""Sympy derivations (linear_theory.derive) against brute-force numeric optimisation on random inputs."""
import math

import numpy as np
import pytest
import sympy as sp
from scipy.optimize import minimize

import linear_theory as lt
from linear_theory import derive as dv
from linear_theory import numeric as nu

RNG = np.random.default_rng(20230601)
N = dv.N_COORDS


def loss(z):
    return float(np.logaddexp(0.0, -z))


def brute_max(f, dim, constraint, starts=6, rng=RNG):
    """max f(w) subject to constraint(w) >= 0, by SLSQP from several random starts."""
    best = -np.inf
    for _ in range(starts):
        w0 = rng.normal(size=dim) * 0.1
        res = minimize(lambda w: -f(w), w0, method="SLSQP", constraints=[{"type": "ineq", "fun": constraint}],
                       options={"ftol": 1e-14, "maxiter": 500})
        if np.all(np.asarray(constraint(res.x)) >= -1e-9):
            best = max(best, -res.fun)
    return best


@pytest.fixture(scope="module")
def derivations():
    return {d.label: d for d in dv.derive_all()}


def test_every_label_derived_and_printable(derivations):
    assert set(derivations) == {"L1", "L2", "L3", "L4", "T1", "T2", "T3", "T4", "T5"}
    for d in derivations.values():
        assert d.results and d.render() and d.render(latex=True)


@pytest.mark.parametrize("p, key", [(2, "margin drop, p=2"), (math.inf, "margin drop, p=inf"),
                                    (3, "margin drop, p=3 (q=3/2)")])
def test_L1_sympy_equals_brute_force(derivations, p, key):
    d = derivations["L1"]
    drop = sp.lambdify([d.symbols["eps"], *d.symbols["v"]], d.results[key])
    for _ in range(3):
        v, x, y, eps = RNG.normal(size=N), RNG.normal(size=N), RNG.choice([-1, 1]), RNG.uniform(0.1, 1.0)
        f = lambda delta: loss(y * v @ (x + delta))  # noqa: E731
        if math.isinf(p):
            con = lambda delta: eps - np.abs(delta)  # noqa: E731
        else:
            con = lambda delta: eps**p - np.sum(np.abs(delta) ** p)  # noqa: E731
        brute = brute_max(f, N, con)
        assert brute == pytest.approx(loss(y * v @ x - drop(eps, *np.abs(v))), rel=1e-6)


def test_L2_sympy_equals_brute_force(derivations):
    d = derivations["L2"]
    drop = sp.lambdify([d.symbols["rho"], *d.symbols["x"]], d.results["margin drop"])
    for _ in range(3):
        v, x, y, rho = RNG.normal(size=N), RNG.normal(size=N), RNG.choice([-1, 1]), RNG.uniform(0.1, 1.0)
        brute = brute_max(lambda e: loss(y * (v + e) @ x), N, lambda e: rho**2 - e @ e)
        assert brute == pytest.approx(loss(y * v @ x - drop(rho, *x)), rel=1e-6)


def test_L3_sympy_equals_brute_force(derivations):
    d = derivations["L3"]
    assert d.results["||E||_F^2 ||x||^2 - ||Ex||^2 - (sum of squares)"] == 0
    x, rho = RNG.normal(size=N), 0.7
    # subset: the largest ||E x|| over ||E||_F <= rho is rho*||x|| (brute force over the 9 entries)
    brute = brute_max(lambda e: np.linalg.norm(e.reshape(N, N) @ x), N * N, lambda e: rho**2 - e @ e)
    assert brute == pytest.approx(rho * np.linalg.norm(x), rel=1e-6)
    # superset: any delta in the rho*||x|| ball is reached by E* with ||E*||_F <= rho
    delta = RNG.normal(size=N)
    delta *= 0.9 * rho * np.linalg.norm(x) / np.linalg.norm(delta)
    E = np.outer(delta, x) / (x @ x)
    assert np.allclose(E @ x, delta) and np.linalg.norm(E) <= rho


def test_L4_sam_equals_l2_at_with_derived_radius(derivations):
    d = derivations["L4"]
    s_fn = sp.lambdify([d.symbols["rho"], d.symbols["norm_x"], d.symbols["norm_v"]], d.results["s_SAM"])
    v, x, y, rho = RNG.normal(size=N), RNG.normal(size=N), 1, 0.3
    s = s_fn(rho, np.linalg.norm(x), np.linalg.norm(v))
    sam = brute_max(lambda e: loss(y * (v + e) @ x), N, lambda e: rho**2 - e @ e)
    at = brute_max(lambda dl: loss(y * v @ (x + dl)), N, lambda dl: s**2 - dl @ dl)
    assert sam == pytest.approx(at, rel=1e-6)


def _model3():
    return lt.FeatureModel(k=1, mu_r=1.3, sigma_r=1.7, d=2, eta=0.45, sigma_n=0.8)


def _subs_model(expr, m, extra=None):
    mu = sp.symbols(f"mu1:{N + 1}", real=True)
    sig2 = sp.symbols(f"sigma2_1:{N + 1}", positive=True)
    subs = {**{a: b for a, b in zip(mu, m.mu)}, **{a: b for a, b in zip(sig2, m.sigma2)}, **(extra or {})}
    return np.array(sp.Matrix(expr).subs(subs).evalf(), dtype=float).ravel()


def test_T1_derived_equals_numeric_minimiser(derivations):
    m = _model3()
    v_sym = _subs_model(derivations["T1"].results["v_ST = d(log-odds)/dx"], m)
    assert derivations["T1"].results["sigmoid(v.x) - P(y=1|x) (must be 0)"] == 0
    v_num = nu.minimize_margin_objective(m)
    assert np.linalg.norm(v_sym - v_num) / np.linalg.norm(v_sym) < 1e-5


def test_T2_derived_direction_equals_numeric_minimiser(derivations):
    m = _model3()
    v_sym = _subs_model(derivations["T2"].results["stationary v (gamma: multiplier)"], m, {sp.Symbol("gamma", positive=True): 1})
    v_num = nu.minimize_margin_objective(m, const_shift=1.3)
    cos = v_sym @ v_num / np.linalg.norm(v_sym) / np.linalg.norm(v_num)
    assert 1 - cos < 1e-10


@pytest.mark.parametrize("eps", [0.2, 0.6, 1.5])
def test_T3_derived_piecewise_equals_numeric_minimiser(derivations, eps):
    d = derivations["T3"]
    f = sp.lambdify([d.symbols["mu_i"], d.symbols["eps"], d.symbols["sigma2_i"]], d.results["v_i"])
    m = _model3()
    v_sym = np.array([f(mu, eps, s2) for mu, s2 in zip(m.mu, m.sigma2)], dtype=float)
    v_num = nu.minimize_margin_objective(m, eps, "inf")
    assert np.allclose(v_num, v_sym, rtol=1e-5, atol=1e-8)


def test_T4_derived_ridge_equals_numeric_minimiser(derivations):
    d = derivations["T4"]
    m, eps = _model3(), 0.5
    lam = lt.at_l2_lambda(m, eps)
    v_sym = _subs_model(d.results["v(lambda)"], m, {d.symbols["lambda"]: lam})
    assert lam * np.linalg.norm(v_sym) == pytest.approx(eps, rel=1e-10)
    v_num = nu.minimize_margin_objective(m, eps, 2)
    assert np.linalg.norm(v_sym - v_num) / np.linalg.norm(v_sym) < 1e-5


def test_T5_derived_ridge_form_equals_numeric_sphere_minimiser(derivations):
    """Stationarity form of T5 under the constant-shift objective E l(v.u - c) on ||v|| = tau (exact there)."""
    d = derivations["T5"]
    assert d.results["(u-m) phi(u) + s^2 phi'(u) (Stein, must be 0)"] == 0
    ratios = d.results["v_i / (mu_i/(sigma_i^2+lambda)) at gamma = -lambda B (same for all i)"]
    assert len(set(ratios)) == 1
    m, tau, c = _model3(), 1.2, 0.8

    def f(w):
        nw = np.linalg.norm(w)
        val, g = nu.margin_objective(m, tau * w / nw, const_shift=c)
        return val, tau / nw * (g - (g @ w) * w / nw**2)

    w = minimize(f, m.mu, jac=True, method="L-BFGS-B", options={"gtol": 1e-13, "ftol": 1e-16}).x
    v_num = tau * w / np.linalg.norm(w)
    lam = lt.match_ridge_lambda(m, v_num)
    assert np.linalg.norm(tau * lt.ridge_direction(m, lam) - v_num) / tau < 1e-5
