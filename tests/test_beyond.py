""""Beyond the paper" code: deep/archs.py (MLP, small CNN, small ViT, PreActResNet-18), the cheap AT variants
and the catastrophic-overfitting guard of deep/train.py, run ids, labels and the CLI of deep/run.py,
deep/saliency.py, deep/cost.py and the verdicts of paper_figs/beyond.py.

Every expected value comes from an independent route: closed forms (linear-model gradients, a nearest
class-mean classifier, constant-logit models), hand-written expected strings and hand-computed means of
fake result dicts. Everything is tiny (width 2, a few images, 1 epoch, one torch thread)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deep.run as R
import deep.aggregate as S
from deep.archs import ARCHS, DEFAULT_ARCH, build_arch
from deep.cost import measure
from deep.images import ImageData, to_float
from deep.datasets import load_digits_split
from deep.saliency import input_gradients, saliency_entry, saliency_metrics
from deep.train import AT_VARIANTS, CO_DROP, TrainConfig, _co_guard, at_variant_config, fit, pgd_check_acc
from paper_figs import beyond as B

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(1, 28, (0.3,), (0.35,)), (3, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))]


@pytest.fixture(scope="module")
def digits():
    """(train, test) of scikit-learn's digits (8x8, 1 channel)."""
    return load_digits_split()


def _class_mean_classifier(train: ImageData) -> nn.Module:
    """Nearest class mean as a linear model, logits_k = mu_k . x - |mu_k|^2 / 2, built by hand from the
    training images (an independent, decent classifier: no training code involved)."""
    x = to_float(train.x).flatten(1)
    mu = torch.stack([x[train.y == k].mean(0) for k in range(10)])
    lin = nn.Linear(x.shape[1], 10)
    with torch.no_grad():
        lin.weight.copy_(mu)
        lin.bias.copy_(-0.5 * (mu ** 2).sum(1))
    return nn.Sequential(nn.Flatten(), lin)


# ------------------------------------------------------------------------------------- deep/archs.py

@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("channels,size,mean,std", SHAPES)
def test_every_arch_maps_a_batch_to_one_logit_row_per_image(arch, channels, size, mean, std):
    """Output shape (N, classes) for 1x28x28 and 3x32x32 at width 2 (the ViT picks patch 7 and 4)."""
    model = build_arch(arch, 7, 2, mean, std, size).eval()
    with torch.no_grad():
        out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_unknown_arch_and_vit_with_bad_patch_are_refused():
    """build_arch names the known architectures for an unknown one; the ViT's default patch is the first of
    7, 4, 2 dividing the image size (16, 64 and 4 tokens for 28, 32 and 8); an explicit patch that does not
    divide the image size is refused."""
    from deep.archs import ViT
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        build_arch("resnet50", 10, 2, (0.5,), (0.25,), 28)
    for size, tokens in ((28, 16), (32, 64), (8, 4)):
        assert build_arch("vit", 10, 2, (0.5,), (0.25,), size).pos.shape[1] == tokens + 1
    with pytest.raises(ValueError, match="image size 30 is not a multiple of the patch size 7"):
        ViT(10, 2, (0.5,), (0.25,), 30, patch=7)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_models_normalise_their_inputs_inside(arch):
    """Route: the same weights (same seed) built with mean 0 / std 1 and fed (x - mean) / std by hand must
    give what the model with the data set's mean/std gives on raw x; raw x on the identity-normalised model
    must differ (so the normalisation is really applied)."""
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.2, 0.4)
    torch.manual_seed(0)
    a = build_arch(arch, 5, 2, mean, std, 28).eval()
    torch.manual_seed(0)
    b = build_arch(arch, 5, 2, (0.0,) * 3, (1.0,) * 3, 28).eval()
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out_a, out_b_norm, out_b_raw = a(x), b((x - m) / s), b(x)
    torch.testing.assert_close(out_a, out_b_norm, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out_a, out_b_raw, atol=1e-4)


# -------------------------------------------------------------------- deep/train.py: AT variants

# hand-written from the definitions (fast AT: FGSM from a random start, step 1.25 eps; FGSM AT: one step
# of eps from the clean point; two steps of eps/2 from a random start): steps, step at eps 0.1, start
HAND_VARIANTS = {"fgsm-rs": (1, 0.125, True), "pgd1": (1, 0.1, False), "pgd2": (2, 0.05, True)}


