"""Classic stiff test problems, the one definition the tests (``tests/test_stiff_oracle.py``,
``tests/test_implicit_methods.py``) and the benchmark (``benchmarks/bench_stiff.py``) share.

Each field is given in torch (any leading batch dimensions, so a ``[B, n]`` state is a batch of
independent problems) and in NumPy with its Jacobian (for SciPy's Radau, the oracle), plus a
linear stiff system with a closed form. Only torch and NumPy are imported (SciPy when the oracle
is called): nothing of the package, so any layer may use them.

* Robertson's chemical kinetics (Robertson 1966; Hairer & Wanner, Solving ODEs II, IV.10):
  three species, rate constants 0.04, 3e7, 1e4, on t ∈ [0, 1e5]; eigenvalues from ~0 to ~-1e4.
* Van der Pol with μ = 1000 (relaxation oscillations: slow drifts and sharp jumps).
* HIRES (Schäfer 1975; Hairer & Wanner IV.10): eight species of a plant's light response.
* ``stiff_linear``: y' = M y with eigenvalues -1 and -1000 (M = P diag(-1, -1000) P⁻¹).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

ROBERTSON_K = (0.04, 3e7, 1e4)


def robertson(t: Tensor, y: Tensor, k=ROBERTSON_K) -> Tensor:
    k1, k2, k3 = k
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], dim=-1)


def robertson_np(t, y, k=ROBERTSON_K):
    k1, k2, k3 = k
    return np.array([-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1]**2, k2 * y[1]**2])


def robertson_jac(t, y, k=ROBERTSON_K):
    k1, k2, k3 = k
    return np.array([[-k1, k3 * y[2], k3 * y[1]],
                     [k1, -k3 * y[2] - 2 * k2 * y[1], -k3 * y[1]],
                     [0.0, 2 * k2 * y[1], 0.0]])


MU = 1000.0


def van_der_pol(t: Tensor, y: Tensor) -> Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, MU * (1 - x**2) * v - x], dim=-1)


def van_der_pol_np(t, y):
    return np.array([y[1], MU * (1 - y[0]**2) * y[1] - y[0]])


def van_der_pol_jac(t, y):
    return np.array([[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1, MU * (1 - y[0]**2)]])


def _hires_rates(y1: Any, y2: Any, y3: Any, y4: Any, y5: Any, y6: Any, y7: Any, y8: Any) -> list:
    """HIRES's eight derivatives from its eight species (tensors or NumPy values alike)."""
    return [
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280.0 * y6 * y8 - 1.81 * y7,
        -280.0 * y6 * y8 + 1.81 * y7]


def hires(t: Tensor, y: Tensor) -> Tensor:
    return torch.stack(_hires_rates(*(y[..., i] for i in range(8))), dim=-1)


def hires_np(t, y):
    return np.array(_hires_rates(*y))


def hires_jac(t, y):
    J = np.zeros((8, 8))
    J[0, :3] = (-1.71, 0.43, 8.32)
    J[1, :2] = (1.71, -8.75)
    J[2, 2:5] = (-10.03, 0.43, 0.035)
    J[3, 1:4] = (8.32, 1.71, -1.12)
    J[4, 4:7] = (-1.745, 0.43, 0.43)
    J[5, 3:8] = (0.69, 1.71, -0.43 - 280.0 * y[7], 0.69, -280.0 * y[5])
    J[6, 5:8] = (280.0 * y[7], -1.81, 280.0 * y[5])
    J[7, 5:8] = (-280.0 * y[7], 1.81, -280.0 * y[5])
    return J


HIRES_Y0 = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057)


def stiff_linear_matrix() -> Tensor:
    P = torch.tensor([[1.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    return P @ torch.diag(torch.tensor([-1.0, -1000.0], dtype=torch.float64)) @ torch.linalg.inv(P)


def slow_eigenvector() -> Tensor:
    return torch.tensor([1.0, -1.0], dtype=torch.float64)


def linear_exact(M: Tensor, y0: Tensor, t: float) -> Tensor:
    return torch.linalg.matrix_exp(M * t) @ y0


def scipy_radau(fun, jac, y0, t: Tensor, rtol: float, atol: float) -> Tensor:
    """SciPy's Radau IIA (the oracle) at the times ``t``, float64."""
    from scipy.integrate import solve_ivp

    t_np = t.numpy()
    out = solve_ivp(fun, (float(t_np[0]), float(t_np[-1])), np.asarray(y0, dtype=np.float64), method="Radau",
                    t_eval=t_np, rtol=rtol, atol=atol, jac=jac)
    if not out.success:  # pragma: no cover - the oracle failing is a test-set bug
        raise RuntimeError(out.message)
    return torch.from_numpy(out.y.T.copy())
