"""ODE-Net vs ResNet on CIFAR-10: test accuracy, per-class precision / recall / F1, cost, loss curves.

Two families of models (``variants``):

* Chen et al.'s MNIST architecture with three input channels: ``odenet``, ``resnet`` (six
  residual blocks), ``rknet`` (``all`` names the three);
* ResNet-18/34-depth networks (:mod:`neuralode.nn.deep_classifier`, CIFAR layout: stride-1
  stem, four stages at widths w, 2w, 4w, 8w with ``w = deep_width``) whose stages are residual
  blocks (``resnet18``/``resnet34``), one ODE stage each (``odenet18``/``odenet34``) or the
  fixed-step RK-Net twin (``rknet18``/``rknet34``); ``deep18`` / ``deep34`` name each trio.

Reported per model: test accuracy, macro F1 and per-class P/R/F1, parameters, peak training
memory, activations saved for backward, training and inference images/s, forward/backward NFE.

Data: the canonical CIFAR-10 python batches when present, otherwise the lossy JPEG (q75) copy —
the report then says "CIFAR-10 (JPEG copy)", and its accuracies are not directly comparable with
published CIFAR-10 numbers. ``cifar100`` (:mod:`neuralode.experiments.cifar100`) shares this code.

Full configuration (GPU): 100 epochs, SGD lr 0.1 (cosine), batch 128, random crop + flip.
Quick configuration (CPU): 10,000 training images, two epochs, Adam, the ODE-Net with a
cheap fixed-step solver; evaluated on all 10,000 test images. ResNet-18 depth on the CPU:
``--quick --set variants=deep18 --set deep_width=16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuralode.experiments.base import Run
from neuralode.experiments.image_training import SolverSettings
from neuralode.experiments.registry import register
from neuralode.report.headlines import Headline, declare


@dataclass
class CifarConfig(SolverSettings):
    """Settings shared by ``cifar10`` and ``cifar100``."""

    variants: str = "odenet,resnet"   # odenet, resnet, rknet, all; resnet18/odenet18/rknet18 (deep18), *34 (deep34)
    deep_width: int = 64              # first-stage width of the ResNet-18/34-depth variants
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

    @classmethod
    def quick(cls) -> "CifarConfig":
        return cls(method="rk4", step_size=0.5, epochs=2.0, optimizer="adam", lr=2e-3,
                   weight_decay=0.0, warmup_steps=20, augment=False, flip=False, eval_every=0.0,
                   log_every=10, checkpoint_every=100, max_train=10_000)


@dataclass
class Config(CifarConfig):
    source: str = "auto"            # "auto", "pickle" (canonical) or "jpeg" (the JPEG copy)


def per_class_table(results: dict[str, dict], classes: list[str]) -> tuple[list[dict], dict[str, Any]]:
    """Rows ``class | <variant> precision / recall / F1`` and macro averages per variant."""
    from sklearn.metrics import precision_recall_fscore_support

    rows: list[dict[str, Any]] = [{"class": c} for c in classes]
    macro: dict[str, Any] = {}
    for v, r in results.items():
        p, rc, f, _ = precision_recall_fscore_support(r["labels"], r["predictions"],
                                                      labels=list(range(len(classes))), zero_division=0)
        for i, row in enumerate(rows):
            row[f"{v} P"], row[f"{v} R"], row[f"{v} F1"] = float(p[i]), float(rc[i]), float(f[i])
        macro[f"{v}_macro_f1"] = float(f.mean())
    return rows, macro


COST_COLUMNS = ["model", "test_accuracy", "macro_f1", "params", "peak_memory_mb", "saved_activations_mb",
                "train_images_per_s", "infer_images_per_s", "time_per_epoch_s", "nfe_forward", "nfe_backward"]


def run_classification(config: CifarConfig, run: Run, train: Any, test: Any) -> dict[str, Any]:
    """Train ``config.variants`` on ``train``, evaluate on ``test``, write the report; the headline dict."""
    from neuralode.experiments import image_training as it
    from neuralode.io import atomic_write_json
    from neuralode.report.markdown import image, metrics_table

    results = it.train_variants(config, run, "cifar10", train, test)
    it.save_results_json(run, results)
    rows, macro = per_class_table(results, test.classes)
    if run.is_main:
        atomic_write_json(run.dir / "per_class.json", rows)
        fig = run.save_figure(it.loss_curve_figure(results, f"{train.name}: training loss"), "loss.png")
        n_train = min(len(train), config.max_train or len(train))
        n_test = len(next(iter(results.values()))["labels"])
        first = next(iter(results.values()))
        run.write_report(
            f"# {train.name}: ODE-Net vs ResNet (and RK-Net)\n\n"
            f"{config.epochs:g} epochs on {n_train} training images, evaluated on {n_test} test images "
            f"({train.name}), batch {config.batch_size}, {config.optimizer} lr {config.lr:g}, device {run.device}. "
            f"ODE-Net: {config.method}"
            + (f" step {config.step_size:g}" if config.step_size else f" rtol={config.rtol:g}")
            + f", {config.gradient} gradients; RK-Net: rk4 step {config.rk_step:g}, direct backprop; "
            f"ResNet-18/34-depth variants at first-stage width {config.deep_width}.\n\n"
            + metrics_table([{**r, "macro_f1": macro[f"{v}_macro_f1"]} for v, r in results.items()], COST_COLUMNS)
            + f"\nMemory in MiB ({first['memory_kind']} during training; activations saved for backward by one "
            "step); NFE: mean function evaluations per training step, summed over ODE stages (0 for ResNets; "
            "backward 0 for direct backprop).\n"
            + "\n## Per-class precision (P), recall (R), F1\n\n" + metrics_table(rows, digits=3)
            + "\n" + image(fig, "training loss")
        )
    out = {"dataset": train.name, **macro}
    for v, r in results.items():
        for k in ("test_accuracy", "params", "peak_memory_mb", "train_images_per_s", "infer_images_per_s",
                  "time_per_epoch_s", "nfe_forward", "nfe_backward"):
            out[f"{v}_{k}"] = r[k]
    return out


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.data.cifar10 import load_cifar10

    train = load_cifar10("train", source=config.source)
    test = load_cifar10("test", source=config.source)
    return run_classification(config, run, train, test)


declare("cifar10",
        Headline("odenet_test_accuracy", "ODE-Net test accuracy (%)", goal="info", scale=100),
        Headline("resnet_test_accuracy", "ResNet test accuracy (%)", goal="info", scale=100),
        Headline("odenet_nfe_forward", "ODE-Net forward NFE", goal="info"),
        Headline("odenet18_test_accuracy", "ODE-Net (ResNet-18 depth) test accuracy (%)", goal="info", scale=100),
        Headline("resnet18_test_accuracy", "ResNet-18 test accuracy (%)", goal="info", scale=100))

register("cifar10", config=Config, run=run,
         description="ODE-Net vs ResNet (Chen's network, ResNet-18/34 depths, RK twins) on CIFAR-10: accuracy, P/R/F1, cost",
         quick_time="~5 min (CPU)", in_demo=False)