def test_at_variant_table_matches_the_literature_definitions():
    """at_variant_config at eps 0.1 against the hand-written table; each is a method of its own (trained as
    AT) with a PGD check."""
    assert set(AT_VARIANTS) == set(HAND_VARIANTS)
    for name, (steps, step, start) in HAND_VARIANTS.items():
        c = at_variant_config(name, 0.1)
        assert c["method"] == name and c["eps"] == 0.1 and c["pgd_check"] > 0
        assert TrainConfig(**c).adversarial
        assert c["attack_steps"] == steps and c["attack_random_start"] is start
        assert math.isclose(c["attack_step_size"], step, rel_tol=1e-12)


@pytest.mark.parametrize("name", sorted(AT_VARIANTS))
@pytest.mark.parametrize("eps", [0.1, 8 / 255, 0.3])
def test_at_variant_config_names_its_method(name, eps):
    """The config of variant ``name`` is method ``name`` at several radii (run id, record and label say it),
    and a variant method without its attack settings is refused."""
    cfg = TrainConfig(dataset="fashion-mnist", **at_variant_config(name, eps))
    assert cfg.method == name and cfg.adversarial and R.run_id(cfg).startswith(name + "_")
    assert S.method_label({"method": cfg.method, "config": cfg.to_dict()}) == name
    with pytest.raises(ValueError, match="at_variant_config"):
        TrainConfig(dataset="fashion-mnist", method=name, eps=eps)


def test_plain_at_st_sam_are_no_variants_and_variants_are_never_guessed():
    """PGD-10 AT, ST, SAM keep their method; the variant is the method's name, never recovered from the
    attack settings: AT with fgsm-rs's settings stays "at", fgsm-rs without the overfitting check stays
    fgsm-rs."""
    assert TrainConfig(method="at", eps=0.1).method == "at"
    assert not TrainConfig(method="st").adversarial and not TrainConfig(method="sam", rho=0.1).adversarial
    look_alike = dict(at_variant_config("fgsm-rs", 0.1), method="at")
    assert R.run_id(TrainConfig(**look_alike)) == "at_linf_0.1_s0"
    assert S.method_label({"method": "at", "config": TrainConfig(**look_alike).to_dict()}) == "at"
    assert TrainConfig(**dict(at_variant_config("fgsm-rs", 0.1), pgd_check=0)).method == "fgsm-rs"


@pytest.mark.parametrize("kw,what", [(dict(arch="resnet50"), "arch must be one of"),
                                     (dict(pgd_check=-1), "pgd_check must be >= 0")])
def test_train_config_refuses_unknown_arch_and_negative_pgd_check(kw, what):
    with pytest.raises(ValueError, match=what):
        TrainConfig(**kw)


# --------------------------------------------------------------- deep/train.py: PGD check and guard

def _check_cfg(eps, n, method="at", **kw):
    return TrainConfig(dataset="digits", arch="mlp", width=2, method=method, eps=eps, pgd_check=n, **kw)


def test_pgd_check_acc_is_bounded_by_clean_accuracy_and_equals_it_at_tiny_eps(digits):
    """Clean accuracy computed by hand on the first n training images of a hand-built nearest-class-mean
    classifier: the PGD check is in [0, 1], at most that, and equal to it at eps 1e-6 (no flips). The
    model's train mode is restored."""
    train, _ = digits
    model = _class_mean_classifier(train).train()
    n = 64
    with torch.no_grad():
        clean = int((model(to_float(train.x[:n])).argmax(1) == train.y[:n]).sum()) / n
    assert clean > 0.5                                   # a meaningful classifier
    robust = pgd_check_acc(model, train, _check_cfg(0.1, n))
    assert 0.0 <= robust <= clean
    assert pgd_check_acc(model, train, _check_cfg(1e-6, n)) == pytest.approx(clean, abs=1e-12)
    assert model.training


def test_pgd_check_of_constant_logits_is_the_share_of_class_zero(digits):
    """Zero weights: all logits tie, argmax is class 0 and no attack can change it, so the check equals the
    share of label 0 among the first n images, counted by hand."""
    train, _ = digits
    model = _class_mean_classifier(train)
    for p in model.parameters():
        p.data.zero_()
    n = 100
    want = int((train.y[:n] == 0).sum()) / n
    assert pgd_check_acc(model, train, _check_cfg(0.1, n)) == pytest.approx(want, abs=1e-12)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_co_guard_restores_best_weights_after_a_collapse(digits):
    """A stored best of accuracy 1.0 and a model whose weights were zeroed (check = share of class 0,
    about 0.1, far more than CO_DROP below): the guard stops, records co_stop and puts back the saved
    weights exactly."""
    train, _ = digits
    model = _class_mean_classifier(train)
    good = _state(model)
    best = {"acc": 1.0, "epoch": 3, "model": good}
    for p in model.parameters():
        p.data.zero_()
    rec = {"epoch": 4}
    n = 100
    assert _co_guard(model, train, _check_cfg(0.1, n), rec, best) is True
    assert rec["pgd_check_acc"] == pytest.approx(int((train.y[:n] == 0).sum()) / n, abs=1e-12)
    assert rec["pgd_check_acc"] < 1.0 - CO_DROP
    assert "kept epoch 3" in rec["co_stop"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), k
    assert best["acc"] == 1.0 and best["epoch"] == 3


