"""MNIST from the four standard IDX files (LeCun, Cortes & Burges).

Files are looked for under ``<data_root()>/mnist/`` (``$NEURALODE_DATA/mnist``) and the
per-user cache, verified by the MD5 of their *uncompressed* content (the canonical
checksums; a re-compressed ``.gz`` still verifies), and downloaded from the usual mirrors
when missing or corrupt (see :mod:`neuralode.data.cache`). Offline, the error names the
four files and the folder to put them in.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .cache import Resource, fetch_all
from .images import ImageSet

__all__ = ["MNIST_FILES", "load_mnist", "parse_idx", "read_idx"]

_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def _res(name: str, md5: str) -> Resource:
    return Resource(name, urls=tuple(m + name for m in _MIRRORS), md5=md5, checksum_of="gunzipped")


#: split -> (images, labels); MD5s of the uncompressed canonical files.
MNIST_FILES = {
    "train": (
        _res("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
        _res("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624"),
    ),
    "test": (
        _res("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
        _res("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
    ),
}

# IDX type codes -> big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into an array.

    Format: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of
    dimensions ``d``, then ``d`` big-endian int32 sizes and the data in C order.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: not an IDX file (bad magic {data[:4].hex()!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{source}: IDX header says shape {shape} ({expected} bytes) but the file has "
            f"{len(data)} bytes (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), source=str(path))


def load_mnist(split: str = "train", *, download: bool = True) -> ImageSet:
    """Load the MNIST ``"train"`` (60,000) or ``"test"`` (10,000) split.

    Returns an :class:`ImageSet` with ``uint8`` images ``(N, 1, 28, 28)`` and labels 0–9.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    img_path, lbl_path = fetch_all(MNIST_FILES[split], "mnist", download=download)
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"MNIST {split}: images {images.shape} and labels {labels.shape} disagree")
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=[str(i) for i in range(10)],
        name="MNIST",
    )
