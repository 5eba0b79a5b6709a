"""deep/graphed.py: the CUDA-graphed training step equals the eager step.

On CPU the graph backend is a stand-in whose "capture" records nothing and whose "replay" runs the captured
body again on the static buffers: that tests everything but CUDA itself (static input buffers, the
learning rate as a device scalar that the schedule fills, AT's pre-drawn random start, totals accumulated
in the body, warm-up, the eager last partial batch, the fallback when capture fails). Where CUDA exists,
the real graph is compared with the eager step as well.
"""
import pytest
import torch

from deep import graphed as G
from deep.images import ImageData
from deep.train import TrainConfig, runtime_flags, build_model, build_optimizer, fit, train_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class FakeGraphs:
    """Stand-in for CudaGraphs: capture records the body without running it; replay runs it again."""

    def __init__(self, fail=False):
        self.fail, self.captures, self.warmups = fail, 0, 0

    def lr_tensor(self, lr):
        return torch.tensor(lr, dtype=torch.float64)    # CPU SGD reads it with .item(): exactly the float

    def warmup(self, fn):
        self.warmups += 1
        fn()

    def capture(self, fn):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return fn


def _data(n, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=g), 10).to(device)


CASES = {"st": dict(method="st"), "sam": dict(method="sam", rho=0.3),
         "at": dict(method="at", eps=8 / 255, attack_steps=2),
         "at-l2": dict(method="at", eps=0.5, norm="l2", attack_steps=1)}


def _train(cfg, data, epochs, device, **kw):
    """``epochs`` epochs of train_epoch with the flags fit would use (bf16, channels_last, augmentation)."""
    device = torch.device(device)
    bf16, channels_last, augment = runtime_flags(cfg, device)
    model = build_model(cfg, device)
    opt = build_optimizer(cfg, model)
    outs = [train_epoch(model, opt, data, cfg, e, bf16=bf16, channels_last=channels_last, augment=augment, **kw)
            for e in range(epochs)]
    return model, opt, outs


def _same(a, b):
    ma, oa, outs_a = a
    mb, ob, outs_b = b
    for x, y in zip(list(ma.parameters()) + list(ma.buffers()), list(mb.parameters()) + list(mb.buffers())):
        assert torch.equal(x, y)
    for u, v in zip(outs_a, outs_b):
        for k in ("loss_sum", "correct", "nonfinite", "count"):
            assert torch.equal(u[k], v[k]), k


@pytest.mark.parametrize("case", list(CASES))
def test_graphed_epochs_equal_eager_epochs_with_a_stand_in_graph(case):
    # 7 full batches of 4 and a partial one of 2; the lr drops inside epoch 2 (milestones 0.75, 0.9)
    cfg = TrainConfig(width=2, batch_size=4, bf16=False, channels_last=False, epochs=2, augment=True,
                      **CASES[case])
    data = _data(30)
    eager = _train(cfg, data, 2, "cpu")
    backend = FakeGraphs()
    graphed = _train(cfg, data, 2, "cpu", cuda_graph=True, graph_backend=backend)
    _same(eager, graphed)
    gs = graphed[1].__dict__[G.GRAPH_ATTR]
    assert backend.captures == 1 and backend.warmups == G.WARMUP_STEPS
    assert gs.graphed_steps == 2 * 7 - G.WARMUP_STEPS and gs.eager_steps == G.WARMUP_STEPS + 2   # + 2 tails
    assert gs.lr_value == pytest.approx(cfg.lr * 0.01) and float(gs.lr_t) == gs.lr_value
    assert all(isinstance(g["lr"], float) for g in graphed[1].param_groups)     # floats again after the epoch
    assert (gs.noise_static is not None) == (cfg.method == "at")
    # the test can fail: the weights moved and the eager run is not the untrained model
    assert not torch.equal(next(eager[0].parameters()), next(build_model(cfg, torch.device("cpu")).parameters()))


def test_warm_up_and_capture_span_epochs_and_skip_partial_batches():
    """Epochs of 2 full batches and a partial one: the 3 warm-up steps take two epochs, partial batches never
    count as warm-up, and the numbers are still the eager ones."""
    cfg = TrainConfig(width=2, batch_size=4, bf16=False, channels_last=False, epochs=3, method="sam", rho=0.3)
    data = _data(10)
    eager = _train(cfg, data, 3, "cpu")
    graphed = _train(cfg, data, 3, "cpu", cuda_graph=True, graph_backend=FakeGraphs())
    _same(eager, graphed)
    gs = graphed[1].__dict__[G.GRAPH_ATTR]
    assert gs.shape == gs.warm_shape == (4, 3, 32, 32)
    assert gs.graphed_steps == 3 * 2 - G.WARMUP_STEPS and gs.eager_steps == G.WARMUP_STEPS + 3


