"""python -m simulations.run: --quick end to end (the claims hold with honest tolerances), resume after an
interruption gives the results of an uninterrupted run, bad arguments exit 2."""
import json
import os
from dataclasses import replace

import pytest

from simulations import experiments
from simulations.run import torch_threads
from simulations import run as sim_run
from simulations.experiments import SIM_PROFILES, Settings

TINY = Settings(profile="tiny", seeds=(0, 1), n_per_epoch=256, epochs=2, batch_size=128, s3_m=(1, 128),
                s4_m=(1, 128), s4_rho=(0.1,), s5_rho=(0.0, 0.1), s5_eps=(0.0, 0.3))



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):  # tiny tensors: one thread is fastest, and kind to a shared machine
        yield

def test_quick_end_to_end(tmp_path):
    out = str(tmp_path / "res")
    rc = sim_run.main(["--quick", "--out", out, "--no-progress"])
    with open(os.path.join(out, "simulations.json")) as f:
        data = json.load(f)
    assert set(data) >= {"meta", "claims", "curves", "sam_vs_m"}
    rows = data["claims"]
    failed = [(r["id"], r["theory"], r["sim_mean"], r["tolerance"]) for r in rows if r["holds"] is False]
    assert not failed, failed
    assert rc == 0
    assert {r["claim"] for r in rows} == {"S1", "S2", "S3", "S4", "S5"}
    for r in rows:
        assert set(r) >= {"id", "claim", "description", "theory", "sim_mean", "ci95", "diff", "tolerance",
                          "tolerance_reason", "holds"}
        if r["holds"] is not None:
            assert r["tolerance"] >= 0 and r["tolerance_reason"]
    # the tolerances are not vacuous: every accuracy tolerance is below one percentage point
    acc = [r for r in rows if r["holds"] is not None and r["relation"] == "=" and
           ("clean" in r["id"] or "robust" in r["id"] or r["claim"] == "S1")]
    assert acc and max(r["tolerance"] for r in acc) < 0.02
    # SAM's effective strength shrinks with m (S4), reported per m
    lam = {e["m"]: e["lambda_eff"]["mean"] for e in data["sam_vs_m"]}
    assert lam[1] > lam[max(lam)]
    # companion rows vs T5 with the projected norm ||P_w x||: one per T5 row of S4 and of the SAM curve of
    # S5, same statistic; the projected theory differs from T5 for rho > 0 and equals it at rho = 0
    ids = {r["id"] for r in rows}
    proj = [r for r in rows if r["id"].endswith("-proj")]
    base = [r for r in rows if r["id"].startswith(("S4-rho", "S5-sam-fixed-scale")) and not r["id"].endswith("-proj")]
    assert proj and {r["id"][:-len("-proj")] for r in proj} == {r["id"] for r in base} <= ids
    assert all("sam_norm='projected'" in r["description"] and r["holds"] is not None for r in proj)
    cur = data["curves"]["sam-fixed-scale"]
    assert set(cur["theory_projected"]) == set(cur["theory"])
    for th, tp, s in zip(cur["theory"]["reliance"], cur["theory_projected"]["reliance"], cur["strength"]):
        assert (th == pytest.approx(tp, abs=1e-9)) if s == 0 else tp < th
    assert os.path.exists(os.path.join(out, "simulations.md"))
    # figures are paper_figs' alone (fig1/fig3/fig4 from this JSON, tests/test_figs_pipeline.py): none here
    assert not os.path.exists(os.path.join(out, "figures"))


