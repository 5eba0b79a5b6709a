"""Data for deep/: CIFAR-10/100 from the standard python archives, the generated robust/non-robust image
dataset of docs/protocol.md, and batched augmentation on device tensors.

CIFAR is read from ``<data_dir>/cifar-10-python.tar.gz`` (or ``cifar-100-python.tar.gz``) directly, or from
the extracted folder ``cifar-10-batches-py/`` (``cifar-100-python/``), the layout other tools download.
``download_cifar`` fetches the official archive and verifies its md5 before it is used; ``load_cifar`` checks
the md5 of an existing archive (or of each file of an extracted folder) and the image counts. No torchvision.

The generated dataset ("synthetic") mirrors the linear feature model of docs/theory.md section 1 in images:
every class y has a smooth, large-amplitude *robust* pattern R_y whose presence varies strongly between
images, and a tiny-amplitude (2/255 per pixel by default), nearly deterministic, high-frequency
*non-robust* pattern N_y: a sign tile of ``nonrobust_period`` x ``nonrobust_period`` pixels (x 3 channels;
for K <= 15 at period 4 the tiles are orthogonal Hadamard rows with a random sign per channel) repeated over
the image. The repetition makes the non-robust feature local, as texture is in
natural images: a convolutional network can detect it anywhere and its global average pooling adds up the
weak per-pixel evidence (a pattern of independent signs per pixel would be invisible after pooling)::

    x = clip( 1/2 + a_r * sum_k c_k R_k + a_n * (1 + s_n z) N_y + sigma_pix * xi , 0, 1 )
    c = e_y + s_r * zeta,   zeta ~ N(0, I_K),  z ~ N(0, 1),  xi ~ N(0, I)

R_k are orthonormal (unit RMS per pixel), so the robust feature alone classifies with the accuracy of the
argmax of K Gaussians one of which is shifted by 1/s_r (about 81% at s_r = 0.4, K = 10); the non-robust
pattern is individually weak per pixel (a_n << sigma_pix) but aggregated over 3072 pixels strongly
predictive, and an l_inf perturbation of size a_n erases it. Probe variants (same images, same noise):
``nonrobust_removed`` (a_n = 0), ``nonrobust_swapped`` (N_{(y+1) mod K} instead of N_y, label still y),
``robust_removed`` (a_r = 0).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from samrobust.seeds import DATA_SEED_MULT, DATA_SEED_OFFSET

__all__ = ["DataError", "CIFAR_SPECS", "CIFAR_SIZES", "ImageData", "load_cifar", "download_cifar", "md5_of",
           "verify_md5", "SyntheticSpec", "make_synthetic", "synthetic_patterns", "PROBE_VARIANTS",
           "augment_batch", "to_float"]


class DataError(ValueError):
    """Missing or corrupt data files; the message says how to get them."""


CIFAR_SPECS = {
    "cifar10": dict(
        title="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
        member_md5={"data_batch_1": "c99cafc152244af753f735de768cd75f",
                    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                    "data_batch_4": "634d18415352ddfa80567beed471001a",
                    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                    "test_batch": "40351d587109b95175f43aff81a1287e"},
        label_key=b"labels", num_classes=10),
    "cifar100": dict(
        title="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"], test=["test"],
        member_md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
        label_key=b"fine_labels", num_classes=100),
}
# Images per split of both official data sets.
CIFAR_SIZES = {"train": 50000, "test": 10000}


@dataclass
class ImageData:
    """Images (N, C, H, W), uint8 in [0, 255] or float in [0, 1], and int64 labels, on one device."""
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device) -> "ImageData":
        return ImageData(self.x.to(device), self.y.to(device), self.num_classes)

    def subset(self, n: Optional[int]) -> "ImageData":
        if n is None or n >= len(self):
            return self
        return ImageData(self.x[:n], self.y[:n], self.num_classes)


# ------------------------------------------------------------------------------------------ CIFAR

def _how_to_get(name: str, data_dir: Path) -> str:
    spec = CIFAR_SPECS[name]
    return (f"Get it with `python -m deep.run --dataset {name} --download --data-dir {data_dir}`, or download "
            f"{spec['url']} (md5 {spec['md5']}) into {data_dir}; or use `--dataset synthetic` "
            f"(generated data, no download).")


def md5_of(path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path, md5: str) -> None:
    """DataError unless the file's md5 equals ``md5``."""
    got = md5_of(path)
    if got != md5.lower():
        raise DataError(f"checksum mismatch for {path}: md5 {got}, expected {md5} (corrupt or incomplete "
                        f"download; delete the file and download again)")


