"""2-D densities for continuous-normalizing-flow experiments: FFJORD's toy data generators.

The six sets of FFJORD's ``lib/toy_data.py`` (Grathwohl et al. 2019), with the same shapes,
scales and noise levels, so that numbers are comparable with the papers' toy figures:

========== ===================================================================================
``moons``        two interleaved half circles (radius 1), Gaussian noise 0.1, then ``2x + (-1, -0.2)``
``8gaussians``   eight Gaussians (std 0.5) on a circle of radius 4, all divided by 1.414
``circles``      two concentric circles (radii 1 and 0.5), noise 0.08, scaled by 3
``checkerboard`` uniform on the black squares of a 4x4 checkerboard on [-4, 4]^2
``pinwheel``     five curved arms (radial std 0.3, tangential std 0.1, rate 0.25), scaled by 2
``2spirals``     two interleaved spirals (540 degrees), uniform jitter 0.5/3, noise 0.1
========== ===================================================================================

Two deliberate differences from FFJORD's code, both about sampling rather than the density:

* every draw comes from the generator passed in (``numpy.random.Generator``, an int seed or a
  ``torch.Generator``) — FFJORD's checkerboard and 2spirals used numpy's global RNG;
* ``moons`` and ``circles`` place points at uniformly random angles. scikit-learn's
  ``make_moons``/``make_circles`` (which FFJORD calls) put them on an evenly spaced grid of
  angles per batch, which is not an i.i.d. sample; a held-out likelihood needs i.i.d. points.
  The densities are the same (uniform along the arcs, plus the Gaussian noise).

``sample(name, n, rng)`` returns a ``float32`` tensor of shape ``(n, 2)``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Union

import numpy as np
import torch

__all__ = ["DATASETS", "sample", "make_rng", "dataset_names"]

RNGLike = Union[np.random.Generator, int, torch.Generator, None]


def make_rng(rng: RNGLike) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a ``torch.Generator``.

    ``None`` is refused: every draw must be reproducible, so pass a seed.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng).item())
        return np.random.default_rng(seed)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng seed must be >= 0; got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, a torch.Generator or an int seed; got {rng!r}")


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    n_out = n // 2
    n_in = n - n_out
    a_out = rng.uniform(0.0, math.pi, n_out)
    a_in = rng.uniform(0.0, math.pi, n_in)
    outer = np.stack([np.cos(a_out), np.sin(a_out)], 1)
    inner = np.stack([1.0 - np.cos(a_in), 1.0 - np.sin(a_in) - 0.5], 1)
    x = np.concatenate([outer, inner]) + rng.normal(0.0, 0.1, (n, 2))
    return rng.permutation(x * 2.0 + np.array([-1.0, -0.2]))


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    s = 1.0 / math.sqrt(2.0)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    idx = rng.integers(0, 8, n)
    return (rng.normal(0.0, 0.5, (n, 2)) + centers[idx]) / 1.414


def _circles(n: int, rng: np.random.Generator) -> np.ndarray:
    n_out = n // 2
    n_in = n - n_out
    angles = rng.uniform(0.0, 2 * math.pi, n)
    radius = np.concatenate([np.ones(n_out), 0.5 * np.ones(n_in)])
    x = np.stack([np.cos(angles), np.sin(angles)], 1) * radius[:, None] + rng.normal(0.0, 0.08, (n, 2))
    return rng.permutation(x * 3.0)


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.uniform(0.0, 1.0, n) * 4 - 2
    x2_ = rng.uniform(0.0, 1.0, n) - rng.integers(0, 2, n) * 2
    x2 = x2_ + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) * 2


def _pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    labels = rng.integers(0, num_classes, n)
    features = rng.normal(0.0, 1.0, (n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
    rotations = np.reshape(rotations.T, (-1, 2, 2))
    return 2 * np.einsum("ti,tij->tj", features, rotations)


def _two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    half = n // 2
    other = n - half
    m = np.sqrt(rng.uniform(0.0, 1.0, (n, 1))) * 540 * (2 * np.pi) / 360
    dx = -np.cos(m) * m + rng.uniform(0.0, 1.0, (n, 1)) * 0.5
    dy = np.sin(m) * m + rng.uniform(0.0, 1.0, (n, 1)) * 0.5
    sign = np.concatenate([np.ones((half, 1)), -np.ones((other, 1))])
    x = sign * np.hstack([dx, dy]) / 3
    x += rng.normal(0.0, 1.0, x.shape) * 0.1
    return rng.permutation(x)


DATASETS: Dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
}


def dataset_names() -> list:
    """The names :func:`sample` accepts."""
    return list(DATASETS)


def sample(name: str, n: int, rng: RNGLike) -> torch.Tensor:
    """``n`` i.i.d. points of the 2-D density ``name`` as a ``float32`` tensor ``(n, 2)``.

    Args:
        name: one of :func:`dataset_names` (``'moons'``, ``'8gaussians'``, ``'circles'``,
            ``'checkerboard'``, ``'pinwheel'``, ``'2spirals'``).
        n: number of points (>= 1).
        rng: a ``numpy.random.Generator``, an int seed or a ``torch.Generator``; the global
            RNGs are never touched.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {dataset_names()}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    x = DATASETS[name](int(n), make_rng(rng))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
