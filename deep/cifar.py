"""CIFAR-10/100 from the standard python archives: reading, md5 checks and download.

CIFAR is read from ``<data_dir>/cifar-10-python.tar.gz`` (or ``cifar-100-python.tar.gz``) directly, or from
the extracted folder ``cifar-10-batches-py/`` (``cifar-100-python/``), the layout other tools download.
``download_cifar`` fetches the official archive and verifies its md5 before it is used; ``load_cifar`` checks
the md5 of an existing archive (or of each file of an extracted folder) and the image counts. No torchvision.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from .images import DataError, ImageData

__all__ = ["CIFAR_SPECS", "CIFAR_SIZES", "load_cifar", "download_cifar", "md5_of", "verify_md5"]


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

