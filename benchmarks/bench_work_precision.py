"""Work–precision: achieved error against NFE and CPU time, neuralode vs torchdiffeq, torchode, torchdyn, SciPy.

Run from the repository root (one process, one thread):

    .venv/bin/python benchmarks/bench_work_precision.py            # default size, ~10 min on one core
    .venv/bin/python benchmarks/bench_work_precision.py --full     # issue 13's full sweep (batch sizes of
                                                                   # training, every tolerance, 5 repeats)
    .venv/bin/python benchmarks/bench_work_precision.py --problems vdp spiral --tols 1e-3 1e-6

Problems (float64 so that the tight tolerances mean something; forward solves without autograd;
the error is the relative L2 error ``‖y(t1) - y_ref‖ / ‖y_ref‖`` against neuralode's dopri8 at
rtol = atol = 1e-12 on the same field; default / ``--full`` sizes):

  mlp      2→64→64→2 tanh MLP field, batch 128 / 512, t ∈ [0, 1] (bench_odeint's problem (a))
  cnf      2-D continuous normalizing flow, state [z, log p], exact trace by autograd, tanh MLP
           3→64→64→2 of (z, t), batch 128 / 512, t ∈ [0, 1]
  odenet   torchdiffeq's odenet_mnist block (GroupNorm–ReLU–ConcatConv 65→64, twice), state
           B×64×6×6, B = 4 / 128, t ∈ [0, 1]; tolerances down to 1e-6 / 1e-8
  vdp      Van der Pol, μ = 1, y0 = (2, 0), t ∈ [0, 10]
  spiral   torchdiffeq's cubic spiral dy/dt = y³ A, A = [[-0.1, 2], [-2, -0.1]], y0 = (2, 0), t ∈ [0, 10]

Solvers, by family (a library's equivalent of a method is compared with it):

  dopri5  neuralode, torchdiffeq, torchode (Dopri5 + IntegralController), torchdyn, SciPy RK45
  tsit5   neuralode, torchode (Tsit5), torchdyn
  bosh3   neuralode, torchdiffeq, SciPy RK23
  dopri8  neuralode, torchdiffeq, SciPy DOP853

For each problem it prints every point (library, method, tolerance: error, NFE, CPU ms), then the
comparison at equal error: for each of our points, the peer's NFE and time needed for the same
error, interpolated log–log along the peer's Pareto frontier (its cheapest point when our error
is looser than all of the peer's; "n/a" when it is tighter). A ratio ≤ 1 means our point lies on
or below the peer's curve. It ends with the target check (every point of ours on or below every
peer of its family) and the headline: our best frontier against the best peer's at equal error.
Plots (log–log, one line per library and method; error vs NFE and error vs time) go to
``--out`` (default ``runs/work_precision``) together with ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Counting, TanhMLP, environment, import_peer, setup  # noqa: E402

import neuralode  # noqa: E402

DEFAULT_TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
FAMILIES = ("dopri5", "tsit5", "bosh3", "dopri8")


# --------------------------------------------------------------------------- fields

class CNFField(nn.Module):
    """``[z, log p] -> [f(z, t), -tr ∂f/∂z]`` with the exact trace (two autograd passes in 2-D)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2))

    def forward(self, t, state, args=None):
        z = state[:, :2]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            tt = torch.ones_like(z[:, :1]) * (t.reshape(-1, 1) if t.dim() else t)  # torchode: one t per row
            f = self.net(torch.cat([z, tt], 1))
            div = 0.0
            for i in range(2):
                div = div + torch.autograd.grad(f[:, i].sum(), z, retain_graph=True)[0][:, i]
        return torch.cat([f.detach(), -div.detach()[:, None]], 1)


class ConcatConv2d(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.layer = nn.Conv2d(dim_in + 1, dim_out, kernel_size=3, stride=1, padding=1)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1, :, :]) * (t.reshape(-1, 1, 1, 1) if t.dim() else t)  # torchode: one t per row
        return self.layer(torch.cat([tt, x], 1))


