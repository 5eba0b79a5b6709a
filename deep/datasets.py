"""The image data sets deep/ trains on, in one registry, and the readers of the two small real sets.

:data:`DATASETS` names every data set and states, once, what the model and the training loop need to know
about it: image shape, number of classes, the per-channel normalisation that the model applies as its first
operation (so attacks work in [0, 1] pixel space), and the augmentation of docs/protocol.md.

Real data sets that need no download from the web:

* **Fashion-MNIST** (Xiao et al. 2017): the four original idx files (gzip), 60,000 train / 10,000 test
  28x28 grayscale images, 10 classes of 6,000 / 1,000 each. :func:`load_fashion_mnist` reads them from
  ``data_dir`` or, when that holds none, from where Debian's package ``dataset-fashion-mnist`` installed
  them (asked of ``dpkg -L``). Magic numbers, shapes, counts, label range, class counts and a SHA-256 of
  the *decompressed* payload are checked (Debian recompresses the .gz files, so their bytes differ from
  the upstream archives while the content is identical).
* **digits** (scikit-learn's ``load_digits``: 1,797 8x8 images with 17 grey levels 0..16, shipped inside
  the scikit-learn wheel): :func:`load_digits_split` scales them to [0, 1] and makes a fixed stratified
  train/test split, small enough for the test suite to train ST, SAM and AT end to end in seconds.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .cifar import load_cifar
from .images import DataError, ImageData
from .synthetic import make_synthetic

__all__ = ["DatasetInfo", "DATASETS", "dataset_info", "FASHION_MNIST_FILES", "load_fashion_mnist",
           "find_fashion_mnist", "read_idx", "load_digits_split", "DIGITS_TEST_PER_CLASS"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the training loop need to know about one data set.

    mean/std: per-channel normalisation inside the model (their length is the number of input channels);
    crop_pad/flip: default augmentation (random crop with reflect padding ``crop_pad``, horizontal flip),
    used when ``augment`` is on; augment_default: whether augmentation is on unless asked otherwise.
    """
    title: str
    channels: int
    image_size: int
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_pad: int = 0
    flip: bool = False
    augment_default: bool = False
    real: bool = True

    def __post_init__(self):
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise ValueError(f"{self.title}: mean/std need {self.channels} entries, std > 0")


