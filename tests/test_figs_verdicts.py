"""Verdict logic of the captions: per-configuration deep comparisons (figures 5-6), the
simulations' measurement-only boundary point and the projected-norm SAM theory (figures 1-3)."""
from __future__ import annotations

import math

import linear_theory as lt
from paper_figs import theory as th
from paper_figs.aggregate import ConfigSummary, Stat
from paper_figs.deep_figures import deep_ordering_checks, probe_ordering_checks
from paper_figs.simulation import curve_points
from paper_figs.verdicts import ordering_verdict, simulation_verdict

SETTINGS = th.TheorySettings()
ATTACK = "linf_1/255"


def _cfg(method, clean, robust, rho=None, eps=None, swapped=None, removed=0.3):
    probes = {} if swapped is None else {"nonrobust_swapped": Stat(swapped, 0.0, 2),
                                         "robust_removed": Stat(removed, 0.0, 2)}
    return ConfigSummary("synthetic", method, rho, eps, [0, 1], Stat(clean, 0.0, 2),
                         {ATTACK: Stat(robust, 0.0, 2)}, probes, Stat(1.0, 0.0, 2),
                         Stat(1.0, 0.0, 2))


def _linear(rho):
    """Independent route to the theory's SAM point: linear_theory directly (T5, tau = 4)."""
    model = SETTINGS.model()
    sol = lt.solve(model, "sam-fixed-scale", rho, tau=SETTINGS.tau)
    return sol.clean_accuracy, sol.robust_accuracy("inf", 0.1)


def _checks(configs):
    theory = th.representative_points(SETTINGS)
    return deep_ordering_checks(configs, ATTACK, theory, SETTINGS.eval_keys[0])


def test_large_rho_is_checked_against_the_theorys_own_prediction_for_it():
    st_clean, st_rob = lt.solve(SETTINGS.model(), "st", 0.0).clean_accuracy, None
    c01, r01 = _linear(0.1)
    c04, r04 = _linear(0.4)
    st_rob = lt.solve(SETTINGS.model(), "st", 0.0).robust_accuracy("inf", 0.1)
    # what the linear theory itself says per rho (the premises of the data below)
    assert st_clean - c01 < 0.005 and r01 > st_rob        # small rho: clean kept, robust gained
    assert st_clean - c04 > 0.005 and r04 < st_rob        # large rho: clean lost, no robust gain
    # deep data that follows the theory configuration by configuration -> Agree
    follows = [_cfg("st", 0.80, 0.60), _cfg("sam", 0.80, 0.70, rho=0.1),
               _cfg("sam", 0.70, 0.55, rho=0.4), _cfg("at-linf", 0.75, 0.50, eps=8 / 255)]
    checks = _checks(follows)
    assert len(checks) == 2 * 2 + 2 + 1    # per SAM config: vs ST (2), vs AT (1); AT vs ST (1)
    v = ordering_verdict(checks)
    assert v.agree is True, v.text
    # the same, but rho = 0.1 loses robust accuracy and rho = 0.4 keeps clean accuracy: both named,
    # with their numbers; the agreeing comparisons are counted, not hidden
    breaks = [_cfg("st", 0.80, 0.60), _cfg("sam", 0.80, 0.50, rho=0.1),
              _cfg("sam", 0.80, 0.55, rho=0.4), _cfg("at-linf", 0.75, 0.45, eps=8 / 255)]
    v = ordering_verdict(_checks(breaks), "per-configuration comparisons")
    assert v.agree is False
    assert "Disagree on 2 of 7 per-configuration comparisons (5 agree)" in v.text
    assert "SAM rho=0.1 robust > ST: theory yes, measured no (robust measured 50.0 vs 60.0" in v.text
    assert "SAM rho=0.4 clean within 0.5 pt of ST" in v.text and "measured 80.0 vs 80.0" in v.text
    assert "SAM rho=0.4 robust" not in v.text