class ODENetField(nn.Module):
    """torchdiffeq's odenet_mnist ODEfunc; takes the state flat per sample, ``(B, 64·6·6)``."""

    def __init__(self, dim=64, size=6):
        super().__init__()
        self.dim, self.size = dim, size
        self.norm1 = nn.GroupNorm(min(32, dim), dim)
        self.conv1 = ConcatConv2d(dim, dim)
        self.norm2 = nn.GroupNorm(min(32, dim), dim)
        self.conv2 = ConcatConv2d(dim, dim)
        self.norm3 = nn.GroupNorm(min(32, dim), dim)

    def forward(self, t, y, args=None):
        x = y.reshape(y.shape[0], self.dim, self.size, self.size)
        out = torch.relu(self.norm1(x))
        out = self.conv1(t, out)
        out = torch.relu(self.norm2(out))
        out = self.conv2(t, out)
        return self.norm3(out).reshape(y.shape)


class VanDerPol(nn.Module):
    def __init__(self, mu=1.0):
        super().__init__()
        self.mu = mu

    def forward(self, t, y, args=None):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], -1)


class CubicSpiral(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("A", torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))

    def forward(self, t, y, args=None):
        return (y ** 3) @ self.A.to(y.dtype)


@dataclass
class Problem:
    name: str
    description: str
    field: nn.Module
    y0: torch.Tensor  # (batch, features): every library's layout; SciPy sees it flattened
    t: torch.Tensor
    tols: Tuple[float, ...]
    y_ref: Optional[torch.Tensor] = None
    points: List[dict] = field(default_factory=list)


def make_problem(name: str, full: bool, tols: Optional[Tuple[float, ...]], device: str = "cpu") -> Problem:
    torch.manual_seed(0)
    dt = torch.float64
    t01 = torch.tensor([0.0, 1.0], dtype=dt)
    t10 = torch.tensor([0.0, 10.0], dtype=dt)
    if name == "mlp":
        b = 512 if full else 128
        p = Problem(name, f"2-64-64-2 tanh MLP, batch {b}, t in [0, 1]", TanhMLP([2, 64, 64, 2]),
                    torch.randn(b, 2), t01, DEFAULT_TOLS)
    elif name == "cnf":
        b = 512 if full else 128
        y0 = torch.cat([torch.randn(b, 2), torch.zeros(b, 1)], 1)
        p = Problem(name, f"2-D CNF [z, log p], exact trace, batch {b}, t in [0, 1]", CNFField(), y0, t01,
                    DEFAULT_TOLS)
    elif name == "odenet":
        b = 128 if full else 4
        p = Problem(name, f"ODE-Net MNIST block, state {b}x64x6x6, t in [0, 1]", ODENetField(),
                    torch.randn(b, 64 * 36), t01, DEFAULT_TOLS if full else DEFAULT_TOLS[:4])
    elif name == "vdp":
        p = Problem(name, "Van der Pol mu=1, y0=(2, 0), t in [0, 10]", VanDerPol(1.0),
                    torch.tensor([[2.0, 0.0]]), t10, DEFAULT_TOLS)
    elif name == "spiral":
        p = Problem(name, "cubic spiral y' = y^3 A, y0=(2, 0), t in [0, 10]", CubicSpiral(),
                    torch.tensor([[2.0, 0.0]]), t10, DEFAULT_TOLS)
    else:
        raise ValueError(f"unknown problem {name!r}")
    p.field = p.field.to(dtype=dt, device=device)
    for param in p.field.parameters():
        param.requires_grad_(False)
    p.y0 = p.y0.to(dtype=dt, device=device)
    p.t = p.t.to(device)
    if tols:
        p.tols = tuple(tols)
    return p


def reference(p: Problem) -> torch.Tensor:
    with torch.no_grad():
        return neuralode.odeint(p.field, p.y0, p.t, method="dopri8", rtol=1e-12, atol=1e-12)[-1]


# --------------------------------------------------------------------------- solvers

Runner = Callable[[Callable, torch.Tensor, torch.Tensor, float], torch.Tensor]


def ours(method: str) -> Runner:
    def run(f, y0, t, tol):
        return neuralode.odeint(f, y0, t, method=method, rtol=tol, atol=tol)[-1]
    return run


