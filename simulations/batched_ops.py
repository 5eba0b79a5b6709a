"""Batched forms of the SAM ascent, the m-sharpness SAM gradient and PGD for many linear models at once.

These are the same algorithms as ``samrobust.sam.sam_perturbation``, :func:`simulations.training.
sam_gradient_vectorized` and ``samrobust.attacks.pgd`` (via :func:`simulations.training.pgd_linear`), written
on stacked tensors so that rows with *different* strengths (rho or eps per row) run in one call, with
plain autograd instead of nested ``vmap``. ``tests/test_sim_batched.py`` checks each one against the
original on the same inputs (same numbers up to float rounding; the random starts are identical).

Shapes: P (R, D) weights of R linear models, X (R, B, D) inputs, y (R, B) labels in {-1, +1}.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from samrobust.threat import normalize_norm

from .training import logistic_loss

__all__ = ["sam_ascent_batched", "sam_gradient_batched", "sam_groups", "sam_ascent_loss", "sam_descent_loss",
           "pgd_random_start", "pgd_linear_batched", "pgd_rows", "plain_loss", "plain_gradient", "row_margins"]


def _rows(t, like: torch.Tensor, ndim: int) -> torch.Tensor:
    """A float or (R,) tensor as an (R, 1, ..., 1) tensor with ``ndim`` dims, dtype of ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (ndim - 1)))


def sam_ascent_batched(g: torch.Tensor, rho, eps: float = 1e-12) -> torch.Tensor:
    """Batched form of ``samrobust.sam.sam_perturbation`` (non-adaptive, one tensor): for every row of ``g``
    (shape (..., D)), e = rho * g / (||g||_2 + eps), the norm over the last dim accumulated in float64
    for float64 inputs (as deep's). ``rho`` broadcasts against g[..., :1] (e.g. (R, 1, 1) for (R, G, D))."""
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(g.detach(), dim=-1, keepdim=True, dtype=acc)
    return (g.detach() * (rho / (norm + eps))).to(g.dtype)