def test_probe_checks_are_per_configuration():
    theory = th.representative_points(SETTINGS)
    # theory: swapped-probe accuracy rises with rho and is highest for AT above eta
    good = [_cfg("st", 0.8, 0.6, swapped=0.1), _cfg("sam", 0.8, 0.7, rho=0.1, swapped=0.2),
            _cfg("sam", 0.7, 0.5, rho=0.4, swapped=0.6), _cfg("at-linf", 0.7, 0.5, eps=8 / 255,
                                                                swapped=0.8, removed=0.1)]
    assert ordering_verdict(probe_ordering_checks(good, theory)).agree is True
    bad = good[:2] + [_cfg("sam", 0.7, 0.5, rho=0.4, swapped=0.05)] + good[3:]
    v = ordering_verdict(probe_ordering_checks(bad, theory))
    assert v.agree is False and "Disagree on 1 of" in v.text
    assert "swapped: SAM rho=0.4 > ST: theory yes, measured no" in v.text


def _sim(with_measure_row: bool):
    def q(vals):
        return {"mean": vals, "lo": [x - 0.001 for x in vals], "hi": [x + 0.001 for x in vals],
                "per_seed": [[x] for x in vals]}
    claims = [{"id": "S5-at-eps=eta-clean", "claim": "S5", "relation": "measure", "holds": None,
               "config": {}}] if with_measure_row else []
    return {"meta": {"model": {"eta": 0.2}}, "claims": claims,
            "curves": {"at-linf": {"strength": [0.1, 0.2], "sim": {"clean": q([0.98, 0.87])}}}}


def test_boundary_point_follows_the_simulations_own_marking():
    pts = curve_points(_sim(True))
    assert [p["measure_only"] for p in pts] == [False, True]
    assert not any(p["measure_only"] for p in curve_points(_sim(False)))


def test_boundary_point_is_reported_but_not_counted():
    checked = [("AT eps=0.1 clean", 0.983, 0.982, 0.984, 0.002)]
    boundary = [("AT eps=0.2 clean", 0.841, 0.867, 0.872, 0.002)]
    v = simulation_verdict(checked, "acc", boundary=boundary)
    assert v.agree is True and "all 1 acc" in v.text
    assert "boundary point eps = eta" in v.text and "[0.867, 0.872] vs T3 0.841" in v.text
    # the same point, counted, disagrees: the separation is what changes the verdict
    assert simulation_verdict(checked + boundary, "acc").agree is False
    # a checked point outside its interval still disagrees whatever the boundary says
    assert simulation_verdict([("x", 0.5, 0.6, 0.7)], "acc", boundary=boundary).agree is False


def test_sam_points_report_t5_and_projected_theory():
    model = SETTINGS.model()
    # independent route: T5 and T5 with ||P_w x|| straight from linear_theory at rho = 0.3
    t5 = lt.solve(model, "sam-fixed-scale", 0.3, tau=SETTINGS.tau).robust_reliance
    tp = lt.solve(model, "sam-fixed-scale", 0.3, tau=SETTINGS.tau,
                  sam_norm="projected").robust_reliance
    assert math.isclose(th.theory_point(SETTINGS, "sam-proj", 0.3)["reliance"], tp, rel_tol=1e-9)
    assert abs(t5 - tp) > 0.005     # finding 6: the two differ visibly at rho = 0.3
    lo, hi = tp - 0.001, tp + 0.001  # a measurement that sits on the projected theory
    v = simulation_verdict([("SAM rho=0.3", t5, lo, hi, 0.002)], "reliance",
                           sam_t5=[("SAM rho=0.3", t5, lo, hi, 0.002)],
                           sam_proj=[("SAM rho=0.3", tp, lo, hi, 0.002)])
    assert v.agree is False     # T5 is still the counted comparison
    assert "T5: 1 of 1 outside; T5 with ||P_w x|| (simulations finding 6): 0 of 1 outside" in v.text
