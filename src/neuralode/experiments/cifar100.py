"""ODE-Net vs ResNet on CIFAR-100 (100 fine classes, or the 20 superclasses).

The same models, training loop and report as :mod:`neuralode.experiments.cifar10` (Chen et al.'s
network and the ResNet-18/34-depth residual / ODE / RK-Net variants), on the canonical CIFAR-100
archive (:func:`neuralode.data.cifar100.load_cifar100`: downloaded from the Toronto page,
verified by its published MD5, cached). There is no offline copy on the development machine:
run it where the archive can be downloaded, or place ``cifar-100-python.tar.gz`` in
``$NEURALODE_DATA/cifar100/``.

Full configuration (GPU): 100 epochs, SGD lr 0.1 (cosine), batch 128, crop + flip. Quick
configuration (CPU): 10,000 training images, two epochs, Adam, fixed-step ODE-Net.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuralode.experiments.base import Run
from neuralode.experiments.cifar10 import CifarConfig, run_classification
from neuralode.experiments.registry import register
from neuralode.report.headlines import Headline, declare


@dataclass
class Config(CifarConfig):
    labels: str = "fine"            # "fine" (100 classes) or "coarse" (20 superclasses)


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.data.cifar100 import load_cifar100

    train = load_cifar100("train", labels=config.labels)
    test = load_cifar100("test", labels=config.labels)
    return run_classification(config, run, train, test)


declare("cifar100",
        Headline("odenet_test_accuracy", "ODE-Net test accuracy (%)", goal="info", scale=100),
        Headline("resnet_test_accuracy", "ResNet test accuracy (%)", goal="info", scale=100),
        Headline("odenet18_test_accuracy", "ODE-Net (ResNet-18 depth) test accuracy (%)", goal="info", scale=100),
        Headline("resnet18_test_accuracy", "ResNet-18 test accuracy (%)", goal="info", scale=100))

register("cifar100", config=Config, run=run,
         description="ODE-Net vs ResNet (Chen's network, ResNet-18/34 depths, RK twins) on CIFAR-100: accuracy, P/R/F1, cost",
         quick_time="~5 min (CPU; needs the downloaded archive)", in_demo=False)
