"""torchdiffeq behaviours a user switching imports relies on, each a regression test of a defect
found in review (issue 9): step limits, tolerances per tuple component, complex states, options
fixed-step methods ignore, callbacks a method never calls, tensors on the state's device, and
odeint_adjoint under nn.DataParallel."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import neuralode
from neuralode import odeint, odeint_adjoint, solve

F64 = torch.float64


def decay(t, y):
    return -y


# --------------------------------------------------------------------------- step limits

def test_steps_held_at_min_step_are_accepted_up_to_the_end():
    # A stiff decay wants steps far below min_step: every step is held at min_step and accepted.
    # The step that reaches t=1 from a sum of float steps is a hair longer than min_step; it must
    # be accepted too (it used to be rejected, shrunk, clamped back and rejected ~10^5 times).
    sol = solve(lambda t, y: -50 * y, torch.tensor(1.0, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                options=dict(min_step=0.1, max_num_steps=100000))
    assert sol.success
    assert sol.stats.n_rejected == 0
    assert sol.stats.n_accepted == 10


def test_max_num_steps_limits_each_output_interval_not_the_whole_solve():
    t = torch.linspace(0, 10, 200, dtype=F64)
    sol = solve(decay, torch.ones(2, dtype=F64), t, rtol=1e-8, atol=1e-10, options=dict(max_num_steps=20))
    assert sol.success and sol.stats.n_steps > 20
    torch.testing.assert_close(sol.ys[:, 0], torch.exp(-t), rtol=1e-6, atol=1e-8)
    # One interval that needs more than the budget still fails.
    with pytest.raises(neuralode.SolverError, match="max_num_steps"):
        solve(decay, torch.ones(2, dtype=F64), t[[0, -1]], rtol=1e-8, atol=1e-10, options=dict(max_num_steps=20))


# --------------------------------------------------------------------------- tolerances

def test_a_tensor_of_tolerances_gives_one_per_tuple_component():
    def field(t, state):
        x, z = state
        return -x, -2 * z

    y0 = (torch.ones(2, dtype=F64), torch.ones(1, dtype=F64))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    as_tensor = solve(field, y0, t, rtol=torch.tensor([1e-3, 1e-6]), atol=1e-9)
    as_tuple = solve(field, y0, t, rtol=(1e-3, 1e-6), atol=1e-9)
    for a, b in zip(as_tensor.ys, as_tuple.ys):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)  # the tensor holds float32 tolerances
    assert as_tensor.stats.n_accepted == as_tuple.stats.n_accepted
    with pytest.raises(ValueError, match=r"rtol given per component must have 2 entries"):
        solve(field, y0, t, rtol=torch.tensor([1e-3, 1e-6, 1e-2]))


# --------------------------------------------------------------------------- complex states

def _schrodinger():
    """i dψ/dt = H ψ for a Hermitian H: ψ(t) = exp(-iHt) ψ0, and |ψ| is conserved."""
    H = torch.tensor([[1.0, 0.5 - 0.25j], [0.5 + 0.25j, -0.7]], dtype=torch.complex128)
    psi0 = torch.tensor([1.0, 0.5j], dtype=torch.complex128) / (1.25 ** 0.5)

    def field(t, psi):
        return -1j * (H @ psi)

    def exact(t):
        return torch.stack([torch.linalg.matrix_exp(-1j * H * float(s)) @ psi0 for s in t])

    return field, psi0, exact


@pytest.mark.parametrize("method,kwargs,tol", [
    ("dopri5", dict(rtol=1e-9, atol=1e-11), 1e-7),
    ("tsit5", dict(rtol=1e-9, atol=1e-11), 1e-7),
    ("rk4", dict(options=dict(step_size=0.01)), 1e-7),
])
def test_complex_states_solve_a_schrodinger_oscillator(method, kwargs, tol):
    field, psi0, exact = _schrodinger()
    t = torch.linspace(0, 5, 11, dtype=F64)
    ys = odeint(field, psi0, t, method=method, **kwargs)
    assert ys.dtype == torch.complex128
    torch.testing.assert_close(ys, exact(t), rtol=tol, atol=tol)
    torch.testing.assert_close(ys.abs().pow(2).sum(-1), torch.ones(11, dtype=F64), rtol=tol, atol=tol)


def test_complex_states_decreasing_time_and_direct_gradients():
    field, psi0, exact = _schrodinger()
    t = torch.tensor([2.0, 0.0], dtype=F64)
    back = odeint(field, exact(t[:1])[0], t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(back[-1], psi0, rtol=1e-8, atol=1e-8)
    # d|ψ1(T)|²/dT by autograd through the solve equals the same from the field.
    T = torch.tensor([0.0, 1.3], dtype=F64, requires_grad=True)
    ys = odeint(field, psi0, T, rtol=1e-10, atol=1e-12)
    p = ys[-1, 0].abs() ** 2
    (g,) = torch.autograd.grad(p, T)
    psi = ys[-1].detach()
    dpsi = field(None, psi)
    expected = 2 * (psi[0].conj() * dpsi[0]).real
    torch.testing.assert_close(g[1], expected, rtol=1e-6, atol=1e-9)


class _Schrodinger(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.H = torch.tensor([[1.0, 0.5 - 0.25j], [0.5 + 0.25j, -0.7]], dtype=torch.complex128)

    def forward(self, t, psi):
        return -1j * self.w * (self.H @ psi)


def test_complex_states_give_the_same_gradients_by_every_strategy():
    t = torch.tensor([0.0, 1.3], dtype=F64)
    grads = {}
    for gradient in ("direct", "adjoint", "checkpoint"):
        func = _Schrodinger()
        psi0 = torch.tensor([1.0, 0.5j], dtype=torch.complex128, requires_grad=True)
        ys = solve(func, psi0, t, gradient=gradient, rtol=1e-10, atol=1e-12).ys
        (ys[-1, 0].abs() ** 2).backward()
        grads[gradient] = (func.w.grad, psi0.grad)
    assert grads["direct"][0].dtype == F64 and grads["direct"][1].dtype == torch.complex128
    for gradient in ("adjoint", "checkpoint"):
        for g, e in zip(grads[gradient], grads["direct"]):
            torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- options and callbacks

def test_norm_option_on_a_fixed_step_method_is_ignored():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.ones(3, dtype=F64)
    plain = odeint(decay, y0, t, method="rk4", options=dict(step_size=0.1))
    with_norm = odeint(decay, y0, t, method="rk4", options=dict(step_size=0.1, norm=lambda x: x.abs().max()))
    torch.testing.assert_close(with_norm, plain, rtol=0, atol=0)


class _WithCallbacks(nn.Module):
    def forward(self, t, y):
        return -y

    def callback_accept_step(self, t0, y0, dt):
        pass


def test_callbacks_a_method_never_calls_are_warned_about():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.warns(UserWarning, match=r"'rk4' does not call the callbacks \['callback_accept_step'\]"):
        odeint(_WithCallbacks(), torch.ones(1, dtype=F64), t, method="rk4", options=dict(step_size=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(_WithCallbacks(), torch.ones(1, dtype=F64), t, method="dopri5")


# --------------------------------------------------------------------------- devices

class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(-0.7, dtype=F64))
        self.devices = []

    def forward(self, t, y):
        return self.w * y * torch.cos(t)

    def callback_step(self, t0, y0, dt):
        self.devices += [t0.device, dt.device]

    def callback_accept_step(self, t0, y0, dt):
        self.devices += [t0.device, dt.device]


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_every_tensor_the_solver_makes_is_created_on_the_states_device(method, gradient):
    # With the default device set to 'meta', a tensor made without device= lands on meta and the
    # solve fails; on an accelerator that would be a crash or a host round trip per step.
    func = _Recorder()
    y0 = torch.ones(2, dtype=F64, device="cpu", requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64, device="cpu", requires_grad=True)
    options = dict(step_size=0.1) if method == "rk4" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rk4 does not call callback_accept_step
        with torch.device("meta"):
            sol = solve(func, y0, t, method=method, options=options, gradient=gradient, rtol=1e-6, atol=1e-8)
            sol.ys.sum().backward()
    assert set(func.devices) == {torch.device("cpu")}
    assert y0.grad.device.type == "cpu" and t.grad.device.type == "cpu" and func.w.grad.device.type == "cpu"


def test_adjoint_norm_uses_the_states_dtype_on_devices_without_float64():
    from neuralode.adjoint import _norm_dtype

    assert _norm_dtype(torch.device("mps"), torch.float32) == torch.float32
    assert _norm_dtype(torch.device("cpu"), torch.float32) == torch.float64
    assert _norm_dtype(torch.device("cuda"), torch.float32) == torch.float64


# --------------------------------------------------------------------------- DataParallel

class _Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


def _replica(module: nn.Module) -> nn.Module:
    """What nn.DataParallel runs on each device: parameters become plain tensor attributes that
    are differentiable functions of the originals (torch.nn.parallel.replicate, without CUDA)."""
    replicas = {}
    for name, m in module.named_modules():
        r = m._replicate_for_data_parallel()
        r._former_parameters = {}
        replicas[name] = r
        for key, p in m._parameters.items():
            copy = p * 1.0
            setattr(r, key, copy)
            r._former_parameters[key] = copy
    for name, m in module.named_modules():
        for child_name, child in m._modules.items():
            full = f"{name}.{child_name}" if name else child_name
            setattr(replicas[name], child_name, replicas[full])
    return replicas[""]


def test_odeint_adjoint_finds_the_parameters_of_a_data_parallel_replica():
    torch.manual_seed(0)
    func = _Field()
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    odeint(func, y0, t)[-1].pow(2).sum().backward()
    expected = [p.grad.clone() for p in func.parameters()]
    func.zero_grad()
    replica = _replica(func)
    assert not list(replica.parameters()), "the replica must hide its parameters, as DataParallel's do"
    odeint_adjoint(replica, y0, t)[-1].pow(2).sum().backward()
    for p, e in zip(func.parameters(), expected):
        assert p.grad is not None, "the adjoint found no parameters on the replica"
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-8)
    # ... and it is the adjoint that gives them (a backward solve ran), not backprop through the
    # forward solve, which a strategy that found no parameters falls back to.
    sol = solve(_replica(func), y0, t, gradient="adjoint")
    sol.ys[-1].pow(2).sum().backward()
    assert sol.stats.nfe_backward > 0


# --------------------------------------------------------------------------- odeint_dense

@pytest.mark.parametrize("t0,t1", [(0.0, 3.0), (3.0, -1.0)], ids=["forward", "backward"])
def test_odeint_dense_gives_the_solution_anywhere_in_the_span(t0, t1):
    import torchdiffeq  # the test extra installs it

    def osc(t, y):
        return torch.stack([y[1], -y[0]])

    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    dense = neuralode.odeint_dense(osc, y0, torch.tensor(t0, dtype=F64), torch.tensor(t1, dtype=F64),
                                   rtol=1e-10, atol=1e-12)
    for s in torch.linspace(t0, t1, 13, dtype=F64):
        exact = torch.stack([torch.cos(s - t0), -torch.sin(s - t0)])
        torch.testing.assert_close(dense(s), exact, rtol=0, atol=1e-8)
    if t0 < t1:  # torchdiffeq's only handles increasing time
        theirs = torchdiffeq.odeint_dense(osc, y0, torch.tensor(t0, dtype=F64), torch.tensor(t1, dtype=F64),
                                          rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dense(torch.tensor(1.7, dtype=F64)), theirs(torch.tensor(1.7, dtype=F64)),
                                   rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="outside the solved span"):
        dense(torch.tensor(t1 + (1.0 if t1 > t0 else -1.0), dtype=F64))


def test_odeint_dense_is_differentiable_in_time_and_handles_tuples():
    def field(t, state):
        x, v = state
        return v, -x

    dense = neuralode.odeint_dense(field, (torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)),
                                   torch.tensor(0.0, dtype=F64), torch.tensor(2.0, dtype=F64), rtol=1e-10, atol=1e-12)
    s = torch.tensor(1.1, dtype=F64, requires_grad=True)
    x, v = dense(s)
    (dx,) = torch.autograd.grad(x.sum(), s)
    torch.testing.assert_close(dx, -torch.sin(s.detach()), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v[0], -torch.sin(s.detach()), rtol=0, atol=1e-8)