DATASETS: Dict[str, DatasetInfo] = {
    # CIFAR: the constants of the paper's code (per-channel train-set mean / std); crop 4 + flip
    "cifar10": DatasetInfo("CIFAR-10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                           crop_pad=4, flip=True, augment_default=True),
    "cifar100": DatasetInfo("CIFAR-100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            crop_pad=4, flip=True, augment_default=True),
    # generated images: patterns are pixel-aligned, so no augmentation by default
    "synthetic": DatasetInfo("generated robust/non-robust images", 3, 32, 10, (0.5,) * 3, (0.25,) * 3,
                             crop_pad=4, flip=True, augment_default=False, real=False),
    # Fashion-MNIST: mean / std of the 60,000 training images in [0, 1] (0.28604, 0.35302). Crops with
    # 2-pixel padding (objects are centred with a small margin); no flips: the data set keeps a canonical
    # orientation (shoes point left) and a flipped image is not a natural sample of its class.
    "fashion-mnist": DatasetInfo("Fashion-MNIST", 1, 28, 10, (0.2860,), (0.3530,),
                                 crop_pad=2, flip=False, augment_default=True),
    # digits: mean / std of all 1,797 images scaled to [0, 1]; 8x8 is too small to crop, digits not to flip
    "digits": DatasetInfo("scikit-learn digits", 1, 8, 10, (0.3053,), (0.3760,), augment_default=False),
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; ValueError listing the choices otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}") from None


# ------------------------------------------------------------------------------------ Fashion-MNIST

# name -> (magic, count, sha256 of the decompressed file). The digests are those of the original
# Fashion-MNIST release (identical content in Debian's recompressed .gz files).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, 60000, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (2049, 60000, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (2051, 10000, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (2049, 10000, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
HOW_TO_GET_FASHION_MNIST = (
    f"install Debian's package (as root: apt-get update && apt-get install -y {DEBIAN_PACKAGE}) or put the "
    f"four original files ({', '.join(f + '.gz' for f in FASHION_MNIST_FILES)}) into --data-dir")


def _dpkg_folders(package: str = DEBIAN_PACKAGE) -> list:
    """Folders holding the package's idx files, as ``dpkg -L`` lists them ([] without dpkg/package)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    folders = []
    for line in out.stdout.splitlines():
        p = Path(line.strip())
        if p.name == "train-images-idx3-ubyte.gz" and p.parent not in folders:
            folders.append(p.parent)
    return folders


def _file_in(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    return None


def _has_any(folder: Path) -> bool:
    return any(_file_in(folder, n) is not None for n in FASHION_MNIST_FILES)


def find_fashion_mnist(data_dir=None, dpkg_folders=None) -> Path:
    """The folder to read: ``data_dir`` (or its ``fashion-mnist/`` subfolder) when it holds any of the
    files, else the Debian package's folder; DataError saying how to get the files otherwise.
    ``dpkg_folders`` replaces the ``dpkg -L`` query (tests)."""
    tried = []
    if data_dir is not None:
        for folder in (Path(data_dir), Path(data_dir) / "fashion-mnist"):
            tried.append(str(folder))
            if folder.is_dir() and _has_any(folder):
                return folder
    for folder in (_dpkg_folders() if dpkg_folders is None else dpkg_folders):
        tried.append(str(folder))
        if Path(folder).is_dir() and _has_any(Path(folder)):
            return Path(folder)
    raise DataError(f"Fashion-MNIST not found (looked in {', '.join(tried) or 'nothing'}; package "
                    f"{DEBIAN_PACKAGE} not installed): {HOW_TO_GET_FASHION_MNIST}")


def read_idx(raw: bytes, magic: int, count: int, source: str) -> np.ndarray:
    """Parse an idx file (big-endian header: magic, dimension sizes; then uint8 payload).

    magic 2049: labels, shape (count,); magic 2051: images, shape (count, rows, cols). ValueError naming
    ``source`` on a wrong magic number, count or payload size."""
    if len(raw) < 8:
        raise ValueError(f"{source}: {len(raw)} bytes, too short for an idx header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{source}: magic number {got}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if dims[0] != count:
        raise ValueError(f"{source}: {dims[0]} items, expected {count}")
    if len(raw) != header + int(np.prod(dims)):
        raise ValueError(f"{source}: payload of {len(raw) - header} bytes does not match shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_checked(folder: Path, name: str) -> np.ndarray:
    magic, count, digest = FASHION_MNIST_FILES[name]
    path = _file_in(folder, name)
    if path is None:
        raise DataError(f"Fashion-MNIST file {name}.gz missing in {folder}: {HOW_TO_GET_FASHION_MNIST}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        arr = read_idx(raw, magic, count, str(path))
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise DataError(f"Fashion-MNIST file {path} is corrupt ({err}): {HOW_TO_GET_FASHION_MNIST}") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != digest:
        raise DataError(f"Fashion-MNIST file {path} has the wrong content (sha256 {got[:12]}..., expected "
                        f"{digest[:12]}...): {HOW_TO_GET_FASHION_MNIST}")
    if arr.ndim == 3 and arr.shape[1:] != (28, 28):
        raise DataError(f"{path}: images of shape {arr.shape[1:]}, expected (28, 28)")
    return arr


def _labels_ok(y: np.ndarray, per_class: int, source: str) -> None:
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{source}: labels outside 0..9")
    counts = np.bincount(y, minlength=10)
    if not (counts == per_class).all():
        raise DataError(f"{source}: class counts {counts.tolist()}, expected {per_class} each")


def load_fashion_mnist(data_dir=None, dpkg_folders=None) -> Tuple[ImageData, ImageData]:
    """(train, test) of Fashion-MNIST as uint8 (N, 1, 28, 28) CPU tensors and int64 labels.

    Files are found by :func:`find_fashion_mnist` and fully validated (module docstring); any problem is a
    :class:`DataError` whose message says how to get the files."""
    folder = find_fashion_mnist(data_dir, dpkg_folders)
    splits = []
    for part, per_class in (("train", 6000), ("t10k", 1000)):
        x = _read_checked(folder, f"{part}-images-idx3-ubyte")
        y = _read_checked(folder, f"{part}-labels-idx1-ubyte").astype(np.int64)
        _labels_ok(y, per_class, str(folder / f"{part}-labels-idx1-ubyte"))
        splits.append(ImageData(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y), 10))
    return splits[0], splits[1]


# ------------------------------------------------------------------------------------------- digits

DIGITS_TEST_PER_CLASS = 50      # 500 test images; the other 1,297 train
DIGITS_SPLIT_SEED = 0           # seed of the fixed stratified split (part of the data set's definition)


def load_digits_split() -> Tuple[ImageData, ImageData]:
    """scikit-learn's digits, float32 in [0, 1] (grey level / 16), shape (N, 1, 8, 8).

    Fixed stratified split: for each class, a permutation drawn from DIGITS_SPLIT_SEED puts
    DIGITS_TEST_PER_CLASS images into the test set and the rest into the training set; both sets are then
    ordered by a second fixed permutation, so that their first n images are a mix of classes."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("--dataset digits needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_idx, train_idx = [], []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == k))
        test_idx.append(idx[:DIGITS_TEST_PER_CLASS])
        train_idx.append(idx[DIGITS_TEST_PER_CLASS:])
    out = []
    for idx in (np.concatenate(train_idx), np.concatenate(test_idx)):
        idx = torch.from_numpy(rng.permutation(idx))
        out.append(ImageData(x[idx], y[idx], 10))
    return out[0], out[1]


# ------------------------------------------------------------------- the data of one configuration

def synthetic_seeds(cfg) -> Tuple[int, int]:
    """Seeds of the generated training and test images (the test seed also draws the probe sets):
    2s and 2s + 1 for the pattern seed s (--synthetic-seed)."""
    s = cfg.synthetic_spec.pattern_seed
    return 2 * s, 2 * s + 1


def load_data(cfg, device, data_dir: str = "data", download: bool = False) -> Tuple[ImageData, ImageData]:
    """(train, test) of cfg's data set on ``device``: the first cfg.n_train / cfg.n_test images (generated
    data: that many images of cfg.synthetic, seeds of :func:`synthetic_seeds`)."""
    if cfg.dataset == "synthetic":
        spec = cfg.synthetic_spec
        train_seed, test_seed = synthetic_seeds(cfg)
        train = make_synthetic(cfg.n_train, train_seed, spec)
        test = make_synthetic(cfg.n_test, test_seed, spec)
    else:
        if cfg.dataset == "fashion-mnist":
            train, test = load_fashion_mnist(data_dir)
        elif cfg.dataset == "digits":
            train, test = load_digits_split()
        else:
            train, test = load_cifar(cfg.dataset, data_dir, download=download)
        for option, n, data, part in (("--n-train", cfg.n_train, train, "training"),
                                      ("--n-test", cfg.n_test, test, "test")):
            if n is not None and n > len(data):
                raise DataError(f"{option} {n} is larger than the {len(data)} {part} images of {cfg.dataset}; "
                                f"give at most {len(data)} (or leave it out for all)")
        train, test = train.subset(cfg.n_train), test.subset(cfg.n_test)
    return train.to(device), test.to(device)