def torchdiffeq_runner(mod, method: str) -> Runner:
    def run(f, y0, t, tol):
        return mod.odeint(f, y0, t, method=method, rtol=tol, atol=tol)[-1]
    return run


def torchode_runner(mod, method: str) -> Runner:
    step_cls = {"dopri5": mod.Dopri5, "tsit5": mod.Tsit5}[method]

    def run(f, y0, t, tol):
        term = mod.ODETerm(f)
        solver = mod.AutoDiffAdjoint(step_cls(term=term), mod.IntegralController(atol=tol, rtol=tol, term=term))
        sol = solver.solve(mod.InitialValueProblem(y0=y0, t_eval=t.expand(y0.shape[0], -1)))
        return sol.ys[:, -1]
    return run


def torchdyn_runner(mod, method: str) -> Runner:
    def run(f, y0, t, tol):
        return mod.odeint(f, y0, t, solver=method, atol=tol, rtol=tol)[1][-1]
    return run


def scipy_runner(method: str) -> Runner:
    from scipy.integrate import solve_ivp

    def run(f, y0, t, tol):
        shape = y0.shape

        def rhs(s, y):
            yy = torch.from_numpy(y).reshape(shape)
            return f(torch.tensor(s, dtype=y0.dtype), yy).reshape(-1).numpy()

        sol = solve_ivp(rhs, (float(t[0]), float(t[-1])), y0.reshape(-1).numpy(), method=method, rtol=tol, atol=tol)
        if not sol.success:
            raise RuntimeError(sol.message)
        return torch.from_numpy(sol.y[:, -1]).reshape(shape)
    return run


def solvers(peers: dict) -> List[Tuple[str, str, str, Runner]]:
    """(library, method label, family, runner) for every installed solver."""
    out = [("neuralode", m, m, ours(m)) for m in FAMILIES]
    if peers.get("torchdiffeq") is not None:
        out += [("torchdiffeq", m, m, torchdiffeq_runner(peers["torchdiffeq"], m)) for m in ("dopri5", "bosh3", "dopri8")]
    if peers.get("torchode") is not None:
        out += [("torchode", m, m, torchode_runner(peers["torchode"], m)) for m in ("dopri5", "tsit5")]
    if peers.get("torchdyn") is not None:
        out += [("torchdyn", m, m, torchdyn_runner(peers["torchdyn"], m)) for m in ("dopri5", "tsit5")]
    if peers.get("scipy"):
        out += [("scipy", m, fam, scipy_runner(m)) for m, fam in (("RK45", "dopri5"), ("RK23", "bosh3"),
                                                                 ("DOP853", "dopri8"))]
    return out


# --------------------------------------------------------------------------- measuring

def rel_error(y: torch.Tensor, y_ref: torch.Tensor) -> float:
    y = y.detach().to(torch.float64).reshape(-1)
    y_ref = y_ref.reshape(-1)
    return float((y - y_ref).norm() / y_ref.norm())


def _clock(device: torch.device) -> Callable[[], float]:
    """CPU time on CPU (steadier on shared cores); synchronised wall time on a GPU."""
    if device.type == "cuda":
        def clock():
            torch.cuda.synchronize()
            return time.perf_counter()
        return clock
    return time.process_time


def measure(p: Problem, entries, repeats: int, max_seconds: float) -> None:
    """Every solver at every tolerance: one counted run (NFE, error; it also warms up), then
    ``repeats`` timed runs, interleaved solver by solver within each repeat so that load from
    other processes hits every library alike; the time is their median."""
    clock = _clock(p.y0.device)
    for tol in p.tols:
        done = []
        for lib, method, family, run in entries:
            counter = Counting(p.field)
            try:
                with torch.no_grad():
                    start = clock()
                    y = run(counter, p.y0, p.t, tol)
                    first = clock() - start
            except Exception as exc:  # a peer failing at a tolerance is a result, not a crash
                print(f"  {lib} {method} tol={tol:g}: failed ({type(exc).__name__}: {str(exc)[:80]})")
                continue
            point = {"library": lib, "method": method, "family": family, "tol": tol,
                     "error": max(rel_error(y, p.y_ref), 1e-17), "nfe": counter.calls, "time": first}
            done.append((point, run, [] if first < max_seconds else [first]))
        with torch.no_grad():
            for _ in range(repeats):
                for point, run, times in done:
                    if point["time"] < max_seconds:
                        start = clock()
                        run(p.field, p.y0, p.t, tol)
                        times.append(clock() - start)
        for point, _, times in done:
            point["time"] = statistics.median(times) if times else point["time"]
            p.points.append(point)


