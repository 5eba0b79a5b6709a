"""paper_figs building blocks: palette, verdicts, theory helpers (vs independent routes), loaders."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import linear_theory as lt
from paper_figs import palette as pal
from paper_figs import theory as th
from paper_figs.aggregate import Stat, summarise_runs
from paper_figs.loaders import CorruptInput, MissingInput, load_deep, load_simulations
from paper_figs.verdicts import interval_verdict, ordering_verdict


def test_palette_one_distinct_style_per_method():
    methods = ("st", "sam", "at-linf", "at-l2")
    colors = [pal.style(m).color for m in methods]
    markers = [pal.style(m).marker for m in methods]
    assert len(set(colors)) == 4 and len(set(markers)) == 4
    # every spelling used by the result files maps to the same style
    assert pal.style("sam-fixed-scale") == pal.style("sam")
    assert pal.style("at") == pal.style("at-linf") == pal.style("at", norm="linf")
    assert pal.style("at", norm="l2") == pal.style("at-l2")
    with pytest.raises(ValueError, match="method"):
        pal.canonical_method("adam")


def test_interval_verdict_reports_the_largest_gap():
    ok = interval_verdict([("a", 0.5, 0.4, 0.6), ("b", 1.0, 0.9, 1.1)], "x")
    assert ok.agree is True
    bad = interval_verdict([("a", 0.5, 0.4, 0.6), ("b", 2.0, 0.9, 1.1), ("c", 0.0, 0.05, 0.1)],
                           "x")
    assert bad.agree is False and "2 of 3" in bad.text and "at b" in bad.text
    assert interval_verdict([("a", math.nan, 0.0, 1.0)], "x").agree is None
    assert interval_verdict([("a", 1.15, 0.9, 1.1)], "x", tol=0.1).agree is True


def test_ordering_verdict_compares_prediction_and_measurement():
    assert ordering_verdict([("p", True, True), ("q", False, False)]).agree is True
    v = ordering_verdict([("p", True, True), ("q", False, True), ("r", True, None)])
    assert v.agree is False and "q: theory no, measured yes" in v.text
    assert ordering_verdict([("r", True, None)]).agree is None


def test_sam_coordinate_strength_is_rho_times_rms_feature_norm():
    model = lt.FeatureModel()
    # E||x||^2 = sum(mu^2 + sigma^2), written out from docs/theory.md section 1
    ex2 = model.k * (model.mu_r ** 2 + model.sigma_r ** 2) + model.d * (model.eta ** 2 + model.sigma_n ** 2)
    expect = 0.3 * math.sqrt(ex2) / math.sqrt(model.k + model.d)
    assert th.coordinate_strength(model, "sam", 0.3) == pytest.approx(expect, rel=1e-12)
    assert th.coordinate_strength(model, "at-l2", 2.0) == pytest.approx(2.0 / math.sqrt(101))


def test_probe_accuracies_match_monte_carlo():
    """Closed-form probes (weights masked/flipped) vs the probes applied to sampled features."""
    settings = th.TheorySettings()
    model = settings.model()
    v = np.asarray(lt.solve(model, "at-linf", 0.1).v)
    X, y = model.sample(100_000, 0)
    mask = np.asarray(model.robust_mask)
    variants = {"clean": X, "nonrobust_removed": np.where(mask, X, 0.0),
                "nonrobust_swapped": np.where(mask, X, -X),   # block carries the other label
                "robust_removed": np.where(mask, 0.0, X)}
    closed = th.probe_accuracies(settings, v)
    for name, Xv in variants.items():
        mc = float(np.mean(np.sign(Xv @ v) == y))
        assert closed[name] == pytest.approx(mc, abs=4 * math.sqrt(0.25 / 100_000)), name


def test_settings_follow_simulation_meta():
    meta = {"model": {"class": "FeatureModel", "k": 1, "mu_r": 4.0, "sigma_r": 4.0, "d": 50,
                      "eta": 0.3, "sigma_n": 1.0},
            "settings": {"tau": 3.0, "eval_linf": 0.2, "eval_l2": 0.5}}
    s = th.settings_from_meta(meta)
    assert s.model().d == 50 and s.model().eta == 0.3 and s.tau == 3.0
    assert s.eval_keys == ("linf_0.2", "l2_0.5")
    with pytest.raises(ValueError, match="FeatureModel"):
        th.settings_from_meta({"model": {"class": "TsiprasModel"}})


def test_loaders_name_the_command_or_the_file(tmp_path):
    with pytest.raises(MissingInput) as exc:
        load_simulations(tmp_path)
    assert "python -m simulations.run" in str(exc.value)
    with pytest.raises(MissingInput) as exc:
        load_deep(tmp_path)
    assert "python -m deep.run" in str(exc.value)
    (tmp_path / "simulations.json").write_text(json.dumps({"meta": {}, "claims": []}))
    with pytest.raises(CorruptInput, match="curves"):
        load_simulations(tmp_path)
    d = tmp_path / "deep" / "synthetic"
    d.mkdir(parents=True)
    (d / "r.json").write_text(json.dumps({"dataset": "synthetic", "method": "st"}))
    with pytest.raises(CorruptInput, match="clean_acc"):
        load_deep(tmp_path)


def test_runs_are_grouped_by_configuration_over_seeds(tmp_path):
    d = tmp_path / "deep" / "synthetic"
    d.mkdir(parents=True)
    for seed, acc in ((0, 0.8), (1, 0.9)):
        for method, rho, eps in (("st", None, None), ("sam", 0.1, None), ("at", None, 8 / 255)):
            (d / f"{method}{seed}.json").write_text(json.dumps({
                "dataset": "synthetic", "method": method, "rho": rho, "eps": eps, "norm": "linf",
                "seed": seed, "clean_acc": acc, "robust": {"linf_1/255": acc / 2}}))
    configs = summarise_runs(load_deep(tmp_path)["synthetic"])
    assert [c.method for c in configs] == ["st", "sam", "at-linf"]
    for c in configs:
        assert c.seeds == [0, 1] and c.clean.mean == pytest.approx(0.85)
        assert c.clean.sd == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert Stat.of([0.5]).fmt() == "50.0"


def test_report_groups_follow_summary_md_rule_two_architectures_stay_apart(tmp_path):
    """REPORT.md's summary (paper_figs) and summary.md (deep.summary) share deep.aggregate's grouping rule:
    two architectures in one folder are two configurations, each labelled by the setting that differs."""
    from deep.aggregate import group_runs
    from deep.train import TrainConfig
    d = tmp_path / "deep" / "synthetic"
    d.mkdir(parents=True)
    for arch in ("preact-resnet18", "mlp"):
        for seed in (0, 1):
            cfg = TrainConfig(method="st", seed=seed, arch=arch).to_dict()
            (d / f"{arch}{seed}.json").write_text(json.dumps({
                "dataset": "synthetic", "method": "st", "rho": None, "eps": None, "norm": "linf", "seed": seed,
                "clean_acc": 0.5 + 0.1 * (arch == "mlp"), "robust": {}, "config": cfg}))
    runs = load_deep(tmp_path)["synthetic"]
    configs = summarise_runs(runs)
    assert len(configs) == 2 == len(group_runs([r.raw for r in runs]))
    assert sorted(c.text for c in configs) == ["ST (arch=mlp)", "ST (arch=preact-resnet18)"]
    assert sorted(c.clean.mean for c in configs) == pytest.approx([0.5, 0.6])
