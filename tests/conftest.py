"""Shared pytest set-up for the whole suite.

Kept small and generic on purpose: other test modules add their own fixtures here later.
Reusable problems with exact solutions live in ``tests/problems.py`` (import it as
``from problems import ...``; this directory is on ``sys.path`` under pytest's default
import mode).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Subprocesses the tests start (CLI, torchrun) import this checkout's sources too.
_SRC = str(Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p)

# The CI machines and the development machine share few cores between many processes;
# one intra-op thread keeps the suite fast and its timings stable.
torch.set_num_threads(1)

FLOAT_DTYPES = (torch.float32, torch.float64)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same global RNG state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def float_dtype(request) -> torch.dtype:
    """Parametrises a test over float32 and float64."""
    return request.param


@pytest.fixture
def f64():
    """``f64(x)``: a float64 tensor from numbers, lists or tensors (handy for exact references)."""

    def make(x) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float64)

    return make