# --------------------------------------------------------------------------- comparing

def frontier(points: List[dict], cost: str) -> List[Tuple[float, float]]:
    """Pareto frontier (error ascending, cost descending) as (log error, log cost) pairs."""
    pts = sorted((pt["error"], pt[cost]) for pt in points)
    out: List[Tuple[float, float]] = []
    for err, c in pts:
        if not out or c < math.exp(out[-1][1]):
            out.append((math.log(err), math.log(c)))
    return out


def cost_at(front: List[Tuple[float, float]], error: float) -> Tuple[Optional[float], str]:
    """The peer's cost for ``error``, interpolated log–log along its frontier, and a mark.

    '*': our error is looser than every error the peer reached; the cost is that of its
    cheapest point (the peer's cost for our error is at most that, so the ratio flatters us).
    '<': our error is tighter than every error the peer reached; the cost is that of its most
    accurate point, a lower bound of what the peer would pay for our error: a ratio ≤ 1 means
    we dominate that point (more accurate and no dearer), a ratio > 1 decides nothing.
    """
    if not front:
        return None, ""
    le = math.log(error)
    if le < front[0][0]:
        return math.exp(front[0][1]), "<"
    if le >= front[-1][0]:
        return math.exp(front[-1][1]), "*"
    for (e0, c0), (e1, c1) in zip(front, front[1:]):
        if e0 <= le <= e1:
            w = 0.0 if e1 == e0 else (le - e0) / (e1 - e0)
            return math.exp(c0 + w * (c1 - c0)), ""
    return None, ""


def compare(p: Problem) -> dict:
    """Ratios ours / peer at equal error, per family and for the best frontiers."""
    out: dict = {"families": {}, "best": {}}
    libs = sorted({pt["library"] for pt in p.points} - {"neuralode"})
    print(f"\n### {p.name}: ours / peer at equal error (NFE ratio/time ratio; * = vs the peer's cheapest "
          f"point, less accurate than ours; < = our error is below every error the peer reached: vs its most "
          f"accurate point)")
    for fam in FAMILIES:
        mine = sorted((pt for pt in p.points if pt["library"] == "neuralode" and pt["family"] == fam),
                      key=lambda pt: -pt["tol"])
        for lib in libs:
            theirs = [pt for pt in p.points if pt["library"] == lib and pt["family"] == fam]
            if not theirs or not mine:
                continue
            fn, ft = frontier(theirs, "nfe"), frontier(theirs, "time")
            cells, rows = [], []
            for pt in mine:
                cn, mark_n = cost_at(fn, pt["error"])
                ct, mark_t = cost_at(ft, pt["error"])
                rn = None if cn is None else pt["nfe"] / cn
                rt = None if ct is None else pt["time"] / ct
                rows.append({"tol": pt["tol"], "nfe_ratio": rn, "time_ratio": rt, "nfe_mark": mark_n,
                             "time_mark": mark_t})
                cells.append(f"{pt['tol']:.0e}: " + ("-" if rn is None else f"{rn:.2f}{mark_n}") + "/"
                             + ("-" if rt is None else f"{rt:.2f}{mark_t}"))
            out["families"].setdefault(fam, {})[lib] = rows
            print(f"  {fam:7s} vs {lib:12s} " + "  ".join(cells))
    # Our best (any method) against the best peer (any library, any method), at our frontier's errors.
    ours_pts = [pt for pt in p.points if pt["library"] == "neuralode"]
    peer_pts = [pt for pt in p.points if pt["library"] != "neuralode"]
    for cost in ("nfe", "time"):
        mine = frontier(ours_pts, cost)
        theirs = frontier(peer_pts, cost)
        ratios = []
        for le, lc in mine:
            c, mark = cost_at(theirs, math.exp(le))
            if c is not None and mark != "<":  # the headline compares within the peers' range only
                ratios.append((math.exp(le), math.exp(lc) / c, mark))
        out["best"][cost] = ratios
    for cost in ("nfe", "time"):
        r = out["best"][cost]
        if r:
            gm = math.exp(statistics.mean(math.log(x) for _, x, _ in r))
            cells = "  ".join(f"{e:.0e}:{x:.2f}{m}" for e, x, m in r)
            print(f"  best-of-ours vs best peer, {cost}: geometric mean {gm:.2f}, worst {max(x for _, x, _ in r):.2f} "
                  f"[error:ratio {cells}]")
    return out


