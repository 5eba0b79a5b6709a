"""deep/distributed.py: sharding, collectives and DDP + SAM on 2 CPU processes (gloo).

The multi-process checks compare a 2-rank DistributedDataParallel run with an independent single-process
computation of the same mathematics (float64, so the tolerance is round-off only):

* ST and SAM with the all-reduced ascent: 2 ranks x per-rank batch b == 1 process x global batch 2b.
* SAM with the local ascent (default, m-sharpness): 2 ranks == 1 process that computes, for each half of
  the global batch (the half rank r sees), its own ascent e_r = rho g_r / ||g_r||, the gradient at w + e_r
  on that half, and then steps with the average of the two.

The tiny model has no BatchNorm on purpose: in train mode BatchNorm normalises with the statistics of the
batch it sees, which are per-rank statistics under DDP (b images) but global ones in one process (2b
images), so the two runs would legitimately differ.  Without BatchNorm the only difference is the order
of floating-point sums.
"""
import contextlib
import os
import socket
import sys
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from deep import distributed as D

RHO = 0.3
LR = 0.1
N, B_RANK, WORLD, EPOCHS, SEED = 24, 4, 2, 2, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")  # tests/conftest.py


# ---------------------------------------------------------------------------- single process

def test_torchrun_env_parsing_and_errors():
    assert D.torchrun_env({}) == (0, 1, 0)
    assert D.torchrun_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.torchrun_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK"):
        D.torchrun_env({"RANK": "3", "WORLD_SIZE": "2"})


def test_single_process_context_needs_no_process_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = D.init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, None, True, False)
    model = torch.nn.Linear(2, 2)
    assert D.wrap_model(model, ctx) is model and D.unwrap(model) is model
    t = torch.tensor([3.0])
    assert D.all_reduce_sum(t).item() == 3.0 and D.broadcast_object({"a": 1}) == {"a": 1}
    D.teardown(ctx)


@pytest.mark.parametrize("n,world,b", [(24, 2, 4), (23, 2, 4), (10, 3, 2), (2, 4, 1)])
def test_shards_are_equal_and_rebuild_global_batches(n, world, b):
    order = D.epoch_permutation(n, seed=1, epoch=0)
    shards = [D.shard_indices(order, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1                        # equal sizes
    assert set(torch.cat(shards).tolist()) == set(range(n))          # every example is used
    if n % world == 0:                                               # no padding: global batches intact
        for k in range(0, len(shards[0]), b):
            union = sorted(torch.cat([s[k:k + b] for s in shards]).tolist())
            assert union == sorted(order[k * world:(k + b) * world].tolist())
    if n >= world:
        dropped = [D.shard_indices(order, r, world, drop_last=True) for r in range(world)]
        assert sum(len(s) for s in dropped) == n - n % world
    else:
        with pytest.raises(ValueError, match="drop_last"):
            D.shard_indices(order, 0, world, drop_last=True)


def test_epoch_permutation_is_deterministic_and_changes_per_epoch():
    a, b, c = (D.epoch_permutation(50, 3, e) for e in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(50))
    with pytest.raises(ValueError, match="epoch"):
        D.epoch_permutation(5, 0, -1)


def test_shard_range_partitions_evaluation_set():
    parts = [D.shard_range(10, r, 3) for r in range(3)]
    assert [list(range(10))[p] for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


# ----------------------------------------------------------------- the tiny training problem

def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=g)
    return x, y


def _model():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 4 * 4, 4))
    return m.double()


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def _ascent(params, rho):
    grads = [p.grad for p in params]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    return [rho * g / (norm + 1e-12) for g in grads]


def _sam_gradient(model, params, xb, yb, ascent_ctx=None):
    """Leaves in p.grad the gradient at w + e, e = rho g / ||g|| with g the gradient at w (computed inside
    ``ascent_ctx``); the weights are back at w afterwards."""
    for p in params:
        p.grad = None
    with ascent_ctx if ascent_ctx is not None else contextlib.nullcontext():
        _loss(model, xb, yb).backward()
    es = _ascent(params, RHO)
    with torch.no_grad():
        for p, e in zip(params, es):
            p.add_(e)
    for p in params:
        p.grad = None
    _loss(model, xb, yb).backward()
    with torch.no_grad():
        for p, e in zip(params, es):
            p.sub_(e)


