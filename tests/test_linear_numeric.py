"""Closed forms (T1, T3, T4) against independent numeric routes; T2/T5 one-dimensional solves against
unrestricted minimisers; quadratures against scipy.quad and Monte-Carlo (docs/theory.md sections 2-4)."""
import math

import numpy as np
import pytest
import scipy.integrate as si
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linear_theory as lt
from linear_theory import numeric as nu
from linear_theory.metrics import gaussian_expectation
from linear_theory.sam_objective import norm_moments

REF = lt.FeatureModel()
RTOL = 1e-5


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


@pytest.mark.parametrize("mean, std", [(10.0, 4.47), (0.3, 0.05), (3.0, 10.0), (0.5, 20.0), (-2.0, 0.7)])
def test_population_loss_quadrature_matches_adaptive_quad(mean, std):
    f = lambda u: lt.logistic_loss(mean + std * u) * math.exp(-u * u / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    ref = si.quad(f, -40, 40, points=[-mean / std], limit=1000, epsabs=1e-15, epsrel=1e-13)[0]
    assert gaussian_expectation(lt.logistic_loss, mean, std) == pytest.approx(ref, rel=1e-11)


def test_population_loss_matches_monte_carlo_on_samples():
    m = lt.FeatureModel(d=10)
    v = lt.st_weights(m) * 0.7
    X, y = m.sample(400_000, 3)
    vals = lt.logistic_loss(y * (X @ v) - 0.3)
    se = vals.std() / math.sqrt(len(vals))
    assert abs(lt.population_loss(m, v, shift=0.3) - vals.mean()) < 4 * se


# ---- closed forms vs direct minimisation on the reference model (symmetric 2-parameter reduction) ----

@pytest.mark.parametrize("method, eps", [("st", 0.0), ("at-linf", 0.1), ("at-linf", 0.25), ("at-l2", 0.4)])
def test_reference_closed_forms_equal_symmetric_minimiser(method, eps):
    sol = lt.solve(REF, method, eps)
    norm = 2 if method == "at-l2" else "inf"
    v_num = nu.minimize_margin_objective(REF, eps, norm, basis=nu.block_basis(REF))
    assert rel(v_num, sol.v) < RTOL


def test_reference_at_linf_equals_full_vector_minimiser():
    v_num = nu.minimize_margin_objective(REF, 0.1, "inf")  # all 101 weights free
    assert rel(v_num, lt.at_linf_weights(REF, 0.1)) < RTOL


# ---- closed forms vs full-vector minimisation on random valid models (property-based) ----

models = st.builds(
    lt.FeatureModel,
    k=st.integers(1, 2), d=st.integers(1, 5),
    mu_r=st.floats(0.2, 3.0), sigma_r=st.floats(0.7, 3.0),
    eta=st.floats(0.05, 1.0), sigma_n=st.floats(0.5, 2.0),
)
FAST = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(models)
def test_st_closed_form_equals_minimiser(m):
    assert rel(nu.minimize_margin_objective(m), lt.st_weights(m)) < RTOL


@FAST
@given(models, st.floats(0.0, 1.5))
def test_at_linf_closed_form_equals_minimiser(m, frac):
    eps = frac * float(m.mu.max())
    v_cf = lt.at_linf_weights(m, eps)
    v_num = nu.minimize_margin_objective(m, eps, "inf")
    if np.all(v_cf == 0):
        assert np.abs(v_num).max() < 1e-6
    else:
        assert rel(v_num, v_cf) < RTOL


@FAST
@given(models, st.floats(0.0, 0.8))
def test_at_l2_closed_form_equals_minimiser(m, frac):
    eps = frac * float(np.linalg.norm(m.mu))
    v_cf, lam = lt.at_l2_weights(m, eps)
    assert rel(nu.minimize_margin_objective(m, eps, 2), v_cf) < RTOL
    assert lam * np.linalg.norm(v_cf) == pytest.approx(eps, rel=1e-10, abs=1e-14)


def test_at_l2_beyond_norm_of_mu_is_zero():
    m = lt.FeatureModel(k=1, d=3)
    eps = 1.01 * float(np.linalg.norm(m.mu))
    assert np.all(lt.at_l2_weights(m, eps)[0] == 0)
    assert np.abs(nu.minimize_margin_objective(m, eps, 2)).max() < 1e-8


# ---- T3 threshold, T4 root uniqueness, T2 constant shift ----

def test_t3_nonrobust_weights_zero_exactly_when_eps_at_least_eta():
    eta = REF.eta
    for eps in [0.0, 0.1, 0.19, 0.199999, 0.2, 0.200001, 0.3, 1.0]:
        v = lt.solve(REF, "at-linf", eps).v
        v_num = nu.minimize_margin_objective(REF, eps, "inf", basis=nu.block_basis(REF))
        if eps >= eta:
            assert np.all(v[~REF.robust_mask] == 0.0), eps
            assert np.abs(v_num[~REF.robust_mask]).max() < 1e-9, eps
        else:
            assert np.all(v[~REF.robust_mask] > 0.0), eps
            assert np.all(v_num[~REF.robust_mask] > 0.0), eps


def test_t4_lambda_root_unique():
    m = lt.FeatureModel(k=2, mu_r=2.0, sigma_r=3.0, d=7, eta=0.4, sigma_n=0.6)
    lams = np.concatenate([[0.0], np.logspace(-6, 6, 4000)])
    g = np.array([lam * np.linalg.norm(m.mu / (m.sigma2 / 2 + lam)) for lam in lams])
    assert np.all(np.diff(g) > 0) and g[-1] < np.linalg.norm(m.mu)  # strictly increasing, below ||mu||
    for eps in [0.05, 0.5, 0.99 * np.linalg.norm(m.mu)]:
        lam = lt.at_l2_lambda(m, eps)
        sign_changes = np.sum(np.diff(np.sign(g - eps)) != 0)
        assert sign_changes == 1
        assert lam * np.linalg.norm(m.mu / (m.sigma2 / 2 + lam)) == pytest.approx(eps, rel=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.5, 2.0])