def test_co_guard_keeps_training_on_a_small_drop_and_stores_a_new_best(digits):
    """With the check's own value a (computed first), a best of a + CO_DROP / 2 is no collapse (False,
    weights unchanged, no co_stop); an empty best is filled with a copy of the current weights."""
    train, _ = digits
    model = _class_mean_classifier(train)
    cfg = _check_cfg(0.1, 64)
    a = pgd_check_acc(model, train, cfg)
    before = _state(model)
    other = {k: torch.zeros_like(v) for k, v in before.items()}
    best = {"acc": a + CO_DROP / 2, "epoch": 1, "model": other}
    rec = {"epoch": 2}
    assert _co_guard(model, train, cfg, rec, best) is False
    assert "co_stop" not in rec and rec["pgd_check_acc"] == a
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    fresh, rec = {}, {"epoch": 5}
    assert _co_guard(model, train, cfg, rec, fresh) is False
    assert fresh["acc"] == a and fresh["epoch"] == 5
    next(model.parameters()).data.add_(1.0)               # the stored copy must not follow the model
    assert all(torch.equal(v, before[k]) for k, v in fresh["model"].items())


@pytest.mark.parametrize("method,n", [("st", 64), ("sam", 64), ("at", 0)])
def test_co_guard_is_off_for_st_sam_and_without_check(digits, method, n):
    """Only AT with pgd_check > 0 is guarded: otherwise False, nothing recorded, nothing restored."""
    train, _ = digits
    model = _class_mean_classifier(train)
    before = _state(model)
    best = {"acc": 1.0, "epoch": 1, "model": {k: torch.zeros_like(v) for k, v in before.items()}}
    rec = {"epoch": 2}
    assert _co_guard(model, train, _check_cfg(0.1, n, method=method), rec, best) is False
    assert rec == {"epoch": 2}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fit_fgsm_rs_records_the_pgd_check(digits):
    """One epoch of fast AT with a 32-image check: the history has pgd_check_acc in [0, 1], and it equals
    the check recomputed on the returned weights (one epoch: they are the checked ones)."""
    train = digits[0].subset(256)
    cfg = TrainConfig(dataset="digits", arch="mlp", width=2, epochs=1, batch_size=64,
                      **dict(at_variant_config("fgsm-rs", 0.1), pgd_check=32))
    res = fit(cfg, train, progress=False)
    (rec,) = res.history
    assert 0.0 <= rec["pgd_check_acc"] <= 1.0
    assert rec["pgd_check_acc"] == pgd_check_acc(res.model, train, cfg)
    assert res.stopped_early is None and res.finished


# ------------------------------------------------------------------------------------- deep/run.py

@pytest.mark.parametrize("kw,want", [
    (dict(method="sam", rho=0.1, arch="vit", seed=1), "vit_sam_rho0.1_s1"),
    (dict(method="sam", rho=0.2, adaptive=True), "asam_rho0.2_s0"),
    (dict(method="st", arch="cnn", seed=2), "cnn_st_s2"),
    (dict(method="st", arch="mlp"), "mlp_st_s0"),
    (dict(at_variant_config("fgsm-rs", 0.1)), "fgsm-rs_linf_0.1_s0"),
    (dict(at_variant_config("pgd1", 0.1)), "pgd1_linf_0.1_s0"),
    (dict(at_variant_config("pgd2", 0.1), arch="mlp"), "mlp_pgd2_linf_0.1_s0"),
    (dict(method="at", eps=0.1), "at_linf_0.1_s0"),
    (dict(method="at", eps=0.1, attack_steps=5), "at_linf_0.1_s0"),
    (dict(method="at", eps=8 / 255), "at_linf_8-255_s0"),
])
def test_run_id(kw, want):
    assert R.run_id(TrainConfig(**kw)) == want


