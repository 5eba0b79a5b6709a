"""paper_figs real-data section: claims (a)-(d) on hand-made results whose answer is known (each
true and false), the aggregation over seeds against numpy, the optional extra evaluations, and the
section builder on a folder of fake run files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from paper_figs import real as rd
from paper_figs.aggregate import ConfigSummary, Stat, summarise_runs
from paper_figs.figures import FigureContext, SkipFigure
from paper_figs.loaders import load_deep
from paper_figs.real import real_section
from paper_figs.report import render_report
from paper_figs.theory import TheorySettings

KEYS = ("linf_0.01", "linf_0.02", "linf_0.05", "linf_0.1", "l2_0.25", "l2_1")
SMALL = ["linf_0.01", "linf_0.02", "l2_0.25"]


def _cfg(method, clean, robust, rho=None, eps=None, sd=0.005, n=3, wall=100.0, ips=400.0):
    """A ConfigSummary with the same sd and seed count everywhere; ``robust``: one accuracy for
    every key, or {key: accuracy}."""
    rob = robust if isinstance(robust, dict) else {k: robust for k in KEYS}
    return ConfigSummary("fashion-mnist", method, rho, eps, list(range(n)), Stat(clean, sd, n),
                         {k: Stat(v, sd, n) for k, v in rob.items()}, {}, Stat(wall, 1.0, n),
                         Stat(ips, 1.0, n))


def _rob(small, big):
    return {k: (small if k in SMALL else big) for k in KEYS}


def test_attack_names_and_the_small_eps_rule():
    assert rd.attack_parts("linf_8/255") == ("linf", pytest.approx(8 / 255))
    assert rd.attack_parts("l2_1") == ("l2", 1.0)
    assert rd.attack_parts("AA linf_0.1") is None and rd.attack_parts("linf_x") is None
    keys = ["l2_1", "linf_0.1", "linf_0.02", "l2_0.25", "linf_0.01", "linf_0.05", "other"]
    assert rd.sorted_attacks(keys) == ["linf_0.01", "linf_0.02", "linf_0.05", "linf_0.1",
                                       "l2_0.25", "l2_1", "other"]
    assert rd.small_attacks(keys) == SMALL
    assert rd.small_attacks(["linf_0", "linf_1/255", "linf_2/255", "linf_8/255"]) == \
        ["linf_1/255", "linf_2/255"]


def test_claim_a_sam_robust_above_st_at_small_eps():
    st = _cfg("st", 0.87, _rob(0.50, 0.05))
    good = _cfg("sam", 0.87, _rob(0.60, 0.01), rho=0.1)   # above at small eps, below beyond
    close = _cfg("sam", 0.87, _rob(0.505, 0.05), rho=0.2)  # above, but inside the seed spread
    bad = _cfg("sam", 0.87, {**_rob(0.60, 0.05), "l2_0.25": 0.40}, rho=0.4)
    got = {c.scope: c for c in rd.claim_sam_robust([st, good, close, bad], SMALL)}
    assert got["SAM rho=0.1"].holds is True
    assert "beyond the seed spread at 3" in got["SAM rho=0.1"].detail
    assert got["SAM rho=0.2"].holds is True
    assert "beyond the seed spread at 0" in got["SAM rho=0.2"].detail
    assert got["SAM rho=0.4"].holds is False
    assert "above ST at 2 of 3" in got["SAM rho=0.4"].detail
    assert "l2_0.25: 40.0 ± 0.5 (n=3) vs ST 50.0 ± 0.5 (n=3), -10.0 pt" in got["SAM rho=0.4"].detail
    assert [c.holds for c in rd.claim_sam_robust([good], SMALL)] == [None]   # no ST run


def test_claim_b_sam_clean_within_half_a_point():
    st = _cfg("st", 0.870, 0.3)
    cases = {0.05: (0.866, True), 0.1: (0.864, False), 0.2: (0.880, True), 0.4: (0.8651, True)}
    configs = [st] + [_cfg("sam", clean, 0.3, rho=rho) for rho, (clean, _) in cases.items()]
    got = {c.scope: c.holds for c in rd.claim_sam_clean(configs)}
    assert got == {f"SAM rho={rho:g}": want for rho, (_, want) in cases.items()}
    bad = rd.claim_sam_clean(configs)[1]
    assert "-0.60 pt (limit -0.5 pt)" in bad.detail


def test_claim_c_at_highest_robust_and_lowest_clean():
    st, sam = _cfg("st", 0.87, _rob(0.5, 0.05)), _cfg("sam", 0.86, _rob(0.6, 0.10), rho=0.1)
    # AT below SAM at small eps does not count against (c)
    at = _cfg("at-linf", 0.80, _rob(0.55, 0.40), eps=0.1)
    c = rd.claim_at_extremes([st, sam, at], SMALL)
    assert [x.holds for x in c] == [True] and "highest at 3 of 3" in c[0].detail
    assert "at small eps (not counted) highest at 0 of 3" in c[0].detail
    at_clean = _cfg("at-linf", 0.865, _rob(0.55, 0.40), eps=0.1)   # clean above SAM's
    c = rd.claim_at_extremes([st, sam, at_clean], SMALL)[0]
    assert c.holds is False and "clean 86.5 vs SAM rho=0.1 86.0" in c.detail
    weak = _cfg("at-linf", 0.80, {**_rob(0.55, 0.40), "l2_1": 0.08}, eps=0.1)
    c = rd.claim_at_extremes([st, sam, weak], SMALL)[0]
    assert c.holds is False and "l2_1 8.0 vs SAM rho=0.1 10.0" in c.detail
    assert rd.claim_at_extremes([at], SMALL)[0].holds is None


def _write(root, dataset, runs, folder=None):
    d = root / "deep" / (folder or dataset)
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(runs):
        rec = {"dataset": dataset, "rho": None, "eps": None, "norm": None, "device": "cpu",
               "threads": 1, "train_precision": "fp32", "config": {"attack_steps": 10}, **r}
        (d / f"{r['method']}_{r.get('rho') or r.get('eps') or ''}_s{r['seed']}_{i}.json"
         ).write_text(json.dumps(rec))


def _grid(clean, rob, wall, seeds=(0, 1, 2), rng=None, extra=None):
    """Run records: ST, SAM rho 0.1 and AT eps 0.1 with the given (clean, robust, wall time) per
    method; ``rng`` adds seed noise."""
    out = []
    for m, (rho, eps) in {"st": (None, None), "sam": (0.1, None), "at": (None, 0.1)}.items():
        for s in seeds:
            noise = (lambda: float(rng.normal(0, 0.002))) if rng is not None else (lambda: 0.0)
            out.append({"method": m, "rho": rho, "eps": eps, "norm": "linf" if eps else None,
                        "seed": s, "clean_acc": clean[m] + noise(),
                        "robust": {k: (rob[m] if k in SMALL else rob[m] / 2) + noise()
                                   for k in KEYS},
                        "wall_time_s": wall[m] * (1 + 0.01 * s), "images_per_s": 1000 / wall[m],
                        **(extra or {})})
    return out


CLEAN = {"st": 0.87, "sam": 0.869, "at": 0.78}
ROB = {"st": 0.5, "sam": 0.6, "at": 0.9}
WALL = {"st": 100.0, "sam": 200.0, "at": 1100.0}


def test_claim_d_training_cost_relative_to_st(tmp_path):
    _write(tmp_path, "fashion-mnist", _grid(CLEAN, ROB, WALL))
    runs = load_deep(tmp_path)["fashion-mnist"]
    configs = summarise_runs(runs)
    (d,) = rd.claim_cost(configs, runs)
    assert d.holds is True and "largest SAM time ratio 2.00, smallest AT 11.00" in d.detail
    assert "AT l_inf eps=0.1: time x11.00, throughput x11.00 (nominal passes x11.00)" in d.detail
    assert "settings the same" in d.detail
    slow = tmp_path / "slow"
    recs = _grid(CLEAN, ROB, {"st": 100.0, "sam": 1500.0, "at": 1100.0})
    recs[0]["threads"] = 2                      # one ST run with other settings: said so
    _write(slow, "fashion-mnist", recs)
    runs = load_deep(slow)["fashion-mnist"]
    (d,) = rd.claim_cost(summarise_runs(runs), runs)
    assert d.holds is False and "settings differ between runs: threads 1, 2" in d.detail
    no_at = [r for r in runs if r.method != "at"]
    assert rd.claim_cost(summarise_runs(no_at), no_at)[0].holds is None


def test_aggregation_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    _write(tmp_path, "fashion-mnist", _grid(CLEAN, ROB, WALL, rng=rng))
    runs = load_deep(tmp_path)["fashion-mnist"]
    configs = summarise_runs(runs)
    table = rd.accuracy_table(configs, runs)
    for c in configs:
        mine = [r for r in runs if r in rd.config_runs(runs, c)]
        assert len(mine) == 3 and c.seeds == [0, 1, 2]
        clean = np.array([r.clean_acc for r in mine])
        assert c.clean.mean == pytest.approx(clean.mean())
        assert c.clean.sd == pytest.approx(clean.std(ddof=1))
        for k in KEYS:
            vals = np.array([r.robust[k] for r in mine])
            assert (c.robust[k].mean, c.robust[k].sd) == pytest.approx((vals.mean(),
                                                                        vals.std(ddof=1)))
        row = f"| {c.text} | 3 (0, 1, 2) | {100 * clean.mean():.1f} ± {100 * clean.std(ddof=1):.1f} |"
        assert row in table


def test_extra_evaluations_are_optional_columns():
    aa = {"version": "cpu", "n": 1000, "seconds": 0.5, "clean_acc": 0.9,
          "robust": {"linf_0.05": 0.3}, "seconds_per_attack": {"linf_0.05": 0.5}}
    extra = {"pgd50": {"steps": 50, "robust": {"linf_0.1": 0.2}}, "linf_0.02": 0.7,
             "runs": [{"name": "cw", "robust": {"l2_1": 0.4}}]}
    assert rd.extra_robust({"autoattack": aa, "extra_evals": extra}) == {
        "AA linf_0.05": 0.3, "pgd50 linf_0.1": 0.2, "linf_0.02": 0.7, "runs cw l2_1": 0.4}
    assert rd.extra_robust({}) == {} and rd.extra_robust({"autoattack": None}) == {}
    assert rd.extra_robust({"autoattack": "failed", "extra_evals": [1, 2]}) == {}


def _ctx(root):
    return FigureContext(settings=TheorySettings(), out_dir=root / "figs", deep=load_deep(root),
                         formats=("png",), results_dir=root)


def test_section_builder_on_fake_runs(tmp_path):
    rng = np.random.default_rng(0)
    aa = {"autoattack": {"robust": {"linf_0.05": 0.25}, "seconds_per_attack": {"linf_0.05": 9}}}
    _write(tmp_path, "fashion-mnist", _grid(CLEAN, ROB, WALL, rng=rng, extra=aa))
    _write(tmp_path, "synthetic", _grid(CLEAN, ROB, WALL, seeds=(0,)))   # generated: not real
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "fig1_tradeoff.png").write_bytes(b"keep")
    sec = real_section(_ctx(tmp_path), tmp_path / "REPORT.md")
    names = [f.name for f in sec.figures]
    assert names == ["real_fashion-mnist_accuracy", "real_fashion-mnist_tradeoff"]
    for n in names:
        assert (tmp_path / "figs" / f"{n}.png").stat().st_size > 5000
    assert (tmp_path / "figs" / "fig1_tradeoff.png").read_bytes() == b"keep"
    t = sec.text
    assert "### fashion-mnist" in t and "synthetic" not in t
    assert "](figs/real_fashion-mnist_accuracy.png)" in t
    assert "| AA linf_0.05 |" in t and "| 25.0 ± 0.0 |" in t     # the AutoAttack column
    assert sec.figures[0].verdict.agree is True, sec.figures[0].verdict.text
    assert "Findings" not in t and "linf eps=0.05" in sec.figures[1].shows
    # in the report: one verdict row per real figure, the section before the deep tables
    text = render_report(tmp_path / "REPORT.md", [], [], [], None, load_deep(tmp_path), "cmd",
                         [], real=sec)
    assert "| [fashion-mnist: trade-off beside the linear theory](#real-fashion-mnist-tradeoff) |" \
        in text
    assert text.index("## Real data: the paper's claims") < text.index("## Deep results")
    # the same folder with SAM losing 2 points of clean accuracy: (b) becomes a finding
    bad = tmp_path / "bad"
    _write(bad, "fashion-mnist", _grid({**CLEAN, "sam": 0.85}, ROB, WALL, rng=rng))
    sec = real_section(_ctx(bad), bad / "REPORT.md")
    assert sec.figures[0].verdict.agree is False
    assert "(b) 0 of 1 hold (not: SAM rho=0.1)" in sec.figures[0].verdict.text
    assert "Findings" in sec.text and "not for SAM rho=0.1: clean" in sec.text


def test_section_is_skipped_without_real_runs(tmp_path):
    _write(tmp_path, "synthetic", _grid(CLEAN, ROB, WALL, seeds=(0,)))
    with pytest.raises(SkipFigure, match="real-data section skipped: .*deep.run --profile cpu"):
        real_section(_ctx(tmp_path), tmp_path / "REPORT.md")


def test_missing_configurations_are_rows_not_silence():
    claims = rd.all_claims([_cfg("st", 0.87, 0.5), _cfg("sam", 0.87, 0.6, rho=0.1)], [])
    got = {c.cid: (c.scope, c.holds) for c in claims}
    assert got["a"] == ("SAM rho=0.1", True) and got["c"] == ("AT", None)
    assert "no AT run (yet)" in rd.claims_markdown(claims)
    v = rd.claims_verdict(claims)
    assert v.agree is True and "(c) not evaluated" in v.text   # what can be checked holds
    assert rd.claims_verdict([rd.Claim("c", "AT", None, "")]).agree is None
