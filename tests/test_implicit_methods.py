"""The implicit methods: tableaus, convergence orders on a stiff linear system, stability,
the Jacobian forms, Newton failures, and the torchdiffeq option surface.

The stiff linear system y' = M y has eigenvalues -1 and -1000 and the closed form
expm(M t) y0. L-stable methods are measured from a generic y0 (the stiff mode is damped by
R(-1000 h) → 0 in the first steps). Methods that are A- but not L-stable (the Gauss methods,
the trapezoidal rule) keep |R(-1000 h)| ≈ 1 at these steps, so a stiff component would
ring for the whole run; they are measured from y0 on the slow eigenvector, where the stiff
mode is only excited by the method's own errors (and must stay bounded).
"""
from __future__ import annotations

import math

import pytest
import torch

import neuralode
from neuralode.implicit import ImplicitRKStepper
from neuralode.implicit_tableaus import IMPLICIT_METHODS, ImplicitTableau
from neuralode.newton import batched_jacobian, dense_jacobian, gmres, samples_independent
from neuralode.control import rms_norm
from neuralode.rodas import RODAS5, RosenbrockStepper, RosenbrockTableau
from neuralode.rosenbrock import Rosenbrock23Stepper
from problems import log_log_slope
from neuralode.stiff_problems import linear_exact, robertson, slow_eigenvector, stiff_linear_matrix

FIXED = ("implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "radauIIA5", "gl4", "gl6", "sdirk2",
         "trbdf2")
L_STABLE = {"implicit_euler", "radauIIA3", "radauIIA5", "sdirk2", "trbdf2", "kvaerno3", "kvaerno5"}
STEP_COUNTS = {1: (16, 32, 64, 128), 2: (16, 32, 64, 128), 3: (8, 16, 32, 64), 4: (4, 8, 16, 32),
               5: (4, 8, 16, 32), 6: (2, 4, 8, 16)}


def _field(M):
    return lambda t, y: y @ M.T


def _y0(name):
    return torch.tensor([2.0, 0.5], dtype=torch.float64) if name in L_STABLE else slow_eigenvector()


# --------------------------------------------------------------------------- tableaus

def test_every_implicit_tableau_declares_its_structure():
    for name, tab in IMPLICIT_METHODS.items():
        assert tab.l_stable == (name in L_STABLE), name
        z = -1e-2  # R(z) = e^z + O(z^(p+1)) near 0
        assert abs(tab.stability(z) - math.exp(z)) < abs(z) ** (tab.order + 1) + 1e-14, name
    assert IMPLICIT_METHODS["kvaerno5"].explicit_first and IMPLICIT_METHODS["kvaerno5"].stiffly_accurate
    assert not IMPLICIT_METHODS["radauIIA5"].diagonally_implicit
    assert IMPLICIT_METHODS["kvaerno3"].adaptive and not IMPLICIT_METHODS["trbdf2"].adaptive


def test_an_inconsistent_implicit_tableau_is_rejected_naming_the_fault():
    with pytest.raises(ValueError, match="row 0 of a sums to"):
        ImplicitTableau("bad", 1, c=(0.5,), a=((1.0,),), b=(1.0,))
    with pytest.raises(ValueError, match="cannot have order 3"):
        ImplicitTableau("bad", 3, c=(1 / 3, 1.0), a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)), b=(0.5, 0.5))
    with pytest.raises(ValueError, match="b_err sums to"):
        ImplicitTableau("bad", 1, c=(1.0,), a=((1.0,),), b=(1.0,), b_err=(0.1,))


# --------------------------------------------------------------------------- orders

