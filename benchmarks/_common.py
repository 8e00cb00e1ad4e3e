"""Shared helpers for the benchmark scripts: timing, evaluation counting, accuracy, peers.

Timing is wall-clock (``time.perf_counter``) on one thread; every figure is the median of
several repeats, and scripts interleave the solvers repeat by repeat so that load from other
processes on a shared machine hits all of them alike.
"""

from __future__ import annotations

import importlib
import platform
import statistics
import time
from typing import Callable, Optional

import torch
from torch import nn


def setup(threads: int = 1, seed: int = 0) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def environment() -> str:
    return (f"python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn) for _ in range(repeats))


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time per entry, running the entries in turn within each repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def one_eval_cost(field: Callable, t: torch.Tensor, y: torch.Tensor, calls: int = 200, repeats: int = 5) -> float:
    """Median seconds of one ``field(t, y)`` call (autograd on, as in the solves being compared)."""

    def run():
        for _ in range(calls):
            field(t, y)

    return median_time(run, repeats=repeats) / calls


class Counting(nn.Module):
    """Counts calls of a field ``f(t, y)``; also accepts torchdyn's ``args`` keyword."""

    def __init__(self, field: Callable):
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t, x, args=None):
        self.calls += 1
        return self.field(t, x)


def count_calls(field: Callable, run: Callable[[Callable], object]) -> int:
    counter = Counting(field)
    run(counter)
    return counter.calls


def tolerance_units(y: torch.Tensor, y_ref: torch.Tensor, rtol: float, atol: float) -> float:
    """max over elements of |y - y_ref| / (atol + rtol |y_ref|)."""
    y = y.detach().to(torch.float64)
    y_ref = y_ref.detach().to(torch.float64)
    return float(((y - y_ref).abs() / (atol + rtol * y_ref.abs())).max())


def import_peer(name: str) -> Optional[object]:
    """The peer module, or None with a printed note when it is not installed."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a peer whose own imports are broken
        print(f"note: {name} not importable ({type(exc).__name__}: {exc}); skipping it")
        return None
