"""Per-sample adaptive stepping (neuralode.persample): each sample its own steps and output times."""
import pytest
import torch

import neuralode
from neuralode.adjoint import Adjoint
from neuralode.persample import solve_per_sample


def vdp_batch(mu: torch.Tensor):
    """Van der Pol with one μ per row: ``y`` is ``(n, 2)``, ``t`` is ``(n,)``."""

    def field(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], -1)

    return field


def vdp_single(mu: float):
    def field(t, y):
        return torch.stack([y[1], mu * (1 - y[0] * y[0]) * y[1] - y[0]])

    return field


Y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_each_sample_equals_solving_it_alone(method):
    mu = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    t = torch.linspace(0, 4, 5, dtype=torch.float64)
    sol = solve_per_sample(vdp_batch(mu), Y0.expand(3, 2), t, method=method, rtol=1e-6, atol=1e-6)
    assert sol.ys.shape == (3, 5, 2)
    for b in range(3):
        alone = neuralode.solve(vdp_single(float(mu[b])), Y0, t, method=method, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sol.ys[b], alone.ys, rtol=1e-9, atol=1e-9)  # summation order differs
        assert int(sol.n_accepted_per_sample[b]) == alone.stats.n_accepted
        assert int(sol.n_rejected_per_sample[b]) == alone.stats.n_rejected


def test_a_stiff_member_adds_no_steps_to_the_others():
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    mild = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    with_stiff = torch.cat([mild, torch.tensor([60.0], dtype=torch.float64)])
    alone = solve_per_sample(vdp_batch(mild), Y0.expand(3, 2), t, rtol=1e-5, atol=1e-5)
    mixed = solve_per_sample(vdp_batch(with_stiff), Y0.expand(4, 2), t, rtol=1e-5, atol=1e-5)
    assert torch.equal(mixed.n_accepted_per_sample[:3], alone.n_accepted_per_sample)
    assert torch.equal(mixed.n_rejected_per_sample[:3], alone.n_rejected_per_sample)
    assert int(mixed.n_accepted_per_sample[3]) > 5 * int(alone.n_accepted_per_sample.max())  # it is the stiff one
    torch.testing.assert_close(mixed.ys[:3], alone.ys, rtol=1e-12, atol=1e-12)
    # the shared-step solve of the same batch pays the stiff member's steps for everyone
    shared = neuralode.solve(vdp_batch(with_stiff), Y0.expand(4, 2), t, rtol=1e-5, atol=1e-5)
    assert shared.stats.n_accepted >= int(mixed.n_accepted_per_sample[3]) // 2


