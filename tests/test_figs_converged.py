"""paper_figs.converged: paired-by-seed verdicts with t intervals (against scipy.stats), the plateau test,
the masking flag and the report section, on hand-made run JSONs."""
import json

import pytest

import paper_figs.beyond as B
import paper_figs.converged as C


def _write(folder, run_id, method, seed, clean, pgd, rho=None, eps=None, epochs=6, worst=None, history=None,
           arch=None):
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"run_id": run_id, "method": method, "rho": rho, "eps": eps, "seed": seed, "epochs": epochs,
           "clean_acc": clean, "robust": pgd, "eval": {"n_robust": 1000}, "wall_time_s": 10.0, "device": "cpu",
           "config": {"width": 8, "n_train": None, **({"arch": arch} if arch else {})},
           "history": history or [{"epoch": e + 1, "test_clean_acc": clean - 0.01 * (epochs - e - 1),
                                   **({"curve_robust": {"linf_0.02": 0.5}} if e in (0, epochs - 1) else {})}
                                  for e in range(epochs)]}
    if worst:
        raw["extra_evals"] = {"worst-cpu": worst}
    (folder / f"{run_id}.json").write_text(json.dumps(raw))


def _worst(pgd, aa, n=500):
    return {"n": n, "robust": {k: min(pgd[k], aa[k]) for k in pgd}, "pgd": pgd, "autoattack": aa,
            "gap_points": {k: 100 * (pgd[k] - min(pgd[k], aa[k])) for k in pgd}, "seconds_per_attack": {}}


def test_interval_matches_scipy_t_interval():
    stats = pytest.importorskip("scipy.stats")
    import statistics
    d = [1.0, 2.5, 0.5, 1.7]
    m, lo, hi, n = C.interval(d)
    want = stats.t.interval(0.95, len(d) - 1, loc=statistics.mean(d), scale=stats.sem(d))
    assert n == 4 and m == pytest.approx(statistics.mean(d))
    assert (lo, hi) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("lo, hi, above, want", [(0.1, 2.0, True, "holds"), (-2.0, -0.1, True, "fails"),
                                                  (-1.0, 1.0, True, "undecided"), (-2.0, -0.1, False, "holds"),
                                                  (0.1, 2.0, False, "fails")])
def test_judge(lo, hi, above, want):
    assert C.judge(lo, hi, 0.0, above, 3) == want
    assert C.judge(lo, hi, 0.0, above, 1) == "undecided"


def test_claims_follow_the_intervals(tmp_path):
    d = tmp_path / "runs"
    for s, (c_st, c_sam, r_st, r_sam) in enumerate([(0.90, 0.905, 0.40, 0.50), (0.91, 0.90, 0.42, 0.55),
                                                     (0.90, 0.902, 0.41, 0.52)]):
        _write(d, f"st_s{s}", "st", s, c_st, {"linf_0.02": r_st, "linf_0.05": 0.05})
        _write(d, f"sam_rho0.1_s{s}", "sam", s, c_sam, {"linf_0.02": r_sam, "linf_0.05": 0.10}, rho=0.1)
    for s in (0, 1):
        _write(d, f"at_linf_0.1_s{s}", "at", s, 0.80, {"linf_0.02": 0.78, "linf_0.05": 0.70}, eps=0.1)
    vs = {(v.claim, v.measure.split(" (")[0]): v for v in C.claims(C.load_runs(d))}
    a = vs[("a", "robust linf_0.02")]
    assert a.n == 3 and a.mean == pytest.approx(100 * (0.10 + 0.13 + 0.11) / 3) and a.verdict == "holds"
    b = vs[("b", "clean")]        # +0.5, -1.0, +0.2 points: the interval covers -0.5
    assert b.n == 3 and b.verdict == "undecided" and b.low < -0.5 < b.high
    c_rob = vs[("c", "robust linf_0.05")]
    assert c_rob.n == 2 and c_rob.verdict == "holds"       # +60 points on both AT seeds
    c_clean = vs[("c", "clean")]
    assert c_clean.verdict == "holds" and c_clean.mean < 0


def test_no_clean_cost_fails_when_the_interval_is_below(tmp_path):
    d = tmp_path / "runs"
    for s, gap in enumerate([0.02, 0.021, 0.019]):
        _write(d, f"st_s{s}", "st", s, 0.90, {"linf_0.02": 0.4})
        _write(d, f"sam_rho0.2_s{s}", "sam", s, 0.90 - gap, {"linf_0.02": 0.5}, rho=0.2)
    b = [v for v in C.claims(C.load_runs(d)) if v.claim == "b"][0]
    assert b.verdict == "fails" and b.high < -0.5