@pytest.mark.parametrize("kw,method,want", [
    (dict(method="sam", arch="vit"), "sam", "vit sam"),
    (dict(method="sam", adaptive=True), "sam", "asam"),
    (dict(at_variant_config("pgd2", 0.1)), "pgd2", "pgd2"),
    (dict(at_variant_config("fgsm-rs", 0.1), arch="cnn"), "fgsm-rs", "cnn fgsm-rs"),
    (dict(at_variant_config("pgd2", 0.1)), "at", "pgd2"),                  # earlier layouts: see below
    (dict(method="at", eps=0.1), "at", "at"),
    (dict(method="st", arch=DEFAULT_ARCH), "st", "st"),
])
def test_method_label_of_result_dicts(kw, method, want):
    assert S.method_label({"method": method, "config": TrainConfig(**kw).to_dict()}) == want


def test_method_label_without_config_is_the_method():
    assert S.method_label({"method": "at"}) == "at"


def test_method_label_of_an_old_layout_result_reads_its_at_variant_key():
    """Results written before the variants were methods: method "at", config method "at", "at_variant"."""
    cfg = dict(TrainConfig(**at_variant_config("pgd1", 0.1)).to_dict(), method="at")
    assert S.method_label({"method": "at", "at_variant": "pgd1", "config": cfg}) == "pgd1"
    assert S.method_label({"method": "at", "at_variant": None, "config": cfg}) == "at"