def test_per_sample_output_times_match_solo_solves_with_dense_output():
    torch.manual_seed(0)
    mu = torch.tensor([0.2, 1.0, 3.0, 0.7], dtype=torch.float64)
    t = torch.sort(torch.rand(4, 6, dtype=torch.float64) * 5, dim=1).values
    t[:, 0] = torch.tensor([0.0, 0.5, 0.0, 1.0], dtype=torch.float64)  # own start times too
    sol = solve_per_sample(vdp_batch(mu), Y0.expand(4, 2), t, rtol=1e-7, atol=1e-7)
    for b in range(4):
        alone = neuralode.solve(vdp_single(float(mu[b])), Y0, t[b], rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(sol.ys[b], alone.ys, rtol=1e-10, atol=1e-10)


def test_compact_mode_skips_finished_rows_and_gives_the_same_answer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    field = lambda t, y: net(y)  # noqa: E731 - autonomous, no per-row parameters
    y0 = torch.randn(5, 2, dtype=torch.float64)
    ends = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    t = torch.stack([torch.zeros(5, dtype=torch.float64), ends], 1)
    full = solve_per_sample(field, y0, t, rtol=1e-6, atol=1e-6)
    compact = solve_per_sample(field, y0, t, rtol=1e-6, atol=1e-6, options={"compact": True})
    torch.testing.assert_close(compact.ys, full.ys, rtol=1e-12, atol=1e-12)
    assert compact.row_evaluations < full.row_evaluations == full.stats.nfe * 5
    assert torch.equal(compact.n_accepted_per_sample, full.n_accepted_per_sample)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_gradients_equal_those_of_solo_solves(gradient):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.3, 2.0], [0.0, 1.0, 1.5]], dtype=torch.float64)
    sol = solve_per_sample(lambda tt, y: net(y), y0, t, rtol=1e-6, atol=1e-6, gradient=gradient)
    gy, *gp = torch.autograd.grad(sol.ys.square().sum(), [y0, *net.parameters()])
    y0_solo = y0.detach().clone().requires_grad_(True)
    loss = sum(neuralode.solve(lambda tt, y: net(y), y0_solo[b], t[b], rtol=1e-6, atol=1e-6).ys.square().sum()
               for b in range(3))
    gy_solo, *gp_solo = torch.autograd.grad(loss, [y0_solo, *net.parameters()])
    torch.testing.assert_close(gy, gy_solo, rtol=1e-8, atol=1e-10)
    for a, b in zip(gp, gp_solo):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_bad_arguments_name_the_argument():
    f = vdp_batch(torch.ones(2, dtype=torch.float64))
    y0 = Y0.expand(2, 2)
    with pytest.raises(ValueError, match="gradient='backsolve'"):
        solve_per_sample(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), gradient="backsolve")
    with pytest.raises(ValueError, match=r"t must have shape \[T\] or \[B, T\]"):
        solve_per_sample(f, y0, torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly increasing along each row"):
        solve_per_sample(f, y0, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="adaptive method"):
        solve_per_sample(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['step_size'\]"):
        solve_per_sample(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), options={"step_size": 0.1})
    # option values are checked as the shared loop checks them
    with pytest.raises(ValueError, match=r"options\['safety'\] must be <= 1.0; got 1.5"):
        solve_per_sample(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), options={"safety": 1.5})
    with pytest.raises(ValueError, match=r"options\['max_num_steps'\] must be an integer >= 1"):
        solve_per_sample(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), options={"max_num_steps": 0})


def test_failure_is_reported_with_the_time_reached():
    def blows_up(t, y):
        return y * y

    y0 = torch.tensor([[1.0], [0.1]], dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)  # sample 0 blows up at t = 1
    with pytest.raises(neuralode.SolverError, match=r"ODE solve failed at t=(0\.99|1\.00)"):
        solve_per_sample(blows_up, y0, t, rtol=1e-6, atol=1e-6)
    sol = solve_per_sample(blows_up, y0, t, rtol=1e-6, atol=1e-6, on_failure="return")
    assert not sol.success and torch.isnan(sol.ys[0, 1]).all()


def test_solve_per_sample_steps_is_the_front_door():
    mu = torch.tensor([0.5, 3.0], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.5, 3.0]], dtype=torch.float64)
    via_solve = neuralode.solve(vdp_batch(mu), Y0.expand(2, 2), t, rtol=1e-6, atol=1e-6, per_sample_steps=True)
    direct = solve_per_sample(vdp_batch(mu), Y0.expand(2, 2), t, rtol=1e-6, atol=1e-6)
    assert torch.equal(via_solve.ys, direct.ys) and via_solve.ys.shape == (2, 3, 2)