@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_implicit_error_falls_at_the_declared_order_on_a_stiff_system(method):
    M = stiff_linear_matrix()
    y0 = _y0(method)
    order = IMPLICIT_METHODS[method].order
    exact = linear_exact(M, y0, 1.0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    hs, errors = [], []
    for n in STEP_COUNTS[order]:
        ys = neuralode.odeint(_field(M), y0, t, method=method, rtol=1e-13, atol=1e-15, options={"step_size": 1.0 / n})
        hs.append(1.0 / n)
        errors.append(float((ys[-1] - exact).abs().max()))
    slope = log_log_slope(hs, errors)
    assert abs(slope - order) <= 0.3, f"{method}: measured order {slope:.2f}, declared {order}; errors {errors}"


def _adaptive_stepper(method, f):
    if method == "rosenbrock23":
        return Rosenbrock23Stepper(f, "dense")
    if method == "rodas5":
        return RosenbrockStepper(RODAS5, f, "dense")
    return ImplicitRKStepper(IMPLICIT_METHODS[method], f, 1e-13, 1e-15, rms_norm, 20, "dense")


def _fixed_steps(stepper, f, y0, n, t_end=1.0):
    """``n`` steps of ``stepper`` over ``[0, t_end]``; the last step's start, stages and the end."""
    h, y, fy = t_end / n, y0, f(0.0, y0)
    for i in range(n):
        start = y
        y, ks, _ = stepper.step(lambda tt, yy, p=0: f(tt, yy), i * h, h, (i + 1) * h, y, fy)
        fy = ks[-1] if stepper.fsal else f((i + 1) * h, y)
    return start, ks, y


@pytest.mark.parametrize("method", ("kvaerno3", "kvaerno5", "rosenbrock23", "rodas5"))
def test_adaptive_implicit_steps_have_the_declared_order_at_fixed_step_sizes(method):
    M = stiff_linear_matrix()
    f = _field(M)
    y0 = torch.tensor([2.0, 0.5], dtype=torch.float64)
    span = 4.0 if method == "rodas5" else 1.0  # rodas5's error on [0, 1] meets round-off (2e-14) at h = 1/64
    exact = linear_exact(M, y0, span)
    order = {"rosenbrock23": 2, "rodas5": 5}.get(method) or IMPLICIT_METHODS[method].order
    hs, errors = [], []
    for n in (8, 16, 32, 64) if order == 5 else STEP_COUNTS[order]:
        _, _, y = _fixed_steps(_adaptive_stepper(method, f), f, y0, n, span)
        hs.append(span / n)
        errors.append(float((y - exact).abs().max()))
    slope = log_log_slope(hs, errors)
    assert abs(slope - order) <= 0.3, f"{method}: measured order {slope:.2f}, declared {order}; errors {errors}"


def _nonlinear_forced(t, y):
    # non-autonomous (the ∂f/∂t term of a Rosenbrock method counts) and nonlinear (the coupling
    # coefficients count: a linear constant-coefficient system checks only the stability function)
    t = torch.as_tensor(t, dtype=y.dtype)
    return torch.stack([-y[..., 0] * y[..., 1] + torch.cos(t), y[..., 0] - 0.5 * y[..., 1] ** 2], dim=-1)


def _nonlinear_reference(t_end):
    from scipy.integrate import solve_ivp

    out = solve_ivp(lambda s, y: _nonlinear_forced(s, torch.from_numpy(y)).numpy(), (0.0, t_end), [1.0, 0.5],
                    method="DOP853", rtol=1e-13, atol=1e-14, dense_output=True)
    return lambda s: torch.from_numpy(out.sol(s))


def test_rodas5_has_order_5_on_a_nonlinear_non_autonomous_problem_and_a_4th_order_dense_output():
    ref = _nonlinear_reference(1.0)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    hs, errors, dense_errors = [], [], []
    for n in (4, 8, 16, 32):
        start, ks, y = _fixed_steps(RosenbrockStepper(RODAS5, _nonlinear_forced, "dense"), _nonlinear_forced, y0, n)
        h = 1.0 / n
        w = [sum(c * 0.5 ** (k + 1) for k, c in enumerate(row)) for row in RODAS5.rows]
        mid = start + h * sum(wi * ki for wi, ki in zip(w, ks))
        hs.append(h)
        errors.append(float((y - ref(1.0)).abs().max()))
        dense_errors.append(float((mid - ref(1.0 - h / 2)).abs().max()))
    assert log_log_slope(hs, errors) >= 4.7, errors  # measured 4.9
    # the dense output's own error (~h^5 per step) adds to the step start's (~h^5 globally)
    assert log_log_slope(hs, dense_errors) >= 4.5, dense_errors
    assert max(dense_errors[-1], errors[-1]) < 1e-7


def test_a_rosenbrock_tableau_must_be_lower_triangular():
    with pytest.raises(ValueError, match="strictly lower triangular"):
        RosenbrockTableau("bad", 1, 0.5, c=(0.0, 1.0), a=((), ()), C=((), (1.0,)), d=(0.5, 0.0), b=(1.0, 0.0),
                          b_err=(0.0, 1.0), dense=((0.0, 0.0),) * 3)


@pytest.mark.parametrize("method", ("kvaerno3", "kvaerno5", "rosenbrock23", "rodas5"))
def test_adaptive_implicit_error_tightens_with_the_tolerance(method):
    M = stiff_linear_matrix()
    y0 = torch.tensor([2.0, 0.5], dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    exact = torch.stack([linear_exact(M, y0, float(s)) for s in t])
    errors, steps = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        sol = neuralode.solve(_field(M), y0, t, method=method, rtol=tol, atol=tol)
        errors.append(float((sol.ys - exact).abs().max()))
        steps.append(sol.stats.n_accepted)
        assert errors[-1] < 100 * tol, (tol, errors)  # a global error: local errors add up
    assert errors[0] > errors[1] > errors[2], errors
    assert steps[2] < 2000


# --------------------------------------------------------------------------- stability

@pytest.mark.parametrize("method", FIXED)
def test_a_huge_step_on_a_very_stiff_decay_stays_bounded(method):
    # y' = -1e6 y with h = 1: hλ = -1e6. L-stable methods damp it to ~1/|hλ| per step;
    # A-stable ones keep |y| <= 1 (no growth) but do not damp.
    t = torch.tensor([0.0, 5.0], dtype=torch.float64)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    ys = neuralode.odeint(lambda s, y: -1e6 * y, y0, t, method=method, options={"step_size": 1.0})
    final = float(ys[-1].abs())
    if method in L_STABLE:
        assert final < 1e-5, final
    else:
        assert final <= 1.0 + 1e-9, final


@pytest.mark.parametrize("method", ("rosenbrock23", "rodas5", "kvaerno5"))
def test_one_huge_step_of_an_l_stable_adaptive_method_damps_a_very_stiff_decay(method):
    # hλ = -1e6: R(hλ) must be ~0 (L-stability: R(z) = O(1/z); rodas5's is -14.6/z), not merely
    # bounded (an A-stable method that is not L-stable keeps |R| ~ 1 there).
    f = lambda s, y: -1e6 * y  # noqa: E731
    _, _, y = _fixed_steps(_adaptive_stepper(method, f), f, torch.tensor([1.0], dtype=torch.float64), 1)
    assert float(y.abs()) < 1e-4, float(y)


def test_an_explicit_method_underflowing_suggests_an_implicit_one():
    # y' = y² from y(0) = 1 blows up at t = 1: dopri5's steps underflow on the way.
    with pytest.raises(neuralode.SolverError, match="implicit method: method='rodas5'"):
        neuralode.odeint(lambda t, y: y**2, torch.tensor([1.0], dtype=torch.float64),
                         torch.tensor([0.0, 2.0], dtype=torch.float64))


# --------------------------------------------------------------------------- Jacobians

class _PerSampleMLP(torch.nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, d)).double()

    def forward(self, t, y):
        return self.net(y) - 50.0 * y


def test_batched_jacobians_equal_the_blocks_of_the_dense_one():
    torch.manual_seed(0)
    field = _PerSampleMLP()
    y = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    J = dense_jacobian(field, t, y)
    Jb = batched_jacobian(field, t, y)
    for b in range(5):
        torch.testing.assert_close(Jb[b], J[3 * b:3 * b + 3, 3 * b:3 * b + 3])
    # a field with per-sample parameters (each sample its own rate constants)
    k = torch.logspace(-1, 1, 5, dtype=torch.float64)

    def kinetics(s, yy):
        return robertson(s, yy, (0.04 * k, 3e7 * k, 1e4 * k))

    y = torch.rand(5, 3, dtype=torch.float64)
    J, Jb = dense_jacobian(kinetics, t, y), batched_jacobian(kinetics, t, y)
    for b in range(5):
        torch.testing.assert_close(Jb[b], J[3 * b:3 * b + 3, 3 * b:3 * b + 3])
    assert samples_independent(field, t, y)
    assert not samples_independent(lambda s, yy: yy - yy.mean(0), t, y)


def test_a_batched_solve_equals_the_dense_solve():
    k = torch.logspace(-1, 1, 4, dtype=torch.float64)[:, None] * torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).repeat(4, 1)
    t = torch.tensor([0.0, 0.1, 1.0], dtype=torch.float64)

    def field(s, y):
        return robertson(s, y, (0.04 * k[:, 0], 3e7 * k[:, 1], 1e4 * k[:, 2]))

    dense = neuralode.solve(field, y0, t, method="kvaerno3", rtol=1e-7, atol=1e-11, options={"jacobian": "dense"})
    batched = neuralode.solve(field, y0, t, method="kvaerno3", rtol=1e-7, atol=1e-11, options={"jacobian": "batched"})
    torch.testing.assert_close(batched.ys, dense.ys, rtol=1e-9, atol=1e-12)
    assert dense.stats.n_jacobians >= 1 and dense.stats.n_factorizations >= 1 and dense.stats.n_newton_iters > 0


