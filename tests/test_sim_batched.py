"""The batched engine (simulations.engine, simulations.batched_ops) against independent routes.

* each batched op against the deep/ or per-job original on the same inputs: the SAM ascent against
  samrobust.sam.sam_perturbation row by row, the m-sharpness SAM gradient against the explicit Python loop,
  PGD against samrobust.attacks.pgd (through training.pgd_linear) row by row with different radii, and the
  random start against the one deep's pgd draws from the same generator state;
* train_batched in float64 against train_replicas job by job (same generators, data and optimiser, so
  equal up to rounding), float32 close to float64, rows independent of the other jobs in the batch;
* the whole run: batched vs loop engine on a tiny profile, row by row.
"""
import json
import os

import numpy as np
import pytest
import torch

import linear_theory as lt
from samrobust.attacks import pgd
from samrobust.sam import sam_perturbation
from simulations import claims as claims_mod
from simulations import experiments
from simulations import run as sim_run
from simulations.batched_ops import (pgd_linear_batched, pgd_random_start, plain_gradient, row_margins,
                                     sam_ascent_batched, sam_gradient_batched)
from simulations.engine import JobSpec, kernel_key, shard_jobs, train_batched, train_sharded
from simulations.parallel import EpochFeed, Forked, can_fork
from simulations.experiments import Settings, engine_tag
from simulations.run import torch_threads
from simulations.training import (SimTrainConfig, fresh_data, logistic_loss, margins, pgd_linear,
                                  sam_gradient_loop, sam_gradient_vectorized, train_replicas)

MODEL = lt.FeatureModel()
TINY = Settings(profile="tiny", seeds=(0, 1), n_per_epoch=256, epochs=2, batch_size=128, s1_n_test=2000,
                s3_m=(1, 128), s4_m=(1, 128), s4_rho=(0.1,), s5_rho=(0.0, 0.1), s5_eps=(0.0, 0.3))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