def target_check(p: Problem, comparison: dict) -> Tuple[int, int, int, List[str]]:
    """Points of ours on or below every same-family peer's curve (ratio ≤ 1 for NFE and for time).

    Returns (on or below, compared, beyond, misses): ``beyond`` counts our points whose error
    is below every error that peer reached but which cost more than the peer's most accurate
    point (its curve does not reach there, so they are neither on/below nor above it). Points
    below every peer error that cost no more than the peer's most accurate point dominate it and
    count as on/below.
    """
    ok = total = beyond = 0
    misses = []
    for fam, by_lib in comparison["families"].items():
        for lib, rows in by_lib.items():
            for row in rows:
                for key in ("nfe_ratio", "time_ratio"):
                    if row[key] is None:
                        continue
                    if row[key.replace("ratio", "mark")] == "<" and row[key] > 1.0 + 1e-9:
                        beyond += 1  # more accurate than the peer ever got, at a higher cost: undecided
                        continue
                    total += 1
                    if row[key] <= 1.0 + 1e-9:
                        ok += 1
                    else:
                        misses.append(f"{fam} vs {lib} tol {row['tol']:.0e} {key[:-6]} {row[key]:.2f}")
    return ok, total, beyond, misses


def plot(problems: List[Problem], path: str) -> None:
    """Per problem, error vs NFE (top) and vs time (bottom), log–log: one line per library, its
    Pareto frontier over all of its methods (the cheapest way that library reaches each error),
    with every measured point as a faint marker (shape = method family)."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"neuralode": "C3", "torchdiffeq": "C0", "torchode": "C2", "torchdyn": "C1", "scipy": "C7"}
    markers = {"dopri5": "o", "tsit5": "s", "bosh3": "^", "dopri8": "D"}
    fig, axes = plt.subplots(2, len(problems), figsize=(3.3 * len(problems), 6.0), squeeze=False)
    for col, p in enumerate(problems):
        libs = sorted({pt["library"] for pt in p.points}, key=lambda lib: (lib != "neuralode", lib))
        for row, cost in enumerate(("nfe", "time")):
            ax = axes[row][col]
            scale = 1e3 if cost == "time" else 1.0
            for lib in libs:
                pts = [pt for pt in p.points if pt["library"] == lib]
                for fam in FAMILIES:
                    fp = [pt for pt in pts if pt["family"] == fam]
                    ax.scatter([pt[cost] * scale for pt in fp], [pt["error"] for pt in fp], marker=markers[fam],
                               s=10, color=colors.get(lib, "k"), alpha=0.35, linewidths=0)
                front = frontier(pts, cost)
                ax.loglog([math.exp(c) * scale for _, c in front], [math.exp(e) for e, _ in front],
                          color=colors.get(lib, "k"), lw=2.2 if lib == "neuralode" else 1.1, label=lib,
                          zorder=3 if lib == "neuralode" else 2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("NFE" if cost == "nfe" else ("CPU ms" if p.y0.device.type == "cpu" else "ms"), fontsize=8)
            if col == 0:
                ax.set_ylabel("relative error at t1", fontsize=8)
            ax.set_title(p.name, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72, format="png")
    plt.close(fig)


def write_results(out: str, repeats: int, problems: List[Problem], headline: dict, counts: dict) -> None:
    """``results.json`` (every point, the headline ratios, the target counts) and the plot, atomically."""
    path = os.path.join(out, "results.json")
    with open(path + ".tmp", "w") as fh:
        json.dump({"environment": environment(), "repeats": repeats,
                   "problems": {p.name: {"description": p.description, "points": p.points} for p in problems},
                   "best": headline, "target": counts}, fh, indent=1)
    os.replace(path + ".tmp", path)
    plot(problems, os.path.join(out, "work_precision.png.tmp"))
    os.replace(os.path.join(out, "work_precision.png.tmp"), os.path.join(out, "work_precision.png"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="training batch sizes, every tolerance, 5 repeats")
    parser.add_argument("--problems", nargs="+", default=["mlp", "cnf", "odenet", "vdp", "spiral"])
    parser.add_argument("--tols", nargs="+", type=float, default=None, help="override every problem's tolerances")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per point (median; default 3, full 5)")
    parser.add_argument("--max-seconds", type=float, default=1.0, help="no repeats for a point slower than this")
    parser.add_argument("--libraries", nargs="+", default=None, help="restrict to these libraries")
    parser.add_argument("--out", default="runs/work_precision")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-json", default=None, help="compare and plot the points of an earlier run's "
                                                          "results.json instead of measuring")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (SciPy is skipped off the CPU; times are "
                                                        "CPU time on CPU, synchronised wall time on a GPU)")
    args = parser.parse_args(argv)
    setup(threads=args.threads)
    repeats = args.repeats or (5 if args.full else 3)

    peers = {"torchdiffeq": import_peer("torchdiffeq"), "torchode": import_peer("torchode"),
             "scipy": args.device == "cpu"}
    peers["torchdyn"] = import_peer("torchdyn.numerics")
    entries = solvers(peers)
    if args.libraries:
        entries = [e for e in entries if e[0] in args.libraries]
    os.makedirs(args.out, exist_ok=True)
    print(f"environment: {environment()}; device {args.device}; {'CPU' if args.device == 'cpu' else 'wall'} time, "
          f"median of {repeats} runs (1 run above {args.max_seconds} s)")
    earlier = None
    if args.from_json:
        with open(args.from_json) as fh:
            loaded = json.load(fh)
        earlier, repeats = loaded["problems"], loaded["repeats"]
        args.problems = [name for name in args.problems if name in earlier]
    problems = []
    all_ok = all_total = all_beyond = 0
    headline: dict = {}
    counts: dict = {}
    for name in args.problems:
        p = make_problem(name, args.full, args.tols, args.device)
        start = time.time()
        if earlier is not None:
            p.description, p.points = earlier[name]["description"], earlier[name]["points"]
        else:
            p.y_ref = reference(p)
            measure(p, entries, repeats, args.max_seconds)
        print(f"\n## {p.name}: {p.description} ({time.time() - start:.0f} s)")
        print(f"{'library':12s} {'method':8s} {'tol':>7s} {'error':>9s} {'NFE':>6s} {'CPU ms':>9s}")
        for pt in p.points:
            print(f"{pt['library']:12s} {pt['method']:8s} {pt['tol']:7.0e} {pt['error']:9.2e} {pt['nfe']:6d} "
                  f"{pt['time'] * 1e3:9.2f}")
        comparison = compare(p)
        ok, total, beyond, misses = target_check(p, comparison)
        all_ok += ok
        all_total += total
        all_beyond += beyond
        counts[p.name] = {"on_or_below": ok, "compared": total, "beyond_peer_range": beyond, "misses": misses}
        print(f"  target (ours on or below every same-family peer): {ok}/{total} comparisons, {beyond} more "
              f"beyond the peer's range and dearer than its most accurate point (undecided)"
              + (f"; misses: {'; '.join(misses)}" if misses else ""))
        headline[p.name] = comparison["best"]
        problems.append(p)
        sys.stdout.flush()
        write_results(args.out, repeats, problems, headline, counts)  # after every problem: a late one loses nothing
    print(f"\n## targets\n{'PASS' if all_ok == all_total else 'FAIL'}  on or below every same-family peer's curve: "
          f"{all_ok}/{all_total} comparisons (NFE and time; {all_beyond} more undecided: below every error the peer "
          f"reached, but dearer than its most accurate point)")
    if problems:
        print(f"wrote {args.out}/results.json and {args.out}/work_precision.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