def test_t2_constant_shift_direction_is_sigma_inv_mu(c):
    m = lt.FeatureModel(k=2, mu_r=1.5, sigma_r=2.0, d=4, eta=0.6, sigma_n=0.8)
    v = nu.minimize_margin_objective(m, const_shift=c)
    d = m.mu / m.sigma2
    assert rel(v / np.linalg.norm(v), d / np.linalg.norm(d)) < RTOL


# ---- ridge path ----

def test_ridge_direction_and_match_roundtrip():
    m = lt.FeatureModel(k=2, d=6, eta=0.3, sigma_n=0.8)
    for lam in [0.0, 0.01, 0.5, 3.0, 40.0]:
        r = lt.ridge_direction(m, lam)
        assert np.linalg.norm(r) == pytest.approx(1.0)
        got = lt.match_ridge_lambda(m, 2.5 * r)
        assert (got == 0.0) if lam == 0 else got == pytest.approx(lam, rel=1e-4)
    assert lt.match_ridge_lambda(REF, lt.st_weights(REF)) == 0.0
    # T4's lambda sits at ridge parameter 2*lambda
    v, lam = lt.at_l2_weights(REF, 0.4)
    assert rel(lt.ridge_direction(REF, 2 * lam), v / np.linalg.norm(v)) < 1e-12


# ---- SAM objectives ----

def test_sam_loss_quadrature_matches_monte_carlo():
    for m in [REF, lt.FeatureModel(k=3, d=5, eta=0.5), lt.TsiprasModel(p=0.8, d=20)]:
        v = lt.ridge_direction(m, 1.0) * 3.0
        mc, se = lt.sam_loss_mc(m, v, 0.3, n=200_000, seed=5, return_se=True)
        assert abs(lt.sam_loss(m, v, 0.3) - mc) < 4 * se


def test_sam_loss_quadrature_converged():
    v = lt.ridge_direction(REF, 1.0) * 4.0
    coarse = lt.sam_loss(REF, v, 0.4)
    fine = lt.sam_loss(REF, v, 0.4, fine=0.5, laguerre=48)
    assert coarse == pytest.approx(fine, rel=1e-6)


def test_logaddexp_is_its_argument_from_34():
    """sam_objective._grid_loss skips logaddexp(0, s) for s >= 34, where it equals s bit for bit."""
    from linear_theory.sam_objective import _LINEAR_FROM
    s = np.concatenate([np.linspace(_LINEAR_FROM, 200.0, 200_001), np.geomspace(200.0, 1e300, 10_001)])
    assert np.array_equal(np.logaddexp(0.0, s), s)


@pytest.mark.parametrize("proj", [False, True])
def test_grid_loss_bitwise_equals_logistic_loss_expression(proj):
    """The blocked in-place evaluation is the same floating-point computation as the plain expression."""
    from linear_theory.sam_objective import _grid_loss
    rng = np.random.default_rng(3)
    zR, zN = rng.normal(0, 30, 77), rng.normal(0, 30, 1801)  # margins across both tails (|s| > 34)
    qR, qN = zR**2 + rng.uniform(0, 50, 77), zN**2 + rng.uniform(0, 50, 1801)
    for c, inv in [(0.0, 0.0), (0.8, 1 / 16), (3.0, 1 / 900)]:
        z, sq = zR[:, None] + zN[None, :], qR[:, None] + qN[None, :]
        if proj:
            sq = np.maximum(sq - inv * z * z, 0.0)
        ref = lt.logistic_loss(z - c * np.sqrt(sq))
        assert np.array_equal(_grid_loss(zR, qR, zN, qN, c, inv, proj), ref)


