"""Projected gradient descent (PGD) attacks in input space (l_inf and l2).

The one PGD implementation of the package: deep adversarial training and evaluation use it, and
``simulations/`` reuses it on linear models (``clamp=None``, logistic ``loss_fn`` on +-1 labels).

PGD (Madry et al. 2018) approximately solves the AT inner maximisation (docs/theory.md, L1)

    max_{||delta||_p <= eps, x + delta in [lo, hi]}  loss(f(x + delta), y)

by ``steps`` iterations of

    l_inf:  delta <- Proj_{||.||_inf <= eps}( delta + alpha * sign(grad) )
    l2:     delta <- Proj_{||.||_2  <= eps}( delta + alpha * grad / ||grad||_2 )   (per example;
            computed scale-invariantly, so vanishing-but-nonzero gradients still take full steps)

each followed by the box projection x + delta in [lo, hi] (when ``clamp`` is given).

For evaluation, ``best_iterate=True`` counts a point as broken when *any* iterate (the random start
included) is misclassified, and returns that iterate (the first one found); points already broken leave
the batch, so a weak model costs little. AT's inner maximisation uses the last iterate (the default).
Losses: cross-entropy (default) or the margin (CW) loss  max_{j != y} z_j - z_y  of Carlini & Wagner.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from samrobust.threat import normalize_norm  # "inf" / "l2" from any accepted spelling

__all__ = ["pgd", "draw_start_noise", "start_from_noise", "normalize_norm", "default_step_size", "check_linf_eps", "margin_loss", "LOSSES"]

Norm = Union[str, int, float]


def check_linf_eps(eps: float, what: str = "eps") -> None:
    """ValueError for an l_inf radius of 1 or more: for images in [0, 1] that allows any image at all, and
    is almost certainly eps given in /255 units (the paper's code reads ``--train-eps 8`` as 8/255)."""
    if eps >= 1.0:
        raise ValueError(f"{what}: an l_inf eps of {eps:g} covers the whole [0, 1] pixel range; eps is in "
                         f"[0, 1] pixel units here, not /255: did you mean {eps:g}/255?")


def default_step_size(eps: float, norm: Norm) -> float:
    """docs/protocol.md step sizes: eps/4 for l_inf (2/255 at eps 8/255), eps/8 for l2."""
    return eps / 4.0 if normalize_norm(norm) == "inf" else eps / 8.0


def _per_example_l2(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each example (first dimension), shaped to broadcast against ``t``."""
    n = t.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


def _l2_direction(g: torch.Tensor) -> torch.Tensor:
    """Per-example ``g / ||g||_2``, scale-invariant: each example is first divided by its max-abs
    entry, so tiny gradients (e.g. a logistic loss at margin > ~28, ||g|| < 1e-12) still give a unit
    direction instead of being swamped by the 1e-12 guard. An all-zero example stays zero."""
    m = g.flatten(1).abs().amax(dim=1).view(-1, *([1] * (g.dim() - 1)))
    g = g / torch.where(m > 0, m, torch.ones_like(m))
    return g / (_per_example_l2(g) + 1e-12)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "inf":
        return delta.clamp(-eps, eps)
    n = _per_example_l2(delta)
    factor = torch.clamp(eps / (n + 1e-12), max=1.0)
    return delta * factor


def draw_start_noise(x: torch.Tensor, norm: Norm, generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, ...]:
    """The random numbers of PGD's random start for inputs shaped like ``x``, drawn from ``generator`` in
    the order :func:`pgd` draws them (l_inf: one uniform tensor; l2: a Gaussian tensor, then one uniform
    per example). Drawn outside a CUDA graph into static buffers, they make the start graph-safe."""
    if normalize_norm(norm) == "inf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype),)
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return g, u


def start_from_noise(noise: Tuple[torch.Tensor, ...], eps: float, norm: str, x: torch.Tensor) -> torch.Tensor:
    """The random start delta from :func:`draw_start_noise`'s numbers (l_inf: uniform in the cube;
    l2: uniform in the ball, Gaussian direction and radius eps * U^(1/dim))."""
    if norm == "inf":
        (u,) = noise
        return (2.0 * u - 1.0) * eps
    g, u = noise
    g = g / (_per_example_l2(g) + 1e-12)
    dim = x[0].numel()
    return g * eps * u.pow(1.0 / dim)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed margin (CW) loss  sum_i [max_{j != y_i} z_ij - z_{i,y_i}]: positive iff x_i is misclassified."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).sum()


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


LOSSES = {"ce": _ce_sum, "cw": margin_loss}


def _clamp_box(x: torch.Tensor, delta: torch.Tensor,
               clamp: Optional[Tuple[float, float]]) -> torch.Tensor:
    """Return delta such that x + delta lies in the box ``clamp``."""
    if clamp is None:
        return delta
    lo, hi = clamp
    return (x + delta).clamp(lo, hi) - x


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        eps: float, norm: Norm = "inf", steps: int = 10, step_size: Optional[float] = None,
        random_start: bool = True,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        clamp: Optional[Tuple[float, float]] = (0.0, 1.0),
        generator: Optional[torch.Generator] = None, best_iterate: bool = False,
        start_noise: Optional[Tuple[torch.Tensor, ...]] = None,
        buckets: Optional[Sequence[int]] = None) -> torch.Tensor:
    """PGD attack maximising ``loss_fn(forward(x_adv), y)`` over the eps ball (docs/theory.md L1).

    Args:
        forward: callable mapping inputs to logits (or margins for a linear model).
        x, y: clean inputs (first dimension = examples) and labels.
        eps: attack radius (>= 0) in the chosen norm; eps = 0 returns ``x``.
        norm: "inf"/"linf" or 2/"l2".
        steps: number of gradient steps (>= 0).
        step_size: alpha; default eps/4 (l_inf) or eps/8 (l2), as in docs/protocol.md.
        random_start: start from a uniform point of the eps ball (l_inf: cube; l2: ball).
        loss_fn: ``loss_fn(logits, y) -> scalar``; default summed cross-entropy. Only the
            gradient direction per example matters (sign or l2-normalised), so sum vs mean is moot.
        clamp: (lo, hi) box of valid inputs, or None for unbounded inputs.
        generator: torch.Generator for the random start (reproducible attacks).
        best_iterate: return, for each example, the first iterate that ``forward`` misclassifies
            (argmax != y; random start included), else the last iterate; broken examples stop being
            attacked. For class labels and logits only (evaluation).
        start_noise: the random start's numbers drawn beforehand (:func:`draw_start_noise`, e.g. into
            the static buffers of a CUDA graph); then ``generator`` is not used. Same start as drawing here.
        buckets: with ``best_iterate``, the batch sizes the surviving examples are padded to (the next
            size up; e.g. (B, B/2, B/4, B/8) of the evaluation batch B) instead of a new shape at every
            iteration (speed on CUDA: cuDNN plans and graphs need few shapes). Padding rows repeat a
            surviving example and are discarded; every example's computation is unchanged, up to the
            rounding of a matrix product, which BLAS may do differently at another batch size (last-bit
            differences: tests/test_deep_step_ops.py).

    Returns:
        ``x_adv`` detached, with ``||x_adv - x|| <= eps`` (per example) and inside ``clamp``.
        Parameter gradients (``.grad``) of the attacked model are not touched.
    """
    norm_ = normalize_norm(norm)
    step_size = _checked_args(eps, norm_, steps, step_size, clamp)
    loss_fn = loss_fn or _ce_sum
    x = x.detach()
    if eps == 0.0 or (steps == 0 and not random_start):
        return x.clone()
    if random_start:
        noise = start_noise if start_noise is not None else draw_start_noise(x, norm_, generator)
        delta = _clamp_box(x, start_from_noise(noise, eps, norm_, x), clamp)
    else:
        delta = torch.zeros_like(x)
    step = _Step(forward, loss_fn, eps, norm_, step_size, clamp)
    if best_iterate:
        return _pgd_best_iterate(step, x, y, delta, int(steps), buckets)
    for _ in range(int(steps)):
        delta, _ = step(x, y, delta)
    return (x + delta).detach()


def _checked_args(eps, norm: str, steps, step_size, clamp) -> float:
    """ValueError for a bad eps, steps, step_size or clamp of :func:`pgd`; returns the step size (the
    default of ``norm`` when None)."""
    if not (eps >= 0.0):
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if step_size is None:
        step_size = default_step_size(eps, norm)
    if not (step_size >= 0.0):
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    if clamp is not None and not (clamp[0] < clamp[1]):
        raise ValueError(f"clamp must be (lo, hi) with lo < hi or None, got {clamp!r}")
    return step_size


class _Step:
    """One PGD iteration: gradient of the loss at x + delta, ascent step, projections. Returns the new
    delta and the logits at the *old* x + delta (reused by the best-iterate bookkeeping)."""

    def __init__(self, forward, loss_fn, eps, norm, step_size, clamp):
        self.forward, self.loss_fn, self.eps, self.norm = forward, loss_fn, eps, norm
        self.step_size, self.clamp = step_size, clamp

    def __call__(self, x, y, delta):
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.forward(x + delta)
            (grad,) = torch.autograd.grad(self.loss_fn(logits, y), delta)
        delta = delta.detach()
        grad = grad.detach().to(delta.dtype)
        if self.norm == "inf":
            delta = delta + self.step_size * grad.sign()
        else:
            delta = delta + self.step_size * _l2_direction(grad)
        return _clamp_box(x, _project(delta, self.eps, self.norm), self.clamp), logits.detach()


def _bucket(k: int, buckets: Optional[Sequence[int]]) -> int:
    """The smallest size of ``buckets`` that holds ``k`` examples (``k`` itself without buckets or when
    none does)."""
    if not buckets:
        return k
    fits = [b for b in buckets if b >= k]
    return min(fits) if fits else k


def _pgd_best_iterate(step: _Step, x, y, delta, steps: int, buckets: Optional[Sequence[int]] = None) -> torch.Tensor:
    """PGD keeping, per example, the first misclassified iterate; only unbroken examples are attacked.
    With ``buckets`` the survivors are padded to a few fixed batch sizes (see :func:`pgd`)."""
    out = (x + delta).detach().clone()
    active = torch.arange(x.shape[0], device=x.device)
    if buckets:
        return _pgd_best_iterate_padded(step, x, y, delta, steps, buckets, out, active)
    xa, ya, da = x, y, delta
    for it in range(steps + 1):
        if it < steps:
            new_delta, logits = step(xa, ya, da)
        else:
            with torch.no_grad():
                logits, new_delta = step.forward(xa + da), da
        broken = logits.argmax(1) != ya
        out[active] = (xa + da).detach()   # last iterate so far; broken ones keep theirs (dropped below)
        keep = ~broken
        if not bool(keep.any()):
            break
        active, xa, ya, da = active[keep], xa[keep], ya[keep], new_delta[keep]
    return out


def _pgd_best_iterate_padded(step: _Step, x, y, delta, steps: int, buckets, out, active) -> torch.Tensor:
    """:func:`_pgd_best_iterate` on padded batches: the ``k`` survivors (their indices ``active`` into x)
    plus ``size - k`` copies of the first survivor, ``size`` the bucket of k. Only the first k rows of each
    result are used, so the numbers are those of the unpadded loop wherever a kernel's result per example
    does not depend on the batch size (tests/test_deep_step_ops.py compares)."""
    da = delta.detach()
    if x.shape[0] == 0:
        return out
    for it in range(steps + 1):
        k = active.shape[0]
        size = _bucket(k, buckets)
        idx = active if size == k else torch.cat([active, active[:1].expand(size - k)])
        xa, ya, dp = x[idx], y[idx], da if size == k else torch.cat([da, da[:1].expand(size - k, *da.shape[1:])])
        if it < steps:
            new_delta, logits = step(xa, ya, dp)
        else:
            with torch.no_grad():
                logits, new_delta = step.forward(xa + dp), dp
        logits, new_delta = logits[:k], new_delta[:k]
        broken = logits.argmax(1) != y[active]
        out[active] = (x[active] + da).detach()
        keep = ~broken
        if not bool(keep.any()):
            break
        active, da = active[keep], new_delta[keep]
    return out
