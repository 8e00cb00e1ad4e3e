"""Shared helpers for the benchmark scripts: timing, evaluation counting, accuracy, peers.

Timing is wall-clock (``time.perf_counter``) and, alongside it, the process's CPU time
(``time.process_time``) on one thread; every figure is the median of several repeats, and
scripts interleave the solvers repeat by repeat so that load from other processes on a shared
machine hits all of them alike. On a loaded machine the CPU time is the steadier of the two
(a descheduled process accrues wall time but no CPU time); on an idle one they agree.
"""

from __future__ import annotations

import collections
import importlib
import platform
import statistics
import time
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def setup(threads: int = 1, seed: int = 0) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def environment() -> str:
    return (f"python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")


class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # seconds of this process's CPU time


def time_once(fn: Callable[[], object]) -> Timing:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall0, time.process_time() - cpu0)


def _median(samples: list[Timing]) -> Timing:
    return Timing(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Median wall and CPU time of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    return _median([time_once(fn) for _ in range(repeats)])


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Median wall and CPU time per entry, running the entries in turn within each repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[Timing]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn))
    return {name: _median(s) for name, s in samples.items()}


def one_eval_cost(field: Callable, t: torch.Tensor, y: torch.Tensor, calls: int = 100, repeats: int = 5) -> Timing:
    """Median wall and CPU seconds of one ``field(t, y)`` call, in the conditions of a solve.

    Autograd is on and the outputs are kept until the batch of calls ends, so each call's graph
    and activations stay alive (fresh memory every call) exactly as they do inside a forward
    solve that will be backpropagated; freeing them at once would let the allocator recycle one
    buffer and understate the cost.
    """

    def run():
        kept = [field(t, y) for _ in range(calls)]
        del kept

    m = median_time(run, repeats=repeats)
    return Timing(m.wall / calls, m.cpu / calls)


class EpochRun:
    """The pieces of an experiment's ``Run`` that loading data and one training epoch use (prints
    ``info``, drops ``log``): lets a benchmark time an experiment's epoch without a run folder."""

    device = torch.device("cpu")

    def info(self, msg: str) -> None:
        print(f"  {msg}")

    def log(self, *args, **kwargs) -> None:
        pass


class TanhMLP(nn.Module):
    """``dy/dt = MLP(y)``: Linear layers of ``widths`` with tanh between them (the benchmarks' neural field)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, t, y, args=None):
        return self.net(y)


class Counting(nn.Module):
    """Counts calls of a field ``f(t, y)``; also accepts torchdyn's ``args`` keyword.

    While a call is running ``inside`` is True, which lets :class:`SolverOpCounter` tell the
    solver's own tensor operations from the field's.
    """

    def __init__(self, field: Callable):
        super().__init__()
        self.field = field
        self.calls = 0
        self.inside = False

    def forward(self, t, x, args=None):
        self.calls += 1
        self.inside = True
        try:
            return self.field(t, x)
        finally:
            self.inside = False


class SolverOpCounter(TorchDispatchMode):
    """Counts the ATen operations a solver runs outside the field's calls.

    A load-independent measure of per-step overhead: on small fields each such operation (with
    its autograd bookkeeping) costs a few microseconds whatever else the machine is doing.
    """

    def __init__(self, counting: Counting):
        super().__init__()
        self.counting = counting
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.counting.inside:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


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