def _train_ddp(mode, model, x, y):
    """Per-rank loop: strided shard of the epoch permutation, DDP gradients, SAM via ascent_sync."""
    opt = _opt(model)
    params = list(model.parameters())
    for epoch in range(EPOCHS):
        idx = D.shard_indices(D.epoch_permutation(N, SEED, epoch))
        for k in range(0, len(idx), B_RANK):
            xb, yb = x[idx[k:k + B_RANK]], y[idx[k:k + B_RANK]]
            opt.zero_grad()
            if mode == "st":
                _loss(model, xb, yb).backward()
            else:
                _sam_gradient(model, params, xb, yb,
                              D.ascent_sync(model, all_reduce_ascent=(mode == "sam-allreduce")))
            opt.step()
    return model


def _train_single(mode):
    """One process, global batch WORLD*B_RANK; mode "sam-m" averages per-half SAM gradients."""
    x, y = _data()
    model = _model()
    opt = _opt(model)
    params = list(model.parameters())
    B = WORLD * B_RANK
    for epoch in range(EPOCHS):
        order = D.epoch_permutation(N, SEED, epoch)
        for k in range(0, N, B):
            batch = order[k:k + B]
            opt.zero_grad()
            if mode == "st":
                _loss(model, x[batch], y[batch]).backward()
            elif mode == "sam":
                _sam_gradient(model, params, x[batch], y[batch])
            else:  # "sam-m": the half of rank r is batch[r::WORLD]
                total = [torch.zeros_like(p) for p in params]
                for r in range(WORLD):
                    half = batch[r::WORLD]
                    _sam_gradient(model, params, x[half], y[half])
                    for p, t in zip(params, total):
                        t.add_(p.grad / WORLD)
                for p, t in zip(params, total):
                    p.grad = t
            opt.step()
    return model


def _worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with D.distributed_session(device="cpu") as ctx:
        assert ctx.backend == "gloo" and ctx.world_size == world and D.get_rank() == rank
        x, y = _data()
        results = {}
        for mode in ("st", "sam-allreduce", "sam-local"):
            model = D.wrap_model(_model(), ctx)
            _train_ddp(mode, model, x, y)
            results[mode] = {k: v.clone() for k, v in D.unwrap(model).state_dict().items()}
        # sharded evaluation: each rank counts its slice, the sum is the global count
        sl = D.shard_range(N, rank, world)
        with torch.no_grad():
            correct = (D.unwrap(model)(x[sl]).argmax(1) == y[sl]).sum().to(torch.float64)
        results["correct"] = D.all_reduce_sum(torch.stack([correct, torch.tensor(float(sl.stop - sl.start),
                                                                                   dtype=torch.float64)]))
        # the manual all-reduce (model outside DDP) averages
        t = [torch.full((3,), float(rank)), None, torch.full((2, 2), 2.0 * rank, dtype=torch.float64)]
        D.all_reduce_mean_(t)
        results["mean"] = t
        results["bcast"] = D.broadcast_object({"rank": rank})
        results["divergence"] = _divergence_on_rank1_only(rank)
        results["state"] = results["sam-local"]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        D.barrier()
        _fit_part(ctx, out_dir)


def _divergence_on_rank1_only(rank):
    """deep.train's non-finite check under DDP: a flag set on rank 1 only is seen by every rank, and
    train_epoch stops on both ranks with the same DivergenceError (train_step stubbed: rank 1's loss is
    non-finite at every step, rank 0's never)."""
    import deep.train as T
    from deep.synthetic import SyntheticSpec, make_synthetic
    seen = [T._any_rank(torch.tensor(rank == 1)), T._any_rank(torch.tensor(False))]
    spec = SyntheticSpec(image_size=16, robust_resolution=4)
    cfg = T.TrainConfig(dataset="synthetic", method="st", epochs=1, width=4, batch_size=4, n_train=16,
                        synthetic=spec.to_dict(), check_every=2)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    orig = T.train_step
    T.train_step = lambda *a, **k: (torch.zeros(()), torch.zeros((), dtype=torch.long), torch.tensor(rank == 1))
    try:
        T.train_epoch(model, opt, make_synthetic(16, 0, spec), cfg, 0,
                      indices=D.shard_indices(D.epoch_permutation(16, 0, 0)))
        message = None
    except T.DivergenceError as err:
        message = str(err)
    finally:
        T.train_step = orig
    return seen, message


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_run():
    """One 2-process gloo run (spawned once for the module): the tiny loop, then deep.train.fit."""
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_worker, args=(WORLD, _free_port(), out), nprocs=WORLD, join=False,
                                 start_method="spawn")
        for _ in range(240):                       # never hang the suite
            if ctx.join(timeout=1):
                break
        else:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("2-process gloo run did not finish in 240 s")
        yield out, sorted(os.listdir(out))


