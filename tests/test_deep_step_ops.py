"""The leaner training step (issue 19) gives the numbers of the former step.

The former step is re-implemented here, independently and as it was written before: SAM's ascent with one
norm per tensor (stacked), a fresh clone of every weight as the backup, and BatchNorm frozen by setting
its momentum to 0 and restoring a clone of ``num_batches_tracked``. The current deep.train.train_step
(multi-tensor ascent and restore, persistent backup, running-stat tracking switched off) must produce the
same weights, momentum buffers and BatchNorm buffers in float64 over several steps. Also: padded
survivor batches in the best-iterate PGD and the pre-drawn random start give the numbers of before.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deep.robustness import EvalOptions, evaluate, parse_attack, survivor_buckets
from deep.images import ImageData
from deep.train import TrainConfig, build_model, build_optimizer, train_step
from samrobust.attacks import draw_start_noise, pgd
from samrobust.sam import SAM, BNStatsFreezer, frozen_bn_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ------------------------------------------------------------------ the former step, written out again

class _OldFreeze:
    """BN frozen the former way: momentum 0 for the duration, num_batches_tracked cloned and restored."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = []
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                self.saved.append((m, m.momentum, m.num_batches_tracked.clone()))
                m.momentum = 0.0

    def __exit__(self, *exc):
        for m, mom, nbt in self.saved:
            m.momentum = mom
            m.num_batches_tracked.copy_(nbt)


class _OldSAM:
    """SAM over a torch SGD the former way: per-tensor norms, e per tensor, a clone per weight."""

    def __init__(self, params, rho, adaptive, **kw):
        self.params = list(params)
        self.base = torch.optim.SGD(self.params, **kw)
        self.rho, self.adaptive = rho, adaptive

    def zero_grad(self, set_to_none=True):
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def first_step(self):
        ps = [p for p in self.params if p.grad is not None]
        scaled = [p.abs() * p.grad if self.adaptive else p.grad for p in ps]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
        scale = self.rho / (norm + 1e-12)
        e = [(p.abs() * s * scale) if self.adaptive else s * scale for p, s in zip(ps, scaled)]
        self.backup = [p.clone() for p in ps]
        for p, ei in zip(ps, e):
            p.add_(ei)
        self.ps = ps
        self.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for p, b in zip(self.ps, self.backup):
            p.copy_(b)
        self.base.step()
        self.zero_grad()


def _old_step(model, x, y, cfg, opt, generator):
    freeze = _OldFreeze(model) if cfg.bn_stats == "first" else _NullCtx()
    if cfg.method == "at":
        with freeze:
            x = pgd(model, x, y, eps=cfg.eps, norm=cfg.norm, steps=cfg.attack_steps,
                    step_size=cfg.attack_step_size, random_start=True, generator=generator)
    opt.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)           # the loss in fp32, as the step always did
    loss.backward()
    if cfg.method == "sam":
        opt.first_step()
        with freeze:
            F.cross_entropy(model(x).float(), y).backward()
        opt.second_step()
    else:
        opt.step()
    return loss.detach() * y.shape[0]


class _NullCtx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _state(model, opt):
    base = opt.base_optimizer if isinstance(opt, SAM) else opt.base if isinstance(opt, _OldSAM) else opt
    bufs = [base.state[p]["momentum_buffer"] for p in model.parameters()]
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers()) + bufs]


CASES = {"st": dict(method="st"), "sam": dict(method="sam", rho=0.5),
         "asam": dict(method="sam", rho=0.5, adaptive=True),
         "sam-bn-all": dict(method="sam", rho=0.5, bn_stats="all"),
         "at": dict(method="at", eps=8 / 255, attack_steps=3),
         "at-l2": dict(method="at", eps=0.5, norm="l2", attack_steps=2)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_new_step_equals_the_former_step_in_float64(case, dtype):
    """Bitwise equal on CPU, in float64 and in the training dtype float32."""
    cfg = TrainConfig(width=2, batch_size=8, bf16=False, channels_last=False, lr=0.2, **CASES[case])
    dev = torch.device("cpu")
    new = build_model(cfg, dev).to(dtype)
    old = build_model(cfg, dev).to(dtype)
    opt_new = build_optimizer(cfg, new)
    kw = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt_old = _OldSAM(old.parameters(), cfg.rho, cfg.adaptive, **kw) if cfg.method == "sam" \
        else torch.optim.SGD(old.parameters(), **kw)
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    start = [p.detach().clone() for p in new.parameters()]
    for step in range(3):
        x = torch.rand(8, 3, 32, 32, dtype=dtype)
        y = torch.randint(0, 10, (8,))
        new.train(), old.train()
        ls_new, _, bad = train_step(new, x, y, cfg, opt_new, generator=g_new)
        ls_old = _old_step(old, x, y, cfg, opt_old, g_old)
        assert torch.equal(ls_new, ls_old) and not bool(bad)
        for a, b in zip(_state(new, opt_new), _state(old, opt_old)):
            assert a.dtype == b.dtype and torch.equal(a, b), f"{case}: step {step + 1} differs"
    # the test can fail: training moved the weights, and the BN running statistics were updated
    assert any(not torch.equal(a, b) for a, b in zip(new.parameters(), start))
    nbt = [m.num_batches_tracked for m in new.modules() if isinstance(m, nn.BatchNorm2d)]
    assert nbt and all(int(n) == (3 if cfg.bn_stats == "first" else 6 if cfg.method == "sam" else 3)
                       for n in nbt)


def test_bn_freezer_finds_layers_once_nests_and_matches_momentum_zero():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.BatchNorm1d(5, track_running_stats=False))
    f = BNStatsFreezer(m)
    assert f.layers == [m[1]]                        # the untracked layer is left alone
    x = torch.randn(8, 4)
    before = [t.clone() for t in m.buffers()]
    with f:
        with f:                                      # nested: the outer freeze survives the inner exit
            out1 = m(x)
        out2 = m(x)
    assert all(torch.equal(a, b) for a, b in zip(before, m.buffers()))
    with _OldFreeze(m):
        ref = m(x)
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    assert m[1].track_running_stats and not m[2].track_running_stats
    with frozen_bn_stats(m):
        m(x)
    assert all(torch.equal(a, b) for a, b in zip(before, m.buffers()))
    m(x)
    assert not torch.equal(m[1].running_mean, before[0])     # tracking is back on


