"""torch.compile: compiled models that call the solvers equal eager ones; the compiled-step methods."""
import pytest
import torch

import neuralode
from neuralode import compiled
from neuralode.nn import ODEBlock


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


@pytest.fixture
def field():
    torch.manual_seed(0)
    return Field()


@pytest.fixture
def counting_backend():
    """The compiled steps captured by a backend that counts compilations (and runs them eagerly)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled.set_backend(backend)
    yield graphs
    compiled.set_backend()


@pytest.mark.slow
def test_compiled_odeint_equals_eager(field):
    y0 = torch.randn(16, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    eager = neuralode.odeint(field, y0, t, rtol=1e-5, atol=1e-5)
    fn = torch.compile(lambda y: neuralode.odeint(field, y, t, rtol=1e-5, atol=1e-5) * 2.0, fullgraph=False,
                       backend="aot_eager")
    torch.testing.assert_close(fn(y0), eager * 2.0, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compiled_odeblock_equals_eager_forward_and_gradients(field):
    block = ODEBlock(field, method="dopri5", rtol=1e-5, atol=1e-5, gradient="adjoint")
    y0 = torch.randn(8, 2)
    eager = block(y0)
    grads_eager = torch.autograd.grad(eager.square().sum(), list(block.parameters()))
    compiled_block = torch.compile(block, fullgraph=False, backend="aot_eager")
    out = compiled_block(y0)
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), list(block.parameters()))
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8"])
def test_compiled_step_methods_equal_the_plain_ones(field, counting_backend, method):
    y0 = torch.randn(16, 2, dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    field = field.double()
    plain = neuralode.solve(field, y0, t, method=method, rtol=1e-7, atol=1e-7)
    fast = neuralode.solve(field, y0, t, method=method + "_compiled", rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(fast.ys, plain.ys, rtol=1e-10, atol=1e-10)
    assert (fast.stats.nfe, fast.stats.n_accepted, fast.stats.n_rejected) == \
        (plain.stats.nfe, plain.stats.n_accepted, plain.stats.n_rejected)


@pytest.mark.slow
def test_new_step_sizes_and_tolerances_reuse_the_compiled_step(field, counting_backend):
    y0 = torch.randn(16, 2)
    t = torch.tensor([0.0, 1.0])
    first = neuralode.solve(field, y0, t, method="dopri5_compiled", rtol=1e-6, atol=1e-6)
    # many step sizes, two graphs: the first step's y0 is a leaf, later states carry autograd history
    assert first.stats.n_steps > 3 and len(counting_backend) <= 2
    graphs = len(counting_backend)
    neuralode.solve(field, y0, t, method="dopri5_compiled", rtol=1e-3, atol=1e-3)
    neuralode.solve(field, y0 * 2, t * 3, method="dopri5_compiled", rtol=1e-4, atol=1e-4)
    assert len(counting_backend) == graphs


@pytest.mark.slow
def test_compiled_fixed_step_method_and_its_gradients(field, counting_backend):
    y0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = field.double()
    plain = neuralode.odeint(field, y0, t, method="rk4", options={"step_size": 0.1})
    fast = neuralode.odeint(field, y0, t, method="rk4_compiled", options={"step_size": 0.1})
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    g_plain = torch.autograd.grad(plain.sum(), y0)[0]
    g_fast = torch.autograd.grad(fast.sum(), y0)[0]
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("method,interp", [("midpoint", "cubic"), ("rk4", "linear")])
def test_whole_fixed_grid_solve_compiled_equals_eager_with_gradients(field, method, interp):
    field = field.double()
    y0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.25, 0.6, 1.0], dtype=torch.float64)  # 0.6 lies between grid nodes
    eager = neuralode.odeint(field, y0, t, method=method, options={"step_size": 0.25, "interp": interp})
    solve = compiled.FixedGridSolve(field, t, method=method, step_size=0.25, interp=interp, backend="aot_eager")
    whole = solve(y0)
    assert solve.n_steps == 4
    torch.testing.assert_close(whole, eager, rtol=1e-12, atol=1e-12)
    g_eager = torch.autograd.grad(eager.square().sum(), [y0, *field.parameters()])
    g_whole = torch.autograd.grad(whole.square().sum(), [y0, *field.parameters()])
    for a, b in zip(g_whole, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_whole_fixed_grid_solve_is_one_graph_reused_for_a_moved_grid(field):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    y0 = torch.randn(8, 2)
    solve = compiled.FixedGridSolve(field, torch.linspace(0, 1, 6), method="rk4", backend=backend)
    first = solve(y0)
    assert len(graphs) == 1  # the five steps and their outputs: one graph
    solve.retarget(torch.linspace(0.5, 3.0, 6))  # new times, same structure
    moved = solve(y0)
    assert len(graphs) == 1
    torch.testing.assert_close(moved, neuralode.odeint(field, y0, torch.linspace(0.5, 3.0, 6), method="rk4"),
                               rtol=1e-5, atol=1e-6)
    assert not torch.equal(first, moved)


def test_whole_fixed_grid_solve_rejects_bad_arguments(field):
    with pytest.raises(ValueError, match="needs a fixed-step method; got 'dopri5'"):
        compiled.FixedGridSolve(field, torch.tensor([0.0, 1.0]), method="dopri5")
    with pytest.raises(ValueError, match="strictly increasing"):
        compiled.FixedGridSolve(field, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="step_size must be a positive"):
        compiled.FixedGridSolve(field, torch.tensor([0.0, 1.0]), step_size=-0.1)
