"""deep/train.py and deep/run.py: interrupted + resumed run equals an uninterrupted one, divergence
detection, lr schedule, `python -m deep.run --quick` end to end, CLI errors."""
import json

import pytest
import torch

from deep.synthetic import SyntheticSpec, make_synthetic
from deep.run import main
from deep.train import DivergenceError, TrainConfig, fit, lr_at

SPEC = SyntheticSpec(image_size=16, robust_resolution=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cfg(**kw):
    base = dict(dataset="synthetic", method="sam", epochs=3, width=4, batch_size=16, n_train=48,
                synthetic=SPEC.to_dict(), check_every=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method,extra", [("sam", {}), ("at", {"attack_steps": 2, "augment": True})])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, method, extra):
    data = make_synthetic(48, 0, SPEC)
    cfg = _cfg(method=method, **extra)
    full = fit(cfg, data, checkpoint=str(tmp_path / "full.pt"), progress=False)
    ck = str(tmp_path / "part.pt")
    part = fit(cfg, data, checkpoint=ck, progress=False, stop_after_epoch=1)
    assert part.epochs_done == 1 and not part.finished
    # something in the global RNG between the two processes must not matter
    torch.manual_seed(12345)
    torch.rand(100)
    resumed = fit(cfg, data, checkpoint=ck, resume=True, progress=False)
    assert resumed.finished and resumed.epochs_done == 3
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    # and training did move the weights (the comparison is not trivially true)
    init = fit(_cfg(method=method, epochs=1, **extra), data, progress=False, stop_after_epoch=0)
    assert not torch.equal(init.model.linear.weight, full.model.linear.weight)
    # a checkpoint of another configuration is refused
    with pytest.raises(ValueError, match="different configuration"):
        fit(_cfg(method=method, lr=0.05, **extra), data, checkpoint=ck, resume=True, progress=False)


def test_divergence_is_detected_with_clear_message(tmp_path):
    data = make_synthetic(48, 0, SPEC)
    cfg = _cfg(method="st", lr=1e12, epochs=2)
    ck = tmp_path / "c.pt"
    with pytest.raises(DivergenceError, match=r"non-finite loss.*--lr"):
        fit(cfg, data, checkpoint=str(ck), progress=False)
    assert not ck.exists()  # no checkpoint of diverged weights


def test_piecewise_lr_schedule():
    cfg = TrainConfig(epochs=100, lr=0.1)
    assert lr_at(cfg, 0.5) == 0.1 and lr_at(cfg, 74.99) == 0.1
    assert lr_at(cfg, 75.0) == pytest.approx(0.01) and lr_at(cfg, 89.9) == pytest.approx(0.01)
    assert lr_at(cfg, 90.0) == pytest.approx(0.001) and lr_at(cfg, 100) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="rho"):
        TrainConfig(rho=-0.1)
    with pytest.raises(ValueError, match="norm"):
        TrainConfig(norm="l1")


def test_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| method |" in text and "| sam | rho=0.1 |" in text and "| at | linf eps=8/255 |" in text
    files = sorted(p.name for p in (out / "quick").glob("*.json"))
    assert files == ["at_linf_8-255_s0.json", "sam_rho0.1_s0.json", "st_s0.json"]
    for name in files:
        res = json.loads((out / "quick" / name).read_text())
        for key in ("dataset", "method", "rho", "eps", "norm", "seed", "epochs", "clean_acc", "robust",
                    "wall_time_s", "images_per_s", "probes", "config"):
            assert key in res, key
        assert set(res["robust"]) == {"linf_1/255", "linf_2/255", "linf_8/255", "l2_16/255", "l2_32/255",
                                      "l2_0.5"}
        assert set(res["probes"]) == {"clean", "nonrobust_removed", "nonrobust_swapped", "robust_removed"}
        assert 0 <= res["clean_acc"] <= 1 and res["images_per_s"] > 0
        # robust accuracy cannot exceed clean accuracy, and grows no larger with eps
        r = res["robust"]
        assert r["linf_8/255"] <= r["linf_2/255"] <= r["linf_1/255"] <= res["clean_acc"]
        assert res["probes"]["clean"] == pytest.approx(res["probes"]["clean"])
    tables, masking = (out / "quick" / "summary.md").read_text().split("## Gradient-masking checks")
    assert tables.count("| st |") == 2  # mean table + runs table
    assert masking.count("| st |") == 1 and "No stronger attack is stored yet" in masking  # one verdict row
    # finished runs are skipped on a second call
    assert main(["--quick", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("skipped") == 3


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    for argv, word in ((["--rho", "-1"], "rho"), (["--eps", "abc"], "eps"), (["--methods", "sgd"], "methods"),
                       (["--epochs", "0"], "epochs")):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path)])
        assert e.value.code == 2
        assert word in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "--download" in err and "Traceback" not in err


class _CountingWrapper(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule (same ``_orig_mod`` attribute), counts calls."""

    def __init__(self, mod, fail=False):
        super().__init__()
        self._orig_mod, self.fail, self.calls = mod, fail, 0

    def forward(self, x):
        if self.fail:
            raise RuntimeError("simulated compiler failure\nsecond line")
        self.calls += 1
        return self._orig_mod(x)


@pytest.mark.parametrize("fail", [False, True])
def test_compile_option_uses_the_compiled_model_or_falls_back_with_one_line(monkeypatch, capsys, fail):
    """fit(compile_model=True): the torch.compile result trains the model (same weights as uncompiled,
    since the stand-in computes the same function); a compiler failing on first use (lazy, like a missing
    toolchain) gives a one-line warning and the plain model."""
    data = make_synthetic(32, 0, SPEC)
    cfg = _cfg(method="sam", epochs=1, n_train=32)
    made = []
    monkeypatch.setattr(torch, "compile", lambda m: made.append(_CountingWrapper(m, fail)) or made[-1])
    got = fit(cfg, data, progress=False, compile_model=True)
    plain = fit(cfg, data, progress=False)
    assert len(made) == 1
    err = capsys.readouterr().err
    if fail:
        assert made[0].calls == 0
        warn = [ln for ln in err.splitlines() if "torch.compile" in ln]
        assert len(warn) == 1 and "simulated compiler failure second line" in warn[0] and "uncompiled" in warn[0]
    else:
        assert made[0].calls >= 1 + 2 * 2          # probe + SAM's two passes on each of 2 batches
        assert "torch.compile" not in err
    for (k, a), (_, b) in zip(got.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), k
