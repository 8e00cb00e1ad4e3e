"""Experiments: one module per published result, plus the run infrastructure.

Importing this package does not import the experiment modules (some pull in data sets);
:func:`neuralode.experiments.registry.discover` does, on demand. Write an experiment as::

    from dataclasses import dataclass
    from neuralode.experiments.base import Run
    from neuralode.experiments.registry import register

    @dataclass
    class Config:
        steps: int = 2000       # full run
        lr: float = 1e-3

        @classmethod
        def quick(cls) -> "Config":
            return cls(steps=100)

    def run(config: Config, run: Run) -> dict:
        ...
        return {"test_accuracy": acc}

    register("my-experiment", config=Config, run=run, description="what it reproduces")
"""

from neuralode.experiments.base import Run, cleanup_distributed, init_distributed, seed_everything
from neuralode.experiments.config import apply_overrides, make_config, parse_overrides
from neuralode.experiments.registry import (
    Experiment,
    RunOutcome,
    discover,
    get,
    names,
    register,
    run_experiment,
)

__all__ = [
    "Experiment",
    "Run",
    "RunOutcome",
    "apply_overrides",
    "cleanup_distributed",
    "discover",
    "get",
    "init_distributed",
    "make_config",
    "names",
    "parse_overrides",
    "register",
    "run_experiment",
    "seed_everything",
]
