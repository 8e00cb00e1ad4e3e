"""Device→host synchronisations of a solve, counted on CPU through the dispatcher.

On a GPU each read of a tensor's value on the host (``float(x)``, ``bool(x)``, ``x.item()``,
``nonzero``) waits for the device to finish. They all reach the dispatcher as
``aten._local_scalar_dense`` (or as ops whose output size depends on data), so a dispatch mode
counts them on any device. ``Tensor.tolist`` on a CPU tensor reads memory without dispatching, so
the counter also counts its calls (each is one transfer on a GPU).
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neuralode
from neuralode.adjoint import Adjoint
from neuralode.persample import solve_per_sample

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal", "is_nonzero"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0
        self._tolist = None

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        original = self._tolist

        def tolist(tensor):
            self.count += 1
            return original(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_syncs(fn):
    with SyncCounter() as counter:
        result = fn()
    return counter.count, result


def field(t, y):
    return torch.stack([y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


Y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=torch.float64)


def test_adaptive_loop_syncs_once_per_attempted_step():
    t = torch.tensor([0.0, 5.0], dtype=torch.float64)
    loose_syncs, loose = count_syncs(lambda: neuralode.solve(field, Y0, t, rtol=1e-3, atol=1e-3))
    tight_syncs, tight = count_syncs(lambda: neuralode.solve(field, Y0, t, rtol=1e-6, atol=1e-6))
    assert tight.stats.n_steps > loose.stats.n_steps + 20
    assert tight_syncs - loose_syncs == tight.stats.n_steps - loose.stats.n_steps  # exactly one per step
    assert loose_syncs - loose.stats.n_steps <= 10  # the entry checks and the initial step


def test_fixed_step_solve_syncs_do_not_grow_with_the_number_of_steps():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    few, _ = count_syncs(lambda: neuralode.odeint(field, Y0, t, method="rk4", options={"step_size": 0.1}))
    many, _ = count_syncs(lambda: neuralode.odeint(field, Y0, t, method="rk4", options={"step_size": 0.001}))
    assert many == few <= 10


def test_per_sample_stepping_syncs_once_per_attempted_step():
    t = torch.tensor([0.0, 5.0], dtype=torch.float64)
    loose_syncs, loose = count_syncs(lambda: solve_per_sample(field, Y0, t, rtol=1e-3, atol=1e-3))
    tight_syncs, tight = count_syncs(lambda: solve_per_sample(field, Y0, t, rtol=1e-6, atol=1e-6))

    def attempts(sol):  # the loop runs until the slowest sample is done
        return int((sol.n_accepted_per_sample + sol.n_rejected_per_sample).max())

    assert attempts(tight) > attempts(loose) + 20
    assert tight_syncs - loose_syncs == attempts(tight) - attempts(loose)  # exactly one per attempted step
    assert loose_syncs - attempts(loose) <= 10  # the entry checks and the statistics


def test_per_sample_adjoint_backward_syncs_once_per_attempted_step():
    t = torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64)

    def backward(tol):
        y0 = Y0.clone().requires_grad_(True)
        sol = solve_per_sample(field, y0, t, rtol=tol, atol=tol, gradient=Adjoint(params=()))
        loss = sol.ys.square().sum()
        syncs, _ = count_syncs(lambda: loss.backward())
        steps = sol.n_accepted_backward_per_sample + sol.n_rejected_backward_per_sample
        return syncs, int(steps.max())

    loose_syncs, loose_steps = backward(1e-3)
    tight_syncs, tight_steps = backward(1e-6)
    assert tight_steps > loose_steps + 20
    # one per attempted step of each segment (the slowest sample's; the two samples here stay within one
    # step of each other per segment), plus a fixed number per segment
    assert tight_steps - loose_steps - 2 <= tight_syncs - loose_syncs <= tight_steps - loose_steps + 2
