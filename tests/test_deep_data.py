"""The data of deep/: the CIFAR reader (deep/cifar.py) on archives written here in the real format, md5
checks, the generated robust/non-robust dataset (deep/synthetic.py), batched augmentation (deep/augment.py)."""
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

import deep.cifar as deep_cifar
from deep.augment import augment_batch
from deep.cifar import download_cifar, load_cifar, verify_md5
from deep.images import DataError
from deep.synthetic import SyntheticSpec, make_synthetic, synthetic_patterns


def _batch_bytes(n, label_key, num_classes, rng):
    d = {b"batch_label": b"test batch", label_key: [int(v) for v in rng.integers(0, num_classes, n)],
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
    return pickle.dumps(d, protocol=2), d


def _write_archive(path, name, rng, n=7):
    """Small archive in the layout of the official cifar-10/100-python.tar.gz."""
    if name == "cifar10":
        folder, members, key, k = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], \
            b"labels", 10
    else:
        folder, members, key, k = "cifar-100-python", ["train", "test"], b"fine_labels", 100
    dicts = {}
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            raw, d = _batch_bytes(n, key, k, rng)
            dicts[m] = d
            info = tarfile.TarInfo(f"{folder}/{m}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return dicts, folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_reads_real_format_archive_and_folder(tmp_path, name):
    rng = np.random.default_rng(0)
    archive = tmp_path / ("cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz")
    dicts, folder = _write_archive(archive, name, rng)
    train, test = load_cifar(name, tmp_path, md5=hashlib.md5(archive.read_bytes()).hexdigest(), allow_small=True)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    tr_members = [m for m in dicts if m not in ("test_batch", "test")]
    te_member = "test_batch" if name == "cifar10" else "test"
    want_x = np.concatenate([dicts[m][b"data"] for m in tr_members]).reshape(-1, 3, 32, 32)
    want_y = np.concatenate([dicts[m][key] for m in tr_members])
    assert train.x.dtype == torch.uint8 and train.x.shape == (7 * len(tr_members), 3, 32, 32)
    np.testing.assert_array_equal(train.x.numpy(), want_x)
    np.testing.assert_array_equal(train.y.numpy(), want_y)
    np.testing.assert_array_equal(test.x.numpy(), dicts[te_member][b"data"].reshape(-1, 3, 32, 32))
    assert train.num_classes == (10 if name == "cifar10" else 100)
    # image layout: row-major 1024 red, then green, then blue values
    assert test.x[0, 1, 0, 0] == dicts[te_member][b"data"][0, 1024]
    # the extracted folder is read too (and preferred)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    archive.unlink()
    train2, test2 = load_cifar(name, tmp_path, verify=False, allow_small=True)
    assert torch.equal(train2.x, train.x) and torch.equal(test2.y, test.y)


def test_cifar_missing_and_corrupt_data_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"not found.*--download.*--dataset synthetic"):
        load_cifar("cifar10", tmp_path)
    rng = np.random.default_rng(1)
    good = tmp_path / "good.tar.gz"
    _write_archive(good, "cifar10", rng)
    raw = good.read_bytes()
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(DataError, match=r"corrupt.*--dataset synthetic"):
        load_cifar("cifar10", tmp_path, verify=False)
    bad.write_bytes(b"this is not a gzip file")
    with pytest.raises(DataError, match="corrupt"):
        load_cifar("cifar10", tmp_path, verify=False)
    # a well-formed archive whose pickles hold the wrong thing
    with tarfile.open(bad, "w:gz") as tar:
        for m in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{m}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match=r"3072"):
        load_cifar("cifar10", tmp_path, verify=False)