def test_a_newton_krylov_solve_equals_the_dense_solve():
    # Matrix-free GMRES without a preconditioner suits moderately stiff fields (rates ~50 here).
    torch.manual_seed(0)
    field = _PerSampleMLP()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64)
    with torch.no_grad():
        dense = neuralode.solve(field, y0, t, method="kvaerno3", rtol=1e-6, atol=1e-8, options={"jacobian": "dense"})
        krylov = neuralode.solve(field, y0, t, method="kvaerno3", rtol=1e-6, atol=1e-8, options={"jacobian": "krylov"})
    torch.testing.assert_close(krylov.ys, dense.ys, rtol=1e-6, atol=1e-7)
    assert krylov.stats.n_factorizations >= 1


def test_gmres_solves_a_nonsymmetric_system():
    torch.manual_seed(0)
    A = torch.eye(20, dtype=torch.float64) * 3 + 0.3 * torch.randn(20, 20, dtype=torch.float64)
    b = torch.randn(20, dtype=torch.float64)
    x = gmres(lambda v: A @ v, b, restart=20, rtol=1e-12)
    torch.testing.assert_close(A @ x, b, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- failures and options

def test_newton_non_convergence_returns_a_status_instead_of_hanging():
    # The stage equation Y = y0 - h·sign(Y) has no root once |y0| < h: Newton cannot converge.
    def field(t, y):
        return -torch.sign(y)

    y0 = torch.tensor([0.5], dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    sol = neuralode.solve(field, y0, t, method="kvaerno3", options={"min_step": 1e-2}, on_failure="return")
    assert sol.status is neuralode.Status.NEWTON_FAILURE
    assert 0.3 < sol.t_reached < 0.6
    sol = neuralode.solve(field, y0, t, method="implicit_euler", options={"step_size": 0.25}, on_failure="return")
    assert sol.status is neuralode.Status.NEWTON_FAILURE
    with pytest.raises(neuralode.SolverError, match="Newton iteration did not converge.*max_iters"):
        neuralode.solve(field, y0, t, method="implicit_euler", options={"step_size": 0.25})


def test_implicit_methods_take_torchdiffeqs_options_and_reject_unknown_ones():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    f = lambda s, y: -y  # noqa: E731
    ys = neuralode.odeint(f, y0, t, method="radauIIA5",
                          options={"step_size": 0.1, "max_iters": 5, "perturb": True, "interp": "cubic"})
    assert abs(float(ys[-1]) - math.exp(-1)) < 1e-9
    grid = neuralode.odeint(f, y0, t, method="gl6", options={"grid_constructor": lambda fn, y, tt: torch.linspace(0, 1, 9, dtype=torch.float64)})
    assert abs(float(grid[-1]) - math.exp(-1)) < 1e-9
    with pytest.raises(ValueError, match="unknown option"):
        neuralode.odeint(f, y0, t, method="kvaerno5", options={"step_size": 0.1})
    with pytest.raises(ValueError, match="options\\['jacobian'\\] must be one of"):
        neuralode.odeint(f, y0, t, method="kvaerno5", options={"jacobian": "sparse"})
    with pytest.raises(ValueError, match="options\\['max_iters'\\]"):
        neuralode.odeint(f, y0, t, method="trbdf2", options={"max_iters": 0})


def test_every_implicit_method_is_registered_by_its_published_name():
    adaptive = ("kvaerno3", "kvaerno5", "rosenbrock23", "rodas5")
    for name in (*FIXED, *adaptive):
        sol = neuralode.solve(lambda s, y: -y, torch.tensor([1.0], dtype=torch.float64),
                              torch.tensor([0.0, 0.5], dtype=torch.float64), method=name,
                              options=None if name in adaptive else {"step_size": 0.05})
        assert abs(float(sol.ys[-1]) - math.exp(-0.5)) < 1e-2, name


def test_rodas5_direct_gradients_pass_gradcheck():
    # W = I - hγJ is built from a differentiable Jacobian, so autograd follows the method exactly.
    M = torch.tensor([[-50.0, 1.0], [0.5, -1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)

    def run(y0, w):
        return neuralode.odeint(lambda s, y: (y @ M.T) * w[0] + w[1] * torch.sin(y) + torch.cos(s), y0, t,
                                method="rodas5", rtol=1e-8, atol=1e-8)

    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (y0, w), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_rodas5s_adjoint_asks_for_a_newton_based_backward_method_which_matches_direct_gradients():
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0, -0.7], dtype=torch.float64))

        def forward(self, s, y):
            return torch.stack([-200.0 * self.w[0] * (y[0] - torch.sin(y[1])), self.w[1] * y[1] + torch.cos(s)])

    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = Field()
    with pytest.raises(ValueError, match="adjoint_method='kvaerno5'"):
        neuralode.odeint_adjoint(field, y0, t, method="rodas5")[-1].sum().backward()
    field.zero_grad()
    neuralode.odeint_adjoint(field, y0, t, method="rodas5", adjoint_method="kvaerno5", rtol=1e-8,
                             atol=1e-8)[-1].sum().backward()
    adjoint = field.w.grad.clone()
    field.zero_grad()
    neuralode.odeint(field, y0, t, method="rodas5", rtol=1e-8, atol=1e-8)[-1].sum().backward()
    torch.testing.assert_close(adjoint, field.w.grad, rtol=1e-5, atol=1e-7)
