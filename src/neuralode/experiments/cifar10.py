"""ODE-Net vs ResNet on CIFAR-10: test accuracy, per-class precision / recall / F1, loss curves.

The classifier is Chen et al.'s MNIST architecture with three input channels. Data: the
canonical CIFAR-10 python batches when present, otherwise the lossy JPEG (q75) copy — the
report then says "CIFAR-10 (JPEG copy)", and its accuracies are not directly comparable with
published CIFAR-10 numbers.

Full configuration (GPU): 100 epochs, SGD lr 0.1 (cosine), batch 128, random crop + flip.
Quick configuration (CPU): 10,000 training images, two epochs, Adam, the ODE-Net with a
cheap fixed-step solver; evaluated on all 10,000 test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register


@dataclass
class Config:
    variants: str = "odenet,resnet"
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    gradient: str = "adjoint"
    step_size: float | None = None
    rk_step: float = 0.25
    epochs: float = 100.0
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    augment: bool = True
    flip: bool = True
    eval_every: float = 5.0
    eval_batch_size: int = 1000
    log_every: int = 50
    checkpoint_every: int = 500
    max_train: int | None = None
    max_test: int | None = None
    source: str = "auto"            # "auto", "pickle" (canonical) or "jpeg" (the JPEG copy)

    @classmethod
    def quick(cls) -> "Config":
        return cls(method="rk4", step_size=0.5, epochs=2.0, optimizer="adam", lr=2e-3,
                   weight_decay=0.0, warmup_steps=20, augment=False, flip=False, eval_every=0.0,
                   log_every=10, checkpoint_every=100, max_train=10_000)


def per_class_table(results: dict[str, dict], classes: list[str]) -> tuple[list[dict], dict[str, Any]]:
    """Rows ``class | <variant> precision / recall / F1`` and macro averages per variant."""
    from sklearn.metrics import precision_recall_fscore_support

    rows = [{"class": c} for c in classes]
    macro: dict[str, Any] = {}
    for v, r in results.items():
        p, rc, f, _ = precision_recall_fscore_support(r["labels"], r["predictions"],
                                                      labels=list(range(len(classes))), zero_division=0)
        for i, row in enumerate(rows):
            row[f"{v} P"], row[f"{v} R"], row[f"{v} F1"] = float(p[i]), float(rc[i]), float(f[i])
        macro[f"{v}_macro_f1"] = float(f.mean())
    return rows, macro


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.data.cifar10 import load_cifar10
    from neuralode.experiments import image_training as it
    from neuralode.io import atomic_write_json
    from neuralode.report.markdown import image, metrics_table

    train = load_cifar10("train", source=config.source)
    test = load_cifar10("test", source=config.source)
    results = it.train_variants(config, run, "cifar10", train, test)
    it.save_results_json(run, results)
    rows, macro = per_class_table(results, test.classes)
    if run.is_main:
        atomic_write_json(run.dir / "per_class.json", rows)
        fig = run.save_figure(it.loss_curve_figure(results, f"{train.name}: training loss"), "loss.png")
        n_train = min(len(train), config.max_train or len(train))
        n_test = len(next(iter(results.values()))["labels"])
        run.write_report(
            f"# {train.name}: ODE-Net vs ResNet\n\n"
            f"{config.epochs:g} epochs on {n_train} training images, evaluated on {n_test} test images "
            f"({train.name}). ODE-Net: {config.method}"
            + (f" step {config.step_size:g}" if config.step_size else f" rtol={config.rtol:g}")
            + f", {config.gradient} gradients.\n\n"
            + metrics_table([{**r, "test_accuracy": r["test_accuracy"], "macro_f1": macro[f"{v}_macro_f1"]}
                             for v, r in results.items()],
                            ["model", "test_accuracy", "macro_f1", "params", "peak_memory_mb",
                             "time_per_epoch_s", "nfe_forward", "nfe_backward"])
            + "\n## Per-class precision (P), recall (R), F1\n\n" + metrics_table(rows, digits=3)
            + "\n" + image(fig, "training loss")
        )
    out = {"dataset": train.name, **macro}
    for v, r in results.items():
        out[f"{v}_test_accuracy"] = r["test_accuracy"]
        out[f"{v}_params"] = r["params"]
        out[f"{v}_time_per_epoch_s"] = r["time_per_epoch_s"]
        out[f"{v}_nfe_forward"] = r["nfe_forward"]
    return out


register("cifar10", config=Config, run=run,
         description="ODE-Net vs ResNet on CIFAR-10 (or its JPEG copy): accuracy, per-class P/R/F1, loss curves",
         quick_time="~5 min (CPU)", in_demo=False)
