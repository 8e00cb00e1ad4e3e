"""Two-dimensional binary classification data: half moons, concentric annuli, interleaved spirals.

Generated, seeded and split here; nothing is downloaded. Every loader returns a :class:`Toy2D`
with float32 points ``x`` of shape ``(N, 2)`` and integer labels ``y`` in ``{0, 1}``.

* ``moons``: scikit-learn's two interleaving half circles (``make_moons``), with Gaussian noise.
* ``annuli``: Dupont et al. (2019, "Augmented Neural ODEs", the *concentric spheres* data in
  2-D): class 0 uniform (by area) on the disc of radius < 0.5, class 1 uniform on the annulus
  1 < r < 1.5. A plain Neural ODE cannot separate them with a linear readout, because its flow
  is a homeomorphism of the plane and the outer ring must stay around the inner disc.
* ``spirals``: two interleaved concentric spirals (one rotated by pi), as in Lang & Witbrock's
  two-spirals problem, radius growing linearly with the angle, plus Gaussian noise.

The test split is drawn independently of the training split (different seeds derived from
``seed``), so the same ``seed`` always gives the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DATASETS", "Toy2D", "annuli", "load_toy2d", "make_toy2d", "moons", "spirals"]

DATASETS = ("moons", "annuli", "spirals")


@dataclass
class Toy2D:
    """Points ``x`` (N, 2) float32 and labels ``y`` (N,) int64 in {0, 1}."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = ""

    def __len__(self) -> int:
        return len(self.y)


def moons(n: int, *, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's half moons: ``n`` points (split evenly), labels 0 (upper) / 1 (lower)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    # centre it: the moons live in [-1, 2] x [-0.5, 1]
    return (x - np.array([0.5, 0.25])).astype(np.float32), y.astype(np.int64)


def annuli(n: int, *, inner: tuple[float, float] = (0.0, 0.5), outer: tuple[float, float] = (1.0, 1.5),
           frac_inner: float = 1 / 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dupont et al.'s concentric data in 2-D: class 0 in the disc r < 0.5, class 1 for 1 < r < 1.5.

    Points are uniform by area in each region (radius ``sqrt`` of a uniform draw between the
    squared radii). ``frac_inner`` of the points are inner (Dupont et al.: 1,000 inner and
    2,000 outer points, i.e. 1/3).
    """
    if not (0 <= inner[0] < inner[1] <= outer[0] < outer[1]):
        raise ValueError(f"need 0 <= inner[0] < inner[1] <= outer[0] < outer[1]; got inner={inner}, outer={outer}")
    rng = np.random.default_rng(seed)
    n_in = int(round(n * frac_inner))
    n_out = n - n_in

    def ring(m: int, lo: float, hi: float) -> np.ndarray:
        r = np.sqrt(rng.uniform(lo**2, hi**2, m))
        phi = rng.uniform(0.0, 2 * math.pi, m)
        return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)

    x = np.concatenate([ring(n_in, *inner), ring(n_out, *outer)])
    y = np.concatenate([np.zeros(n_in, np.int64), np.ones(n_out, np.int64)])
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), y[perm]


def spirals(n: int, *, turns: float = 1.5, noise: float = 0.05, radius: float = 1.5,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals ``r = radius * s``, angle ``2 pi turns s`` (+ pi for class 1).

    ``s`` is drawn so that points are roughly uniform along the arc (``s = sqrt(u)``), with a
    small offset so the spirals do not meet at the origin; Gaussian noise of std ``noise``.
    """
    rng = np.random.default_rng(seed)
    n0 = n // 2
    labels = np.concatenate([np.zeros(n0, np.int64), np.ones(n - n0, np.int64)])
    s = 0.1 + 0.9 * np.sqrt(rng.uniform(0.0, 1.0, n))
    angle = 2 * math.pi * turns * s + math.pi * labels
    r = radius * s
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1) + noise * rng.standard_normal((n, 2))
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), labels[perm]


_MAKERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {"moons": moons, "annuli": annuli, "spirals": spirals}


def make_toy2d(name: str, n: int, *, seed: int = 0, **kwargs) -> Toy2D:
    """``n`` points of data set ``name`` (one of :data:`DATASETS`); ``kwargs`` go to its maker."""
    if name not in _MAKERS:
        raise ValueError(f"unknown 2-D data set {name!r}; valid: {', '.join(DATASETS)}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    x, y = _MAKERS[name](n, seed=seed, **kwargs)
    return Toy2D(torch.from_numpy(x), torch.from_numpy(y), name)


def load_toy2d(name: str, *, n_train: int = 2000, n_test: int = 1000, seed: int = 0,
               **kwargs) -> tuple[Toy2D, Toy2D]:
    """Seeded ``(train, test)`` splits of data set ``name``, drawn independently."""
    train = make_toy2d(name, n_train, seed=2 * seed, **kwargs)
    test = make_toy2d(name, n_test, seed=2 * seed + 1, **kwargs)
    return train, test
