"""Symbolic derivations (sympy) of L1-L4 and the stationarity conditions behind T1-T5 (docs/theory.md).

Each ``derive_*`` function *computes* its result with sympy (solve / diff / simplify / integrate); nothing
is typed in as a finished formula. Vectors use n = 3 symbolic coordinates (the coordinate-wise structure
of every derivation is the same for any n). ``derive_all()`` returns a list of ``Derivation`` records;
``python -m linear_theory derive [--latex]`` prints them. Tests in tests/test_linear_derive.py lambdify
the results and compare them with brute-force numeric maximisation/minimisation on random inputs.

``render_markdown()`` is the generated section of docs/theory.md (between ``DOCS_BEGIN`` and ``DOCS_END``);
``python -m linear_theory derive --write-docs docs/theory.md`` rewrites that section from the derivations,
and tests/test_docs.py fails when the committed document differs from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

__all__ = ["Derivation", "derive_all", "derive_L1", "derive_L2", "derive_L3", "derive_L4",
           "derive_T1", "derive_T2", "derive_T3", "derive_T4", "derive_T5", "N_COORDS",
           "DOCS_BEGIN", "DOCS_END", "render_markdown", "replace_generated", "write_docs"]

N_COORDS = 3


@dataclass
class Derivation:
    """label: docs/theory.md label; statement: one line; results: name -> sympy expression (derived)."""

    label: str
    statement: str
    results: dict = field(default_factory=dict)
    symbols: dict = field(default_factory=dict)

    def render(self, latex: bool = False) -> str:
        lines = [f"{self.label}: {self.statement}"]
        for name, expr in self.results.items():
            lines.append(f"  {name} = {sp.latex(expr) if latex else sp.sstr(expr)}")
        return "\n".join(lines)


def _vec(name, n=N_COORDS, **assumptions):
    return sp.Matrix(sp.symbols(f"{name}1:{n + 1}", **assumptions))


def _max_linear_over_l2_ball(c, radius):
    """max_{||d||_2 = radius} c.d by Lagrange multipliers (sympy solve); returns (argmax, max value)."""
    n = len(c)
    d = _vec("d", n, real=True)
    gam = sp.Symbol("gamma", positive=True)
    lagr = (c.T * d)[0] - gam * ((d.T * d)[0] - radius**2)
    stat = sp.solve([sp.diff(lagr, di) for di in d], list(d), dict=True)[0]
    d_star = d.subs(stat)
    gam_sol = [g for g in sp.solve(sp.simplify((d_star.T * d_star)[0] - radius**2), gam) if g.is_positive is not False]
    d_star = sp.simplify(d_star.subs(gam, gam_sol[0]))
    return d_star, sp.simplify((c.T * d_star)[0])


def derive_L1() -> Derivation:
    """L1: l decreasing, so max_{||delta||_p<=eps} l(y v.(x+delta)) = l(y v.x - max_delta (-y v.delta)).

    The inner linear maximisation is solved by sympy for p = 2 (Lagrange), p = inf (coordinate-wise
    endpoint analysis) and p = 3 (Lagrange on the positive orthant after the sign symmetry), giving eps*||v||_q.
    """
    eps = sp.Symbol("epsilon", positive=True)
    v = _vec("v", positive=True)  # signs: |v_i| by the reflection delta_i -> -delta_i
    z = sp.Symbol("z", real=True)
    ell = sp.log(1 + sp.exp(-z))
    # l is decreasing: derivative is negative for all real z
    dl = sp.simplify(sp.diff(ell, z))
    # p = 2: worst delta = -eps v/||v||
    d2, val2 = _max_linear_over_l2_ball(-v, eps)
    # p = inf: each coordinate min_{|t|<=eps} v_i t is attained at an endpoint (linear in t)
    t = sp.Symbol("t", real=True)
    dinf = sp.Matrix([min((vi * t).subs(t, e) for e in (-eps, eps)) for vi in v])
    valinf = sp.simplify(-sum(dinf))
    # p = 3: maximise sum v_i s_i subject to sum s_i^3 = eps^3 (s_i >= 0)
    s = _vec("s", positive=True)
    gam = sp.Symbol("gamma", positive=True)
    lagr = (v.T * s)[0] - gam * (sum(si**3 for si in s) - eps**3)
    s_of_g = [sp.solve(sp.diff(lagr, si), si)[0] for si in s]
    g_sol = sp.solve(sum(si**3 for si in s_of_g) - eps**3, gam)[0]
    val3 = sp.simplify(sum(vi * si.subs(gam, g_sol) for vi, si in zip(v, s_of_g)))
    return Derivation("L1", "max_{||delta||_p<=eps} l(y v.(x+delta)) = l(y v.x - eps*||v||_q)", {
        "dl/dz (l decreasing)": dl,
        "worst delta, p=2 (times y)": d2.T,
        "margin drop, p=2": val2,
        "margin drop, p=inf": valinf,
        "margin drop, p=3 (q=3/2)": val3,
    }, {"eps": eps, "v": v})


def derive_L2() -> Derivation:
    """L2: max_{||e||_2<=rho} l(y (v+e).x) = l(y v.x - rho*||x||_2) (weights and inputs swap roles in L1)."""
    rho = sp.Symbol("rho", positive=True)
    x = _vec("x", real=True)
    e_star, drop = _max_linear_over_l2_ball(-x, rho)
    return Derivation("L2", "max_{||e||_2<=rho} l(y (v+e).x) = l(y v.x - rho*||x||_2)", {
        "worst e (times y)": e_star.T,
        "margin drop": drop,
    }, {"rho": rho, "x": x})


def derive_L3() -> Derivation:
    """L3: {E x : ||E||_F <= rho} = {delta : ||delta||_2 <= rho*||x||_2}.

    (subset) Lagrange's identity ||E||_F^2 ||x||^2 - ||E x||^2 = sum of squares >= 0, expanded by sympy.
    (superset) E = delta x^T / ||x||^2 gives E x = delta and ||E||_F = ||delta||/||x||, simplified by sympy.
    """
    n = N_COORDS
    x = _vec("x", n, real=True)
    E = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"E{i + 1}{j + 1}", real=True))
    ex = E * x
    gap = sp.expand(sum(E[i, j] ** 2 for i in range(n) for j in range(n)) * (x.T * x)[0] - (ex.T * ex)[0])
    sos = sp.expand(sum((E[i, a] * x[b] - E[i, b] * x[a]) ** 2 for i in range(n) for a in range(n) for b in range(a + 1, n)))
    delta = _vec("delta", n, real=True)
    E_star = delta * x.T / (x.T * x)[0]
    reach = sp.simplify(E_star * x - delta)
    fro_ratio = sp.simplify(sum(E_star[i, j] ** 2 for i in range(n) for j in range(n)) * (x.T * x)[0] / (delta.T * delta)[0])
    return Derivation("L3", "{E x : ||E||_F <= rho} = {delta : ||delta||_2 <= rho*||x||_2}", {
        "||E||_F^2 ||x||^2 - ||Ex||^2 - (sum of squares)": sp.simplify(gap - sos),
        "E* x - delta, E* = delta x^T/||x||^2": reach.T,
        "||E*||_F^2 ||x||^2 / ||delta||^2": fro_ratio,
    }, {"x": x, "delta": delta})


def derive_L4() -> Derivation:
    """L4: equate the SAM drop rho*||x|| (L2) with the l2-AT drop s*||v|| (L1): s = rho*||x||/||v||."""
    rho, s, nx, nv, D, eps = sp.symbols("rho s norm_x norm_v D epsilon", positive=True)
    s_sam = sp.solve(sp.Eq(rho * nx, s * nv), s)[0]
    # spread uniformly over D coordinates: per-coordinate size c with ||c*1||_2 = s
    c = sp.Symbol("c", positive=True)
    per_coord = sp.solve(sp.Eq(sp.sqrt(D * c**2), s_sam), c)[0]
    i = sp.Symbol("i", integer=True, positive=True)
    at_l2_size = sp.sqrt(sp.summation(eps**2, (i, 1, D)))  # ||eps * 1_D||_2
    return Derivation("L4", "per-example SAM = l2 AT on features with radius s_SAM = rho*||x||_2/||v||_2", {
        "s_SAM": s_sam,
        "s_SAM per coordinate": per_coord,
        "l2 size of an l_inf AT radius eps": sp.simplify(at_l2_size),
    }, {"rho": rho, "norm_x": nx, "norm_v": nv, "D": D})


def _diag_gaussian_logodds(n=N_COORDS):
    x = _vec("x", n, real=True)
    mu = _vec("mu", n, real=True)
    sig2 = _vec("sigma2_", n, positive=True)
    logp = lambda sign: sum(-(x[i] - sign * mu[i]) ** 2 / (2 * sig2[i]) for i in range(n))  # noqa: E731
    logodds = sp.expand(sp.simplify(logp(1) - logp(-1)))
    return x, mu, sig2, logodds


def derive_T1() -> Derivation:
    """T1: the log-odds of the Gaussian model is linear, so logistic regression is well specified and its
    population optimum is the log-odds coefficient vector; the score E[x (sigmoid(v.x) - P(y=1|x))] vanishes
    pointwise at v = grad_x log-odds."""
    x, mu, sig2, logodds = _diag_gaussian_logodds()
    v = sp.Matrix([sp.simplify(sp.diff(logodds, xi)) for xi in x])
    affine_rest = sp.simplify(logodds - (v.T * x)[0])
    # stationarity: sigmoid(v.x) equals the posterior P(y=1|x) = p+ / (p+ + p-)
    pp = sp.exp(-sum((x[i] - mu[i]) ** 2 / (2 * sig2[i]) for i in range(len(x))))
    pm = sp.exp(-sum((x[i] + mu[i]) ** 2 / (2 * sig2[i]) for i in range(len(x))))
    score_gap = sp.simplify(1 / (1 + sp.exp(-(v.T * x)[0])) - pp / (pp + pm))
    return Derivation("T1", "v_ST = 2 Sigma^{-1} mu (well-specified logistic regression)", {
        "v_ST = d(log-odds)/dx": v.T,
        "log-odds - v.x (must be 0)": affine_rest,
        "sigmoid(v.x) - P(y=1|x) (must be 0)": score_gap,
    }, {"mu": mu, "sigma2": sig2})


def derive_T2() -> Derivation:
    """T2: E l(z - c), z ~ N(v.mu, v.Sigma.v), is decreasing in the mean at fixed variance, so the best
    direction maximises v.mu subject to v.Sigma.v = s^2: Lagrange gives v proportional to Sigma^{-1} mu."""
    v = _vec("v", real=True)
    mu = _vec("mu", real=True)
    sig2 = _vec("sigma2_", positive=True)
    gam, s2 = sp.symbols("gamma s2", positive=True)
    lagr = (v.T * mu)[0] - gam * (sum(sig2[i] * v[i] ** 2 for i in range(len(v))) - s2)
    sol = sp.solve([sp.diff(lagr, vi) for vi in v], list(v), dict=True)[0]
    v_star = v.subs(sol)
    ratios = [sp.simplify(v_star[i] * sig2[i] / mu[i]) for i in range(len(v))]
    return Derivation("T2", "argmin_v E l(y v.x - c) has direction Sigma^{-1} mu for any constant c", {
        "stationary v (gamma: multiplier)": v_star.T,
        "v_i sigma_i^2 / mu_i (same for all i)": sp.Matrix(ratios).T,
    }, {"mu": mu, "sigma2": sig2})


def derive_T3() -> Derivation:
    """T3: AT with l_inf radius eps = ST on the law with mean mu - eps*sign(v) (L1). Apply T1 per coordinate
    and solve the self-consistency of the sign (subgradient s in [-1, 1] when v_i = 0)."""
    mu_i, eps = sp.Symbol("mu_i", real=True), sp.Symbol("epsilon", positive=True)
    sig2_i = sp.Symbol("sigma2_i", positive=True)
    s = sp.Symbol("s", real=True)
    t1 = lambda mean: 2 * mean / sig2_i  # T1 coefficient for a coordinate with mean `mean`  # noqa: E731
    pos = sp.solve(sp.Eq(sp.Symbol("v_i"), t1(mu_i - eps)), sp.Symbol("v_i"))[0]
    cond_pos = sp.solve(pos > 0, mu_i)
    neg = sp.solve(sp.Eq(sp.Symbol("v_i"), t1(mu_i + eps)), sp.Symbol("v_i"))[0]
    cond_neg = sp.solve(neg < 0, mu_i)
    s_zero = sp.solve(sp.Eq(0, t1(mu_i - eps * s)), s)[0]
    cond_zero = sp.solve([s_zero <= 1, s_zero >= -1], mu_i)
    piecewise = sp.Piecewise((pos, cond_pos), (neg, cond_neg), (0, True))
    return Derivation("T3", "l_inf AT: v_i = 2 sign(mu_i)(|mu_i| - eps)_+ / sigma_i^2 (soft thresholding)", {
        "v_i if v_i > 0": pos, "valid when": cond_pos,
        "v_i if v_i < 0": neg, "valid when ": cond_neg,
        "subgradient s if v_i = 0": s_zero, "valid when  ": cond_zero,
        "v_i": piecewise,
    }, {"mu_i": mu_i, "eps": eps, "sigma2_i": sig2_i})


def derive_T4() -> Derivation:
    """T4: AT with l2 radius eps = ST on the law with mean mu - eps*v/||v|| (L1). Solving
    v = 2 Sigma^{-1}(mu - eps v/||v||) for v with lambda = eps/||v|| gives ridge shrinkage; d/dlambda of
    (lambda v_i(lambda))^2 is positive, so lambda*||v(lambda)|| is increasing and the root is unique."""
    v = _vec("v", real=True)
    mu = _vec("mu", real=True)
    sig2 = _vec("sigma2_", positive=True)
    lam = sp.Symbol("lambda", positive=True)
    eqs = [sp.Eq(v[i], 2 * (mu[i] - lam * v[i]) / sig2[i]) for i in range(len(v))]
    sol = sp.solve(eqs, list(v), dict=True)[0]
    v_lam = sp.simplify(v.subs(sol))
    shrink = [sp.simplify(v_lam[i] / (2 * mu[i] / sig2[i])) for i in range(len(v))]
    dterm = [sp.factor(sp.diff((lam * v_lam[i]) ** 2, lam)) for i in range(len(v))]
    return Derivation("T4", "l2 AT: v = (Sigma/2 + lambda I)^{-1} mu with lambda*||v(lambda)||_2 = eps", {
        "v(lambda)": v_lam.T,
        "shrinkage factor v_i / v_ST,i": sp.Matrix(shrink).T,
        "d/dlambda (lambda v_i)^2 (> 0)": sp.Matrix(dterm).T,
    }, {"mu": mu, "sigma2": sig2, "lambda": lam})


def derive_T5() -> Derivation:
    """T5: stationarity of E l(v.u - c*r) on the sphere ||v|| = tau (r the norm of x, treated as fixed as in
    the Stein argument of docs/theory.md, T5). Stein's lemma E[g(u)(u - m)] = s^2 E[g'(u)] (derived here from the Gaussian
    density by differentiation) turns the gradient into mu*A + Sigma v*B (A = E l', B = E l''); adding the
    multiplier gamma*v and solving gives v_i proportional to mu_i/(sigma_i^2 + lambda), lambda = -gamma/B."""
    u, m = sp.symbols("u m", real=True)
    s = sp.Symbol("s", positive=True)
    dens = sp.exp(-(u - m) ** 2 / (2 * s**2)) / sp.sqrt(2 * sp.pi * s**2)
    stein_identity = sp.simplify((u - m) * dens + s**2 * sp.diff(dens, u))  # = 0 -> integrate by parts
    v = _vec("v", real=True)
    mu = _vec("mu", real=True)
    sig2 = _vec("sigma2_", positive=True)
    A, B, gam = sp.Symbol("A", negative=True), sp.Symbol("B", positive=True), sp.Symbol("gamma", real=True)
    grad = [mu[i] * A + sig2[i] * v[i] * B - gam * v[i] for i in range(len(v))]
    sol = sp.solve(grad, list(v), dict=True)[0]
    v_star = v.subs(sol)
    lam = sp.Symbol("lambda", real=True)
    ratio = [sp.simplify((v_star[i] / (mu[i] / (sig2[i] + lam))).subs(gam, -lam * B)) for i in range(len(v))]
    return Derivation("T5", "fixed-scale SAM: minimiser on the ridge path v prop. to (Sigma + lambda I)^{-1} mu", {
        "(u-m) phi(u) + s^2 phi'(u) (Stein, must be 0)": stein_identity,
        "stationary v (gamma: multiplier)": v_star.T,
        "v_i / (mu_i/(sigma_i^2+lambda)) at gamma = -lambda B (same for all i)": sp.Matrix(ratio).T,
    }, {"mu": mu, "sigma2": sig2})


def derive_all() -> list:
    return [f() for f in (derive_L1, derive_L2, derive_L3, derive_L4, derive_T1, derive_T2, derive_T3,
                          derive_T4, derive_T5)]


DOCS_BEGIN = "<!-- BEGIN GENERATED: python -m linear_theory derive --markdown -->"
DOCS_END = "<!-- END GENERATED -->"


def render_markdown(derivations=None) -> str:
    """The derivations as markdown: per label its statement, then every derived result as sympy text and
    as a LaTeX display block. This is the generated section of docs/theory.md."""
    derivations = derive_all() if derivations is None else derivations
    lines = []
    for d in derivations:
        lines += [f"#### {d.label}", "", f"Statement: `{d.statement}`", ""]
        for name, expr in d.results.items():
            lines += [f"* {name.strip()}: `{sp.sstr(expr)}`", "", "  ```math", f"  {sp.latex(expr)}", "  ```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def replace_generated(text: str, block: str) -> str:
    """``text`` with everything between the ``DOCS_BEGIN`` and ``DOCS_END`` lines replaced by ``block``.

    ValueError when the markers are missing, repeated or out of order."""
    if text.count(DOCS_BEGIN) != 1 or text.count(DOCS_END) != 1:
        raise ValueError(f"the document must contain the lines {DOCS_BEGIN!r} and {DOCS_END!r} exactly once")
    head, rest = text.split(DOCS_BEGIN)
    if DOCS_END not in rest:
        raise ValueError(f"{DOCS_END!r} must come after {DOCS_BEGIN!r}")
    _, tail = rest.split(DOCS_END)
    body = block.strip("\n")
    return f"{head}{DOCS_BEGIN}\n\n{body}\n\n{DOCS_END}{tail}"


def write_docs(path) -> bool:
    """Rewrite the generated section of the markdown file ``path`` (e.g. docs/theory.md) from
    ``render_markdown()``; returns True when the file changed. ValueError for a missing file or markers."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    new = replace_generated(text, render_markdown())
    if new == text:
        return False
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(new)
    return True