@pytest.fixture(scope="module")
def two_rank_results(two_rank_run):
    out, _ = two_rank_run
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]


def _assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


@pytest.mark.parametrize("mode,single", [("st", "st"), ("sam-allreduce", "sam"), ("sam-local", "sam-m")])
def test_two_ranks_match_single_process_with_global_batch(two_rank_results, mode, single):
    ref = _train_single(single).state_dict()
    for r in range(WORLD):                                 # both ranks hold the same weights ...
        _assert_same_weights(two_rank_results[r][mode], ref, atol=1e-10)   # ... equal to one process
    start = _model().state_dict()
    assert max((ref[k] - start[k]).abs().max().item() for k in ref) > 1e-3   # training moved the weights


def test_local_ascent_is_not_the_global_ascent(two_rank_results):
    """The option matters: m-sharpness (m = per-rank batch) and global-batch SAM give different weights."""
    a, b = two_rank_results[0]["sam-local"], two_rank_results[0]["sam-allreduce"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-6


def test_sharded_counts_mean_and_broadcast(two_rank_results):
    x, y = _data()
    model = _model()
    model.load_state_dict(two_rank_results[0]["state"])
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    for res in two_rank_results:
        assert res["correct"].tolist() == [correct, N]
        assert res["mean"][1] is None
        torch.testing.assert_close(res["mean"][0], torch.full((3,), 0.5))
        torch.testing.assert_close(res["mean"][2], torch.full((2, 2), 1.0, dtype=torch.float64))
        assert res["bcast"] == {"rank": 0}


def test_non_finite_loss_on_one_rank_stops_every_rank_alike(two_rank_results):
    msgs = []
    for res in two_rank_results:
        seen, message = res["divergence"]
        assert seen == [True, False]
        assert message is not None and "epoch 1 by step 2" in message
        msgs.append(message)
    assert msgs[0] == msgs[1]


# ------------------------------------------------- the real training loop (deep.train.fit) under DDP

FIT_N, FIT_B_RANK = 32, 8


def _strip_bn(module):
    """Replace every BatchNorm by the identity (see the module docstring for why)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.Identity())
        else:
            _strip_bn(child)
    return module


def _patch_bn_free():
    import deep.train as T
    if not getattr(T.build_model, "_bn_free", False):
        orig = T.build_model

        def build_model(cfg, device):
            return _strip_bn(orig(cfg, device))
        build_model._bn_free = True
        T.build_model = build_model


def _fit_cfg(method, batch_size, **kw):
    from deep.train import TrainConfig
    return TrainConfig(dataset="synthetic", method=method, rho=0.2, epochs=2, batch_size=batch_size, width=4,
                       lr=0.02, seed=3, n_train=FIT_N, augment=False, **kw)


def _fit_data():
    from deep.synthetic import make_synthetic
    return make_synthetic(FIT_N, 11)


def _fit_part(ctx, out_dir):
    """Runs inside each rank of the spawned run: deep.train.fit with DDP, then interrupt + resume."""
    _patch_bn_free()
    from deep.train import fit
    data = _fit_data()
    kw = dict(model_wrapper=lambda m: D.wrap_model(m, ctx), shard=D.shard_indices, rank=ctx.rank,
              is_main=ctx.is_main, progress=False)
    res = {}
    for mode, cfg in (("st", _fit_cfg("st", FIT_B_RANK)),
                      ("sam-allreduce", _fit_cfg("sam", FIT_B_RANK, sam_all_reduce_ascent=True))):
        res[mode] = fit(cfg, data, **kw).model.state_dict()
    # interrupted after epoch 1 (rank 0 writes the checkpoint), then resumed by all ranks
    ck = os.path.join(out_dir, "ck.pt")
    cfg = _fit_cfg("sam", FIT_B_RANK)
    part = fit(cfg, data, checkpoint=ck, stop_after_epoch=1, **kw)
    D.barrier()
    res["ckpt_epochs"] = part.epochs_done
    res["resumed"] = fit(cfg, data, checkpoint=ck, resume=True, **kw).model.state_dict()
    res["sam-local"] = fit(cfg, data, **kw).model.state_dict()
    torch.save(res, os.path.join(out_dir, f"fit{ctx.rank}.pt"))
    D.barrier()


@pytest.fixture(scope="module")
def two_rank_fit(two_rank_run):
    out, files = two_rank_run
    return [torch.load(os.path.join(out, f"fit{r}.pt")) for r in range(WORLD)], files


def _single_fit(cfg, **kw):
    _patch_bn_free()
    from deep.train import fit
    return fit(cfg, _fit_data(), progress=False, **kw).model.state_dict()


@pytest.mark.parametrize("mode,method", [("st", "st"), ("sam-allreduce", "sam")])
def test_fit_under_ddp_matches_one_process_with_global_batch(two_rank_fit, mode, method):
    """deep.train.fit with DDP on 2 ranks (per-rank batch 8, strided shards of the epoch permutation)
    equals fit in one process with batch 16, for ST and for SAM with the all-reduced ascent (float32)."""
    ranks, _ = two_rank_fit
    ref = _single_fit(_fit_cfg(method, WORLD * FIT_B_RANK))
    for r in range(WORLD):
        _assert_same_weights(ranks[r][mode], ref, atol=2e-5)
    init = _single_fit(_fit_cfg(method, WORLD * FIT_B_RANK), stop_after_epoch=0)
    assert max((ref[k] - init[k]).abs().max().item() for k in ref) > 1e-3


def test_fit_resumes_under_ddp_and_only_rank0_writes(two_rank_fit):
    """Interrupted after epoch 1 and resumed on 2 ranks == uninterrupted 2-rank run; only rank 0 wrote the
    checkpoint (one file, no leftovers); the default local ascent differs from the all-reduced one."""
    ranks, files = two_rank_fit
    assert ranks[0]["ckpt_epochs"] == 1
    assert files == ["ck.pt", "fit0.pt", "fit1.pt", "rank0.pt", "rank1.pt"]
    for r in range(WORLD):
        _assert_same_weights(ranks[r]["resumed"], ranks[0]["sam-local"], atol=0)
    a, b = ranks[0]["sam-local"], ranks[0]["sam-allreduce"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-6


# ------------------------------------- deep.run under DDP: every rank evaluates rank 0's BatchNorm state

def _bn_eval_worker(rank, world, port, out_dir):
    """deep.run.main on a 2-rank gloo group with BatchNorm (PreActResNet-18, ST, one epoch); records the
    buffers of the model each rank hands to evaluate (and, where deep.run broadcasts them, before that)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import deep.run as R
    seen = {}
    real_eval = R.evaluate

    def spy_eval(model, *a, **k):
        seen["eval"] = [b.detach().clone() for b in D.unwrap(model).buffers()]
        return real_eval(model, *a, **k)

    R.evaluate = spy_eval
    real_bcast = getattr(R.ddist, "broadcast_buffers_", None)
    if real_bcast is not None:
        def spy_bcast(model, *a, **k):
            seen["before"] = [b.detach().clone() for b in D.unwrap(model).buffers()]
            return real_bcast(model, *a, **k)
        R.ddist.broadcast_buffers_ = spy_bcast
    rc = R.main(["--dataset", "synthetic", "--methods", "st", "--epochs", "1", "--n-train", "64", "--n-test", "20",
                 "--width", "4", "--batch-size", "16", "--eval-attacks", "linf:1/255", "--attack-steps", "1",
                 "--probe-n", "8", "--device", "cpu", "--no-progress", "--threads", "1",
                 "--out", os.path.join(out_dir, "res")])
    torch.save(dict(seen, rc=rc), os.path.join(out_dir, f"bn{rank}.pt"))
    sys.stdout.flush()
    os._exit(0)   # as deep.distributed.exit_process: no gloo teardown at interpreter exit


def test_ranks_evaluate_with_rank0_batchnorm_statistics():
    """Under DDP each rank updates the BN running statistics from its own shard in the last forward, so
    without a broadcast rank 1 would evaluate its share of the test set with other statistics than the
    model rank 0 reports and saves."""
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_bn_eval_worker, args=(WORLD, _free_port(), out), nprocs=WORLD, join=False,
                                 start_method="spawn")
        for _ in range(240):
            if ctx.join(timeout=1):
                break
        else:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("2-process gloo run did not finish in 240 s")
        ranks = [torch.load(os.path.join(out, f"bn{r}.pt")) for r in range(WORLD)]
    assert [r["rc"] for r in ranks] == [0, 0]
    before, after = [r.get("before", r["eval"]) for r in ranks], [r["eval"] for r in ranks]
    assert len(after[0]) > 10                                        # the BN buffers of PreActResNet-18
    assert any(not torch.equal(a, b) for a, b in zip(*before))       # the ranks did differ after training
    for a, b, own in zip(after[0], after[1], before[0]):
        assert torch.equal(a, b) and torch.equal(a, own)             # rank 0's statistics everywhere
