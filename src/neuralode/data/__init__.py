"""Data sets: real data with download → verify → cache (``cache.py``), embedded and generated data.

Imports are lazy: ``neuralode.data.load_mnist`` imports ``neuralode.data.mnist`` on first use,
so adding a data module costs nothing to the others. To add one, put the module here and add
its public names to ``_EXPORTS`` (name -> module).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # cache.py — shared download/verify/cache helper
    "DataUnavailableError": "cache",
    "ChecksumError": "cache",
    "Resource": "cache",
    "cache_dir": "cache",
    "data_root": "cache",
    "fetch": "cache",
    "fetch_all": "cache",
    # images
    "ImageSet": "images",
    "load_mnist": "mnist",
    "load_cifar10": "cifar10",
    "load_digits": "digits",
    "load_cifar100": "cifar100",
    # single-image depth: rendered scenes, real Middlebury scenes
    "load_depth_scenes": "render",
    "load_aloe": "middlebury",
    "load_motorcycle": "middlebury",
    # generated data
    "load_toy2d": "toy2d",
    "make_toy2d": "toy2d",
    "cubic_spiral": "trajectories",
    "linear_system": "trajectories",
    "snippet_batch": "trajectories",
    "generate_spirals": "spirals",
    "Spirals": "spirals",
    "sample_density": "densities",
    # real irregular time series
    "load_physionet": "physionet",
}

# names that differ from the module's own
_ALIASES: dict[str, str] = {"sample_density": "sample", "load_physionet": "load_set"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuralode.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), _ALIASES.get(name, name))


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