class MLPField(torch.nn.Module):
    """An autonomous MLP field taking the per-row time vector (unused)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_adjoint_gradients_equal_direct_backprop_of_solo_solves(method):
    torch.manual_seed(0)
    field = MLPField()
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.3, 2.0], [0.5, 1.0, 1.5]], dtype=torch.float64)  # own output grids
    sol = solve_per_sample(field, y0, t, method=method, rtol=1e-9, atol=1e-9, gradient="adjoint")
    direct = solve_per_sample(field, y0, t, method=method, rtol=1e-9, atol=1e-9)
    assert torch.equal(sol.ys, direct.ys)  # the forward pass is the same solve
    gy, *gp = torch.autograd.grad(sol.ys.sin().sum(), [y0, *field.parameters()])
    assert sol.stats.nfe_backward > 0 and int(sol.n_accepted_backward_per_sample.min()) > 0
    y0_solo = y0.detach().clone().requires_grad_(True)
    loss = sum(neuralode.solve(field, y0_solo[b], t[b], method=method, rtol=1e-9, atol=1e-9).ys.sin().sum()
               for b in range(3))
    gy_solo, *gp_solo = torch.autograd.grad(loss, [y0_solo, *field.parameters()])
    torch.testing.assert_close(gy, gy_solo, rtol=1e-6, atol=1e-7)
    for a, b in zip(gp, gp_solo):  # summed over the samples
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adjoint_gradients_of_per_row_parameters_and_output_times_match_solo_adjoint_solves():
    mu = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.5, 1.0, 2.0], [0.0, 0.3, 1.2, 1.5], [0.2, 0.6, 1.5, 1.7]], dtype=torch.float64,
                     requires_grad=True)
    sol = solve_per_sample(vdp_batch(mu), y0, t, rtol=1e-8, atol=1e-8, gradient=Adjoint(params=[mu]))
    gy, gmu, gt = torch.autograd.grad(sol.ys.square().sum(), [y0, mu, t])
    for b in range(3):
        mu_b = mu[b].detach().clone().requires_grad_(True)
        y0_b = y0[b].detach().clone().requires_grad_(True)
        t_b = t[b].detach().clone().requires_grad_(True)

        def single(tt, y, mu_b=mu_b):
            return torch.stack([y[1], mu_b * (1 - y[0] * y[0]) * y[1] - y[0]])

        alone = neuralode.solve(single, y0_b, t_b, rtol=1e-8, atol=1e-8, gradient=Adjoint(params=[mu_b]))
        gy_b, gmu_b, gt_b = torch.autograd.grad(alone.ys.square().sum(), [y0_b, mu_b, t_b])
        torch.testing.assert_close(gy[b], gy_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gmu[b], gmu_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gt[b], gt_b, rtol=1e-5, atol=1e-6)


def test_adjoint_backward_of_a_stiff_member_adds_no_steps_to_the_others():
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)

    def grads(mu_values):
        mu = torch.tensor(mu_values, dtype=torch.float64, requires_grad=True)
        y0 = Y0.expand(len(mu_values), 2).clone().requires_grad_(True)
        sol = solve_per_sample(vdp_batch(mu), y0, t, rtol=1e-5, atol=1e-5, gradient=Adjoint(params=[mu]))
        gy, gmu = torch.autograd.grad(sol.ys[:, :, 0].sum(), [y0, mu])
        return sol, gy, gmu

    mild, gy_mild, gmu_mild = grads([0.5, 1.0, 2.0])
    mixed, gy_mixed, gmu_mixed = grads([0.5, 1.0, 2.0, 60.0])
    assert torch.equal(mixed.n_accepted_backward_per_sample[:3], mild.n_accepted_backward_per_sample)
    assert torch.equal(mixed.n_rejected_backward_per_sample[:3], mild.n_rejected_backward_per_sample)
    assert int(mixed.n_accepted_backward_per_sample[3]) > 5 * int(mild.n_accepted_backward_per_sample.max())
    torch.testing.assert_close(gy_mixed[:3], gy_mild, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gmu_mixed[:3], gmu_mild, rtol=1e-12, atol=1e-12)


def test_adjoint_with_compact_rows_gives_the_same_gradients():
    torch.manual_seed(1)
    field = MLPField(8)
    y0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.stack([torch.zeros(4, dtype=torch.float64), torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)], 1)
    out = []
    for compact in (False, True):
        sol = solve_per_sample(field, y0, t, rtol=1e-7, atol=1e-7, gradient="adjoint", options={"compact": compact})
        out.append(torch.autograd.grad(sol.ys.square().sum(), [y0, *field.parameters()]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adjoint_bad_arguments_name_the_argument():
    f = vdp_batch(torch.ones(2, dtype=torch.float64))
    y0 = Y0.expand(2, 2).clone().requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="not an nn.Module.*Adjoint\\(params="):
        solve_per_sample(f, y0, t, gradient="adjoint")
    with pytest.raises(ValueError, match=r"unknown adjoint option\(s\) \['norm'\]"):
        solve_per_sample(f, y0, t, gradient=Adjoint(params=(), options={"norm": "seminorm"}))
    with pytest.raises(ValueError, match=r"options\['ifactor'\] must be >= 1.0; got 0.5"):
        solve_per_sample(f, y0, t, gradient=Adjoint(params=(), options={"ifactor": 0.5}))
    with pytest.raises(ValueError, match="adjoint's method must be an adaptive"):
        solve_per_sample(f, y0, t, gradient=Adjoint(params=(), method="rk4"))
    with pytest.raises(TypeError, match="gradient must be one of"):
        solve_per_sample(f, y0, t, gradient=3)
