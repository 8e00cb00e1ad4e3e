"""Invariants checked on random problems (hypothesis).

* On random stable linear systems dy/dt = A y (dimension 1..4) every adaptive method matches
  the matrix exponential.
* A reverse-time solve inverts a forward one: solving back from y(t1) to t0 returns y0.

Examples are few (25) and small so the file stays fast; the seeds hypothesis draws make any
failure reproducible from its report.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neuralode
from problems import LinearField, linear_solution, scaled_error

# derandomize: the same 25 examples on every run, so CI cannot flake on a lucky draw; change the
# examples by editing the strategies (or run with --hypothesis-seed) when hunting for new cases.
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

ADAPTIVE = ("bosh3", "dopri5", "tsit5", "dopri8")


def random_stable_matrix(dim: int, seed: int, rotation: float) -> torch.Tensor:
    """A - a random matrix whose eigenvalues have real parts <= -0.1.

    -(B B^T) - 0.1 I is symmetric negative definite; adding a skew-symmetric S keeps the
    symmetric part, hence the stability, while adding rotation.
    """
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    S = torch.randn(dim, dim, generator=g, dtype=torch.float64) * rotation
    return -(B @ B.T) - 0.1 * torch.eye(dim, dtype=torch.float64) + (S - S.T)


@SETTINGS
@given(
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    rotation=st.floats(0.0, 2.0),
    t1=st.floats(0.1, 3.0),
    method=st.sampled_from(ADAPTIVE),
)
def test_random_stable_linear_systems_match_the_matrix_exponential(dim, seed, rotation, t1, method):
    A = random_stable_matrix(dim, seed, rotation)
    y0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    t = torch.linspace(0.0, t1, 4, dtype=torch.float64)
    rtol, atol = 1e-7, 1e-9
    ys = neuralode.odeint(LinearField(A), y0, t, method=method, rtol=rtol, atol=atol)
    exact = linear_solution(A, y0, 0.0)(t)
    # Global error in tolerance units; see test_oracle.py for why a small multiple is allowed.
    # bosh3 takes ~10x more steps than the others, and on rotating systems their phase errors
    # add up coherently (scipy's RK23 behaves the same), hence its larger allowance.
    allowed = 30.0 if method == "bosh3" else 10.0
    assert scaled_error(ys, exact, rtol, atol) <= allowed


@SETTINGS
@given(
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    t0=st.floats(-2.0, 2.0),
    span=st.floats(0.1, 2.0),
    method=st.sampled_from(ADAPTIVE),
)
def test_reverse_time_solve_inverts_a_forward_solve(dim, seed, t0, span, method):
    A = random_stable_matrix(dim, seed, rotation=1.0)
    field = LinearField(A)

    def nonlinear(t, y):  # mildly nonlinear and time-dependent, so time reversal is not trivial
        return field(t, y) + 0.1 * torch.sin(t) * torch.tanh(y)

    y0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    forward_t = torch.tensor([t0, t0 + span], dtype=torch.float64)
    y1 = neuralode.odeint(nonlinear, y0, forward_t, method=method, rtol=1e-9, atol=1e-11)[-1]
    back = neuralode.odeint(nonlinear, y1, forward_t.flip(0), method=method, rtol=1e-9, atol=1e-11)
    assert back.shape == (2, dim)
    torch.testing.assert_close(back[0], y1)
    # Both legs have global errors of a few tolerance units, amplified by at most exp(|A| span).
    torch.testing.assert_close(back[-1], y0, rtol=1e-6, atol=1e-7)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    dim=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    method=st.sampled_from(("midpoint", "heun3", "rk4")),
)
def test_fixed_step_reverse_solve_inverts_forward_up_to_the_method_error(dim, seed, method):
    A = random_stable_matrix(dim, seed, rotation=1.0)
    y0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opts = {"step_size": 1 / 512}
    y1 = neuralode.odeint(LinearField(A), y0, t, method=method, options=opts)[-1]
    back = neuralode.odeint(LinearField(A), y1, t.flip(0), method=method, options=opts)[-1]
    torch.testing.assert_close(back, y0, rtol=1e-5, atol=1e-6)