def test_failed_capture_falls_back_to_eager_with_one_line(capsys):
    cfg = TrainConfig(width=2, batch_size=4, bf16=False, channels_last=False, epochs=1, method="sam", rho=0.3)
    data = _data(24)
    eager = _train(cfg, data, 1, "cpu")
    backend = FakeGraphs(fail=True)
    graphed = _train(cfg, data, 1, "cpu", cuda_graph=True, graph_backend=backend)
    _same(eager, graphed)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA graph capture failed" in err[0] and "training eagerly" in err[0]
    assert graphed[1].__dict__[G.GRAPH_ATTR].graphed_steps == 0


def test_cuda_graph_option_on_cpu_trains_eagerly_with_one_line(capsys):
    cfg = TrainConfig(dataset="synthetic", width=2, batch_size=16, epochs=2, n_train=32, method="st")
    from deep.synthetic import make_synthetic
    data = make_synthetic(32, 0, cfg.synthetic_spec)
    a = fit(cfg, data, progress=False)
    b = fit(cfg, data, progress=False, cuda_graph=True)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    err = capsys.readouterr().err
    assert err.count("--cuda-graph: CUDA graphs need a CUDA device; training eagerly") == 1


def test_noise_buffers_are_filled_like_draw_start_noise():
    from samrobust.attacks import draw_start_noise
    x = torch.rand(3, 1, 4, 4)
    for norm in ("inf", "l2"):
        want = draw_start_noise(x, norm, torch.Generator().manual_seed(2))
        bufs = tuple(torch.empty(s) for s in G.start_noise_shapes(x, norm))
        holder = type("H", (), {"noise_static": bufs})()
        G.GraphedStep._draw_noise(holder, torch.Generator().manual_seed(2))
        assert len(bufs) == len(want) and all(torch.equal(a, b) for a, b in zip(bufs, want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["st", "sam", "at"])
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_step_equals_eager_step_on_cuda(case, bf16):
    """The real CUDA graph against the eager step: deterministic cuDNN, the same algorithms in both runs.
    fp32: equal up to rounding of the order of float32 epsilon (bitwise where the kernels allow, which the
    test reports); bf16: within bf16 tolerance."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        # learning rates exact in float32 (0.125, 0.0625, 0.03125): the graph's fused SGD reads a float32
        # device scalar, the eager one a Python float
        cfg = TrainConfig(width=8, batch_size=32, bf16=bf16, channels_last=True, epochs=2, augment=True, lr=0.125,
                          lr_factors=(0.5, 0.25), **CASES[case])
        data = _data(32 * 6 + 8, "cuda")
        eager = _train(cfg, data, 2, "cuda")
        graphed = _train(cfg, data, 2, "cuda", cuda_graph=True)
        gs = graphed[1].__dict__[G.GRAPH_ATTR]
        assert gs.failed is None and gs.graphed_steps == 2 * 6 - G.WARMUP_STEPS
        tol = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-3, atol=1e-4) if case == "at" else \
            dict(rtol=1e-4, atol=1e-5)      # AT: PGD's sign() can flip where a gradient is ~0
        bitwise = True
        for x, y in zip(eager[0].state_dict().values(), graphed[0].state_dict().values()):
            bitwise &= torch.equal(x, y)
            torch.testing.assert_close(y.float(), x.float(), **tol)
        for u, v in zip(eager[2], graphed[2]):
            torch.testing.assert_close(v["loss_sum"], u["loss_sum"], **tol)
        print(f"cuda graph vs eager, {case} bf16={bf16}: bitwise {bitwise}")
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_unsupported_setups_are_named():
    cfg = TrainConfig(width=2, batch_size=4, bf16=False, channels_last=False)
    model = build_model(cfg, torch.device("cpu"))
    sgd = build_optimizer(cfg, model)
    assert "CUDA device" in G.unsupported_reason(model, sgd, torch.device("cpu"))
    assert G.unsupported_reason(model, sgd, torch.device("cpu"), backend=FakeGraphs()) is None
    adam = torch.optim.Adam(model.parameters())
    assert "SGD" in G.unsupported_reason(model, adam, torch.device("cpu"), backend=FakeGraphs())
    wrapped = type("W", (torch.nn.Module,), {})()
    wrapped._orig_mod = model                     # what torch.compile's wrapper looks like to ddist.unwrap
    assert "compile" in G.unsupported_reason(wrapped, sgd, torch.device("cpu"), backend=FakeGraphs())


def test_divergence_is_caught_in_graphed_epochs():
    from deep.train import DivergenceError
    cfg = TrainConfig(width=2, batch_size=4, bf16=False, channels_last=False, epochs=1, lr=1e6, check_every=2)
    with pytest.raises(DivergenceError, match="non-finite"):
        _train(cfg, _data(40), 1, "cpu", cuda_graph=True, graph_backend=FakeGraphs())


def test_deep_run_cuda_graph_option_reaches_the_run_spec():
    from deep.run import _apply_profile, build_parser, resolve_spec
    p = build_parser()
    specs = []
    for argv in (["--quick", "--cuda-graph"], ["--quick"]):
        args = p.parse_args(argv)
        _apply_profile(p, args)
        specs.append(resolve_spec(p, args))
    assert specs[0].cuda_graph is True and specs[1].cuda_graph is False
