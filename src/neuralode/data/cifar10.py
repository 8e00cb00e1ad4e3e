"""CIFAR-10 (Krizhevsky 2009): the canonical python-pickle batches, or a lossy JPEG copy.

Two sources, chosen by ``source=``:

``"pickle"``
    The canonical ``cifar-10-python.tar.gz`` (MD5 ``c58f3010...``) under
    ``<data_root()>/cifar10/`` or the per-user cache; downloaded from the Toronto page
    when missing or corrupt. The batches are read straight from the archive.
``"jpeg"``
    ``<data_root()>/cifar10_jpg/``: all 60,000 images re-encoded as JPEG q75
    (``cifar10-jpg-q75.tar.gz``) and the decoded test set (``cifar10_test_jpgdecoded.npz``),
    both verified by SHA-256. There is no download URL for it. The first load of the
    training split decodes 50,000 JPEGs (~20 s) and caches the result in the *writable*
    per-user cache (never in ``$NEURALODE_DATA``, which may be read-only). Results on it
    are labelled ``"CIFAR-10 (JPEG copy)"``: pixels differ from the canonical ones by JPEG
    error, so accuracies are not directly comparable with published CIFAR-10 numbers.
``"auto"`` (default)
    The canonical batches if present locally, else the JPEG copy if present locally, else
    download the canonical batches; offline, the error names both options.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from .cache import DataUnavailableError, Resource, cache_dir, fetch, fetch_all
from .images import ImageSet

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "parse_cifar_batch"]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

PICKLE_ARCHIVE = Resource(
    "cifar-10-python.tar.gz",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    md5="c58f30108f718f92721af3b95e74349a",
)
JPEG_ARCHIVE = Resource(
    "cifar10-jpg-q75.tar.gz",
    sha256="edcbabb0c2779b960e1398936f7f2894757148308293ec817b49e1a390a3a4a4",
)
JPEG_TEST_NPZ = Resource(
    "cifar10_test_jpgdecoded.npz",
    sha256="690bc254f4584e21c4adbb782643701b996add8ca72a351528c60311ebf5ce5f",
)
_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


def parse_cifar_batch(data: bytes | Path | str, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR python batch (a pickled dict with ``data`` and ``label_key``).

    ``label_key``: ``"labels"`` for CIFAR-10, ``"fine_labels"`` / ``"coarse_labels"`` for
    CIFAR-100. Accepts the raw bytes or a path. Returns images ``(N, 3, 32, 32)`` uint8 and
    labels ``(N,)`` int64. Only call it on verified files: it unpickles.
    """
    if isinstance(data, (str, Path)):
        source = str(data)
        data = Path(data).read_bytes()
    else:
        source = "<bytes>"
    d = pickle.loads(data, encoding="bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{source}: a CIFAR batch is a dict; got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise ValueError(f"{source}: CIFAR batch lacks 'data'/{label_key!r} (keys: {sorted(d)})")
    x = np.asarray(d["data"], dtype=np.uint8)
    y = np.asarray(d[label_key], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise ValueError(f"{source}: data {x.shape} / labels {y.shape} are not CIFAR-shaped")
    return x.reshape(-1, 3, 32, 32), y


def _from_pickle_archive(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    with tarfile.open(path, "r:gz") as tf:
        for name in _BATCHES[split]:
            member = tf.getmember(f"cifar-10-batches-py/{name}")
            x, y = parse_cifar_batch(_member_bytes(tf, member, path))
            xs.append(x)
            ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """The bytes of a regular-file member (``extractfile`` gives None for links and directories)."""
    f = tf.extractfile(member)
    if f is None:
        raise ValueError(f"{path}: member {member.name!r} is not a regular file")
    return f.read()


def _decode_jpeg_tar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/NNNN.jpg`` from the JPEG archive, ordered by class then number."""
    from PIL import Image

    items = []
    with tarfile.open(path, "r:gz") as tf:
        for m in tf:
            if not (m.isfile() and m.name.endswith(".jpg")):
                continue
            parts = m.name.split("/")
            if len(parts) != 3 or parts[0] != split:
                continue
            img = Image.open(io.BytesIO(_member_bytes(tf, m, path))).convert("RGB")
            items.append((CIFAR10_CLASSES.index(parts[1]), parts[2], np.asarray(img)))
    if not items:
        raise ValueError(f"{path}: no '{split}/<class>/*.jpg' members")
    items.sort(key=lambda it: (it[0], it[1]))
    x = np.stack([it[2] for it in items])
    y = np.array([it[0] for it in items], dtype=np.int64)
    return x, y


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub lets **kwds reach allow_pickle
    os.replace(tmp, path)


def _from_jpeg_copy(split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        (npz,) = fetch_all([JPEG_TEST_NPZ], "cifar10_jpg", download=download)
        with np.load(npz) as f:
            return f["x"].transpose(0, 3, 1, 2).copy(), f["y"].astype(np.int64)
    tar = fetch(JPEG_ARCHIVE, "cifar10_jpg", download=download)
    cached = cache_dir() / "cifar10_jpg" / f"{split}_jpgdecoded_{(JPEG_ARCHIVE.sha256 or '')[:12]}.npz"
    if cached.exists():
        try:
            with np.load(cached) as f:
                return f["x"], f["y"]
        except (OSError, ValueError, KeyError):
            cached.unlink(missing_ok=True)  # a damaged cache is rebuilt
    x, y = _decode_jpeg_tar(tar, split)
    x = x.transpose(0, 3, 1, 2).copy()
    _save_npz_atomic(cached, x=x, y=y)
    return x, y


def _have(resources: list[Resource], subdir: str) -> bool:
    try:
        fetch_all(resources, subdir, download=False)
        return True
    except DataUnavailableError:
        return False


def load_cifar10(split: str = "train", *, source: str = "auto", download: bool = True) -> ImageSet:
    """Load the CIFAR-10 ``"train"`` (50,000) or ``"test"`` (10,000) split.

    Returns an :class:`ImageSet` with ``uint8`` images ``(N, 3, 32, 32)``; its ``name`` is
    ``"CIFAR-10"`` or ``"CIFAR-10 (JPEG copy)"`` depending on the source used.
    """
    if split not in _BATCHES:
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    if source not in ("auto", "pickle", "jpeg"):
        raise ValueError(f"source={source!r}; expected 'auto', 'pickle' or 'jpeg'")
    if source == "auto":
        jpeg_needs = [JPEG_TEST_NPZ] if split == "test" else [JPEG_ARCHIVE]
        if _have([PICKLE_ARCHIVE], "cifar10"):
            source = "pickle"
        elif _have(jpeg_needs, "cifar10_jpg"):
            source = "jpeg"
        else:
            try:
                fetch(PICKLE_ARCHIVE, "cifar10", download=download)
                source = "pickle"
            except DataUnavailableError as exc:
                raise DataUnavailableError(
                    f"{exc}\nAlternatively place the JPEG copy ({JPEG_ARCHIVE.filename} and "
                    f"{JPEG_TEST_NPZ.filename}) in a folder 'cifar10_jpg/' under NEURALODE_DATA."
                ) from None
    if source == "pickle":
        x, y = _from_pickle_archive(fetch(PICKLE_ARCHIVE, "cifar10", download=download), split)
        name = "CIFAR-10"
    else:
        x, y = _from_jpeg_copy(split, download)
        name = "CIFAR-10 (JPEG copy)"
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y), list(CIFAR10_CLASSES), name)
