"""UEA/UCR classification archives in the ``.ts`` format, made irregular by dropping points.

The second real check of the ODE-vs-RNN claim on irregular data (after PhysioNet): the
irregular-sampling protocol of Kidger et al., "Neural Controlled Differential Equations for
Irregular Time Series" (NeurIPS 2020, §4.1): a regularly sampled classification set from which
a fixed fraction of each series' time points is dropped at random (seeded per series), so that
every series has its own irregular observation times.

Data: ``$NEURALODE_DATA/timeseries/<Name>_{TRAIN,TEST}.ts`` (byte copies from aeon's wheel, see
that folder's README): UEA JapaneseVowels (12 channels, lengths 7-29, 9 speakers, 270 train /
370 test) and UCR PickupGestureWiimoteZ (1 channel, lengths 29-361, 10 classes, 50 / 50). Files
are verified by SHA-256 before parsing.

:func:`parse_ts` reads the format: header lines ``@key value``, then after ``@data`` one case per
line, channels separated by ``:``, values by ``,``, the class label last; ``?`` is a missing value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["FILES", "Series", "TSFormatError", "drop_points", "load", "parse_ts", "to_patients"]

#: name -> {split: SHA-256} of the copies under ``$NEURALODE_DATA/timeseries`` (their README).
FILES: dict[str, dict[str, str]] = {
    "JapaneseVowels": {
        "TRAIN": "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
        "TEST": "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
    },
    "PickupGestureWiimoteZ": {
        "TRAIN": "4d303d9990df621c066fc454d62626e3721aed008462103500b86b1ac1ca92c8",
        "TEST": "a9109bce918e48ee0e924e9cf2fdfdc4de364a3d88ec5e8aa44399ff08b11361",
    },
}


class TSFormatError(ValueError):
    """A ``.ts`` file that does not follow the format; names the source and the 1-based line."""

    def __init__(self, source: str, line: int, reason: str):
        self.source, self.line, self.reason = source, line, reason
        super().__init__(f"{source}, line {line}: {reason}")


@dataclass(frozen=True)
class Series:
    """A classification set: ``values[i]`` is ``(T_i, C)`` float32 (NaN = missing), ``labels`` int64
    indices into ``classes``."""

    values: list[np.ndarray]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def n_channels(self) -> int:
        return int(self.values[0].shape[1])


def parse_ts(lines: Iterable[str], source: str = "<ts>") -> Series:
    """Parse a ``.ts`` file's lines (see the module docstring)."""
    classes: tuple[str, ...] | None = None
    in_data = False
    values, labels = [], []
    n_ch = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel"):
                parts = line.split()
                if len(parts) < 3 or parts[1].lower() != "true":
                    raise TSFormatError(source, number, "expected '@classLabel true <labels...>'")
                classes = tuple(parts[2:])
            elif low.startswith("@data"):
                in_data = True
            continue
        if classes is None:
            raise TSFormatError(source, number, "@data before @classLabel")
        *channels, label = line.split(":")
        if label not in classes:
            raise TSFormatError(source, number, f"class label {label!r} not among {classes}")
        try:
            cols = [np.array([np.nan if v == "?" else float(v) for v in ch.split(",")], dtype=np.float32)
                    for ch in channels]
        except ValueError as exc:
            raise TSFormatError(source, number, f"not a number ({exc})") from None
        if not cols or len({len(c) for c in cols}) != 1:
            raise TSFormatError(source, number, "channels of one case must have one common length")
        if n_ch is None:
            n_ch = len(cols)
        elif len(cols) != n_ch:
            raise TSFormatError(source, number, f"{len(cols)} channels, the file's first case has {n_ch}")
        values.append(np.stack(cols, 1))
        labels.append(classes.index(label))
    if not values or classes is None:  # classes is set whenever a case was read
        raise TSFormatError(source, 0, "no cases after @data")
    return Series(values, np.asarray(labels, dtype=np.int64), classes)


def load(name: str, split: str, root: str | os.PathLike | None = None) -> Series:
    """``name``'s ``split`` ("TRAIN" or "TEST"), verified by SHA-256, from ``root`` (default
    ``$NEURALODE_DATA/timeseries``)."""
    from neuralode.data.cache import DataUnavailableError, Resource, verify

    if name not in FILES:
        raise ValueError(f"name must be one of {sorted(FILES)}, got {name!r}")
    if split not in ("TRAIN", "TEST"):
        raise ValueError(f"split must be 'TRAIN' or 'TEST', got {split!r}")
    if root is None:
        env = os.environ.get("NEURALODE_DATA")
        if not env:
            raise DataUnavailableError(f"{name}_{split}.ts: set NEURALODE_DATA to the folder holding timeseries/")
        root = Path(env) / "timeseries"
    path = Path(root) / f"{name}_{split}.ts"
    bad = verify(path, Resource(path.name, sha256=FILES[name][split]))
    if bad is not None:
        raise DataUnavailableError(f"{path}: {bad}")
    with open(path, encoding="utf-8") as fh:
        return parse_ts(fh, str(path))


def drop_points(lengths: Iterable[int], frac: float, seed: int) -> list[np.ndarray]:
    """Per series, a boolean keep-mask over its time points with ``round(frac * T)`` points dropped
    at random (at least one kept); series ``i`` draws from ``default_rng([seed, i])`` alone."""
    if not 0 <= frac < 1:
        raise ValueError(f"frac must be in [0, 1), got {frac}")
    keeps = []
    for i, T in enumerate(lengths):
        rng = np.random.default_rng([seed, i])
        n_drop = min(int(round(frac * T)), T - 1)
        keep = np.ones(T, dtype=bool)
        keep[rng.choice(T, size=n_drop, replace=False)] = False
        keeps.append(keep)
    return keeps


def to_patients(series: Series, keeps: list[np.ndarray], mean: np.ndarray, std: np.ndarray, time_unit: float):
    """Irregular series as :class:`neuralode.data.physionet.Patient` records (so that
    :func:`~neuralode.data.physionet.collate` batches them on the union of their times): the kept
    points at times ``index * time_unit``, values standardised by ``mean``/``std`` per channel,
    missing values unobserved; ``label`` is the class index."""
    from neuralode.data.physionet import Patient

    out = []
    for i, (v, keep) in enumerate(zip(series.values, keeps)):
        idx = np.flatnonzero(keep)
        x = (v[idx] - mean) / std
        m = np.isfinite(x)
        out.append(Patient(record_id=i, times=(idx * time_unit).astype(np.float32),
                           values=np.where(m, x, 0.0).astype(np.float32), mask=m.astype(np.float32),
                           label=int(series.labels[i]), static=np.zeros(0, np.float32)))
    return out
