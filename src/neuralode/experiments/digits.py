"""Quick image classification on scikit-learn's embedded 8x8 digits (no download).

The small version of the MNIST experiment (Chen et al. 2018, Table 1): the same
downsampling → feature block → head classifier, with a single stride-2 convolution for 8x8
images (see :func:`neuralode.nn.image.make_image_classifier`), trained on a
fixed stratified 1,437 / 360 split. The quick configuration trains the ODE-Net alone (adjoint
gradients, fixed-step rk4 with h = 0.5, i.e. 8 function evaluations per forward pass) for ten
epochs and reaches >= 97 % test accuracy in under a minute on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuralode.experiments.base import Run
from neuralode.experiments.image_training import SolverSettings
from neuralode.experiments.registry import register


@dataclass
class Config(SolverSettings):
    variants: str = "all"          # "all" or a comma list of odenet, resnet, rknet
    # optimisation
    epochs: float = 40.0
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    augment: bool = False
    log_every: int = 10
    checkpoint_every: int = 200
    max_train: int | None = None    # random subsets, for tiny runs
    max_test: int | None = None

    @classmethod
    def quick(cls) -> "Config":
        return cls(variants="odenet", method="rk4", step_size=0.5, epochs=10.0, batch_size=32, lr=5e-3)


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.data.digits import load_digits
    from neuralode.experiments import image_training as it
    from neuralode.report.markdown import image, metrics_table

    train, test = load_digits("train"), load_digits("test")
    results = it.train_variants(config, run, "digits", train, test)
    it.save_results_json(run, results)
    fig = run.save_figure(it.loss_curve_figure(results, "sklearn digits: training loss"), "loss.png")
    run.write_report(
        "# Digits (sklearn 8x8): ODE-Net vs ResNet vs RK-Net\n\n"
        f"{len(train)} training / {len(test)} test images, {config.epochs:g} epochs, "
        f"ODE-Net: {config.method} rtol={config.rtol:g} atol={config.atol:g}, {config.gradient} gradients.\n\n"
        + metrics_table(it.table1_rows(results), it.TABLE1_COLUMNS)
        + "\nTest error in %, memory in MiB (" + next(iter(results.values()))["memory_kind"]
        + "), NFE per training step.\n\n" + image(fig, "training loss")
    )
    return it.headline(results)


register("digits", config=Config, run=run,
         description="Quick image classification on sklearn's embedded 8x8 digits: ODE-Net vs ResNet vs RK-Net",
         quick_time="~30-50 s")