def download_cifar(name: str, data_dir, url: Optional[str] = None, md5: Optional[str] = None) -> Path:
    """Download the official archive of ``name`` into ``data_dir`` and verify its md5.

    The file is written under a temporary name and moved into place only after the checksum matched.
    ``url``/``md5`` override the official ones (tests use a ``file://`` URL). Returns the archive path;
    an archive already present with the right checksum is not downloaded again.
    """
    if name not in CIFAR_SPECS:
        raise ValueError(f"dataset must be one of {sorted(CIFAR_SPECS)}, got {name!r}")
    spec = CIFAR_SPECS[name]
    url = url or spec["url"]
    md5 = md5 or spec["md5"]
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    dest = data_dir / spec["archive"]
    if dest.exists() and md5_of(dest) == md5:
        return dest
    fd, tmp = tempfile.mkstemp(prefix=spec["archive"] + ".", suffix=".part", dir=data_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    while True:
                        block = resp.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
            except OSError as err:
                raise DataError(f"could not download {spec['title']} from {url}: {err}. "
                                + _how_to_get(name, data_dir)) from None
        verify_md5(tmp, md5)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


class _SafeUnpickler(pickle.Unpickler):
    """Only the globals that the CIFAR batch pickles need (numpy arrays); nothing executable."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _parse_batch(raw: bytes, label_key: bytes, source: str, num_classes: int):
    obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
        raise ValueError(f"{source}: expected a dict with keys b'data' and {label_key!r}")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{source}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{source}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{source}: labels outside [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def _folder_has(name: str, data_dir: Path, members) -> bool:
    folder = data_dir / CIFAR_SPECS[name]["folder"]
    return folder.is_dir() and all((folder / m).is_file() for m in members)


def _verify_cifar(name: str, data_dir: Path, md5: Optional[str]) -> None:
    """Checksums of the files :func:`_read_members` will read: the archive's md5 (``md5``, default the
    official one), or, for an extracted folder, each batch file's official md5 (skipped when ``md5``
    names another archive: there are no per-file checksums for it)."""
    spec = CIFAR_SPECS[name]
    archive_checked = False
    for members in (spec["train"], spec["test"]):
        if _folder_has(name, data_dir, members):
            if md5 is not None:
                continue
            for m in members:
                path = data_dir / spec["folder"] / m
                got = md5_of(path)
                if got != spec["member_md5"][m]:
                    raise DataError(f"checksum mismatch for {path}: md5 {got}, expected {spec['member_md5'][m]} "
                                    f"(corrupt, or not the official {spec['title']} file). Delete the folder and "
                                    f"get the data again. " + _how_to_get(name, data_dir))
        elif (data_dir / spec["archive"]).is_file() and not archive_checked:
            path, want = data_dir / spec["archive"], (md5 or spec["md5"]).lower()
            got = md5_of(path)
            if got != want:
                raise DataError(f"checksum mismatch for {path}: md5 {got}, expected {want} (corrupt or incomplete "
                                f"download, or not the official {spec['title']} archive). Delete it and get it "
                                f"again. " + _how_to_get(name, data_dir))
            archive_checked = True


def _read_members(name: str, data_dir: Path, members):
    """Raw bytes of the batch files ``members`` from the folder or the archive."""
    spec = CIFAR_SPECS[name]
    folder = data_dir / spec["folder"]
    if _folder_has(name, data_dir, members):
        return {m: (folder / m).read_bytes() for m in members}, str(folder)
    archive = data_dir / spec["archive"]
    if archive.is_file():
        out = {}
        with tarfile.open(archive, "r:gz") as tar:
            for m in members:
                try:
                    f = tar.extractfile(f"{spec['folder']}/{m}")
                except KeyError:
                    raise ValueError(f"member {spec['folder']}/{m} missing") from None
                if f is None:
                    raise ValueError(f"member {spec['folder']}/{m} is not a file")
                out[m] = f.read()
        return out, str(archive)
    raise DataError(f"{spec['title']} not found in {data_dir}: expected {archive} or the extracted folder "
                    f"{folder}/. " + _how_to_get(name, data_dir))


def load_cifar(name: str, data_dir, download: bool = False, md5: Optional[str] = None, verify: bool = True,
               allow_small: bool = False) -> Tuple[ImageData, ImageData]:
    """(train, test) of CIFAR-10 (``name="cifar10"``) or CIFAR-100 (fine labels) as uint8 CPU tensors.

    Reads the extracted folder if complete, else the .tar.gz archive; with ``download=True`` a missing
    archive is downloaded (md5-verified) first. Missing or corrupt data raise :class:`DataError` with
    instructions.

    Checks: the archive's md5 (the official one, or ``md5``; an extracted folder: each batch file's official
    md5, not checked when ``md5`` is given), unless ``verify=False``; and 50,000 training and 10,000 test
    images (:data:`CIFAR_SIZES`), or, with ``allow_small=True``, at least one and at most that many (small
    test archives in the official format).
    """
    if name not in CIFAR_SPECS:
        raise ValueError(f"dataset must be one of {sorted(CIFAR_SPECS)}, got {name!r}")
    spec = CIFAR_SPECS[name]
    data_dir = Path(data_dir)
    has_folder = (data_dir / spec["folder"]).is_dir()
    if download and not has_folder and not (data_dir / spec["archive"]).is_file():
        download_cifar(name, data_dir)
    if verify:
        _verify_cifar(name, data_dir, md5)
    splits = []
    for split, members in (("train", spec["train"]), ("test", spec["test"])):
        try:
            raw, source = _read_members(name, data_dir, members)
            parts = [_parse_batch(raw[m], spec["label_key"], f"{source}:{m}", spec["num_classes"])
                     for m in members]
        except DataError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError, pickle.UnpicklingError, KeyError,
                IndexError, TypeError, AttributeError) as err:
            raise DataError(f"{spec['title']} data in {data_dir} is corrupt or not in the CIFAR python "
                            f"format ({type(err).__name__}: {err}). Delete it and get it again. "
                            + _how_to_get(name, data_dir)) from None
        x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        want, n = CIFAR_SIZES[split], int(y.shape[0])
        if not (1 <= n <= want if allow_small else n == want):
            raise DataError(f"{spec['title']} {split} set in {source} has {n} images, expected {want} "
                            f"(incomplete or not the official data). Delete it and get it again. "
                            + _how_to_get(name, data_dir))
        splits.append(ImageData(x, y, spec["num_classes"]))
    return splits[0], splits[1]


# --------------------------------------------------------------------------------- synthetic data

PROBE_VARIANTS = ("clean", "nonrobust_removed", "nonrobust_swapped", "robust_removed")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated robust / non-robust image dataset (module docstring formula).

    robust_amplitude a_r: RMS per pixel of each robust pattern (large: erasing it needs eps ~ a_r).
    robust_spread s_r: spread of the robust coefficients (large: robust feature alone ~81% at 0.4).
    nonrobust_amplitude a_n: per-pixel amplitude of the sign pattern (tiny: 2/255).
    nonrobust_spread s_n: relative spread of its amplitude (small: nearly deterministic).
    pixel_noise sigma_pix: i.i.d. Gaussian pixel noise; robust_resolution: grid size of the smooth
    robust patterns before bilinear upsampling; nonrobust_period: side of the repeated sign tile
    (= image_size: one independent sign per pixel, no repetition). pattern_seed fixes the class patterns (shared by the
    train and test sets, which differ in their sample seed).
    """
    num_classes: int = 10
    image_size: int = 32
    robust_amplitude: float = 0.12
    robust_spread: float = 0.4
    nonrobust_amplitude: float = 2.0 / 255.0
    nonrobust_spread: float = 0.1
    pixel_noise: float = 0.12
    robust_resolution: int = 4
    nonrobust_period: int = 4
    pattern_seed: int = 0

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")
        for field in ("robust_amplitude", "robust_spread", "nonrobust_amplitude", "nonrobust_spread",
                      "pixel_noise"):
            if not getattr(self, field) >= 0.0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)!r}")
        if not 1 <= self.nonrobust_period <= self.image_size:
            raise ValueError(f"nonrobust_period must be in [1, image_size], got {self.nonrobust_period}")
        if self.num_classes > 2 ** (3 * self.nonrobust_period ** 2 - 1):
            raise ValueError("num_classes exceeds the number of distinct non-robust tiles; raise nonrobust_period")
        if not 1 <= self.robust_resolution <= self.image_size:
            raise ValueError(f"robust_resolution must be in [1, image_size], got {self.robust_resolution}")
        if self.num_classes > 3 * self.robust_resolution ** 2:
            raise ValueError("num_classes exceeds the number of orthogonal robust patterns "
                             "(3 * robust_resolution^2); raise robust_resolution")

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_patterns(spec: SyntheticSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """(R, N): robust patterns (K,3,H,W), orthonormal with unit RMS per pixel and smooth; non-robust
    sign patterns (K,3,H,W) in {-1,+1}, periodic with period ``nonrobust_period``; orthogonal when the
    period's square is a power of two larger than K (Hadamard rows), else random and distinct up to sign.
    Deterministic from ``spec.pattern_seed``."""
    K, S, r = spec.num_classes, spec.image_size, spec.robust_resolution
    g = torch.Generator().manual_seed(int(spec.pattern_seed))
    low = torch.randn(K, 3, r, r, generator=g, dtype=torch.float64)
    smooth = F.interpolate(low, size=(S, S), mode="bilinear", align_corners=False).reshape(K, -1)
    smooth = smooth - smooth.mean(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(smooth.T)  # (P, K) orthonormal columns spanning the smooth patterns
    P = smooth.shape[1]
    R = (q.T * P ** 0.5).reshape(K, 3, S, S).float()
    t = spec.nonrobust_period
    m = t * t
    if m & (m - 1) == 0 and K <= m - 1:
        # orthogonal tiles: distinct non-constant rows of the Sylvester-Hadamard matrix of order t^2 (spatial)
        # times a random sign per channel
        H = torch.ones(1, 1)
        while H.shape[0] < m:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        rows = torch.randperm(m - 1, generator=g)[:K] + 1
        chan = (torch.randint(0, 2, (K, 3), generator=g) * 2 - 1).float()
        tiles = chan[:, :, None, None] * H[rows].reshape(K, 1, t, t)
    else:
        while True:  # random tiles, distinct also up to a global sign flip
            tiles = (torch.randint(0, 2, (K, 3, t, t), generator=g) * 2 - 1).float()
            flat = tiles.reshape(K, -1)
            gram = (flat @ flat.T).abs() - torch.eye(K) * flat.shape[1]
            if K == 1 or gram.max() < flat.shape[1]:
                break
    reps = -(-S // t)
    N = tiles.repeat(1, 1, reps, reps)[:, :, :S, :S].contiguous()
    return R, N


def make_synthetic(n: int, seed: int, spec: SyntheticSpec = SyntheticSpec(),
                   variant: str = "clean") -> ImageData:
    """``n`` images of the generated dataset (float32 in [0,1], CPU), deterministic from ``seed``.

    ``variant`` in PROBE_VARIANTS: all variants with the same (n, seed) share labels, coefficients and
    noise, and differ only in the feature that is removed or swapped.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if variant not in PROBE_VARIANTS:
        raise ValueError(f"variant must be one of {PROBE_VARIANTS}, got {variant!r}")
    K, S = spec.num_classes, spec.image_size
    R, N = synthetic_patterns(spec)
    g = torch.Generator().manual_seed(int(seed) * DATA_SEED_MULT + DATA_SEED_OFFSET)
    y = torch.randint(0, K, (n,), generator=g)
    zeta = torch.randn(n, K, generator=g)
    z = torch.randn(n, generator=g)
    xi = torch.randn(n, 3, S, S, generator=g)
    coef = F.one_hot(y, K).float() + spec.robust_spread * zeta
    robust = spec.robust_amplitude * torch.einsum("nk,kchw->nchw", coef, R)
    nr_class = (y + 1) % K if variant == "nonrobust_swapped" else y
    nonrobust = (spec.nonrobust_amplitude * (1.0 + spec.nonrobust_spread * z)).view(n, 1, 1, 1) * N[nr_class]
    x = 0.5 + spec.pixel_noise * xi
    if variant != "robust_removed":
        x = x + robust
    if variant != "nonrobust_removed":
        x = x + nonrobust
    return ImageData(x.clamp_(0.0, 1.0), y, K)


# ------------------------------------------------------------------------------------ augmentation

def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]; float input is returned as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def augment_batch(x: torch.Tensor, generator: Optional[torch.Generator] = None, pad: int = 4,
                  flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad``-pixel reflect padding and random horizontal flip, whole batch at once.

    ``x``: float (B, C, H, W) on any device; ``generator`` must live on that device. Each image gets its
    own offsets (dy, dx) in [0, 2*pad] and flip bit; implemented with one gather, no Python loop.
    """
    B, C, H, W = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        off = torch.randint(0, 2 * pad + 1, (2, B), generator=generator, device=dev)
        rows = off[0][:, None] + torch.arange(H, device=dev)[None, :]  # (B, H)
        cols = off[1][:, None] + torch.arange(W, device=dev)[None, :]  # (B, W)
        bidx = torch.arange(B, device=dev)[:, None, None]
        # (B, H, W, C) after advanced indexing on dims 0, 2, 3
        x = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(B, generator=generator, device=dev) < 0.5
        x = torch.where(mask.view(B, 1, 1, 1), x.flip(3), x)
    return x.contiguous()