def test_download_verifies_md5_on_local_file(tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "cifar-10-python.tar.gz"
    _write_archive(src, "cifar10", np.random.default_rng(2))
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    verify_md5(src, md5)
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_md5(src, "0" * 32)
    dest_dir = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_cifar("cifar10", dest_dir, url=src.as_uri(), md5="0" * 32)
    assert not (dest_dir / "cifar-10-python.tar.gz").exists()
    assert list(dest_dir.iterdir()) == []  # no partial file left behind
    path = download_cifar("cifar10", dest_dir, url=src.as_uri(), md5=md5)
    assert path.read_bytes() == src.read_bytes()
    train, _ = load_cifar("cifar10", dest_dir, md5=md5, allow_small=True)
    assert len(train) == 35
    with pytest.raises(DataError, match="could not download"):
        download_cifar("cifar10", tmp_path / "d2", url=(tmp_path / "missing.tar.gz").as_uri(), md5=md5)


def test_existing_cifar_archive_and_folder_are_checksummed_and_counted(tmp_path, monkeypatch):
    """An archive at the official name is md5-checked on every read (not only after a download), an
    extracted folder file by file; image counts must be 50,000 / 10,000 unless small data is allowed."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    dicts, folder = _write_archive(archive, "cifar10", np.random.default_rng(3))
    with pytest.raises(DataError, match=r"checksum mismatch.*cifar-10-python.tar.gz.*c58f3010.*--download"):
        load_cifar("cifar10", tmp_path)                              # a small fake is not the official file
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"train set .* has 35 images, expected 50000"):
        load_cifar("cifar10", tmp_path, md5=md5)
    train, test = load_cifar("cifar10", tmp_path, md5=md5, allow_small=True)
    assert (len(train), len(test)) == (35, 7)
    # right size, wrong counts: the reader refuses the full-size claim of a short split
    monkeypatch.setitem(deep_cifar.CIFAR_SIZES, "train", 35)
    monkeypatch.setitem(deep_cifar.CIFAR_SIZES, "test", 8)
    with pytest.raises(DataError, match=r"test set .* has 7 images, expected 8"):
        load_cifar("cifar10", tmp_path, md5=md5)
    monkeypatch.setitem(deep_cifar.CIFAR_SIZES, "test", 7)
    assert len(load_cifar("cifar10", tmp_path, md5=md5)[1]) == 7
    # extracted folder: each file against its official md5
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    archive.unlink()
    with pytest.raises(DataError, match=r"checksum mismatch.*data_batch_1.*c99cafc1"):
        load_cifar("cifar10", tmp_path)
    spec = deep_cifar.CIFAR_SPECS["cifar10"]
    sums = {m: hashlib.md5((tmp_path / folder / m).read_bytes()).hexdigest() for m in dicts}
    monkeypatch.setitem(spec, "member_md5", sums)
    assert len(load_cifar("cifar10", tmp_path)[0]) == 35
    (tmp_path / folder / "test_batch").write_bytes((tmp_path / folder / "data_batch_1").read_bytes())
    with pytest.raises(DataError, match=r"checksum mismatch.*test_batch"):
        load_cifar("cifar10", tmp_path)
    assert len(load_cifar("cifar10", tmp_path, verify=False)[1]) == 7


def test_synthetic_is_deterministic_and_probe_variants_change_one_feature():
    spec = SyntheticSpec(image_size=16, robust_resolution=4)
    a, b = make_synthetic(64, 5, spec), make_synthetic(64, 5, spec)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(make_synthetic(64, 6, spec).x, a.x)
    assert a.x.shape == (64, 3, 16, 16) and a.x.min() >= 0 and a.x.max() <= 1
    R, N = synthetic_patterns(spec)
    Rf = R.reshape(10, -1)
    # robust patterns orthogonal with unit RMS; non-robust patterns are signs
    torch.testing.assert_close(Rf @ Rf.T / Rf.shape[1], torch.eye(10), atol=1e-5, rtol=0)
    assert set(N.unique().tolist()) == {-1.0, 1.0}
    # non-robust patterns: periodic tiles (period 4), mutually orthogonal, orthogonal-ish to the robust ones
    assert torch.equal(N[..., :4, :4], N[..., 4:8, 8:12])
    Nf = N.reshape(10, -1)
    torch.testing.assert_close(Nf @ Nf.T / Nf.shape[1], torch.eye(10), atol=1e-6, rtol=0)
    assert (Nf @ Rf.T / Nf.shape[1]).abs().max() < 0.15
    # other periods / class counts fall back to random distinct tiles
    _, N3 = synthetic_patterns(SyntheticSpec(image_size=16, nonrobust_period=3))
    assert torch.equal(N3[..., :3, :3], N3[..., 3:6, 6:9]) and len({tuple(t.flatten().tolist()) for t in N3}) == 10
    # without clipping the variants differ by exactly the removed / swapped pattern
    spec_nc = SyntheticSpec(image_size=16, robust_amplitude=0.01, pixel_noise=0.01)
    base = make_synthetic(32, 1, spec_nc)
    no_nr = make_synthetic(32, 1, spec_nc, "nonrobust_removed")
    swap = make_synthetic(32, 1, spec_nc, "nonrobust_swapped")
    no_r = make_synthetic(32, 1, spec_nc, "robust_removed")
    assert torch.equal(base.y, no_nr.y) and torch.equal(base.y, swap.y)
    _, N = synthetic_patterns(spec_nc)
    diff = (base.x - no_nr.x)  # = a_n (1 + s_n z) N_y
    scale = (diff.flatten(1) * N[base.y].flatten(1)).mean(1)
    assert torch.allclose(scale, torch.full_like(scale, 2 / 255), rtol=0.5)
    torch.testing.assert_close(diff / scale.view(-1, 1, 1, 1), N[base.y], atol=1e-3, rtol=0)
    diff_s = swap.x - no_nr.x
    torch.testing.assert_close(diff_s / scale.view(-1, 1, 1, 1), N[(base.y + 1) % 10], atol=1e-3, rtol=0)
    assert torch.equal(no_r.y, base.y)
    robust_part = make_synthetic(32, 1, spec).x - make_synthetic(32, 1, spec, "robust_removed").x
    assert robust_part.abs().mean() > 5 * 2 / 255  # the robust pattern has a large amplitude
    with pytest.raises(ValueError, match="robust_spread"):
        SyntheticSpec(robust_spread=-1)


def test_synthetic_features_are_predictive_as_designed():
    """Oracle linear read-outs: robust feature alone ~ argmax-of-Gaussians accuracy (Monte Carlo below),
    non-robust feature (robust part removed) highly predictive."""
    spec = SyntheticSpec()
    d = make_synthetic(3000, 3, spec)
    R, N = synthetic_patterns(spec)
    X = d.x.reshape(len(d), -1) - 0.5
    acc_r = ((X @ R.reshape(10, -1).T).argmax(1) == d.y).float().mean().item()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200000, 10, generator=g) * spec.robust_spread
    z[:, 0] += 1.0
    mc = (z.argmax(1) == 0).float().mean().item()
    assert abs(acc_r - mc) < 0.04
    dn = make_synthetic(3000, 3, spec, "robust_removed")
    Xn = dn.x.reshape(len(dn), -1) - 0.5
    acc_n = ((Xn @ N.reshape(10, -1).T).argmax(1) == dn.y).float().mean().item()
    assert acc_n > 0.9
    # an l_inf shift of the non-robust amplitude towards another class's pattern erases it
    shifted = dn.x + spec.nonrobust_amplitude * (N[(dn.y + 1) % 10] - N[dn.y])
    acc_shift = (((shifted.reshape(len(dn), -1) - 0.5) @ N.reshape(10, -1).T).argmax(1) == dn.y).float().mean()
    assert acc_shift < 0.2


def test_augment_batch_crops_and_flips_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = augment_batch(x, generator=torch.Generator().manual_seed(1), pad=2)
    assert out.shape == x.shape
    # every output is one of the (2*pad+1)^2 * 2 crops of the reflect-padded input
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    offsets = set()
    for i in range(64):
        hits = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                if torch.equal(out[i], (xp[i, :, dy:dy + 8, dx:dx + 8].flip(2) if f else
                                        xp[i, :, dy:dy + 8, dx:dx + 8]))]
        assert hits, f"image {i} is not a crop/flip of its input"
        offsets.add(hits[0])
    assert len(offsets) > 10  # per-image randomness, not one offset for the batch
    same = augment_batch(x, generator=torch.Generator().manual_seed(1), pad=2)
    assert torch.equal(out, same)
    del g