def _batch(R=4, B=16, seed=0, scale=0.3):
    X, y = fresh_data(MODEL, B, range(seed, seed + R))(0)
    P = scale * torch.randn(R, MODEL.D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return P, X, y


# ----------------------------------------------------------------------------- ops

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sam_ascent_equals_deep_per_row(dtype):
    g = torch.randn(5, 7, 101, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    g[0, 3] = 0.0  # a zero gradient: e = 0, as deep's eps guard gives
    rho = torch.tensor([0.0, 0.05, 0.1, 0.7, 2.0], dtype=dtype)
    got = sam_ascent_batched(g, rho.view(5, 1, 1))
    for r in range(5):
        for k in range(7):
            (ref,) = sam_perturbation([g[r, k]], float(rho[r]))
            tol = 1e-15 if dtype == torch.float64 else 1e-6
            assert torch.allclose(got[r, k], ref, rtol=tol, atol=tol)
    assert torch.equal(got[0, 3], torch.zeros(101, dtype=dtype))


def test_row_margins_and_plain_gradient_match_training_margins():
    P, X, y = _batch()
    for form in ("free", "fixed-scale"):
        assert torch.allclose(row_margins(P, X, form, 4.0), margins(P, X, form, 4.0), rtol=1e-13, atol=1e-12)
        for r in range(len(P)):  # each row's gradient alone, through training.margins
            w = P[r].clone().requires_grad_(True)
            logistic_loss(margins(w, X[r], form, 4.0), y[r]).mean().backward()
            assert torch.allclose(plain_gradient(P, X, y, form, 4.0)[r], w.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", ["free", "fixed-scale"])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_batched_sam_gradient_equals_loop_and_vmap(form, m):
    P, X, y = _batch()
    rho = torch.tensor([0.0, 0.05, 0.2, 0.7], dtype=torch.float64)
    got = sam_gradient_batched(P, X, y, rho, m, form, 4.0)
    assert torch.allclose(got, sam_gradient_loop(P, X, y, rho, m, form, 4.0), rtol=1e-10, atol=1e-12)
    assert torch.allclose(got, sam_gradient_vectorized(P, X, y, rho, m, form, 4.0), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got[1], got[2], atol=1e-6)  # rho matters per row (the check can fail)


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_random_start_is_deeps(norm):
    X, y = fresh_data(MODEL, 50, [3])(0)
    x = X[0]
    ref = pgd(lambda t: t.sum(1), x, y[0], 0.3, norm=norm, steps=0, random_start=True, clamp=None,
              generator=torch.Generator().manual_seed(5))
    got = x + pgd_random_start(x.shape, 0.3, norm, torch.Generator().manual_seed(5))
    assert torch.equal(got, ref)


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_batched_pgd_equals_deep_pgd_per_row(norm):
    P, X, y = _batch(R=3, B=40, seed=4, scale=1.0)
    eps = [0.05, 0.2, 0.6] if norm == "inf" else [0.3, 1.0, 2.5]
    got = pgd_linear_batched(P, X, y, torch.tensor(eps, dtype=torch.float64), norm, steps=4)
    for r, e in enumerate(eps):  # one samrobust.attacks.pgd call per row, each with its own radius
        ref = pgd_linear(P[r:r + 1], X[r:r + 1], y[r:r + 1], e, norm, steps=4, random_start=False)[0]
        assert torch.allclose(got[r], ref, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(got[r], X[r])


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_batched_pgd_with_random_start_equals_deep_pgd(norm):
    P, X, y = _batch(R=3, B=40, seed=6, scale=1.0)
    ref = pgd_linear(P, X, y, 0.3, norm, steps=3, random_start=True, form="fixed-scale", tau=4.0,
                     generator=torch.Generator().manual_seed(2))
    d0 = pgd_random_start((3 * 40, MODEL.D), 0.3, norm, torch.Generator().manual_seed(2)).view(3, 40, -1)
    got = pgd_linear_batched(P, X, y, 0.3, norm, steps=3, delta0=d0, form="fixed-scale", tau=4.0)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm,random_start", [("inf", True), ("l2", False), ("l2", True)])
def test_s1_pgd_in_chunks_equals_one_call(norm, random_start):
    X, y = fresh_data(MODEL, 1000, [11])(0)
    v = torch.as_tensor(lt.solve(MODEL, "st").v)
    one = pgd_linear(v, X[0], y[0], 0.2, norm, steps=4, random_start=random_start,
                     generator=torch.Generator().manual_seed(1))
    chunked = claims_mod.pgd_in_chunks(v, X[0], y[0], 0.2, norm, 4, random_start,
                                       torch.Generator().manual_seed(1), chunk=300)
    assert torch.equal(chunked, one)
    assert not torch.equal(one, X[0])


# ----------------------------------------------------------------------------- engine

BASE = dict(n_train=256, epochs=2, batch_size=32)
CFGS = [
    SimTrainConfig(method="st", lr=0.1, **BASE),
    SimTrainConfig(method="at", eps=0.1, norm="inf", lr=0.1, **BASE),
    SimTrainConfig(method="at", eps=0.3, norm="inf", lr=0.1, **BASE),
    SimTrainConfig(method="at", eps=0.8, norm="l2", pgd_random_start=False, lr=0.1, **BASE),
    SimTrainConfig(method="at", eps=0.8, norm="l2", pgd_random_start=True, lr=0.1, **BASE),
    SimTrainConfig(method="sam", m=1, rho=0.1, lr=0.1, **BASE),
    SimTrainConfig(method="sam", m=1, rho=0.1, lr=0.1, weight_decay=0.01, **BASE),
    SimTrainConfig(method="sam", m=4, form="fixed-scale", tau=4.0, lr=0.02, **BASE),
    SimTrainConfig(method="st", form="fixed-scale", tau=4.0, lr=0.02, momentum=0.5, **BASE),
]


def _specs(cfgs=CFGS, seeds=(0, 1)):
    out = []
    for c in cfgs:
        rhos = [0.0, 0.1, 0.3] if c.form == "fixed-scale" and c.method == "sam" else [c.rho]
        reps = [(r, s) for r in rhos for s in range(len(seeds))]
        out.append(JobSpec(c, 1000 + len(out), tuple(r for r, _ in reps), tuple(s for _, s in reps)))
    return out


def test_train_batched_float64_equals_train_replicas_per_job():
    data = fresh_data(MODEL, 256, [0, 1])
    specs = _specs()
    got = train_batched(specs, data, dtype=torch.float64)
    assert len({kernel_key(s.cfg) for s in specs}) < len(specs)  # some kernels hold several jobs
    for spec, W in zip(specs, got):
        ref = train_replicas(data, spec.cfg, seed=spec.seed, rho=list(spec.rho), source=list(spec.source))
        assert W.shape == ref.shape
        assert np.allclose(W, ref, rtol=1e-9, atol=1e-11), spec.cfg
    assert not np.allclose(got[1], got[2], atol=1e-4)  # eps per row matters


def test_train_batched_float32_close_to_float64():
    data = fresh_data(MODEL, 256, [0, 1])
    specs = _specs()
    w64 = train_batched(specs, data, dtype=torch.float64)
    w32 = train_batched(specs, data, dtype=torch.float32)
    for a, b in zip(w32, w64):
        assert a.dtype == np.float64
        assert np.abs(a - b).max() < 2e-5
        assert not np.array_equal(a, b)  # float32 really was used


def test_rows_do_not_depend_on_the_other_jobs_in_the_batch():
    data = fresh_data(MODEL, 256, [0, 1])
    specs = _specs()
    full = train_batched(specs, data)
    part = train_batched([specs[6], specs[2], specs[7]], data)
    for i, W in zip((6, 2, 7), part):
        assert np.array_equal(W, full[i])


def test_train_batched_rejects_mixed_step_counts():
    data = fresh_data(MODEL, 256, [0, 1])
    other = SimTrainConfig(method="st", n_train=256, epochs=3, batch_size=32)
    with pytest.raises(ValueError, match="share"):
        train_batched(_specs([CFGS[0], other]), data)
    with pytest.raises(ValueError, match="source"):
        train_batched([JobSpec(CFGS[0], 0, (0.0,), (5,))], data)
    with pytest.raises(ValueError, match="one entry per replica"):
        JobSpec(CFGS[0], 0, (0.0, 0.1), (0,))


def test_shards_partition_the_jobs_and_balance_rows():
    specs = _specs()
    for k in (1, 2, 3, 20):
        shards = shard_jobs(specs, k)
        assert 1 <= len(shards) <= k
        assert sorted(i for s in shards for i in s) == list(range(len(specs)))
    assert len(shard_jobs(specs, 2)) == 2
    # ten equal SAM jobs: five per shard (one kernel split between the shards)
    same = [JobSpec(CFGS[5], i, (0.1,), (0,)) for i in range(10)]
    assert sorted(len(s) for s in shard_jobs(same, 2)) == [5, 5]
    # one AT job with 5 PGD steps on 4 rows costs about as much as many SAM rows: it gets a shard alone
    at = JobSpec(CFGS[1], 99, (0.0,) * 4, (0,) * 4)
    assert [len(s) for s in shard_jobs([at] + same[:4], 2)] in ([1, 4], [4, 1])


@pytest.mark.skipif(not can_fork(), reason="needs the fork start method")
def test_sharded_training_in_two_processes_equals_one_batch():
    data = fresh_data(MODEL, 256, [0, 1])
    specs = _specs()
    ticks = []
    got = train_sharded(specs, data, workers=2, progress=ticks.append)
    for a, b in zip(got, train_batched(specs, data)):
        assert np.array_equal(a, b)
    assert sum(ticks) == len(specs) * specs[0].cfg.epochs


def _fail(x):
    raise ValueError(f"bad {x}")


@pytest.mark.skipif(not can_fork(), reason="needs the fork start method")
def test_forked_returns_values_and_reports_failures():
    assert Forked(sum, [1, 2, 3]).result() == 6
    with pytest.raises(RuntimeError, match="ValueError: bad 7"):
        Forked(_fail, 7).result()


def _read_epochs(read, epochs):
    return [tuple(t.numpy().copy() for t in read(e)) for e in range(epochs)]  # numpy: pickled by value


@pytest.mark.skipif(not can_fork(), reason="needs the fork start method")
def test_epoch_feed_children_read_the_parents_epochs_in_order():
    data = fresh_data(MODEL, 64, [0, 1, 2])
    feed = EpochFeed(data, data(0), readers=2, dtype=torch.float32, slots=2)
    kids = [Forked(_read_epochs, feed.reader(r), 7) for r in range(2)]
    feed.watch(kids)
    produced = [feed.producer()(e) for e in range(7)]  # 7 epochs through 2 slots: waits for the readers
    for kid in kids:
        for (X, y), (Xr, yr) in zip(produced, kid.result()):
            assert Xr.dtype == np.float32 and np.array_equal(Xr, X.float().numpy())
            assert np.array_equal(yr, y.float().numpy())
    assert not torch.equal(produced[0][0], produced[1][0])  # fresh data each epoch


@pytest.mark.skipif(not can_fork(), reason="needs the fork start method")
def test_epoch_feed_parent_raises_when_a_reader_died():
    data = fresh_data(MODEL, 16, [0])
    feed = EpochFeed(data, data(0), readers=1, dtype=torch.float64, slots=1)
    kid = Forked(_fail, 1)  # never reads
    feed.watch([kid])
    put = feed.producer()
    put(0)
    with pytest.raises(RuntimeError, match="ValueError: bad 1"):  # the worker's own error
        put(1)
    kid.cancel()
    quiet = Forked(sum, [1])  # a worker that ends without reading
    feed = EpochFeed(data, data(0), readers=1, dtype=torch.float64, slots=1)
    feed.watch([quiet])
    put = feed.producer()
    put(0)
    with pytest.raises(RuntimeError, match="stopped before reading"):
        put(1)


# ----------------------------------------------------------------------------- run level

def _rows(data):
    return {r["id"]: r for r in data["claims"]}


def test_run_batched_vs_loop_engine(tmp_path):
    claims = ["S2", "S3", "S4", "S5"]
    engines = (("loop", "float64"), ("batched", "float64"), ("batched", "float32"))
    runs = {(e, d): sim_run.run_simulations(TINY, claims, out=str(tmp_path / f"{e}{d}"),
                                            progress=False, engine=e, dtype=d) for e, d in engines}
    jobs = experiments.jobs_for(claims, TINY)

    def weights(e, d):
        cache = str(tmp_path / f"{e}{d}" / "cache")
        return [experiments.load_job(j, cache, MODEL, engine_tag(e, d))["weights"] for j in jobs]

    ref_w, ref = weights("loop", "float64"), _rows(runs["loop", "float64"])
    for (e, d), data in runs.items():
        assert data["meta"]["engine"] == e and data["meta"]["dtype"] == d
        tol = 1e-9 if d == "float64" else 2e-5
        for job, W, R in zip(jobs, weights(e, d), ref_w):  # the trained weights, job by job
            assert np.allclose(W, R, rtol=tol, atol=tol), (e, d, job.key)
        rows = _rows(data)
        assert set(rows) == set(ref)
        for i, r in rows.items():  # statistics (some through numerical solvers: looser)
            assert r["holds"] == ref[i]["holds"], i
            assert np.allclose(r["per_seed"], ref[i]["per_seed"], rtol=1e-4, atol=1e-6, equal_nan=True), i
    # each engine caches under its own name: a rerun with the other engine does not reuse the files
    names = sorted(os.listdir(tmp_path / "batchedfloat32" / "cache"))
    assert os.path.basename(jobs[0].path("", MODEL)) in names
    assert os.path.basename(jobs[0].path("", MODEL, engine_tag("loop", "float64"))) not in names
    with open(tmp_path / "batchedfloat32" / "cache" / names[0]) as f:
        assert json.load(f)["engine"] == "batched-float32"


def test_workers_do_not_change_the_results(tmp_path):
    all_claims = ["S1", "S2", "S3", "S4", "S5"]
    one = sim_run.run_simulations(TINY, all_claims, out=str(tmp_path / "w1"),
                                  progress=False, workers=1)
    two = sim_run.run_simulations(TINY, all_claims, out=str(tmp_path / "w2"),
                                  progress=False, workers=2)
    assert two["meta"]["workers"] == 2 and one["meta"]["workers"] == 1
    strip = [[{k: r[k] for k in ("id", "sim_mean", "per_seed", "holds")} for r in d["claims"]]
             for d in (one, two)]
    assert json.dumps(strip[0]) == json.dumps(strip[1])
    assert any(r["id"].startswith("S1-") for r in one["claims"])


def test_theory_requests_are_exactly_the_optima_the_claims_solve(tmp_path, monkeypatch):
    """The optima solved ahead (in the worker) are the ones S3-S5 ask for: none missing, none extra."""
    monkeypatch.setattr(claims_mod, "_SOLVED", {})
    sim_run.run_simulations(TINY, ["S3", "S4", "S5"], out=str(tmp_path), progress=False,
                            workers=1)
    asked = {k for k in claims_mod._SOLVED if k[1] in ("sam", "sam-fixed-scale") and k[3] in (None, TINY.tau)}
    listed = {claims_mod._solve_key(MODEL, *r) for r in claims_mod.theory_requests(TINY, ["S3", "S4", "S5"])}
    assert asked == listed
    assert claims_mod.theory_requests(TINY, ["S2"]) == []


def test_engine_tag_and_cli_validation(capsys):
    assert engine_tag() == "batched-float32"
    assert engine_tag("batched", "float64") == "batched-float64"
    assert engine_tag("loop", "float64") == "loop"
    with pytest.raises(ValueError, match="float64 only"):
        engine_tag("loop", "float32")
    with pytest.raises(ValueError, match="engine"):
        engine_tag("gpu")
    for argv in (["--engine", "loop", "--dtype", "float32"], ["--engine", "gpu"], ["--dtype", "half"],
                 ["--workers", "0"]):
        with pytest.raises(SystemExit) as e:
            sim_run.main(argv)
        assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
