"""Real data: Fashion-MNIST's idx files (the real ones from Debian's package, and broken copies of them),
scikit-learn's digits, PreActResNet-18 on 1-channel images, and ST / SAM / AT trained end to end on digits."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deep.images import DataError
from deep.datasets import (DATASETS, FASHION_MNIST_FILES, find_fashion_mnist, load_digits_split,
                           load_fashion_mnist, read_idx, _dpkg_folders)
from deep.preact_resnet import PreActResNet18, normalization_for

from test_deep_model import _bn, _conv

HAVE_FMNIST = bool(_dpkg_folders())
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed "
                                                          "(.ci/run installs it)")


def _idx(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


# ---------------------------------------------------------------------------------------- idx reader

def test_read_idx_parses_and_rejects_bad_headers():
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(_idx(2051, (2, 3, 4), imgs.tobytes()), 2051, 2, "x")
    np.testing.assert_array_equal(out, imgs)
    labels = read_idx(_idx(2049, (3,), bytes([7, 0, 9])), 2049, 3, "y")
    assert labels.tolist() == [7, 0, 9]
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        read_idx(_idx(2049, (3,), bytes(3)), 2051, 3, "x")
    with pytest.raises(ValueError, match="2 items, expected 5"):
        read_idx(_idx(2051, (2, 3, 4), imgs.tobytes()), 2051, 5, "x")
    with pytest.raises(ValueError, match="does not match shape"):
        read_idx(_idx(2051, (2, 3, 4), imgs.tobytes()[:-1]), 2051, 2, "x")


@needs_fmnist
def test_real_fashion_mnist_files_are_read_and_validated():
    train, test = load_fashion_mnist()           # no data dir: found through dpkg -L
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    # the normalisation constants in the registry are the training set's mean / std
    x = train.x.double() / 255
    info = DATASETS["fashion-mnist"]
    assert abs(x.mean().item() - info.mean[0]) < 1e-4 and abs(x.std().item() - info.std[0]) < 1e-4


def _copy_real(tmp_path: Path) -> Path:
    src = find_fashion_mnist(None)
    for name in FASHION_MNIST_FILES:
        (tmp_path / f"{name}.gz").write_bytes((src / f"{name}.gz").read_bytes())
    return tmp_path


@needs_fmnist
def test_fashion_mnist_from_data_dir_and_corrupt_copies(tmp_path):
    d = _copy_real(tmp_path)
    train, test = load_fashion_mnist(d, dpkg_folders=[])
    assert len(train) == 60000 and len(test) == 10000
    # same format, other content: the pinned checksum catches it
    labels = d / "t10k-labels-idx1-ubyte.gz"
    real = gzip.decompress(labels.read_bytes())
    swapped = bytearray(real)
    swapped[8], swapped[9] = swapped[9], swapped[8]
    assert swapped[8] != swapped[9]
    labels.write_bytes(gzip.compress(bytes(swapped)))
    with pytest.raises(DataError, match="wrong content.*apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(d, dpkg_folders=[])
    labels.write_bytes(gzip.compress(real)[:100])          # truncated download
    with pytest.raises(DataError, match="corrupt"):
        load_fashion_mnist(d, dpkg_folders=[])
    labels.unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz missing"):
        load_fashion_mnist(d, dpkg_folders=[])


def test_fashion_mnist_missing_everywhere_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"not found.*apt-get install -y dataset-fashion-mnist.*--data-dir"):
        load_fashion_mnist(tmp_path, dpkg_folders=[])


def test_cli_corrupt_fashion_mnist_exits_2_with_one_line(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    r = subprocess.run([sys.executable, "-m", "deep.run", "--dataset", "fashion-mnist", "--data-dir",
                        str(tmp_path), "--out", str(tmp_path / "out"), "--epochs", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "Fashion-MNIST" in err[0] and "apt-get install" in err[0]


# --------------------------------------------------------------------------------------------- digits

def test_digits_split_is_fixed_stratified_and_scaled():
    from sklearn.datasets import load_digits
    train, test = load_digits_split()
    assert len(train) + len(test) == 1797 and len(test) == 500
    assert torch.bincount(test.y).tolist() == [50] * 10
    assert train.x.shape[1:] == (1, 8, 8) and 0 <= train.x.min() and train.x.max() == 1.0
    # the split is a partition of the original images (matched through their exact pixel values + label)
    d = load_digits()
    orig = {(bytes((d.images[i] / 16).astype(np.float32).tobytes()), int(d.target[i])) for i in range(1797)}
    both = [(bytes(s.x[i, 0].numpy().tobytes()), int(s.y[i])) for s in (train, test) for i in range(len(s))]
    assert set(both) == orig
    again = load_digits_split()
    assert torch.equal(again[1].x, test.x) and torch.equal(again[0].y, train.y)
    assert len(set(test.y[:20].tolist())) > 5              # the first images are a mix of classes


# ---------------------------------------------------------------------------------------------- model

def _count_1ch(num_classes=10, w=64):
    total = _conv(1, w, 3)
    cin = w
    for stage in range(4):
        c = w * 2 ** stage
        for _ in range(2):
            total += _bn(cin) + _conv(cin, c, 3) + _bn(c) + _conv(c, c, 3) + (_conv(cin, c, 1) if cin != c else 0)
            cin = c
    return total + _bn(cin) + cin * num_classes + num_classes


@pytest.mark.parametrize("dataset,size", [("fashion-mnist", 28), ("digits", 8)])
def test_one_channel_preact_resnet(dataset, size):
    mean, std = normalization_for(dataset)
    m = PreActResNet18(10, width=64, mean=mean, std=std)
    assert m.in_channels == 1
    assert sum(p.numel() for p in m.parameters()) == _count_1ch() == 11_172_170 - 2 * 64 * 9
    small = PreActResNet18(10, width=8, mean=mean, std=std).eval()
    assert small(torch.rand(3, 1, size, size)).shape == (3, 10)
    # normalisation is inside the model: a pixel-space input equals the normalised input without it
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        ref = small.linear(torch.nn.functional.adaptive_avg_pool2d(torch.relu(small.bn(small.layer4(
            small.layer3(small.layer2(small.layer1(small.conv1((x - mean[0]) / std[0]))))))), 1).flatten(1))
        torch.testing.assert_close(small(x), ref)
    with pytest.raises(ValueError, match="one entry per input channel"):
        PreActResNet18(10, width=8, mean=(0.5,), std=(0.2, 0.2))


# ------------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_digits_grid_end_to_end(tmp_path):
    """ST, SAM and AT on digits through the CLI: results written, AT the most robust at l_inf 0.1."""
    r = subprocess.run([sys.executable, "-m", "deep.run", "--dataset", "digits", "--epochs", "3",
                        "--rho", "0.1", "--out", str(tmp_path), "--no-progress", "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "digits").glob("*_s0.json")}
    assert set(runs) == {"st_s0", "sam_rho0.1_s0", "at_linf_0.1_s0"}
    for res in runs.values():
        assert res["n_clean"] == 500 and res["clean_acc"] > 0.7
        assert set(res["robust"]) == {"linf_0.05", "linf_0.1", "l2_0.5"}
        assert res["train_precision"] == "fp32"
    assert runs["at_linf_0.1_s0"]["robust"]["linf_0.1"] > runs["st_s0"]["robust"]["linf_0.1"] + 0.1
    assert "settings: profile -, width 8, epochs 3" in r.stdout
