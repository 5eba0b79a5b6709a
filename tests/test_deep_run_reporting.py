"""deep.run's reporting and configuration checks: repeated evaluation attacks, l_inf radii given in /255
units, summary rows per configuration (ASAM apart from SAM, no averaging over different settings, the
evaluation settings in the header), stored configurations without a newer field still match, no NaN in
result JSON, the --bn-stats option, and a last training batch of one image."""
import json

import pytest
import torch

import deep.run as R
import deep.summary as S
from deep.synthetic import SyntheticSpec, make_synthetic
from deep.train import (FitResult, TrainConfig, batch_bounds, build_model, build_optimizer, config_matches, fit,
                        train_epoch, train_step)

TINY = ["--dataset", "synthetic", "--methods", "st", "--epochs", "1", "--n-train", "32", "--n-test", "16",
        "--width", "4", "--batch-size", "16", "--eval-attacks", "linf:1/255", "--attack-steps", "1",
        "--probe-n", "16", "--threads", "1", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        R.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------- option checks

@pytest.mark.parametrize("grid", ["linf:1/255,linf:1/255", "linf:1/255,inf:1/255", "l2:0.5,linf:2/255,l2:0.5"])
def test_repeated_eval_attacks_are_refused(tmp_path, capsys, grid):
    line = _cli_error(TINY + ["--eval-attacks", grid, "--out", str(tmp_path)], capsys)
    assert "--eval-attacks" in line and "more than once" in line
    assert not (tmp_path / "synthetic").exists()


@pytest.mark.parametrize("argv,what", [(["--methods", "at", "--eps", "8"], "--eps 8"),
                                       (["--eps", "1"], "--eps 1"),
                                       (["--eval-attacks", "linf:2/255,linf:8"], "--eval-attacks linf:8")])
def test_linf_eps_of_one_or_more_is_refused_with_a_hint(tmp_path, capsys, argv, what):
    line = _cli_error(TINY + argv + ["--out", str(tmp_path)], capsys)
    assert what in line and "did you mean" in line and "/255?" in line


def test_linf_eps_check_spares_l2_and_train_config_refuses_too():
    parser = R.build_parser()
    spec = R.resolve_spec(parser, parser.parse_args(TINY + ["--norm", "l2", "--eps", "8", "--eval-attacks", "l2:2"]))
    assert spec.epss == [8.0]
    with pytest.raises(ValueError, match=r"did you mean 8/255\?"):
        TrainConfig(method="at", eps=8)
    assert TrainConfig(method="at", norm="l2", eps=8).eps == 8
    assert TrainConfig(method="at", eps=0.5).eps == 0.5


# ---------------------------------------------------------------------------------- summary.md

EVAL = {"attack_steps": 10, "restarts": 1, "attacks": ["linf_1/255"], "n_test": None, "probe_n": None,
        "loss": "ce", "n_robust": None, "best_iterate": True}


def _result(seed=0, clean=0.5, robust=0.2, ev=EVAL, **cfg_kw):
    cfg = TrainConfig(dataset="fashion-mnist", seed=seed, **cfg_kw)
    return {"run_id": R.run_id(cfg), "dataset": cfg.dataset, "method": cfg.method,
            "rho": cfg.rho if cfg.method == "sam" else None, "eps": cfg.eps if cfg.method == "at" else None,
            "norm": "linf" if cfg.method == "at" else None, "seed": seed, "epochs": cfg.epochs,
            "clean_acc": clean, "robust": {"linf_1/255": robust}, "wall_time_s": 1.0, "images_per_s": 100.0,
            "eval": ev, "config": cfg.to_dict(), "device": "cpu"}


def _summary(tmp_path, results):
    for i, res in enumerate(results):
        (tmp_path / f"r{i}.json").write_text(json.dumps(res))
    return S.write_summary(tmp_path).read_text()


def _mean_rows(text):
    part = text.split("## Mean over seeds")[1].split("## Runs")[0]
    return [line for line in part.splitlines() if line.startswith("| ") and not line.startswith("| method")]


def test_summary_groups_by_whole_configuration_and_labels_asam(tmp_path):
    text = _summary(tmp_path, [
        _result(0, 0.50, method="sam", rho=0.1), _result(1, 0.70, method="sam", rho=0.1),
        _result(0, 0.90, method="sam", rho=0.1, adaptive=True),
        _result(0, 0.40, method="st", epochs=6), _result(1, 0.60, method="st", epochs=6),
        _result(0, 0.80, method="st", epochs=10)])
    rows = _mean_rows(text)
    assert len(rows) == 4
    sam = [r for r in rows if r.startswith("| sam | rho=0.1 |")]
    asam = [r for r in rows if r.startswith("| asam | rho=0.1 |")]
    assert len(sam) == 1 and "| 2 | 60.00 ± 14.14 |" in sam[0]        # the two SAM seeds, not ASAM
    assert len(asam) == 1 and "| 1 | 90.00 |" in asam[0]
    st = [r for r in rows if r.startswith("| st |")]
    assert len(st) == 2                                                 # epochs 6 and 10 are not averaged
    assert any("epochs=6" in r and "| 2 | 50.00 ± 14.14 |" in r for r in st)
    assert any("epochs=10" in r and "| 1 | 80.00 |" in r for r in st)
    assert "Epochs differ between runs (6, 10, 100;" in text
    assert "| asam | rho=0.1 |  | 0 | 90.00 |" in text                  # the per-run table too
    assert "| st | - | epochs=10 | 0 | 80.00 |" in text


def test_summary_lists_each_evaluation_setting_when_they_differ(tmp_path):
    strong = dict(EVAL, attack_steps=50, restarts=5)
    text = _summary(tmp_path, [_result(0, 0.5, 0.3, method="st"), _result(1, 0.5, 0.1, method="st", ev=strong),
                               _result(0, 0.6, 0.4, method="sam")])
    assert "evaluated with 2 different settings" in text
    assert "- E1: PGD-10 x 1 restart(s)" in text and "- E2: PGD-50 x 5 restart(s)" in text
    st = [r for r in _mean_rows(text) if r.startswith("| st |")]
    assert len(st) == 2 and any("eval E1" in r for r in st) and any("eval E2" in r for r in st)
    # one evaluation setting: one line, no settings column
    (tmp_path / "one").mkdir()
    one = _summary(tmp_path / "one", [_result(0, method="st"), _result(1, method="st")])
    assert "Evaluation: PGD-10 x 1 restart(s)" in one and "settings" not in one and "Epochs 100;" in one


# ------------------------------------------------- stored configurations, result JSON, skip/resume

def test_config_matches_tolerates_fields_missing_with_default_value():
    cfg = TrainConfig(dataset="synthetic", method="sam")
    old = cfg.to_dict()
    del old["bn_stats"]                                  # written before the field existed
    assert config_matches(old, cfg) and config_matches(cfg.to_dict(), cfg)
    assert not config_matches(old, TrainConfig(dataset="synthetic", method="sam", bn_stats="all"))
    assert not config_matches(dict(old, rho=0.2), cfg)
    assert not config_matches(dict(cfg.to_dict(), unknown_field=1), cfg)
    assert not config_matches(None, cfg)


def _strict(path):
    def refuse(const):
        raise AssertionError(f"{path.name} holds {const}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_old_results_and_checkpoints_without_new_field_are_reused(tmp_path, capsys):
    assert R.main(TINY + ["--out", str(tmp_path)]) == 0
    out = tmp_path / "synthetic"
    res_path, ck_path = out / "st_s0.json", out / "checkpoints" / "st_s0.pt"
    res = _strict(res_path)
    assert res["bn_stats"] == "first" and res["config"]["bn_stats"] == "first"
    assert res["train_precision"] == "fp32"
    del res["config"]["bn_stats"]                        # as written before --bn-stats existed
    res_path.write_text(json.dumps(res))
    capsys.readouterr()
    assert R.main(TINY + ["--out", str(tmp_path)]) == 0
    assert "finished earlier, skipped" in capsys.readouterr().out
    # ... but not for the other setting
    with pytest.raises(SystemExit):
        R.main(TINY + ["--out", str(tmp_path), "--bn-stats", "all"])
    assert "different configuration" in capsys.readouterr().err
    # a checkpoint without the field resumes
    ck = torch.load(ck_path, weights_only=False)
    del ck["config"]["bn_stats"]
    torch.save(ck, ck_path)
    cfg = R.make_configs(_spec(TINY))[0]
    again = fit(cfg, make_synthetic(32, 0), checkpoint=str(ck_path), resume=True, progress=False)
    assert again.epochs_done == 1 and again.history == ck["history"]


def _spec(argv):
    parser = R.build_parser()
    return R.resolve_spec(parser, parser.parse_args(argv))


def test_unmeasured_speed_is_written_as_null_not_nan(tmp_path, monkeypatch):
    real_fit = R.fit

    def fit_without_time(*a, **k):
        res = real_fit(*a, **k)
        return FitResult(res.model, res.history, 0.0, float("nan"), res.epochs_done, res.finished)

    monkeypatch.setattr(R, "fit", fit_without_time)
    assert R.main(TINY + ["--out", str(tmp_path)]) == 0
    res = _strict(tmp_path / "synthetic" / "st_s0.json")
    assert res["images_per_s"] is None
    assert "| st | - | 1 |" in (tmp_path / "synthetic" / "summary.md").read_text()
    # fit itself reports no speed when nothing was timed
    cfg = TrainConfig(dataset="synthetic", epochs=1, width=4, batch_size=16, n_train=32)
    assert fit(cfg, make_synthetic(32, 0), progress=False, stop_after_epoch=0).images_per_s is None


# ------------------------------------------------------------------------------- training loop

SMALL = SyntheticSpec(image_size=8, robust_resolution=4)


def _bn_counts(model):
    return [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("method,first,all_", [("sam", 1, 2), ("at", 1, 3), ("st", 1, 1)])
def test_bn_stats_option_chooses_which_forwards_update_running_statistics(method, first, all_):
    data = make_synthetic(16, 0, SMALL)
    counts = {}
    for mode in ("first", "all"):
        cfg = TrainConfig(dataset="synthetic", method=method, width=4, batch_size=16, attack_steps=2,
                          synthetic=SMALL.to_dict(), bn_stats=mode)
        model = build_model(cfg, torch.device("cpu"))
        model.train()
        train_step(model, data.x, data.y, cfg, build_optimizer(cfg, model), generator=torch.Generator())
        counts[mode] = set(_bn_counts(model))
    assert counts == {"first": {first}, "all": {all_}}
    with pytest.raises(ValueError, match="bn_stats"):
        TrainConfig(bn_stats="second")


def test_bn_stats_option_reaches_the_config_and_the_result(tmp_path):
    spec = _spec(TINY + ["--bn-stats", "all"])
    assert {c.bn_stats for c in R.make_configs(spec)} == {"all"}


def test_last_batch_of_one_image_is_folded_into_the_previous_one():
    assert batch_bounds(17, 8) == [(0, 8), (8, 17)]
    assert batch_bounds(16, 8) == [(0, 8), (8, 16)] and batch_bounds(18, 8) == [(0, 8), (8, 16), (16, 18)]
    assert batch_bounds(1, 8) == [(0, 1)] and batch_bounds(3, 1) == [(0, 1), (1, 2), (2, 3)]
    # 8x8 images: the last stage of PreActResNet-18 is 1x1, where BatchNorm cannot train on one image
    data = make_synthetic(17, 0, SMALL)
    cfg = TrainConfig(dataset="synthetic", method="sam", width=4, batch_size=8, epochs=1, n_train=17,
                      synthetic=SMALL.to_dict())
    model = build_model(cfg, torch.device("cpu"))
    steps = []
    m = train_epoch(model, build_optimizer(cfg, model), data, cfg, 0, on_step=steps.append)
    assert steps == [0, 1] and int(m["count"]) == 17
    res = fit(cfg, data, progress=False)
    assert res.history[0]["images"] == 17
