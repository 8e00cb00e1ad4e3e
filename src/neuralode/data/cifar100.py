"""CIFAR-100 (Krizhevsky 2009): 100 fine classes in 20 superclasses, 50,000 + 10,000 images.

The canonical python archive ``cifar-100-python.tar.gz`` from the Toronto page, verified by
its published MD5 (``eb9058c3a382ffc7106e4002c42a8d85``, as torchvision checks it), then read
straight from the archive (members ``cifar-100-python/{train,test,meta}``). Download → verify →
cache through :mod:`neuralode.data.cache`: the file is looked for under
``<data_root()>/cifar100/`` and the per-user cache, and downloaded into the cache when missing
or corrupt. No offline copy exists on the development machine, so real CIFAR-100 runs happen
where the archive can be fetched (or placed by hand).
"""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import torch

from .cache import Resource, fetch
from .cifar10 import parse_cifar_batch
from .images import ImageSet

__all__ = ["ARCHIVE", "load_cifar100"]

ARCHIVE = Resource(
    "cifar-100-python.tar.gz",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)
_LABEL_KEYS = {"fine": ("fine_labels", "fine_label_names"), "coarse": ("coarse_labels", "coarse_label_names")}


def _read(tf: tarfile.TarFile, name: str) -> bytes:
    member = tf.extractfile(name)
    if member is None:
        raise ValueError(f"{name!r} is not a regular file in the archive {tf.name!r}")
    return member.read()


def load_cifar100(split: str = "train", *, labels: str = "fine", download: bool = True) -> ImageSet:
    """The CIFAR-100 ``"train"`` (50,000) or ``"test"`` (10,000) split as an :class:`ImageSet`.

    ``labels``: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses). Images are
    ``uint8 (N, 3, 32, 32)``; class names come from the archive's ``meta`` file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    if labels not in _LABEL_KEYS:
        raise ValueError(f"labels={labels!r}; expected 'fine' or 'coarse'")
    label_key, names_key = _LABEL_KEYS[labels]
    path = fetch(ARCHIVE, "cifar100", download=download)
    with tarfile.open(path, "r:gz") as tf:
        x, y = parse_cifar_batch(_read(tf, f"cifar-100-python/{split}"), label_key)
        meta = pickle.loads(_read(tf, "cifar-100-python/meta"), encoding="bytes")
    meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}
    if names_key not in meta:
        raise ValueError(f"{path}: meta lacks {names_key!r} (keys: {sorted(meta)})")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{path}: labels outside 0..{len(classes) - 1}")
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), classes,
                    "CIFAR-100" + (" (20 superclasses)" if labels == "coarse" else ""))