def row_margins(P: torch.Tensor, X: torch.Tensor, form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """:func:`simulations.training.margins` for weights P (..., D) and inputs X (..., n, D) with the same
    leading dims: f = P . x (free) or tau P . x / ||P|| (fixed-scale), as an elementwise product summed
    over D (no batched matrix product: for m = 1 that would be thousands of 1 x D products)."""
    z = (X * P.unsqueeze(-2)).sum(-1)
    if form == "fixed-scale":
        z = tau * z / torch.linalg.vector_norm(P, dim=-1, keepdim=True)
    return z


def plain_loss(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, form: str = "free",
               tau: float = 1.0) -> torch.Tensor:
    """sum_r L_r(P_r), L_r the mean logistic loss of row r on its batch: its gradient with respect to
    P has row r equal to grad L_r(P_r) (rows do not interact)."""
    return logistic_loss(row_margins(P, X, form, tau), y).mean(dim=1).sum()


def plain_gradient(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, form: str = "free",
                   tau: float = 1.0) -> torch.Tensor:
    """Gradient (autograd) of each row's mean logistic batch loss: row r gets grad L_r(P_r), (R, D)."""
    Pl = P.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(plain_loss(Pl, X, y, form, tau), Pl)
    return g


def sam_groups(X: torch.Tensor, y: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The batch (R, B, D), (R, B) as G = B/m groups of m consecutive examples: (R, G, m, D), (R, G, m)."""
    R, B, D = X.shape
    if B % m:
        raise ValueError(f"batch size {B} must be a multiple of m={m}")
    return X.reshape(R, B // m, m, D), y.reshape(R, B // m, m)


def sam_ascent_loss(P: torch.Tensor, Xg: torch.Tensor, yg: torch.Tensor, form: str = "free",
                    tau: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """First SAM pass: W = P broadcast to (R, G, D), a leaf, and sum_{r,g} L_g(W_rg); the gradient of the
    sum with respect to W is the per-group gradient grad L_g(P_r) (the groups do not interact)."""
    R, G = Xg.shape[:2]
    W = P.detach().unsqueeze(1).expand(R, G, P.shape[-1]).requires_grad_(True)
    return W, logistic_loss(row_margins(W, Xg, form, tau), yg).mean(-1).sum()


def sam_descent_loss(P: torch.Tensor, e: torch.Tensor, Xg: torch.Tensor, yg: torch.Tensor,
                     form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """Second SAM pass: sum_r mean_g L_g(P_r + e_rg) with e held fixed; its gradient with respect to P has
    row r equal to the SAM descent gradient mean_g grad L_g(P_r + e_rg)."""
    return logistic_loss(row_margins(P.unsqueeze(1) + e, Xg, form, tau), yg).mean(-1).mean(-1).sum()


def sam_gradient_batched(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, rho, m: int,
                         form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """Batched form of :func:`simulations.training.sam_gradient_vectorized` (same arguments, same
    result): m-sharpness SAM, for replica r and group g of m consecutive examples the ascent
    e_g = rho_r grad L_g(P_r) / ||grad L_g(P_r)|| and the returned row is mean_g grad L_g(P_r + e_g).

    Two autograd passes on stacked tensors: the per-group gradients are the gradient of
    sum_{r,g} L_g with respect to P broadcast to (R, G, D) (:func:`sam_ascent_loss`); the descent
    gradient is the gradient of sum_r mean_g L_g(P_r + e_g) with respect to P, e held fixed
    (:func:`sam_descent_loss`).
    """
    Xg, yg = sam_groups(X, y, m)
    with torch.enable_grad():
        W, loss = sam_ascent_loss(P, Xg, yg, form, tau)
        (g,) = torch.autograd.grad(loss, W)
        e = sam_ascent_batched(g, _rows(rho, P, 3))
        Pl = P.detach().requires_grad_(True)
        (g2,) = torch.autograd.grad(sam_descent_loss(Pl, e, Xg, yg, form, tau), Pl)
    return g2


def pgd_random_start(shape: Sequence[int], eps: float, norm: str,
                     generator: Optional[torch.Generator], dtype=torch.float64) -> torch.Tensor:
    """The random start of ``samrobust.attacks.pgd`` for unbounded inputs of ``shape`` (N, D), drawn from
    ``generator`` in the same order, so the same generator state gives the same start: l_inf uniform
    in the cube; l2 uniform in the ball (Gaussian direction, radius eps U^(1/D))."""
    if normalize_norm(norm) == "inf":
        u = torch.rand(tuple(shape), generator=generator, dtype=dtype)
        return (2.0 * u - 1.0) * eps
    g = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    g = g / (g.norm(p=2, dim=1, keepdim=True) + 1e-12)
    u = torch.rand((shape[0], 1), generator=generator, dtype=dtype)
    return g * eps * u.pow(1.0 / shape[1])


def _delta_grad(Pu: torch.Tensor, z0: torch.Tensor, delta: torch.Tensor, y: torch.Tensor,
                scale: Optional[torch.Tensor]) -> torch.Tensor:
    """Autograd gradient of the summed logistic loss at x + delta with respect to ``delta`` (= the input
    gradient at x + delta). The margin is written z0 + delta.P with z0 = x.P computed once per attack
    (the same linear forward pass; it saves one pass over the (R, B, D) inputs per PGD step), times
    ``scale`` = tau/||P|| for the fixed-scale form."""
    with torch.enable_grad():
        d = delta.detach().requires_grad_(True)
        z = z0 + torch.bmm(d, Pu).squeeze(-1)
        if scale is not None:
            z = z * scale
        (grad,) = torch.autograd.grad(logistic_loss(z, y).sum(), d)
    return grad


def _pgd_update_(delta: torch.Tensor, grad: torch.Tensor, eps, step, norm: str) -> torch.Tensor:
    """One PGD step with projection on the eps ball, in place on ``delta`` (``grad`` is overwritten);
    eps and step are (R, 1, 1) tensors. l_inf: delta + step sign(grad), clipped to [-eps, eps]; l2:
    delta + step grad/||grad|| (scale-invariant: grad first divided by its max |entry|, as
    samrobust.attacks'), scaled back into the ball."""
    if norm == "inf":
        delta.addcmul_(grad.sign_(), step)
        torch.maximum(delta, -eps, out=delta)
        return torch.minimum(delta, eps, out=delta)
    m = grad.abs().amax(dim=-1, keepdim=True)
    grad.div_(torch.where(m > 0, m, torch.ones_like(m)))
    delta.addcmul_(grad, step / (grad.norm(p=2, dim=-1, keepdim=True) + 1e-12))
    return delta.mul_(torch.clamp(eps / (delta.norm(p=2, dim=-1, keepdim=True) + 1e-12), max=1.0))


def pgd_rows(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, step: torch.Tensor,
             segments: Sequence[Tuple[str, int, int]], steps: int, delta: torch.Tensor,
             form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """PGD for rows with different threat models in one batch: ``segments`` are (norm, start, stop) row
    ranges ("inf" or "l2"), ``eps`` and ``step`` (R,) radii and step sizes, ``delta`` (R, B, D) the start
    (zeros or a random start; updated in place). Each of the ``steps`` steps takes *one* autograd input
    gradient for all rows, then each segment's sign or l2 step and projection (:func:`_pgd_update_`).
    Returns x_adv = X + delta. Row r gets exactly what :func:`pgd_linear_batched` gives it alone."""
    eps_t, step_t = _rows(eps, X, 3), _rows(step, X, 3)
    Pd, x = P.detach(), X.detach()
    Pu = Pd.unsqueeze(-1)
    z0 = torch.bmm(x, Pu).squeeze(-1)
    scale = tau / torch.linalg.vector_norm(Pd, dim=-1, keepdim=True) if form == "fixed-scale" else None
    for _ in range(int(steps)):
        grad = _delta_grad(Pu, z0, delta, y, scale)
        for norm, s, e in segments:
            _pgd_update_(delta[s:e], grad[s:e], eps_t[s:e], step_t[s:e], norm)
    return x + delta


def pgd_linear_batched(P: torch.Tensor, X: torch.Tensor, y: torch.Tensor, eps, norm: str = "inf",
                       steps: int = 10, step_size=None, delta0: Optional[torch.Tensor] = None,
                       form: str = "free", tau: float = 1.0) -> torch.Tensor:
    """Batched form of :func:`simulations.training.pgd_linear` (``samrobust.attacks.pgd`` with clamp=None and
    the logistic loss) with a radius ``eps`` and a ``step_size`` per row (floats or (R,) tensors;
    default step 2.5 eps / steps). ``delta0`` (R, B, D) is the random start (e.g. from
    :func:`pgd_random_start`), None for none. Each step is an autograd gradient of the summed loss at
    x + delta (with respect to the input, i.e. to delta), a sign (l_inf) or l2-normalised step, and the
    projection (:func:`pgd_rows` with one segment). Returns x_adv."""
    norm = normalize_norm(norm)   # "inf" | "l2"; ValueError otherwise
    eps_t = _rows(eps, X, 3)
    step_t = 2.5 * eps_t / max(int(steps), 1) if step_size is None else _rows(step_size, X, 3)
    delta = torch.zeros_like(X) if delta0 is None else delta0.to(X.dtype, copy=True)
    return pgd_rows(P, X, y, eps_t, step_t, [(norm, 0, X.shape[0])], steps, delta, form, tau)
