"""deep/bench.py: FLOP counts against the architecture's closed form, the reference-style data path, and a
tiny end-to-end CPU run of ``python -m deep.bench`` (speed itself is never asserted here)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep import bench
from deep.model import preact_resnet18


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these tiny models are dominated by per-op overhead, which extra threads only add
    to on a busy CPU (no result depends on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def analytic_forward_flops(width, classes=10, size=32):
    """2 * multiply-adds of every convolution and of the head of PreActResNet-18 (model.py docstring)."""
    flops, cin, h = 2 * 3 * width * 9 * size * size, width, size          # stem conv
    for stage in range(4):
        planes = width * 2 ** stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            h //= stride
            flops += 2 * 9 * h * h * (cin * planes + planes * planes)
            if stride != 1 or cin != planes:
                flops += 2 * h * h * cin * planes                        # 1x1 projection shortcut
            cin = planes
    return flops + 2 * cin * classes


@pytest.mark.parametrize("width", [4, 64])
def test_counted_model_flops_match_closed_form(width):
    f = bench.model_flops_per_image(preact_resnet18(width=width).to("meta"))   # counted without computing
    fwd = analytic_forward_flops(width)
    stem = 2 * 3 * width * 9 * 32 * 32
    assert f["forward"] == fwd
    # backward: input and weight gradients of each layer (each = its forward), except no input gradient
    # for the stem, whose input (the images) does not require grad
    assert f["forward_backward"] == 3 * fwd - stem
    if width == 64:
        assert abs(fwd / 1e9 - 1.111) < 1e-3          # the familiar ~0.56 GMAC PreActResNet-18


def test_peak_table_prefers_specific_names():
    assert bench.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops_for("NVIDIA L40S") == 362.0 and bench.peak_tflops_for("NVIDIA L4") == 121.0
    assert bench.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops_for("Tesla T4") is None


def test_reference_dataset_returns_a_reflect_padded_window():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    ds = bench.ReferenceStyleDataset(imgs, np.array([0, 1, 2]))
    padded = F.pad(torch.from_numpy(imgs[1]).permute(2, 0, 1).float()[None] / 255, (4,) * 4, mode="reflect")[0]
    windows = [w for t in range(9) for l in range(9) for w in
               (padded[:, t:t + 32, l:l + 32], padded[:, t:t + 32, l:l + 32].flip(2))]
    torch.manual_seed(0)
    for _ in range(5):
        x, y = ds[1]
        assert y == 1 and x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert any(torch.equal(x, w) for w in windows)
    plain = bench.ReferenceStyleDataset(imgs, np.array([0, 1, 2]), augment=False)[1][0]
    assert torch.equal(plain, padded[:, 4:36, 4:36])
    with pytest.raises(ValueError, match="images_hwc"):
        bench.ReferenceStyleDataset(imgs[:, :, :, :1], np.array([0, 1, 2]))


def test_reference_pgd_stays_in_the_box_and_raises_the_loss():
    torch.manual_seed(0)
    model = preact_resnet18(width=4).eval()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    eps = 8 / 255
    x_adv = bench.reference_pgd_linf(model, x, y, eps, eps / 4, 5)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())     # the discarded parameter gradients


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b.json"
    rc = bench.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--batch-size", "8",
                     "--width", "4", "--workers", "1", "--threads", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_tiny_cpu_run_writes_consistent_results(tiny_run):
    res = json.loads(tiny_run.read_text())
    md = tiny_run.with_suffix(".md").read_text()
    rows = {(r["loop"], r["phase"]): r for r in res["rows"]}
    assert set(rows) == {(l, p) for l in ("ours", "reference") for p in ("st", "sam", "at", "eval")}
    for r in rows.values():
        assert r["images"] == 8 and r["images_per_s"] > 0 and r["peak_mem_bytes"] > 0
        assert r["fraction_of_peak"] is None                    # no peak on CPU
        n = 10_000 if r["phase"] == "eval" else 50_000
        assert r["cifar_epoch_s"] == pytest.approx(n / r["images_per_s"])
    # FLOPs of real steps vs the closed form: ST = fwd+bwd; SAM = 2 x ST; AT = 10 PGD steps + ST, where a
    # PGD step of ours is forward + input gradient (2 fwd) and of the reference forward + full backward
    fwd, stem = analytic_forward_flops(4), 2 * 3 * 4 * 9 * 32 * 32
    st = 3 * fwd - stem
    assert res["meta"]["model_flops_per_image"]["forward_backward"] == st
    assert rows["ours", "st"]["flops_per_image"] == rows["reference", "st"]["flops_per_image"] == st
    assert rows["ours", "sam"]["flops_per_image"] == rows["reference", "sam"]["flops_per_image"] == 2 * st
    assert rows["ours", "at"]["flops_per_image"] == 10 * 2 * fwd + st
    assert rows["reference", "at"]["flops_per_image"] == 10 * 3 * fwd + st
    assert rows["ours", "eval"]["flops_per_image"] == 10 * 2 * fwd + 2 * fwd   # attack + clean + adv fwd
    rt = res["ratios"]
    ips = {k: r["images_per_s"] for k, r in rows.items()}
    assert rt["st_ours_vs_ref"] == pytest.approx(ips["ours", "st"] / ips["reference", "st"])
    assert rt["at_cost_vs_st"] == pytest.approx(ips["ours", "st"] / ips["ours", "at"])
    assert rt["ref_sam_cost_vs_st"] == pytest.approx(ips["reference", "st"] / ips["reference", "sam"])
    assert "| train SAM | ours |" in md and "AT / ST cost, ours" in md


@pytest.mark.parametrize("argv,word", [(["--steps", "0"], "steps"), (["--phases", "st,foo"], "phases"),
                                       (["--batch-size", "-1"], "batch-size"), (["--eps", "x"], "eps"),
                                       (["--peak-tflops", "0"], "peak-tflops"), (["--device", "cuda:0"], "cuda")])
def test_cli_rejects_bad_options_with_exit_2(argv, word, capsys):
    if word == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--out", "/nonexistent/never_written.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err


def test_python_m_deep_bench_dispatches_to_the_benchmark():
    """``python -m deep bench`` is ``python -m deep.bench`` (its --help), everything else is deep.run."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "deep", "bench", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("usage: python -m deep.bench") and "--attack-steps" in p.stdout
    q = subprocess.run([sys.executable, "-m", "deep", "--help"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and q.stdout.startswith("usage: python -m deep.run")