def test_unknown_method_is_a_one_line_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        R.main(["--dataset", "digits", "--methods", "st,bogus", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m deep.run: error: --methods") and "bogus" in last and "fgsm-rs" in last
    assert not any(tmp_path.iterdir())


def test_unknown_arch_exits_2_from_the_command_line(tmp_path):
    """A real process: `python -m deep.run --archs bogus` exits with status 2 and a one-line error."""
    p = subprocess.run([sys.executable, "-m", "deep.run", "--dataset", "digits", "--archs", "mlp,bogus",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m deep.run: error: --archs") and "bogus" in last and "vit" in last


def test_tiny_end_to_end_run_writes_arch_and_variant(tmp_path, capsys):
    """ST and fast AT of the MLP on digits for one epoch: JSON names, arch, the variant as the method and the
    check."""
    rc = R.main(["--dataset", "digits", "--methods", "st,fgsm-rs", "--archs", "mlp", "--epochs", "1",
                 "--width", "2", "--n-robust", "50", "--eval-attacks", "linf:0.05", "--threads", "1",
                 "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    folder = tmp_path / "digits"
    st = json.loads((folder / "mlp_st_s0.json").read_text())
    at = json.loads((folder / "mlp_fgsm-rs_linf_0.1_s0.json").read_text())
    assert st["arch"] == at["arch"] == "mlp"
    assert "at_variant" not in st and "at_variant" not in at           # the method names the variant
    assert at["method"] == at["config"]["method"] == "fgsm-rs" and st["method"] == "st"
    assert at["eps"] == 0.1 and at["norm"] == "linf" and at["config"]["attack_steps"] == 1
    assert "pgd_check_acc" in at["history"][0] and "pgd_check_acc" not in st["history"][0]
    for res in (st, at):
        assert set(res["robust"]) == {"linf_0.05"} and res["n_robust"] == 50
        assert 0.0 <= res["robust"]["linf_0.05"] <= 1.0
    assert (folder / "summary.md").exists()
    assert "mlp fgsm-rs" in capsys.readouterr().out


# --------------------------------------------------------------------------------- deep/saliency.py

def _linear_model(d_in, k, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, k))


def _analytic_grad(model, x, y):
    """d CE / dx of a linear model, in closed form: W^T (softmax(W x + b) - onehot(y)), float64."""
    lin = model[1]
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    z = x.double().flatten(1) @ w.T + b
    r = torch.softmax(z, 1) - F.one_hot(y, w.shape[0]).double()
    return (r @ w).view_as(x)


def test_input_gradients_of_a_linear_model_match_the_closed_form():
    """Closed form per example; the parameters' .grad stay untouched."""
    model = _linear_model(6, 3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 2, 3, generator=g), torch.tensor([0, 2, 1, 2])
    got = input_gradients(model, x, y)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _analytic_grad(model, x, y), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_input_gradients_of_a_nonlinear_model_match_per_example_torch_func():
    """torch.func.vmap(grad) of the single-example loss: each example's gradient is its own."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 2, 2, 2, generator=g), torch.tensor([0, 1, 2, 1, 0])

    def one(xi, yi):
        return F.cross_entropy(model(xi[None]), yi[None])

    want = torch.func.vmap(torch.func.grad(one))(x, y)
    torch.testing.assert_close(input_gradients(model, x, y), want, rtol=1e-5, atol=1e-7)


def _img(rows):
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, 2, 2)


@pytest.mark.parametrize("g,mass", [([[-0.5, 0.0], [0.0, 0.0]], 1.0),      # only on the object
                                    ([[0.0, 1.0], [2.0, -3.0]], 0.0),      # only on the background
                                    ([[1.0, 0.0], [0.0, -3.0]], 0.25)])    # 1 of |1| + |-3|
def test_object_mass_on_hand_built_maps(g, mass):
    """Image with one bright pixel (the object, area 1/4); mass = |g| on it / total |g|, by hand."""
    m = saliency_metrics(_img([[0.9, 0.0], [0.05, 0.0]]), _img(g))
    assert float(m["object_mass"]) == pytest.approx(mass)
    assert float(m["object_area"]) == pytest.approx(0.25)


def test_image_corr_on_hand_built_maps():
    """g = -x: corr 1; g = x: -1; -g = [0, 1, -1, 0] against x = [1, 0, 0, 0]: centred dot product
    0.75*0 - 0.25*1 + 0.25*1 - 0.25*0 = 0; three identical channels behave as one."""
    x = _img([[1.0, 0.0], [0.0, 0.0]])
    assert float(saliency_metrics(x, -x)["image_corr"]) == pytest.approx(1.0)
    assert float(saliency_metrics(x, x)["image_corr"]) == pytest.approx(-1.0)
    assert float(saliency_metrics(x, -_img([[0.0, 1.0], [-1.0, 0.0]]))["image_corr"]) == pytest.approx(0.0, abs=1e-7)
    x3 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)).expand(2, 3, 4, 4)
    torch.testing.assert_close(saliency_metrics(x3, -x3)["image_corr"], torch.ones(2))


def test_saliency_entry_maps_count_shape_and_values():
    """5 images in batches of 2, 3 maps: each map is -g summed over channels (closed-form g of a linear
    model) scaled to max |.| = 1; the means of the metrics are those computed by hand per image."""
    model = _linear_model(2 * 3 * 4, 10)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(5, 2, 3, 4, generator=g), torch.tensor([3, 1, 4, 1, 5])
    ent = saliency_entry(model, ImageData(x, y, 10), n=100, maps=3, batch_size=2)
    assert ent["n"] == 5
    assert len(ent["maps"]) == 3 and all(len(m) == 3 and all(len(r) == 4 for r in m) for m in ent["maps"])
    assert ent["map_labels"] == [3, 1, 4]
    grad = _analytic_grad(model, x, y)
    neg = -grad.sum(1)
    for i in range(3):
        want = neg[i] / neg[i].abs().max()
        torch.testing.assert_close(torch.tensor(ent["maps"][i], dtype=torch.float64), want, atol=6e-5, rtol=0)
    img = x.mean(1).flatten(1).double()
    a = grad.abs().sum(1).flatten(1)
    mass = [float(a[i][img[i] > 0.1].sum() / a[i].sum()) for i in range(5)]
    assert ent["object_mass"] == pytest.approx(sum(mass) / 5, rel=1e-5)
    assert ent["object_area"] == pytest.approx(float((img > 0.1).double().mean()), rel=1e-6)


# ------------------------------------------------------------------------------------- deep/cost.py

def test_cost_measure_reports_positive_times_relative_to_st():
    base = TrainConfig(dataset="digits", width=2, batch_size=8, device="cpu", bf16=False, channels_last=False)
    res = measure(base, ["st", "sam"], steps=1, rounds=1, say=lambda *a, **k: None)
    sec = res["seconds_per_step"]
    assert set(sec) == {"st", "sam"} and all(v > 0 for v in sec.values())
    assert res["relative"]["st"] == 1.0
    assert res["relative"]["sam"] == pytest.approx(sec["sam"] / sec["st"])
    assert res["images_per_s"]["sam"] == pytest.approx(8 / sec["sam"])
    assert res["settings"]["dataset"] == "digits" and res["settings"]["rounds"] == 1


# ------------------------------------------------------------------------------- paper_figs/beyond.py

MID, SMALL = "linf_0.05", "linf_0.02"


def _res(method, robust, rho=None, eps=None, seed=0, arch=DEFAULT_ARCH, variant=None, clean=0.8, wall=10.0,
         saliency=None):
    """A result dict shaped like deep.run's (Fashion-MNIST)."""
    kw = dict(dataset="fashion-mnist", seed=seed, arch=arch)
    if variant:
        kw.update(at_variant_config(variant, eps))
    elif method == "sam":
        kw.update(method="sam", rho=rho)
    elif method == "at":
        kw.update(method="at", eps=eps)
    else:
        kw.update(method=method)
    cfg = TrainConfig(**kw)
    out = {"run_id": R.run_id(cfg), "dataset": "fashion-mnist", "method": cfg.method,
           "rho": rho if method == "sam" else None, "eps": eps if cfg.adversarial else None,
           "norm": "linf" if cfg.adversarial else None, "seed": seed, "clean_acc": clean,
           "robust": robust, "wall_time_s": wall, "config": cfg.to_dict()}
    if saliency is not None:
        out["saliency"] = {"object_mass": saliency, "object_area": 0.3, "image_corr": 0.1}
    return out


def _equal_cost_data(extra_sam=()):
    main = [_res("st", {MID: 0.05}), _res("sam", {MID: 0.20}, rho=0.1),
            _res("sam", {MID: 0.30}, rho=0.2, seed=0), _res("sam", {MID: 0.34}, rho=0.2, seed=1),
            _res("at", {MID: 0.90}, eps=0.1)] + list(extra_sam)            # PGD-10 AT: not a cheap one
    cheap = [_res("at", {MID: 0.40}, eps=0.1, variant="fgsm-rs", seed=0),
             _res("at", {MID: 0.44}, eps=0.1, variant="fgsm-rs", seed=1),
             _res("at", {MID: 0.10}, eps=0.1, variant="pgd1"),
             _res("at", {MID: 0.35}, eps=0.1, variant="pgd2"),
             _res("sam", {MID: 0.99}, rho=0.1, arch="vit")]              # another architecture: ignored
    return {"main": main, "equal-cost": cheap, "arch": [], "rho-sweep": []}


def test_equal_cost_verdict_false_when_a_cheap_at_variant_is_more_robust():
    """SAM at the fixed rho 0.1 (20.0) against every cheap variant (no cost given): fgsm-rs (42.0 ± 2.8) beats
    it: False. The better SAM rho 0.2 is listed, not chosen; PGD-10 AT (0.90) and the ViT's SAM (0.99) must
    not enter."""
    holds, text = B.equal_cost_verdict(_equal_cost_data())
    assert holds is False
    assert "SAM rho=0.1 (fixed in advance" in text and "20.0" in text
    assert "fgsm-rs eps=0.1 42.0 ± 2.8" in text and "every cheap AT variant compared" in text
    assert "other SAM radii (listed, not judged): rho=0.2 32.0 ± 2.8" in text
    assert "90.0" not in text and "99.0" not in text


def test_equal_cost_verdict_true_when_sam_is_more_robust_or_equal():
    """SAM rho 0.1 at 0.50 beats every cheap variant: True; a tie (0.25 vs 0.25 single seeds) also holds. A
    better SAM at another rho does not make it hold (nothing is chosen on the test images)."""
    data = _equal_cost_data()
    data["main"] = [r for r in data["main"] if r.get("rho") != 0.1] + [_res("sam", {MID: 0.50}, rho=0.1)]
    holds, text = B.equal_cost_verdict(data)
    assert holds is True and "SAM rho=0.1 (fixed in advance" in text and "50.0" in text
    tie = {"main": [_res("sam", {MID: 0.25}, rho=0.1)],
           "equal-cost": [_res("at", {MID: 0.25}, eps=0.1, variant="pgd1")]}
    assert B.equal_cost_verdict(tie)[0] is True
    assert B.equal_cost_verdict(_equal_cost_data([_res("sam", {MID: 0.90}, rho=0.4)]))[0] is False


def test_equal_cost_verdict_compares_only_variants_that_cost_at_most_sams_step():
    """pgd2 (step cost x2.46 ST) is more robust than SAM (x2.09) but costlier: left out, so SAM holds against
    fgsm-rs and pgd1; without a measured cost every variant is compared and pgd2 makes it fail."""
    data = {"main": [_res("sam", {MID: 0.30}, rho=0.1)],
            "equal-cost": [_res("at", {MID: 0.20}, eps=0.1, variant="fgsm-rs"),
                           _res("at", {MID: 0.10}, eps=0.1, variant="pgd1"),
                           _res("at", {MID: 0.35}, eps=0.1, variant="pgd2")]}
    cost = {"relative": {"st": 1.0, "sam": 2.09, "fgsm-rs": 1.78, "pgd1": 1.72, "pgd2": 2.46, "at": 8.23}}
    holds, text = B.equal_cost_verdict(data, cost)
    assert holds is True and "costlier, left out: pgd2 x2.46" in text and "pgd2 eps=0.1 35.0" not in text
    assert B.equal_cost_verdict(data)[0] is False
    expensive = {"relative": dict(cost["relative"], **{"fgsm-rs": 3.0, "pgd1": 3.0, "pgd2": 3.0})}
    assert B.equal_cost_verdict(data, expensive)[0] is None


def test_equal_cost_rule_per_variant_when_one_cost_is_missing():
    """One rule per variant (within_sam_cost): pgd2, measured costlier (x2.46 > x2.09), stays out even when
    pgd1 has no measured cost; pgd1 is compared and said to be unmeasured. The converged claim (e) follows the
    same rule: pgd2 gets a "not judged" row."""
    assert B.within_sam_cost({"relative": {"sam": 2.0, "pgd1": 2.0}}, "pgd1") is True
    assert B.within_sam_cost({"relative": {"sam": 2.0, "pgd1": 2.01}}, "pgd1") is False
    assert B.within_sam_cost({"relative": {"pgd1": 1.0}}, "pgd1") is None and B.within_sam_cost(None, "x") is None
    data = {"main": [_res("sam", {MID: 0.30}, rho=0.1)],
            "equal-cost": [_res("at", {MID: 0.20}, eps=0.1, variant="pgd1"),
                           _res("at", {MID: 0.35}, eps=0.1, variant="pgd2")]}
    cost = {"relative": {"st": 1.0, "sam": 2.09, "pgd2": 2.46}}
    holds, text = B.equal_cost_verdict(data, cost)
    assert holds is True, text
    assert "compared without a measured cost: pgd1" in text and "costlier, left out: pgd2 x2.46" in text


def test_equal_cost_verdict_needs_sam_and_a_cheap_variant():
    data = _equal_cost_data()
    assert B.equal_cost_verdict(dict(data, **{"equal-cost": []}))[0] is None
    assert B.equal_cost_verdict({"main": [_res("st", {MID: 0.1})], "equal-cost": data["equal-cost"][:2]})[0] is None


def _arch_data(mlp_sam):
    main = [_res("st", {SMALL: 0.10}, clean=0.90), _res("sam", {SMALL: 0.15}, rho=0.1, clean=0.88),
            _res("sam", {SMALL: 0.01}, rho=0.2),                          # not rho 0.1: left out
            _res("at", {SMALL: 0.50}, eps=0.1)]
    arch = [_res("st", {SMALL: 0.20}, arch="mlp"), _res("sam", {SMALL: mlp_sam}, rho=0.1, arch="mlp"),
            _res("st", {SMALL: 0.30}, arch="vit"), _res("sam", {SMALL: 0.35}, rho=0.1, arch="vit"),
            _res("st", {SMALL: 0.30}, arch="cnn")]                         # no SAM run: no row
    return {"main": main, "arch": arch, "equal-cost": [], "rho-sweep": []}


def test_arch_gains_and_verdict():
    """Gains SAM - ST at linf_0.02 by hand: ResNet +5.0 (clean -2.0), MLP 0.10 - 0.20 = -10.0, ViT +5.0
    -> False; with the MLP's SAM at 0.25 (+5.0) every gain is positive -> True."""
    gains = B.arch_gains(_arch_data(0.10))
    got = {a: gain.mean for a, _st, _sam, _at, gain, _dc in gains}
    assert set(got) == {DEFAULT_ARCH, "mlp", "vit"}
    assert got[DEFAULT_ARCH] == pytest.approx(0.05) and got["mlp"] == pytest.approx(-0.10)
    assert got["vit"] == pytest.approx(0.05)
    at_groups = {a: at for a, _st, _sam, at, _g, _dc in gains}
    assert at_groups[DEFAULT_ARCH] is not None and at_groups["mlp"] is None
    holds, text = B.arch_verdict(gains)
    assert holds is False
    assert f"{DEFAULT_ARCH}: +5.0 pts (clean -2.0)" in text and "mlp: -10.0 pts" in text
    assert B.arch_verdict(B.arch_gains(_arch_data(0.25)))[0] is True
    assert B.arch_verdict([])[0] is None


def _sal_data(sam_masses, at_mass=0.6):
    main = [_res("st", {}, saliency=0.3), _res("at", {}, eps=0.1, saliency=at_mass),
            _res("st", {}, seed=1)]                                        # no saliency entry: still fine
    main += [_res("sam", {}, rho=r, saliency=m) for r, m in sam_masses]
    return {"main": main}


@pytest.mark.parametrize("sams,holds,count", [([(0.1, 0.4)], True, "1 of 1"),
                                              ([(0.1, 0.7)], False, "0 of 1"),
                                              ([(0.1, 0.2)], False, "0 of 1"),
                                              ([(0.1, 0.4), (0.2, 0.7)], False, "1 of 2"),
                                              ([(0.1, 0.4), (0.2, 0.5)], True, "2 of 2")])
def test_saliency_verdict_needs_st_below_every_sam_below_at(sams, holds, count):
    """Object mass ST 0.3, AT 0.6; SAM must lie strictly between for every rho."""
    got, text = B.saliency_verdict(B.saliency_rows(_sal_data(sams)))
    assert got is holds and count in text


def test_saliency_verdict_without_at_is_undecided():
    data = _sal_data([(0.1, 0.4)])
    data["main"] = [r for r in data["main"] if r["method"] != "at"]
    assert B.saliency_verdict(B.saliency_rows(data))[0] is None


def test_shape_summary_of_hand_made_curves():
    """Interior peak: robust (0.10, 0.30, 0.25, 0.05) peaks at the 2nd strength 0.1, clean 0.90 -> 0.88
    (drop 0.02), end minus peak -0.25. Rising curve: the peak is the last point, not interior."""
    s = B.shape_summary([0.01, 0.1, 0.4, 1.6], [0.90, 0.88, 0.80, 0.60], [0.10, 0.30, 0.25, 0.05])
    assert s["peak_at"] == 0.1 and s["peak_robust"] == 0.30 and s["interior"] is True
    assert s["clean_drop_to_peak"] == pytest.approx(0.02)
    assert s["robust_end_minus_peak"] == pytest.approx(-0.25)
    s = B.shape_summary([0.1, 0.2, 0.4], [0.9, 0.85, 0.7], [0.1, 0.2, 0.3])
    assert s["peak_at"] == 0.4 and s["interior"] is False
    assert s["clean_drop_to_peak"] == pytest.approx(0.2) and s["robust_end_minus_peak"] == 0.0


def test_rho_points_merge_main_grid_and_sweep_sorted_by_rho():
    """SAM groups of both sources sorted by rho; ST from the main grid; other architectures left out."""
    data = {"main": [_res("st", {}), _res("sam", {}, rho=0.2), _res("sam", {}, rho=0.05)],
            "rho-sweep": [_res("sam", {}, rho=1.6), _res("sam", {}, rho=0.01), _res("sam", {}, rho=0.8, arch="mlp")]}
    st, sams = B.rho_points(data)
    assert st is not None and st.label == "st"
    assert [r for r, _g in sams] == [0.01, 0.05, 0.2, 1.6]


def _shape(xs, clean, robust):
    return B.shape_summary(xs, clean, robust)


def test_rho_shape_verdict_can_fail_on_noise_clean_cost_and_edge_peaks():
    """Both peak inside: same only when the rise and the fall exceed two seed sds and the clean cost at the
    peak is alike (free in both or in neither)."""
    xs = [0.0, 0.1, 0.4, 1.6]
    theo = _shape(xs, [0.90, 0.899, 0.85, 0.60], [0.10, 0.30, 0.25, 0.05])          # T6: free at its peak
    meas = _shape(xs, [0.90, 0.898, 0.80, 0.60], [0.10, 0.30, 0.25, 0.05])          # 0.2 pt below ST: free
    assert B.rho_shape_verdict(meas, theo, 0.01, 0.01) == (True, [])
    same, why = B.rho_shape_verdict(meas, theo, 0.15, 0.01)                        # rise 20 pts < 2 x 15
    assert same is False and "rise to the peak 20.0 pts is within 2 seed sds (30.0)" in why[0]
    same, why = B.rho_shape_verdict(meas, theo, 0.01, 0.2)                         # fall 25 pts < 2 x 20
    assert same is False and "fall after the peak 25.0 pts" in why[0]
    costly = _shape(xs, [0.90, 0.88, 0.80, 0.60], [0.10, 0.30, 0.25, 0.05])       # 2 pts below ST at the peak
    same, why = B.rho_shape_verdict(costly, theo, 0.01, 0.01)
    assert same is False and "not free measured but free in T6" in why[0]
    edge = _shape(xs, [0.90, 0.89, 0.88, 0.87], [0.10, 0.20, 0.25, 0.30])          # still rising at 1.6
    same, why = B.rho_shape_verdict(edge, theo, 0.01, 0.01)
    assert same is False and "peak inside the range: measured False, T6 True" in why[0]
