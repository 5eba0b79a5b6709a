"""deep/bench/ (python -m deep.bench): FLOP counts against the architecture's closed form, the reference-style data path, and a
tiny end-to-end CPU run of ``python -m deep.bench`` (speed itself is never asserted here)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep import bench
from deep.preact_resnet import preact_resnet18


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")  # tests/conftest.py


def analytic_forward_flops(width, classes=10, size=32, channels=3):
    """2 * multiply-adds of every convolution and of the head of PreActResNet-18 (preact_resnet.py docstring)."""
    flops, cin, h = 2 * channels * width * 9 * size * size, width, size   # stem conv
    for stage in range(4):
        planes = width * 2 ** stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            h = (h - 1) // stride + 1                                     # 3x3 pad 1 / 1x1 pad 0 output size
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
    rc = bench.main(["--device", "cpu", "--dataset", "cifar10", "--steps", "1", "--warmup", "0", "--batch-size", "8",
                     "--width", "4", "--workers", "1", "--threads", "1", "--concurrency", "off", "--out", str(out),
                     "--quiet"])   # the former name of --no-progress still works
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
    # operations per step: SAM's two passes issue more than ST's one, AT's PGD-10 more than SAM
    ops = {k: r["ops_per_step"] for k, r in rows.items()}
    assert 0 < ops["ours", "st"] < ops["ours", "sam"] < ops["ours", "at"]
    assert 0 < ops["reference", "st"] < ops["reference", "sam"] < ops["reference", "at"]
    rt = res["ratios"]
    ips = {k: r["images_per_s"] for k, r in rows.items()}
    assert rt["st_ours_vs_ref"] == pytest.approx(ips["ours", "st"] / ips["reference", "st"])
    assert rt["at_cost_vs_st"] == pytest.approx(ips["ours", "st"] / ips["ours", "at"])
    assert rt["ref_sam_cost_vs_st"] == pytest.approx(ips["reference", "st"] / ips["reference", "sam"])
    assert "| train SAM | ours |" in md and "AT / ST cost, ours" in md


@pytest.mark.parametrize("argv,word", [(["--steps", "0"], "steps"), (["--phases", "st,foo"], "phases"),
                                       (["--batch-size", "-1"], "batch-size"), (["--eps", "x"], "eps"),
                                       (["--peak-tflops", "0"], "peak-tflops"), (["--device", "cuda:0"], "cuda"),
                                       (["--dataset", "mnist"], "dataset"), (["--clock-mhz", "0"], "clock-mhz"),
                                       (["--accuracy-check", "--accuracy-methods", "foo"], "methods"),
                                       (["--precision-check", "--precision-archs", "resnet"], "archs"),
                                       (["--precision-check", "--precision-steps", "0"], "steps")])
def test_cli_rejects_bad_options_with_exit_2(argv, word, capsys):
    if word == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--out", "/nonexistent/never_written.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err


def test_python_m_deep_bench_is_the_one_route_to_the_benchmark():
    """The benchmark is ``python -m deep.bench`` (its --help); ``python -m deep`` is deep.run, and
    ``python -m deep bench`` only points to deep.bench (exit 2) instead of being a second route."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "deep.bench", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("usage: python -m deep.bench") and "--attack-steps" in p.stdout
    q = subprocess.run([sys.executable, "-m", "deep", "--help"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and q.stdout.startswith("usage: python -m deep.run")
    r = subprocess.run([sys.executable, "-m", "deep", "bench", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "python -m deep.bench" in r.stderr and not r.stdout


# ------------------------------------------------------------------------------- the CPU fast path

FAKE_CPUINFO = """processor\t: 0
model name\t: Fake Xeon
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile

processor\t: 1
cpu MHz\t\t: 1200.000
"""


def test_cpu_peak_assumption_from_a_fake_cpuinfo():
    p = bench.cpu_peak_gflops(FAKE_CPUINFO, cores=2)
    assert p["clock_mhz"] == 2600.0 and p["model"] == "Fake Xeon" and p["cores"] == 2
    assert p["fp32_flops_per_cycle"] == 64 and p["fp32_gflops"] == pytest.approx(2 * 2.6 * 64)    # 332.8
    assert p["bf16_flops_per_cycle"] == 1024 and p["bf16_gflops"] == pytest.approx(2 * 2.6 * 1024)  # AMX
    assert "2 cores x 2600 MHz" in p["assumption"] and "AMX-BF16" in p["assumption"]
    no_amx = bench.cpu_peak_gflops(FAKE_CPUINFO.replace(" amx_bf16", ""), cores=1, clock_mhz=2000)
    assert no_amx["bf16_gflops"] == pytest.approx(2.0 * 128) and no_amx["fp32_gflops"] == pytest.approx(2.0 * 64)
    avx2 = bench.cpu_peak_gflops("cpu MHz : 3000\nflags : sse2 avx2 fma\n", cores=4)
    assert avx2["fp32_gflops"] == pytest.approx(4 * 3.0 * 32) and avx2["bf16_gflops"] is None
    assert "bf16: unknown" in avx2["assumption"]
    nothing = bench.cpu_peak_gflops("", cores=2)
    assert nothing["clock_mhz"] is None and nothing["fp32_gflops"] is None and nothing["bf16_gflops"] is None


def test_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert bench.default_threads() == 3
    assert bench.BenchConfig(device="cpu").resolved(torch.device("cpu")).threads == 3
    assert bench.BenchConfig(device="cpu", threads=1).resolved(torch.device("cpu")).threads == 1
    monkeypatch.delattr(bench.os, "sched_getaffinity", raising=False)
    assert bench.default_threads() == max(1, bench.os.cpu_count() or 1)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_defaults_are_the_fast_path_on_the_fashion_mnist_shape(monkeypatch, native):
    monkeypatch.setattr(bench.config, "cpu_has_native_bf16", lambda: native)
    c = bench.BenchConfig(device="cpu").resolved(torch.device("cpu"))
    assert (c.dataset, c.width, c.batch_size) == ("fashion-mnist", 16, 128)
    assert c.bf16 is native and c.channels_last is native
    c = bench.BenchConfig(device="cpu", dataset="cifar10", bf16=False).resolved(torch.device("cpu"))
    assert c.dataset == "cifar10" and c.bf16 is False and c.channels_last is False


def test_reference_dataset_follows_the_data_set_augmentation():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    ds = bench.ReferenceStyleDataset(imgs, np.array([0, 1]), pad=2, flip=False, channels=1)
    padded = F.pad(torch.from_numpy(imgs[0]).permute(2, 0, 1).float()[None] / 255, (2,) * 4, mode="reflect")[0]
    windows = [padded[:, t:t + 28, l:l + 28] for t in range(5) for l in range(5)]     # no flipped windows
    torch.manual_seed(0)
    for _ in range(8):
        x, _ = ds[0]
        assert x.shape == (1, 28, 28) and any(torch.equal(x, w) for w in windows)


def _rows(ips):
    return [{"loop": loop, "phase": phase, "images_per_s": v, "flags": {"compiled": loop == "ours-compiled"},
             "warmup_s": 12.0, "warmup_images": 256} for (loop, phase), v in ips.items()]


def test_ratios_take_the_faster_ours_and_compile_summary_says_where_compile_pays():
    rows = _rows({("ours", "st"): 400.0, ("ours-compiled", "st"): 500.0, ("reference", "st"): 160.0,
                  ("ours", "sam"): 220.0, ("ours-compiled", "sam"): 200.0, ("reference", "sam"): 80.0})
    rt = bench.compute_ratios(rows)
    assert rt["st_ours_vs_ref"] == pytest.approx(500 / 160) and rt["sam_ours_vs_ref"] == pytest.approx(220 / 80)
    assert rt["sam_cost_vs_st"] == pytest.approx(500 / 220) and rt["ref_sam_cost_vs_st"] == pytest.approx(2.0)
    comp = bench.compile_summary(rows, epoch_images=60_000)
    assert comp["st"]["used"] and not comp["sam"]["used"] and comp["st"]["speedup"] == pytest.approx(1.25)
    compile_s = 12.0 - 256 / 400
    assert comp["st"]["compile_s"] == pytest.approx(compile_s)
    assert comp["st"]["break_even_images"] == pytest.approx(compile_s / (1 / 400 - 1 / 500))
    assert comp["st"]["break_even_epochs"] == pytest.approx(comp["st"]["break_even_images"] / 60_000)
    assert comp["sam"]["break_even_images"] is None and "at" not in comp
    tg = bench.judge_targets(rt, "cpu")
    assert set(tg) == set(bench.CPU_TARGETS)
    assert tg["st_ours_vs_ref"]["met"] and tg["st_ours_vs_ref"]["stretch_met"]          # 3.125 >= 3
    assert tg["sam_ours_vs_ref"]["met"] and not tg["sam_ours_vs_ref"]["stretch_met"]    # 2.75
    assert not tg["sam_cost_vs_st"]["met"]                                              # 2.27 > 2.1
    assert set(bench.judge_targets(rt, "cuda")) == set(bench.TARGETS)


@pytest.fixture(scope="module")
def tiny_fashion_run(tmp_path_factory):
    """The CPU defaults (Fashion-MNIST shape, fast path where native) with a stand-in for torch.compile
    (a wrapper module: the real compile takes minutes) and a tiny accuracy check (width 2, 1 epoch)."""
    out = tmp_path_factory.mktemp("bench") / "f.json"
    mp = pytest.MonkeyPatch()
    mp.setattr(bench.harness, "compile_for", lambda model, *a: torch.nn.Sequential(model))
    try:
        rc = bench.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--batch-size", "8", "--width", "4",
                         "--workers", "0", "--threads", "1", "--phases", "st,sam,eval", "--compile",
                         "--accuracy-check", "--accuracy-width", "2", "--accuracy-epochs", "1",
                         "--accuracy-seeds", "0", "--accuracy-n-train", "96", "--accuracy-n-test", "40",
                         "--concurrency", "off", "--out", str(out), "--no-progress"])
    finally:
        mp.undo()
    assert rc == 0
    return out


def test_tiny_fashion_mnist_shape_run_reports_gflops_peak_compile_and_accuracy(tiny_fashion_run):
    res = json.loads(tiny_fashion_run.read_text())
    md = tiny_fashion_run.with_suffix(".md").read_text()
    meta, rows = res["meta"], {(r["loop"], r["phase"]): r for r in res["rows"]}
    assert meta["dataset"] == "fashion-mnist" and meta["image_shape"] == [1, 28, 28] and meta["cpu_threads"] == 1
    assert set(rows) == {(loop, p) for loop in ("ours", "reference") for p in ("st", "sam", "eval")} \
        | {("ours-compiled", "st"), ("ours-compiled", "sam")}
    fwd = analytic_forward_flops(4, size=28, channels=1)
    st = 3 * fwd - 2 * 1 * 4 * 9 * 28 * 28
    assert meta["model_flops_per_image"] == {"forward": fwd, "forward_backward": st}
    assert rows["ours", "st"]["flops_per_image"] == rows["reference", "st"]["flops_per_image"] == st
    native = meta["cpu_native_bf16"]
    for (loop, phase), r in rows.items():
        assert r["epoch_s"] == pytest.approx((10_000 if phase == "eval" else 60_000) / r["images_per_s"])
        assert r["gflops"] == pytest.approx(r["tflops"] * 1e3)
        kind = "bf16" if loop != "reference" and phase != "eval" and native else "fp32"
        assert r["cpu_peak_kind"] == kind and r["flags"]["bf16"] == (kind == "bf16")
        if r["cpu_peak_gflops"]:
            assert r["fraction_of_cpu_peak"] == pytest.approx(r["gflops"] / r["cpu_peak_gflops"])
    assert meta["cpu_peak"]["cores"] == 1 and "assumed CPU peak" in md
    assert set(res["targets"]) == set(bench.CPU_TARGETS) and set(res["compile"]) == {"st", "sam"}
    assert all(c["compiled"] for c in res["compile"].values())
    assert "1 torch threads" in md and "GFLOP/s" in md and "torch.compile of our training loop" in md
    assert "| train ST | ours (compiled) |" in md and "(CPU)" in md
    acc = res["accuracy_check"]
    assert [(r["method"], r["precision"]) for r in acc["runs"]] == \
        [("st", "fp32"), ("st", "bf16"), ("sam", "fp32"), ("sam", "bf16")]
    assert all(r["bf16_used"] == (r["precision"] == "bf16" and native) for r in acc["runs"])
    assert all(0 <= r[k] <= 1 for r in acc["runs"] for k in ("clean_acc", "robust_acc"))
    assert acc["n_train"] == 96 and acc["n_test"] == 40 and set(acc["summary"]) == {"st", "sam"}
    assert "| method | seed | clean fp32 | clean bf16 | PGD fp32 | PGD bf16 |" in md and "| SAM | mean |" in md


def test_accuracy_check_fp32_runs_repeat_exactly():
    """Same seed, same precision: the same accuracies (the comparison fp32 vs bf16 is of precision only)."""
    acfg = bench.AccuracyCheckConfig(methods=("st",), seeds=(3,), epochs=1, width=2, n_train=64, n_test=30,
                                     attack_steps=2)
    a, b = bench.accuracy_check(acfg, "cpu"), bench.accuracy_check(acfg, "cpu")
    assert [r["clean_acc"] for r in a["runs"]] == [r["clean_acc"] for r in b["runs"]]
    assert [r["robust_acc"] for r in a["runs"]] == [r["robust_acc"] for r in b["runs"]]
    text = bench.format_accuracy(a)
    assert "| ST | 3 |" in text and "Largest |bf16 - fp32|" in text
    with pytest.raises(ValueError, match="digits or fashion-mnist"):
        bench.AccuracyCheckConfig(dataset="cifar10")


# ------------------------------------------------------- CUDA graph loop, concurrent processes, presets

def test_ratios_of_the_graphed_loop_and_of_concurrent_processes():
    rows = _rows({("ours", "st"): 400.0, ("ours-graphed", "st"): 1000.0, ("reference", "st"): 250.0,
                  ("ours", "sam"): 200.0, ("ours-graphed", "sam"): 450.0, ("reference", "sam"): 100.0})
    conc = {"aggregate_vs_one": {"1": 1.0, "2": 1.8, "8": 4.5}}
    rt = bench.compute_ratios(rows, conc)
    assert rt["st_ours_vs_ref"] == pytest.approx(4.0) and rt["st_eager_vs_ref"] == pytest.approx(1.6)
    assert rt["st_graphed_vs_eager"] == pytest.approx(2.5) and rt["sam_graphed_vs_ref"] == pytest.approx(4.5)
    assert rt["sam_cost_vs_st"] == pytest.approx(1000 / 450) and rt["eager_sam_cost_vs_st"] == pytest.approx(2.0)
    assert rt["concurrent_2_vs_1"] == 1.8 and rt["concurrent_8_vs_1"] == 4.5
    gpu = bench.judge_targets(rt, "cuda")
    assert gpu["concurrent_8_vs_1"]["met"] and gpu["st_ours_vs_ref"]["met"] and not gpu["sam_cost_vs_st"]["met"]
    cpu = bench.judge_targets(rt, "cpu")
    assert cpu["concurrent_2_vs_1"]["met"] and cpu["concurrent_2_vs_1"]["target"] == ">= 1.7"
    assert cpu["sam_cost_vs_st"]["target"] == "<= 2.0"


def test_aggregate_counts_the_union_window():
    a = bench.aggregate([{"images": 100, "t0": 10.0, "t1": 12.0}, {"images": 100, "t0": 11.0, "t1": 14.0}])
    assert a["k"] == 2 and a["wall_s"] == 4.0 and a["aggregate_images_per_s"] == 50.0
    assert a["per_process_images_per_s"] == [50.0, pytest.approx(100 / 3)]


def test_two_concurrent_worker_processes_on_cpu(tmp_path):
    """K = 1, 2 real worker processes (tiny model): the aggregate table, ratios and targets are filled in."""
    out = tmp_path / "c.json"
    rc = bench.main(["--device", "cpu", "--dataset", "cifar10", "--steps", "1", "--warmup", "0", "--batch-size",
                     "8", "--width", "2", "--workers", "0", "--threads", "1", "--phases", "st", "--loops", "ours",
                     "--concurrency", "2", "--concurrency-steps", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    conc = res["concurrency"]
    assert [r["k"] for r in conc["runs"]] == [1, 2] and conc["pinned_to_cores"]
    assert all(r["images"] == r["k"] * 2 * 8 and r["aggregate_images_per_s"] > 0 for r in conc["runs"])
    assert res["ratios"]["concurrent_2_vs_1"] == pytest.approx(
        conc["runs"][1]["aggregate_images_per_s"] / conc["runs"][0]["aggregate_images_per_s"])
    assert res["targets"]["concurrent_2_vs_1"]["measured"] == res["ratios"]["concurrent_2_vs_1"]
    md = out.with_suffix(".md").read_text()
    assert "| K | aggregate images/s | x one process |" in md and "2 concurrent processes / one process" in md
    ceil = conc["spin_ceiling"]
    assert set(ceil) == {"1", "2"} and ceil["1"] == 1.0 and 0 < ceil["2"] <= 2.5 and "busy loops" in md
    assert "CUDA only, not measured" not in md       # graphed was not asked for


def test_gpu_quick_preset_and_help(monkeypatch):
    p = bench.build_parser()
    args = p.parse_args(["--gpu-quick", "--steps", "7"])
    bench.cli._apply_preset(p, args)
    assert args.device == "cuda" and args.steps == 7 and args.concurrency == "1,2,4,8"       # explicit wins
    assert args.out.endswith("deep_bench_h200_quick.json") and args.no_progress is False
    assert p.parse_args(["--quiet"]).no_progress and p.parse_args(["--no-progress"]).no_progress
    text = p.format_help()
    assert "--gpu-quick" in text and "--no-progress" in text and "--quiet" not in text and "989.4" in text
    assert "--gpu-quick" in bench.__doc__ and "90 s" in bench.__doc__


def test_precision_check_times_both_precisions_of_each_model_and_writes_its_own_file(tmp_path, capsys):
    """--precision-check: per (architecture, method) a bf16 and an fp32 measurement of the same training step,
    the ratio of their medians, and files at --out (never the throughput table's). Speed itself is not
    asserted."""
    out = tmp_path / "p.json"
    assert bench.main(["--device", "cpu", "--threads", "1", "--precision-check", "--precision-archs", "mlp,vit",
                       "--precision-methods", "st", "--precision-steps", "1", "--precision-repeats", "2",
                       "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    rows = {r["arch"]: r for r in res["rows"]}
    assert set(rows) == {"mlp", "vit"} and all(r["method"] == "st" for r in rows.values())
    for r in rows.values():
        assert len(r["all_bf16"]) == len(r["all_fp32"]) == 2 and min(r["all_bf16"] + r["all_fp32"]) > 0
        assert r["bf16_vs_fp32"] == pytest.approx(np.median(r["all_bf16"]) / np.median(r["all_fp32"]))
    md = out.with_suffix(".md").read_text()
    assert "| vit | 16 | ST |" in md and "bf16 / fp32" in md and "vit" in capsys.readouterr().out


def test_bench_config_arch_reaches_the_trained_model():
    from deep.bench.harness import train_cfg
    cfg = bench.BenchConfig(device="cpu", arch="vit").resolved(torch.device("cpu"))
    assert train_cfg(cfg, "st", torch.device("cpu")).arch == "vit"