def test_sam_backup_is_allocated_once_and_reused():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    opt = SAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    ptrs = []
    for _ in range(3):
        m(torch.randn(4, 3)).sum().backward()
        opt.first_step(zero_grad=True)
        ptrs.append([b.data_ptr() for b in opt._backup])
        m(torch.randn(4, 3)).sum().backward()
        opt.second_step(zero_grad=True)
    assert ptrs[0] == ptrs[1] == ptrs[2] and len(ptrs[0]) == 2
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.restore()


# -------------------------------------------------------------- PGD: padded survivors, pre-drawn start

def _eval_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()


@pytest.mark.parametrize("norm,eps", [("inf", 0.05), ("l2", 0.2)])
def test_padded_survivor_batches_give_the_same_iterates(norm, eps):
    model = _eval_model()
    torch.manual_seed(4)
    x, y = torch.rand(37, 3, 2, 2, dtype=torch.float64), torch.randint(0, 3, (37,))
    with torch.no_grad():
        y[:30] = model(x[:30]).argmax(1)            # most start correct, so the survivors shrink gradually
    sizes = {False: set(), True: set()}

    def fwd(pad):
        return lambda z: (sizes[pad].add(z.shape[0]), model(z))[1]

    kw = dict(eps=eps, norm=norm, steps=8, best_iterate=True)
    plain = pgd(fwd(False), x, y, generator=torch.Generator().manual_seed(0), **kw)
    padded = pgd(fwd(True), x, y, generator=torch.Generator().manual_seed(0), buckets=survivor_buckets(37), **kw)
    # not torch.equal: a BLAS matrix product may round a row differently at another batch size (seen:
    # 5.6e-17 on one l2 iterate on an AMD EPYC, bitwise equal on another CPU); a wrong row mapping or a
    # padding row leaking into the loss would move iterates by O(eps)
    torch.testing.assert_close(plain, padded, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.equal(model(plain).argmax(1), model(padded).argmax(1))
    assert sizes[True] <= set(survivor_buckets(37)) and len(sizes[True]) >= 2
    assert not sizes[False] <= set(survivor_buckets(37))       # unpadded: shapes the buckets avoid


def test_survivor_buckets():
    assert survivor_buckets(500) == (500, 250, 125, 63)
    assert survivor_buckets(3) == (3, 2, 1)


def test_evaluate_with_padded_survivors_equals_unpadded():
    model = _eval_model()
    torch.manual_seed(5)
    data = ImageData((torch.rand(50, 3, 2, 2) * 255).to(torch.uint8), torch.randint(0, 3, (50,)), 3)
    attacks = (parse_attack("linf:0.2"), parse_attack("l2:0.6"))
    m32 = model.float()
    a = evaluate(m32, data, attacks, options=EvalOptions(steps=5, restarts=2, batch_size=16, pad_survivors=False))
    b = evaluate(m32, data, attacks, options=EvalOptions(steps=5, restarts=2, batch_size=16, pad_survivors=True))
    assert a == b and 0 < min(a["robust"].values()) < a["clean_acc"]


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_pre_drawn_start_noise_gives_the_same_attack(norm):
    model = _eval_model()
    x, y = torch.rand(6, 3, 2, 2, dtype=torch.float64), torch.randint(0, 3, (6,))
    eps = 0.3 if norm == "inf" else 1.0
    a = pgd(model, x, y, eps=eps, norm=norm, steps=2, generator=torch.Generator().manual_seed(9))
    noise = draw_start_noise(x, norm, torch.Generator().manual_seed(9))
    b = pgd(model, x, y, eps=eps, norm=norm, steps=2, start_noise=noise, generator=None)
    c = pgd(model, x, y, eps=eps, norm=norm, steps=2, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