def test_norm_moments_match_samples():
    X, _ = REF.sample(200_000, 9)
    n = np.linalg.norm(X, axis=1)
    mom = norm_moments(REF)
    assert mom["mean_sq"] == pytest.approx(136.0)
    assert mom["mean"] == pytest.approx(n.mean(), abs=4 * n.std() / math.sqrt(len(n)))


def test_t2_sam_direction_deviation_is_small_and_reported():
    sol = lt.solve(REF, "sam", 0.1, checks=True)
    dev = sol.info["deviation_from_sigma_inv_mu"]
    # T2 (approximate): measured angle between the exact minimiser and Sigma^{-1} mu
    assert 0.0 <= dev["angle_deg"] < 0.5
    assert sol.info["objective_gap"] >= -1e-12
    d = REF.mu / REF.sigma2
    assert rel(sol.v / np.linalg.norm(sol.v), d / np.linalg.norm(d)) < 1e-12
    # rho = 0: the 1-D solve recovers T1 (scale 2)
    assert rel(lt.solve(REF, "sam", 0.0).v, lt.st_weights(REF)) < RTOL


def test_sam_exact_minimiser_is_symmetric_full_vector_mc():
    """Convexity: the symmetric minimiser of E l(y v.x - rho||x||) is the full-vector one (MC route)."""
    m = lt.FeatureModel(k=1, d=3, eta=0.6, sigma_n=1.0, mu_r=2.0, sigma_r=2.0)
    v_sym = nu.minimize_sam_symmetric(m, 0.2)
    X, y = m.sample(100_000, 11)
    U, c = y[:, None] * X, 0.2 * np.linalg.norm(X, axis=1)
    from scipy.optimize import minimize
    from scipy.special import expit

    def f(v):
        z = U @ v - c
        return lt.logistic_loss(z).mean(), U.T @ (-expit(-z)) / len(z)

    v_mc = minimize(f, v_sym, jac=True, method="L-BFGS-B", options={"gtol": 1e-10}).x
    assert rel(v_mc, v_sym) < 0.03  # Monte-Carlo sampling error, 1e5 samples


@pytest.mark.parametrize("rho, tau", [(0.05, 4.0), (0.2, 4.0), (0.0, 8.0)])
def test_t5_ridge_solution_equals_sphere_minimiser(rho, tau):
    sol = lt.solve(REF, "sam-fixed-scale", rho, tau=tau, checks=True)
    assert np.linalg.norm(sol.v) == pytest.approx(tau)
    # tau above ||v_ST|| = 4.03 with rho = 0: the multiplier changes sign, lam < 0
    assert (sol.lam < 0) == (tau > np.linalg.norm(lt.st_weights(REF)) and rho == 0.0)
    assert sol.info["deviation_from_ridge_path"]["rel_dir_diff"] < RTOL
    assert abs(sol.info["objective_gap"]) < 1e-10


def test_t5_lambda_increases_with_rho():
    lams = [lt.solve(REF, "sam-fixed-scale", r, tau=4.0).lam for r in [0.0, 0.05, 0.1, 0.2, 0.3]]
    assert np.all(np.diff(lams) > 0)


def test_t5_full_vector_mc_minimiser_is_on_ridge_path():
    m = lt.FeatureModel(k=1, d=4, mu_r=2.0, sigma_r=2.0, eta=0.5, sigma_n=1.0)
    tau, rho = 2.0, 0.15
    v_mc = nu.minimize_sam_full_mc(m, rho, tau, n=100_000, seed=4)
    sol = lt.solve(m, "sam-fixed-scale", rho, tau=tau)
    # no symmetry imposed: the unrestricted minimiser lands on the ridge path, up to MC error
    r = lt.ridge_direction(m, lt.match_ridge_lambda(m, v_mc))
    assert 1 - float(r @ v_mc / tau) < 2e-4
    assert rel(v_mc, sol.v) < 0.02  # measured 0.005-0.008 (seeds 4, 5); the ST direction is 0.099 away


# ---- Tsipras variant: numeric routes agree ----

@pytest.mark.parametrize("method, eps", [("st", 0.0), ("at-linf", 0.1), ("at-l2", 0.3)])
def test_tsipras_symmetric_equals_full_vector(method, eps):
    m = lt.TsiprasModel(p=0.85, d=4, eta=0.5)
    norm = 2 if method == "at-l2" else "inf"
    v_sym = lt.solve(m, method, eps).v
    v_full = nu.minimize_margin_objective(m, eps, norm)
    assert rel(v_full, v_sym) < RTOL


def test_tsipras_accuracy_matches_samples():
    m = lt.TsiprasModel(p=0.8, d=10, eta=0.3)
    v = np.concatenate([[0.7], np.full(10, 0.5)])
    X, y = m.sample(200_000, 8)
    acc = np.mean(y * (X @ v) > 0)
    assert abs(lt.clean_accuracy(m, v) - acc) < 4 * math.sqrt(acc * (1 - acc) / len(y))
