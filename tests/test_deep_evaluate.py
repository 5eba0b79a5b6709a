"""deep/robustness.py: PGD robust accuracy of a two-class linear model against its closed form (docs/theory.md L1),
restarts, the attack grid parser, probes."""
import pytest
import torch
from torch import nn

from deep.images import ImageData
from deep.synthetic import SyntheticSpec
from deep.robustness import DEFAULT_GRID, Attack, evaluate, format_eps, parse_attack, parse_eps, probes


def _linear_case(seed=0, n=400):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 48, generator=g) * 0.3)
        model[1].bias.zero_()
    # inputs well inside [0, 1] so that the box never binds at these radii
    x = 0.3 + 0.4 * torch.rand(n, 3, 4, 4, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return model, ImageData(x, y, 2)


def _closed_form(model, data, eps, norm):
    """Two classes: margin m = (w_y - w_other).x + b; worst case over the ball is m - eps ||w_y - w_o||_dual."""
    W, b = model[1].weight.detach(), model[1].bias.detach()
    x = data.x.flatten(1)
    d = W[1] - W[0]
    sign = data.y.float() * 2 - 1
    margin = sign * (x @ d + b[1] - b[0])
    dual = d.abs().sum() if norm == "inf" else d.norm()
    n = margin.shape[0]
    return int((margin > 0).sum()) / n, int((margin - eps * dual > 0).sum()) / n


def test_linf_robust_accuracy_equals_closed_form_for_linear_model():
    model, data = _linear_case()
    attacks = [Attack("inf", 2 / 255), Attack("inf", 8 / 255), Attack("inf", 16 / 255)]
    res = evaluate(model, data, attacks, steps=10, batch_size=128)
    for a in attacks:
        clean, robust = _closed_form(model, data, a.eps, "inf")
        assert res["clean_acc"] == pytest.approx(clean)
        assert res["robust"][a.label] == pytest.approx(robust, abs=1e-12)
    assert res["robust"]["linf_16/255"] < res["robust"]["linf_2/255"] < res["clean_acc"]


def test_l2_robust_accuracy_close_to_closed_form_and_restarts_only_lower_it():
    model, data = _linear_case(1)
    a = Attack("l2", 0.5)
    clean, robust = _closed_form(model, data, 0.5, "l2")
    r1 = evaluate(model, data, [a], steps=10, restarts=1)["robust"]["l2_0.5"]
    r3 = evaluate(model, data, [a], steps=10, restarts=3)["robust"]["l2_0.5"]
    assert robust <= r3 <= r1  # PGD never beats the exact worst case; more restarts never help the model
    assert r1 - robust < 0.02
    assert clean - robust > 0.05  # the attack matters here


def test_attack_grid_parsing():
    assert [a.label for a in DEFAULT_GRID] == ["linf_1/255", "linf_2/255", "linf_8/255", "l2_16/255",
                                               "l2_32/255", "l2_0.5"]
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.5") == 0.5
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5"
    assert parse_attack("l2:32/255") == Attack("l2", 32 / 255)
    for bad in ("linf", "l1:0.1", "linf:-1", "linf:x"):
        with pytest.raises(ValueError):
            parse_attack(bad)


def test_probes_detect_which_feature_a_model_reads():
    """A hand-made read-out of only the non-robust patterns loses accuracy exactly on the probes that
    remove or swap them, and keeps it when the robust pattern is removed."""
    from deep.synthetic import synthetic_patterns

    spec = SyntheticSpec()
    _, N = synthetic_patterns(spec)

    class NonRobustReader(nn.Module):
        def forward(self, x):
            return (x - 0.5).flatten(1) @ N.flatten(1).T

    p = probes(NonRobustReader(), spec, n=400, seed=3, device="cpu")
    assert p["clean"] > 0.75 and p["robust_removed"] > 0.85
    assert p["nonrobust_removed"] < 0.3 and p["nonrobust_swapped"] < 0.1


def test_repeated_attacks_are_counted_once():
    """linf:1/255 twice, or linf:1/255 and inf:1/255, is one attack: robust accuracy was summed per label
    (200% for a robust model)."""
    model, data = _linear_case(2, n=64)
    one = evaluate(model, data, [parse_attack("linf:1/255")], steps=3)
    for grid in (["linf:1/255", "linf:1/255"], ["linf:1/255", "inf:1/255"]):
        res = evaluate(model, data, [parse_attack(a) for a in grid], steps=3)
        assert res["robust"] == one["robust"] and list(res["robust"]) == ["linf_1/255"]
        assert res["robust"]["linf_1/255"] <= res["clean_acc"]


def test_evaluation_turns_cudnn_autotuning_off_and_restores_it(monkeypatch):
    """Survivor batches change size on every attack; with cudnn.benchmark each new size is autotuned
    (seconds per PGD call on a GPU), so evaluate switches it off while it runs and restores it."""
    import deep.robustness as ev

    model, data = _linear_case(3, n=32)
    seen = []
    real = ev.pgd

    def spy(*a, **k):
        seen.append(torch.backends.cudnn.benchmark)
        return real(*a, **k)

    monkeypatch.setattr(ev, "pgd", spy)
    for before in (True, False):
        torch.backends.cudnn.benchmark = before
        evaluate(model, data, [parse_attack("linf:1/255")], steps=2)
        assert torch.backends.cudnn.benchmark is before
    assert seen and not any(seen)