def _strip(data):
    """The result rows as a JSON string (so NaN == NaN)."""
    return json.dumps([{k: r[k] for k in ("id", "theory", "sim_mean", "ci95", "holds", "per_seed")}
                       for r in data["claims"]] + [data["sam_vs_m"]], sort_keys=True)


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    claims = ["S3", "S4"]
    ref = sim_run.run_simulations(TINY, claims, out=str(tmp_path / "ref"), progress=False)

    out = str(tmp_path / "resumed")
    real = experiments.run_job
    calls = []

    def flaky(job, *a, **k):
        calls.append(job.key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted while the third job trains
        return real(job, *a, **k)

    monkeypatch.setattr(experiments, "run_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        sim_run.run_simulations(TINY, claims, out=out, progress=False)
    assert not os.path.exists(os.path.join(out, "simulations.json"))
    monkeypatch.setattr(experiments, "run_job", real)
    resumed = sim_run.run_simulations(TINY, claims, out=out, progress=False)
    cached = [j["key"] for j in resumed["meta"]["jobs"] if j["cached"]]
    assert cached == calls[:2]
    assert _strip(resumed) == _strip(ref)
    # --force recomputes everything, with the same (deterministic) results
    forced = sim_run.run_simulations(TINY, claims, out=out, force=True, progress=False)
    assert not any(j["cached"] for j in forced["meta"]["jobs"])
    assert _strip(forced) == _strip(ref)


def test_corrupt_cache_is_recomputed(tmp_path):
    out = str(tmp_path / "c")
    sim_run.run_simulations(TINY, ["S3"], out=out, progress=False)
    job = experiments.jobs_for(["S3"], TINY)[0]
    path = job.path(os.path.join(out, "cache"), experiments.lt.FeatureModel())
    with open(path, "w") as f:
        f.write("{not json")
    again = sim_run.run_simulations(TINY, ["S3"], out=out, progress=False)
    assert [j["cached"] for j in again["meta"]["jobs"]][0] is False


@pytest.mark.parametrize("argv,word", [(["--only", "S9"], "S9"), (["--seeds", "1"], "--seeds"),
                                       (["--quick", "--full"], "not allowed"), (["--threads", "0"], "--threads")])
def test_bad_arguments_exit_2(argv, word, capsys):
    with pytest.raises(SystemExit) as e:
        sim_run.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err


def test_parse_claims():
    assert sim_run.parse_claims("s4, S2") == ["S2", "S4"]
    assert sim_run.parse_claims(None) == ["S1", "S2", "S3", "S4", "S5"]
    assert SIM_PROFILES["quick"].profile == "quick"
    assert replace(SIM_PROFILES["quick"], epochs=1).epochs == 1


def test_comparison_rows():
    import numpy as np
    from scipy import stats as sps

    from simulations.stats import compare, mean_ci, measure

    vals = [1.0, 1.2, 0.9, 1.1]
    mean, (lo, hi), half = mean_ci(vals)
    ref = sps.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sps.sem(vals))
    assert np.allclose((lo, hi), ref) and np.isclose(half, (hi - lo) / 2)
    row = compare("x", "S2", "d", 1.0, vals, 0.01, "r")
    assert row["holds"] and np.isclose(row["tolerance"], half + 0.01)
    assert not compare("x", "S2", "d", 1.5, vals, 0.01, "r")["holds"]
    assert compare("x", "S4", "d", 0.0, vals, 0.0, "", relation=">")["holds"]
    assert not compare("x", "S4", "d", 0.95, vals, 0.0, "", relation=">")["holds"]
    assert measure("x", "S4", "d", vals)["holds"] is None


def test_exit_status_1_when_a_check_fails(tmp_path, monkeypatch):
    from simulations.stats import compare

    def failing_claim(model, st, results):
        return [compare("S3-fake", "S3", "a check that cannot hold", 0.0, [1.0, 1.1], 0.0, "test")], {}

    monkeypatch.setitem(sim_run.CLAIM_FUNCS, "S3", failing_claim)
    monkeypatch.setitem(sim_run.SIM_PROFILES, "quick", TINY)
    rc = sim_run.main(["--quick", "--only", "S3", "--out", str(tmp_path), "--no-progress"])
    assert rc == 1
    with open(os.path.join(str(tmp_path), "simulations.json")) as f:
        assert json.load(f)["meta"]["n_failed"] == 1


def test_reuse_freed_memory_applies_on_glibc():
    """The main job's allocator setting (simulations.run.reuse_freed_memory) takes effect where glibc is
    the C library, and is a harmless no-op (False) elsewhere."""
    import platform

    applied = sim_run.reuse_freed_memory()
    assert isinstance(applied, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied
