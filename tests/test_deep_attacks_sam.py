"""PGD (samrobust/attacks.py) and SAM (samrobust/sam.py): checks against closed forms, hand-written two-pass
updates and an independent library (pytorch_optimizer.SAM)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samrobust.attacks import pgd
from samrobust.sam import SAM, frozen_bn_stats, sam_perturbation


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


@pytest.mark.parametrize("norm,eps", [("inf", 8 / 255), ("l2", 0.5), (2, 32 / 255)])
def test_pgd_stays_in_ball_and_box_and_raises_loss(norm, eps):
    model = _tiny_cnn().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:, :, 0, 0] = 0.0  # pixels on the box boundary
    x[:, :, 1, 1] = 1.0
    y = torch.randint(0, 5, (16,), generator=g)
    x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=10, generator=torch.Generator().manual_seed(2))
    d = (x_adv - x).flatten(1)
    if norm == "inf":
        assert d.abs().max().item() <= eps + 1e-6
    else:
        assert d.norm(dim=1).max().item() <= eps + 1e-5
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert (adv >= clean - 1e-6).all()
    assert adv.mean() > clean.mean() + 1e-3
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("norm,random_start,tol", [("linf", True, 1e-9), ("l2", False, 1e-9),
                                                   ("l2", True, 1e-3)])
def test_pgd_on_linear_model_reaches_closed_form_worst_case(norm, random_start, tol):
    """docs/theory.md L1: max_{||delta||_p<=eps} l(y v.(x+delta)) = l(y v.x - eps ||v||_q).
    (l2 from a random start converges geometrically, not in finitely many steps: looser tolerance.)"""
    g = torch.Generator().manual_seed(0)
    D, n, eps = 20, 64, 0.3
    v = torch.randn(D, generator=g, dtype=torch.float64)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1

    def loss_fn(margin, yy):
        return F.softplus(-yy * margin).sum()

    x_adv = pgd(lambda z: z @ v, x, y, eps=eps, norm=norm, steps=30, step_size=eps / 5,
                loss_fn=loss_fn, clamp=None, random_start=random_start,
                generator=torch.Generator().manual_seed(3))
    dual = v.abs().sum() if norm == "linf" else v.norm()
    expected = F.softplus(-(y * (x @ v) - eps * dual))
    got = F.softplus(-y * (x_adv @ v))
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_pgd_l2_full_steps_on_very_confident_examples():
    """L1 at margin ~40, where the logistic gradient (~e^-40 ||v||) is far below 1e-12: the l2 step
    must still be scale-invariant, so PGD reaches the worst-case margin shift eps*||v||_2 exactly."""
    g = torch.Generator().manual_seed(5)
    D, n, eps = 10, 16, 0.5
    v = torch.randn(D, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    # move each x along v so that its margin y v.x is 40 (plus a little spread)
    target = 40.0 + torch.rand(n, generator=g, dtype=torch.float64)
    x = x + ((target - y * (x @ v)) * y / v.dot(v))[:, None] * v[None, :]

    def loss_fn(margin, yy):
        return F.softplus(-yy * margin).sum()

    x_adv = pgd(lambda z: z @ v, x, y, eps=eps, norm="l2", steps=10, step_size=eps / 5,
                loss_fn=loss_fn, clamp=None, random_start=False)
    got = y * (x_adv @ v)
    expected = y * (x @ v) - eps * v.norm()
    assert (expected > 35).all()  # still deep in the underflow regime
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_pgd_rejects_bad_arguments():
    m = _tiny_cnn()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="eps"):
        pgd(m, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="norm"):
        pgd(m, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="steps"):
        pgd(m, x, y, eps=0.1, steps=-1)


# ---------------------------------------------------------------- SAM

def _mlp_params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g, dtype=torch.float64) * 0.5,
            torch.randn(6, generator=g, dtype=torch.float64) * 0.1,
            torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.5,
            torch.randn(3, generator=g, dtype=torch.float64) * 0.1]


def _mlp_loss(ps, x, y):
    w1, b1, w2, b2 = ps
    return F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)


def _module_from(ps):
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p, q in zip(m.parameters(), ps):
            p.copy_(q)
    return m


def _batches(k):
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g))
            for _ in range(k)]


def _hand_sam_sgd(ps, batches, rho, lr, mom, wd, adaptive=False):
    """Two-pass SAM + SGD(momentum, weight decay), written out by hand with autograd.grad."""
    ps = [p.clone() for p in ps]
    bufs = None
    for x, y in batches:
        w = [p.clone().requires_grad_(True) for p in ps]
        g = torch.autograd.grad(_mlp_loss(w, x, y), w)
        if adaptive:
            tg = [p.abs() * gi for p, gi in zip(ps, g)]
            nrm = math.sqrt(sum(float((t ** 2).sum()) for t in tg))
            e = [rho * p.abs() ** 2 * gi / nrm for p, gi in zip(ps, g)]
        else:
            nrm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
            e = [rho * gi / nrm for gi in g]
        w2 = [(p + ei).requires_grad_(True) for p, ei in zip(ps, e)]
        g2 = torch.autograd.grad(_mlp_loss(w2, x, y), w2)
        d = [gi + wd * p for gi, p in zip(g2, ps)]  # weight decay at w, not at w + e
        bufs = d if bufs is None else [mom * b + di for b, di in zip(bufs, d)]
        ps = [p - lr * b for p, b in zip(ps, bufs)]
    return ps


def _train_two_pass(ps, batches, make_opt):
    """Two-pass loop with first_step / second_step; make_opt(module) builds the optimizer."""
    m = _module_from(ps)
    opt = make_opt(m)
    for x, y in batches:
        F.cross_entropy(m(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(m(x), y).backward()
        opt.second_step(zero_grad=True)
    return [p.detach() for p in m.parameters()]


def _train_plain(ps, batches, make_opt):
    """Ordinary one-pass loop for the base optimizer alone."""
    m = _module_from(ps)
    opt = make_opt(m)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return [p.detach() for p in m.parameters()]


def _run_our_sam(ps, batches, rho, lr, mom, wd, adaptive=False):
    return _train_two_pass(ps, batches, lambda m: SAM(m.parameters(), torch.optim.SGD, rho=rho,
                                                      adaptive=adaptive, lr=lr, momentum=mom,
                                                      weight_decay=wd))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_equals_hand_computed_two_pass_update(adaptive):
    ps, batches = _mlp_params(0), _batches(3)
    want = _hand_sam_sgd(ps, batches, rho=0.3, lr=0.1, mom=0.9, wd=5e-2, adaptive=adaptive)
    got = _run_our_sam(ps, batches, rho=0.3, lr=0.1, mom=0.9, wd=5e-2, adaptive=adaptive)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and SAM really differs from plain SGD here (the test can fail)
    sgd = _hand_sam_sgd(ps, batches, rho=0.0, lr=0.1, mom=0.9, wd=5e-2)
    assert max(float((a - b).abs().max()) for a, b in zip(got, sgd)) > 1e-4


def test_sam_rho_zero_equals_base_optimizer():
    ps, batches = _mlp_params(1), _batches(4)
    got = _run_our_sam(ps, batches, rho=0.0, lr=0.05, mom=0.9, wd=5e-4)
    want = _train_plain(ps, batches, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9,
                                                               weight_decay=5e-4))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_pytorch_optimizer_sam(adaptive):
    from pytorch_optimizer import SAM as RefSAM

    ps, batches = _mlp_params(2), _batches(3)
    got = _run_our_sam(ps, batches, rho=0.2, lr=0.1, mom=0.9, wd=1e-2, adaptive=adaptive)
    m = _module_from(ps)
    ref = RefSAM(m.parameters(), torch.optim.SGD, rho=0.2, adaptive=adaptive, lr=0.1, momentum=0.9,
                 weight_decay=1e-2)
    for x, y in batches:
        ref.zero_grad()
        F.cross_entropy(m(x), y).backward()
        ref.first_step(zero_grad=True)
        F.cross_entropy(m(x), y).backward()
        ref.second_step(zero_grad=True)
    # pytorch_optimizer accumulates the gradient norm in float32: agreement to ~1e-7 relative
    for a, b in zip(got, m.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=2e-6, atol=1e-9)


def test_sam_perturbation_is_global_l2_of_norm_rho():
    g = [torch.tensor([3.0, 0.0]), None, torch.tensor([[4.0]])]
    e = sam_perturbation(g, rho=2.0)
    assert e[1] is None
    torch.testing.assert_close(e[0], torch.tensor([1.2, 0.0]))
    torch.testing.assert_close(e[2], torch.tensor([[1.6]]))
    with pytest.raises(ValueError, match="rho"):
        sam_perturbation(g, rho=-1.0)
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.zeros(1, requires_grad=True)], torch.optim.SGD, rho=-0.1, lr=0.1)


def test_frozen_bn_stats_keeps_running_statistics():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    x = torch.randn(8, 4)
    m(x)  # one tracked forward
    bn = m[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
    with frozen_bn_stats(m):
        out = m(x + 1.0)
    # still batch-normalised (train mode): per-feature mean ~ 0
    assert out.mean(0).abs().max() < 1e-5
    torch.testing.assert_close(bn.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, before[1], rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == int(before[2]) and bn.momentum == before[3]
    m(x)
    assert not torch.equal(bn.running_mean, before[0])  # tracking is back on


def test_sam_wraps_any_optimizer_class_or_instance():
    """rho = 0 over Adam equals Adam; a constructed instance behaves like the class form."""
    ps, batches = _mlp_params(3), _batches(3)

    def run(make):
        return _train_two_pass(ps, batches, make)

    a = run(lambda m: SAM(m.parameters(), torch.optim.Adam, rho=0.0, lr=1e-2, weight_decay=1e-3))
    want = _train_plain(ps, batches, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3))
    for u, v in zip(a, want):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    b = run(lambda m: SAM(m.parameters(), torch.optim.AdamW, rho=0.2, lr=1e-2))
    c = run(lambda m: SAM(None, torch.optim.AdamW(m.parameters(), lr=1e-2), rho=0.2))
    for u, v in zip(b, c):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="base_optimizer"):
        SAM([torch.zeros(1, requires_grad=True)], "sgd", rho=0.1)