def test_worst_case_numbers_and_masking_flag(tmp_path):
    d = tmp_path / "runs"
    for s in range(3):
        _write(d, f"st_s{s}", "st", s, 0.9, {"linf_0.02": 0.40},
               worst=_worst({"linf_0.02": 0.40, "linf_0.05": 0.0}, {"linf_0.02": 0.40, "linf_0.05": 0.0}))
        # PGD says +10 points for SAM, AutoAttack breaks all of it: the worst case shows no gain, and the
        # gap (10 points) is larger than the effect, so (a) is undecided rather than "holds" on PGD numbers
        _write(d, f"sam_rho0.1_s{s}", "sam", s, 0.9, {"linf_0.02": 0.50}, rho=0.1,
               worst=_worst({"linf_0.02": 0.50 + 0.001 * s, "linf_0.05": 0.0},
                            {"linf_0.02": 0.40 + 0.002 * s, "linf_0.05": 0.0}))
    a = [v for v in C.claims(C.load_runs(d)) if v.claim == "a"][0]
    assert "worst case" in a.measure and a.verdict == "undecided" and "masking flag" in a.note


def test_plateau_rows_and_epoch(tmp_path):
    d = tmp_path / "runs"
    _write(d, "st_s0", "st", 0, 0.900, {"linf_0.02": 0.40})
    _write(d / "plateau", "st_s0", "st", 0, 0.903, {"linf_0.02": 0.41}, epochs=12)
    _write(d, "sam_rho0.1_s0", "sam", 0, 0.880, {"linf_0.02": 0.50}, rho=0.1)
    _write(d / "plateau", "sam_rho0.1_s0", "sam", 0, 0.895, {"linf_0.02": 0.50}, rho=0.1, epochs=12)
    rows = {r["label"]: r for r in C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau"))}
    assert rows["ST"]["plateau"] and rows["ST"]["d_clean"] == pytest.approx(0.3)
    assert not rows["SAM rho 0.1"]["plateau"] and rows["SAM rho 0.1"]["d_clean"] == pytest.approx(1.5)
    assert rows["ST"]["robust_seed_sd"] is None                    # one seed: no noise estimate
    # curves rise 1 point per epoch until the last: the seed-mean stays within 0.5 of the final from epoch 6
    assert C.plateau_epoch(C.load_runs(d)[:1]) == 6


def test_plateau_failure_on_a_robust_change_within_seed_noise_is_said(tmp_path):
    """Clean moves 0.3 points (passes), PGD-10 moves -3 points (fails the 2-point rule) while the three seeds'
    PGD-10 spread has sd 5 points: the section says one seed cannot tell that change from seed noise."""
    d = tmp_path / "cpu"
    for seed, rob in enumerate((0.30, 0.35, 0.40)):
        _write(d, f"st_s{seed}", "st", seed, 0.900, {"linf_0.02": rob, "linf_0.05": 0.0})
    _write(d / "plateau", "st_s0", "st", 0, 0.903, {"linf_0.02": 0.27, "linf_0.05": 0.0}, epochs=12)
    (row,) = C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau"))
    assert not row["plateau"] and row["d_robust"] == pytest.approx(-3.0)
    assert row["robust_seed_sd"] == pytest.approx(5.0)
    text = C.section(d, "Noise", tmp_path / "curves.png", tmp_path)
    assert "| 5.0 | **no** |" in text and "cannot tell that change from seed noise" in text


def test_section_renders_tables_and_figure(tmp_path):
    d = tmp_path / "results" / "converged" / "cpu"
    for s in range(2):
        _write(d, f"st_s{s}", "st", s, 0.9, {"linf_0.02": 0.4, "linf_0.05": 0.0})
        _write(d, f"sam_rho0.1_s{s}", "sam", s, 0.9, {"linf_0.02": 0.5, "linf_0.05": 0.1}, rho=0.1)
    text = C.section(d, "Converged test", tmp_path / "fig" / "curves.png", tmp_path,
                     cost={"relative": {"st": 1.0, "sam": 2.1, "at": 8.2}, "settings": {"width": 16}})
    assert "### Converged test" in text and "| a | SAM rho 0.1 vs ST |" in text
    assert "| d | SAM vs AT |" in text and "**holds**" in text
    assert "No doubled-budget runs" in text
    assert (tmp_path / "fig" / "curves.png").stat().st_size > 1000
    assert C.section(tmp_path / "nothing", "x", tmp_path / "f.png", tmp_path) is None
    (d / "bad.json").write_text("[1]")
    with pytest.raises(ValueError, match="bad.json"):
        C.load_runs(d)


def test_budget_rows_pair_each_method_with_st_of_the_same_seed_and_budgets(tmp_path):
    """SAM - ST at 6 and 12 epochs, hand-computed: robust +10 -> +15 points (same sign), clean -1.0 -> -0.2;
    a second SAM radius whose advantage turns into a deficit is flagged; a run without an ST partner of its
    seed is left out."""
    d = tmp_path / "runs"
    _write(d, "st_s0", "st", 0, 0.900, {"linf_0.02": 0.30})
    _write(d / "plateau", "st_s0", "st", 0, 0.910, {"linf_0.02": 0.20}, epochs=12)
    _write(d, "sam_rho0.1_s0", "sam", 0, 0.890, {"linf_0.02": 0.40}, rho=0.1)
    _write(d / "plateau", "sam_rho0.1_s0", "sam", 0, 0.908, {"linf_0.02": 0.35}, rho=0.1, epochs=12)
    _write(d, "sam_rho0.2_s0", "sam", 0, 0.880, {"linf_0.02": 0.32}, rho=0.2)
    _write(d / "plateau", "sam_rho0.2_s0", "sam", 0, 0.900, {"linf_0.02": 0.18}, rho=0.2, epochs=12)
    _write(d, "sam_rho0.4_s1", "sam", 1, 0.880, {"linf_0.02": 0.32}, rho=0.4)
    _write(d / "plateau", "sam_rho0.4_s1", "sam", 1, 0.900, {"linf_0.02": 0.18}, rho=0.4, epochs=12)
    rows = {b["label"]: b for b in C.budget_rows(C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau")))}
    assert set(rows) == {"SAM rho 0.1", "SAM rho 0.2"}
    r1 = rows["SAM rho 0.1"]
    assert r1["epochs"] == (6, 12) and r1["robust"] == pytest.approx((10.0, 15.0))
    assert r1["clean"] == pytest.approx((-1.0, -0.2)) and r1["same_sign"] is True
    assert rows["SAM rho 0.2"]["robust"] == pytest.approx((2.0, -2.0)) and rows["SAM rho 0.2"]["same_sign"] is False
    text = C.section(d, "Budget", tmp_path / "c.png", tmp_path)
    assert "| SAM rho 0.1 | 0 | 6 → 12 | +10.0 → +15.0 | -1.00 → -0.20 | yes |" in text
    assert "| SAM rho 0.2 | 0 | 6 → 12 | +2.0 → -2.0 | -2.00 → -1.00 | **no** |" in text


def test_budget_rows_pair_within_one_architecture(tmp_path):
    """A ViT SAM run is paired with the ViT ST run of its seed, never with PreActResNet-18's ST (hand-computed:
    +1.0 -> +6.0 robust, -1.40 -> -2.40 clean); the ViT ST row is no method row of its own."""
    d = tmp_path / "arch"
    _write(d, "st_s0", "st", 0, 0.930, {"linf_0.02": 0.05})
    _write(d / "plateau", "st_s0", "st", 0, 0.935, {"linf_0.02": 0.04}, epochs=12)
    _write(d, "vit_st_s0", "st", 0, 0.860, {"linf_0.02": 0.62}, arch="vit")
    _write(d / "plateau", "vit_st_s0", "st", 0, 0.880, {"linf_0.02": 0.60}, epochs=12, arch="vit")
    _write(d, "vit_sam_rho0.1_s0", "sam", 0, 0.846, {"linf_0.02": 0.63}, rho=0.1, arch="vit")
    _write(d / "plateau", "vit_sam_rho0.1_s0", "sam", 0, 0.856, {"linf_0.02": 0.66}, rho=0.1, epochs=12, arch="vit")
    (row,) = C.budget_rows(C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau")))
    assert row["label"] == "vit SAM rho 0.1"
    assert row["robust"] == pytest.approx((1.0, 6.0)) and row["clean"] == pytest.approx((-1.4, -2.4))


def test_folder_note_is_printed_under_the_settings(tmp_path):
    d = tmp_path / "runs"
    _write(d, "st_s0", "st", 0, 0.9, {"linf_0.02": 0.4})
    assert C.folder_note(d) is None
    (d / "NOTE.md").write_text("AutoAttack was not run on these runs.\n")
    text = C.section(d, "Noted", tmp_path / "c.png", tmp_path)
    lines = text.splitlines()
    assert lines[4] == "AutoAttack was not run on these runs." and lines[2].startswith("PreActResNet-18")


def test_plateau_rows_judge_the_worst_case_when_both_runs_have_it(tmp_path):
    """PGD-10 moves -6 points (fails) while the worst case moves +1 (passes): the row reads the worst case,
    and its seed sd is over the worst cases (10, 14: sd 2.83). Without the doubled run's worst case the row
    falls back to PGD-10 for both runs."""
    d = tmp_path / "runs"
    for seed, (pgd, worst) in enumerate(((0.30, 0.10), (0.34, 0.14))):
        _write(d, f"st_s{seed}", "st", seed, 0.900, {"linf_0.02": pgd},
               worst=_worst({"linf_0.02": pgd}, {"linf_0.02": worst}))
    _write(d / "plateau", "st_s0", "st", 0, 0.902, {"linf_0.02": 0.24},
           worst=_worst({"linf_0.02": 0.24}, {"linf_0.02": 0.11}), epochs=12)
    (row,) = C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau"))
    assert row["measure"] == "worst case" and row["d_robust"] == pytest.approx(1.0) and row["plateau"]
    assert row["robust_seed_sd"] == pytest.approx(2 ** 1.5) and row["pgd"] == pytest.approx((0.30, 0.24))
    _write(d / "plateau", "st_s0", "st", 0, 0.902, {"linf_0.02": 0.24}, epochs=12)
    (row,) = C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau"))
    assert row["measure"] == "PGD-10" and row["d_robust"] == pytest.approx(-6.0) and not row["plateau"]
    assert row["robust_seed_sd"] == pytest.approx(2 ** 1.5)      # PGD-10 over the seeds: 30, 34


def test_plateau_intervals_over_seeds(tmp_path):
    """Three seeds doubled: clean changes +0.1, +0.2, +0.3 (interval checked against scipy, inside ±0.5) and
    robust changes -1, +1, 0 (interval [-2.48, +2.48] covers the 2-point tolerance): undecided; a configuration
    with one doubled seed gets no row; robust changes -5, -6, -7 lie wholly below -2: no."""
    stats = pytest.importorskip("scipy.stats")
    d = tmp_path / "runs"
    for seed, (dc, dr) in enumerate(((0.001, -0.01), (0.002, 0.01), (0.003, 0.0))):
        _write(d, f"st_s{seed}", "st", seed, 0.900, {"linf_0.02": 0.30})
        _write(d / "plateau", f"st_s{seed}", "st", seed, 0.900 + dc, {"linf_0.02": 0.30 + dr}, epochs=12)
        _write(d, f"sam_rho0.1_s{seed}", "sam", seed, 0.900, {"linf_0.02": 0.40}, rho=0.1)
        _write(d / "plateau", f"sam_rho0.1_s{seed}", "sam", seed, 0.901, {"linf_0.02": 0.35 - 0.01 * seed},
               rho=0.1, epochs=12)
        _write(d, f"sam_rho0.05_s{seed}", "sam", seed, 0.900, {"linf_0.02": 0.40}, rho=0.05)
        _write(d / "plateau", f"sam_rho0.05_s{seed}", "sam", seed, 0.901 + dc / 10, {"linf_0.02": 0.40 + dr / 10},
               rho=0.05, epochs=12)
    _write(d, "sam_rho0.2_s0", "sam", 0, 0.900, {"linf_0.02": 0.40}, rho=0.2)
    _write(d / "plateau", "sam_rho0.2_s0", "sam", 0, 0.900, {"linf_0.02": 0.40}, rho=0.2, epochs=12)
    q = {x["label"]: x for x in C.plateau_intervals(C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau")))}
    assert set(q) == {"ST", "SAM rho 0.05", "SAM rho 0.1"}
    assert q["SAM rho 0.05"]["verdict"] == "yes"          # clean +0.11-0.13, robust -0.1..+0.1: both inside
    st = q["ST"]
    want = stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem([0.1, 0.2, 0.3]))
    assert st["n"] == 3 and st["clean"][1:3] == pytest.approx(want, rel=1e-6)
    assert st["robust"][0] == pytest.approx(0.0) and st["verdict"] == "undecided"
    assert q["SAM rho 0.1"]["robust"][0] == pytest.approx(-6.0) and q["SAM rho 0.1"]["verdict"] == "no"
    text = C.section(d, "Seeds", tmp_path / "c.png", tmp_path)
    assert "**Plateau test over seeds**" in text and "| SAM rho 0.1 | 3 | 6 → 12 |" in text


def test_a_change_of_exactly_the_tolerance_fails_the_plateau_test(tmp_path):
    """Worst case 4.0 -> 6.0% (10 of 500 images): 100 * (0.06 - 0.04) is 1.9999999999999996 in binary, and the
    rule is "less than 2 points": the row says no."""
    d = tmp_path / "runs"
    _write(d, "st_s0", "st", 0, 0.9322, {"linf_0.02": 0.119},
           worst=_worst({"linf_0.02": 0.116}, {"linf_0.02": 0.04}))
    _write(d / "plateau", "st_s0", "st", 0, 0.9365, {"linf_0.02": 0.184},
           worst=_worst({"linf_0.02": 0.18}, {"linf_0.02": 0.06}), epochs=12)
    (row,) = C.plateau_rows(C.load_runs(d), C.load_runs(d / "plateau"))
    assert row["d_robust"] == 2.0 and row["d_clean"] == pytest.approx(0.43) and not row["plateau"]


def test_overview_puts_each_protocols_verdict_in_its_column(tmp_path):
    stats = pytest.importorskip("scipy.stats")
    import statistics
    short, long = tmp_path / "short", tmp_path / "long"
    gains = [0.10, 0.13, 0.11]                       # SAM - ST at linf_0.02, fractions, on the long budget
    for s, g in enumerate(gains):
        _write(long, f"st_s{s}", "st", s, 0.90, {"linf_0.02": 0.40, "linf_0.05": 0.0})
        _write(long, f"sam_rho0.1_s{s}", "sam", s, 0.90, {"linf_0.02": 0.40 + g, "linf_0.05": 0.0}, rho=0.1)
    for s in range(2):                               # the short budget: one SAM radius only, AT present
        _write(short, f"st_s{s}", "st", s, 0.90, {"linf_0.02": 0.40, "linf_0.05": 0.0})
        _write(short, f"sam_rho0.2_s{s}", "sam", s, 0.88, {"linf_0.02": 0.45, "linf_0.05": 0.0}, rho=0.2)
        _write(short, f"at_linf_0.1_s{s}", "at", s, 0.80, {"linf_0.02": 0.78, "linf_0.05": 0.70}, eps=0.1)
    table = C.overview([("short", C.load_runs(short)), ("long", C.load_runs(long))])
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:6]]
            for line in table.splitlines()[2:]}
    d = [100 * g for g in gains]
    lo, hi = stats.t.interval(0.95, 2, loc=statistics.mean(d), scale=stats.sem(d))
    assert rows[("a", "SAM rho 0.1 vs ST", "robust linf_0.02")] == [
        "-", f"{statistics.mean(d):+.1f} [{lo:+.1f}, {hi:+.1f}] (PGD-10), n=3: **holds**"]
    assert rows[("b", "SAM rho 0.1 vs ST", "clean")][1] == "+0.00 [+0.00, +0.00], n=3: **holds**"
    assert rows[("b", "SAM rho 0.2 vs ST", "clean")] == ["-2.00 [-2.00, -2.00], n=2: **fails**", "-"]
    assert rows[("c", "AT l_inf 0.1 vs SAM rho 0.2", "robust linf_0.05")][1] == "-"
    assert [k[0] for k in rows].index("c") > max(i for i, k in enumerate(rows) if k[0] in "ab")
    assert C.overview([("empty", [])]) is None
    # the plateau row: the long budget's ST seed 0 doubled (+0.3 clean, robust unchanged: passes), SAM seed 0
    # doubled (+0.8 clean: fails); the short budget has no doubled run
    dbl = tmp_path / "long2x"
    _write(dbl, "st_s0", "st", 0, 0.903, {"linf_0.02": 0.40}, epochs=12)
    _write(dbl, "sam_rho0.1_s0", "sam", 0, 0.908, {"linf_0.02": 0.50}, rho=0.1, epochs=12)
    table = C.overview([("short", C.load_runs(short)), ("long", C.load_runs(long))],
                       doubled=[[], C.load_runs(dbl)])
    first = [c.strip() for c in table.splitlines()[2].split("|")[1:6]]
    assert first == ["-", "plateau test: the budget doubled", "clean < 0.5, robust < 2.0 points", "not tested",
                     "1 of 2 doubled runs pass (ST)"]


def test_summary_rows_state_autoattack_seconds_per_model(tmp_path):
    d = tmp_path / "runs"
    for s, secs in enumerate([(30.0, 40.0), (50.0, 60.0)]):
        w = _worst({"linf_0.02": 0.3, "linf_0.05": 0.0}, {"linf_0.02": 0.2, "linf_0.05": 0.0})
        w["seconds_per_attack"] = {"linf_0.02": secs[0], "linf_0.05": secs[1]}
        _write(d, f"st_s{s}", "st", s, 0.9, {"linf_0.02": 0.3, "linf_0.05": 0.0}, worst=w)
    _write(d, "sam_rho0.1_s0", "sam", 0, 0.9, {"linf_0.02": 0.3, "linf_0.05": 0.0}, rho=0.1)   # no AutoAttack
    rows = {r[0]: r for r in C.summary_rows(C.load_runs(d))}
    assert rows["ST"][-2] == "90 ± 28"          # totals 70 and 110 s: mean 90, sd 28.3
    assert rows["SAM rho 0.1"][-2] == "-" and rows["SAM rho 0.1"][-3] == "not run"


def _equal_cost_folder(tmp_path):
    """SAM rho 0.1 and ST (3 seeds) in the folder; fgsm-rs, pgd1 and pgd2 (3 seeds) in its equal-cost/."""
    d = tmp_path / "cpu-24ep"
    for s in range(3):
        _write(d, f"st_s{s}", "st", s, 0.93, {"linf_0.02": 0.03, "linf_0.05": 0.0})
        _write(d, f"sam_rho0.1_s{s}", "sam", s, 0.93, {"linf_0.02": 0.16, "linf_0.05": 0.01 + 0.01 * s}, rho=0.1)
        for m, rob in (("fgsm-rs", 0.80), ("pgd1", 0.70), ("pgd2", 0.82)):
            _write(d / "equal-cost", f"{m}_linf_0.1_s{s}", m, s, 0.85 + 0.01 * s, {"linf_0.02": 0.84, "linf_0.05": rob},
                   eps=0.1)
    return d


def test_equal_cost_claim_is_paired_by_seed_and_leaves_out_costlier_variants(tmp_path):
    d = _equal_cost_folder(tmp_path)
    cost = {"relative": {"st": 1.0, "sam": 2.09, "fgsm-rs": 1.78, "pgd1": 1.72, "pgd2": 2.46, "at": 8.2}}
    vs = C.equal_cost_claims(C.load_runs(d), C.load_runs(d / "equal-cost"), cost)
    by = {(v.scope, v.measure.split(" (")[0]): v for v in vs}
    rob = by[("SAM rho 0.1 vs fgsm-rs AT l_inf 0.1", "robust linf_0.05")]
    # SAM 1, 2, 3 % against 80 %: -79, -78, -77 points, hand-computed
    assert rob.n == 3 and rob.mean == pytest.approx(-78.0) and rob.verdict == "fails"
    assert "x1.78 <= SAM x2.09" in rob.note
    clean = by[("SAM rho 0.1 vs pgd1 AT l_inf 0.1", "clean")]
    assert clean.mean == pytest.approx(100 * (0.93 - 0.86)) and clean.verdict == "holds"
    pgd2 = by[("SAM rho 0.1 vs pgd2 AT l_inf 0.1", "step cost / ST's")]
    assert pgd2.verdict == "not judged" and "x2.46 > SAM x2.09" in pgd2.note
    assert not [v for v in vs if "pgd2" in v.scope and v.verdict != "not judged"]
    # without a measured cost every variant is judged, and the note says the cost was not checked
    vs = C.equal_cost_claims(C.load_runs(d), C.load_runs(d / "equal-cost"), None)
    assert sum(v.verdict == "fails" for v in vs) == 3 and all("cost not measured" in v.note
                                                               for v in vs if v.measure.startswith("robust"))


def test_rho_sensitivity_names_the_radii_that_reach_the_weakest_judged_variant(tmp_path):
    """SAM rho 0.1 at 1-3 % against pgd1 70 % (the least robust judged; pgd2 at 82 % is costlier and left out):
    no radius reaches it. A SAM rho 0.4 at 75 % does: the note says the verdict depends on the fixed radius."""
    d = _equal_cost_folder(tmp_path)
    cost = {"relative": {"st": 1.0, "sam": 2.09, "fgsm-rs": 1.78, "pgd1": 1.72, "pgd2": 2.46}}
    text = C.rho_sensitivity(C.load_runs(d), C.load_runs(d / "equal-cost"), cost)
    assert "rho 0.1 2.0%" in text and "pgd1 AT l_inf 0.1: 70.0%" in text and "(PGD-10, seed means)" in text
    assert "No SAM radius in the grid reaches it" in text
    for s in range(3):
        _write(d, f"sam_rho0.4_s{s}", "sam", s, 0.88, {"linf_0.02": 0.5, "linf_0.05": 0.75}, rho=0.4)
    text = C.rho_sensitivity(C.load_runs(d), C.load_runs(d / "equal-cost"), cost)
    assert "rho 0.4 75.0%" in text and "SAM rho 0.4 reaches it" in text
    assert C.rho_sensitivity(C.load_runs(d), [], cost) is None


def test_section_adds_the_equal_cost_block_when_the_subfolder_exists(tmp_path):
    d = _equal_cost_folder(tmp_path)
    text = C.section(d, "Converged", tmp_path / "fig" / "c.png", tmp_path,
                     cost={"relative": {"st": 1.0, "sam": 2.09, "fgsm-rs": 1.78, "pgd1": 1.72, "pgd2": 2.46}})
    assert "**Equal cost (claim e):**" in text
    assert "| fgsm-rs AT l_inf 0.1 | 3 | 86.0 ± 1.0 |" in text          # the cheap runs in the summary table
    assert "| e | SAM rho 0.1 vs fgsm-rs AT l_inf 0.1 | robust linf_0.05 (PGD-10) | 3 |" in text
    assert "measured step cost" in text and "fgsm-rs x1.78" in text
    # the claims (a)-(c) of the section are not changed by the cheap runs
    assert "| c |" not in text


def test_arch_block_judges_each_architecture_on_its_own_seeds(tmp_path):
    """cnn: SAM - ST robust +10, +12, +11 points (holds over 3 seeds); mlp: +5, -5, 0 (undecided); the
    PreActResNet-18 runs of the section do not enter the architectures' claims."""
    d = tmp_path / "cpu-24ep"
    for s in range(2):
        _write(d, f"st_s{s}", "st", s, 0.93, {"linf_0.02": 0.03})
        _write(d, f"sam_rho0.1_s{s}", "sam", s, 0.93, {"linf_0.02": 0.90}, rho=0.1)
    for s, (c, m) in enumerate([(0.10, 0.05), (0.12, -0.05), (0.11, 0.0)]):
        for arch, gain in (("cnn", c), ("mlp", m)):
            for meth, rob, rho in (("st", 0.30, None), ("sam", 0.30 + gain, 0.1)):
                rid = f"{arch}_{meth}{'_rho0.1' if rho else ''}_s{s}"
                _write(d / "arch", rid, meth, s, 0.90, {"linf_0.02": rob}, rho=rho)
                raw = json.loads((d / "arch" / f"{rid}.json").read_text())
                raw["config"]["arch"] = arch
                (d / "arch" / f"{rid}.json").write_text(json.dumps(raw))
    text = "\n".join(C.arch_block(C.load_runs(d), C.load_runs(d / "arch")))
    assert "| a | cnn: SAM rho 0.1 vs ST | robust linf_0.02 (PGD-10) | 3 | +11.00 |" in text
    assert "| a | mlp: SAM rho 0.1 vs ST | robust linf_0.02 (PGD-10) | 3 | +0.00 |" in text
    cnn = [ln for ln in text.splitlines() if ln.startswith("| a | cnn")][0]
    assert "**holds**" in cnn
    assert "**undecided**" in [ln for ln in text.splitlines() if ln.startswith("| a | mlp")][0]
    assert "| cnn SAM rho 0.1 | 3 |" in text and "| mlp ST | 3 |" in text
    section = C.section(d, "Converged", tmp_path / "c.png", tmp_path)
    assert "**Other architectures" in section
    assert "| a | SAM rho 0.1 vs ST | robust linf_0.02 (PGD-10) | 2 | +87.00 |" in section


def test_runs_stopped_by_the_overfitting_guard_are_named(tmp_path):
    d = _equal_cost_folder(tmp_path)
    f = d / "equal-cost" / "fgsm-rs_linf_0.1_s1.json"
    raw = json.loads(f.read_text())
    raw["stopped_early"] = 3
    raw["history"][4]["co_stop"] = "PGD check 0.449 < best 0.750 - 0.2: kept epoch 3"
    raw["history"] = raw["history"][:5]
    f.write_text(json.dumps(raw))
    note = C.stopped_note(C.load_runs(d / "equal-cost"))
    assert note.count("seed") == 1 and "fgsm-rs AT l_inf 0.1 seed 1 at epoch 5 of 6 (PGD check 0.449" in note
    assert C.stopped_note(C.load_runs(d)) is None
    assert note in C.section(d, "Converged", tmp_path / "c.png", tmp_path)


def _sweep_folder(tmp_path, robust_by_rho, clean_by_rho, seeds=(0, 1, 2), peak_seeds=None):
    """ST (rho 0) and SAM runs whose robust accuracy at linf_0.02 (PGD-10) and clean accuracy are the given
    per-rho values plus a small seed offset; ``peak_seeds`` overrides the seeds of the largest-robust rho."""
    d = tmp_path / "sweep"
    peak = max(robust_by_rho, key=robust_by_rho.get)
    for rho, rob in robust_by_rho.items():
        for s in (peak_seeds if peak_seeds is not None and rho == peak else seeds):
            off = 0.003 * (s - 1)
            if rho == 0:
                _write(d, f"st_s{s}", "st", s, clean_by_rho[rho] + off / 10, {"linf_0.02": rob + off})
            else:
                _write(d, f"sam_rho{rho:g}_s{s}", "sam", s, clean_by_rho[rho] + off / 10, {"linf_0.02": rob + off},
                       rho=rho)
    return C.load_runs(d)


#: a T6-like theory shape (hand-made: an interior robust peak at rho 0.2, free clean accuracy there)
_THEO = B.shape_summary([0.0, 0.05, 0.2, 0.8, 1.6], [0.95, 0.95, 0.948, 0.90, 0.80], [0.10, 0.3, 0.5, 0.3, 0.2])
_RHOS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


def test_rho_sweep_same_shape_when_both_peak_inside_beyond_noise_at_free_clean_cost(tmp_path):
    rob = dict(zip(_RHOS, (0.05, 0.15, 0.30, 0.45, 0.25, 0.10)))
    clean = dict(zip(_RHOS, (0.92, 0.92, 0.92, 0.919, 0.90, 0.85)))    # -0.1 point at the peak (rho 0.2)
    sw = C.rho_sweep(_sweep_folder(tmp_path, rob, clean), _THEO)
    assert sw.peak_rho == 0.2 and sw.measure == "PGD-10 on 1000 images" and [r["rho"] for r in sw.rows] == list(_RHOS)
    assert sw.clean_at_peak.n == 3 and sw.clean_at_peak.verdict == "holds"
    assert sw.verdict == "same shape" and sw.reasons == []
    text = "\n".join(C.rho_sweep_block(sw, _THEO, "linf_0.1"))
    assert "peaks at rho 0.2" in text and "**same shape**" in text


def test_rho_sweep_different_shape_when_robust_accuracy_still_rises_at_the_largest_rho(tmp_path):
    rob = dict(zip(_RHOS, (0.05, 0.10, 0.20, 0.25, 0.30, 0.60)))
    clean = dict(zip(_RHOS, (0.92, 0.92, 0.92, 0.915, 0.90, 0.85)))
    sw = C.rho_sweep(_sweep_folder(tmp_path, rob, clean), _THEO)
    assert sw.peak_rho == 0.8 and sw.verdict == "different shape"
    assert any("peak inside the range: measured False" in r for r in sw.reasons)
    assert sw.clean_at_peak.verdict == "fails"                      # -7 points at rho 0.8
    assert any("not free measured but free in T6" in r for r in sw.reasons)


def test_rho_sweep_is_undecided_when_the_peak_has_one_seed_and_none_without_enough_radii(tmp_path):
    rob = dict(zip(_RHOS, (0.05, 0.15, 0.30, 0.45, 0.25, 0.10)))
    clean = dict(zip(_RHOS, (0.92, 0.92, 0.92, 0.919, 0.90, 0.85)))
    sw = C.rho_sweep(_sweep_folder(tmp_path, rob, clean, peak_seeds=(0,)), _THEO)
    assert sw.clean_at_peak.n == 1 and sw.verdict == "undecided" and sw.reasons == []
    few = {k: v for k, v in rob.items() if k < 0.4}
    assert C.rho_sweep(_sweep_folder(tmp_path / "few", few, clean), _THEO) is None     # 3 SAM radii < MIN_RHOS


def test_rho_sweep_rise_within_two_seed_sds_is_not_a_peak(tmp_path):
    rob = dict(zip(_RHOS, (0.05, 0.06, 0.07, 0.08, 0.06, 0.05)))    # a 3-point rise; seed sd 0.3 points ...
    clean = dict(zip(_RHOS, (0.92,) * 6))
    runs = _sweep_folder(tmp_path, rob, clean)
    for r in runs:                                                  # ... made 5 points at ST's seed 0 and 2
        if r.method == "st" and r.seed != 1:
            r.pgd["linf_0.02"] += 0.05 * (r.seed - 1)
    sw = C.rho_sweep(runs, _THEO)
    assert sw.verdict == "different shape" and any("rise to the peak" in r for r in sw.reasons)


def test_section_adds_the_rho_sweep_with_the_theory_shape(tmp_path):
    rob = dict(zip(_RHOS, (0.05, 0.15, 0.30, 0.45, 0.25, 0.10)))
    clean = dict(zip(_RHOS, (0.92, 0.92, 0.92, 0.919, 0.90, 0.85)))
    _sweep_folder(tmp_path, rob, clean)
    text = C.section(tmp_path / "sweep", "t", tmp_path / "f.png", tmp_path, theory_rho=(_THEO, "linf_0.1"))
    assert "**The rho sweep against T6**" in text and "Verdict: **same shape**" in text
    assert "rho sweep" not in C.section(tmp_path / "sweep", "t", tmp_path / "g.png", tmp_path)


def test_arch_block_runs_the_plateau_test_on_the_arch_plateau_subfolder(tmp_path):
    d = tmp_path / "runs"
    _write(d, "st_s0", "st", 0, 0.93, {"linf_0.02": 0.03})
    for folder, epochs, clean in ((d / "arch", 6, 0.900), (d / "arch" / "plateau", 12, 0.912)):
        _write(folder, "vit_st_s0", "st", 0, clean, {"linf_0.02": 0.60}, epochs=epochs)
        raw = json.loads((folder / "vit_st_s0.json").read_text())
        raw["config"]["arch"] = "vit"
        (folder / "vit_st_s0.json").write_text(json.dumps(raw))
    text = C.section(d, "Converged", tmp_path / "c.png", tmp_path)
    arch = text[text.index("**Other architectures"):]
    row = [ln for ln in arch.splitlines() if ln.startswith("| vit ST | 0 | 6 → 12 |")]
    assert row and "+1.20" in row[0] and row[0].endswith("**no** |")       # clean +1.2 points: not at the plateau
    assert "No doubled-budget runs" not in arch
    (d / "arch" / "plateau" / "vit_st_s0.json").unlink()
    arch = C.section(d, "Converged", tmp_path / "c.png", tmp_path).split("**Other architectures")[1]
    assert "No doubled-budget runs: the plateau was not tested." in arch
