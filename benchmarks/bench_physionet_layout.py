"""PhysioNet training epochs: compact batches (each patient on its own times) vs the union grid.

Rubanova et al. batch patients on the union of their observation times. On their 1-minute grid a
patient of set a has 74 rows on average (at most 202), but the union of 50 random patients has
about 2,100: every model scans ~15x more rows than the longest patient has. Compact batching
(:func:`neuralode.data.physionet.collate`'s default) pads each patient's own rows to the batch's
longest patient. This script times real training epochs of the physionet experiment (protocol
rubanova: their models, loss, 3 z0 samples, batch 50) on the same training patients in both
layouts, per model and time grid, on one thread, and prints the ratio and the projected epoch
time of the full protocol's 3,200 training patients.

    NEURALODE_DATA=... .venv/bin/python benchmarks/bench_physionet_layout.py             # 100 training patients
    NEURALODE_DATA=... .venv/bin/python benchmarks/bench_physionet_layout.py --patients 50 --grids 1/60
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from fractions import Fraction

import numpy as np
import torch

from _common import EpochRun, environment, setup


def _rows(patients: list, batch_size: int, layout: str) -> float:
    """Mean rows per batch of the epoch's batches (in file order; an epoch shuffles, the mean barely moves)."""
    from neuralode.data.physionet import collate

    sizes = [collate(patients[k:k + batch_size], layout).values.shape[1] for k in range(0, len(patients), batch_size)]
    return float(np.mean(sizes))


def main() -> None:
    from neuralode.experiments import physionet as E

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100, help="training patients per epoch (batches of 50)")
    parser.add_argument("--grids", default="1/60,1", help="time grids in hours, comma-separated")
    parser.add_argument("--models", default=",".join(E.MODEL_LABELS), help="models, comma-separated")
    args = parser.parse_args()
    setup(threads=1)
    print(environment())
    run = EpochRun()
    models = args.models.split(",")
    full_batches = math.ceil(3200 / 50)
    print("| grid | model | rows/batch union | rows/batch compact | s/epoch union | s/epoch compact | union / compact "
          "| projected s/epoch at 3,200 patients (compact) |")
    print("|---|---|---|---|---|---|---|---|")
    for grid in args.grids.split(","):
        hours = float(Fraction(grid))
        n_total = math.ceil(args.patients / 0.8)
        config = E.resolve(E.Config(protocol="rubanova", n_patients=n_total, round_hours=hours, models=tuple(models)))
        data = E._load(config, run)
        data.train = data.train[:args.patients]
        batches = math.ceil(len(data.train) / config.batch_size)
        rows = {lay: _rows(data.train, config.batch_size, lay) for lay in ("union", "compact")}
        for name in models:
            cpu = {}
            for layout in ("union", "compact"):
                cfg = dataclasses.replace(config, layout=layout)
                torch.manual_seed(0)
                full = E._make(name, cfg, data)
                opt, sched = E._optimizer(full, cfg)
                c0 = time.process_time()
                E._train_epoch(full, opt, sched, data, cfg, run, 0, 0, 0, None, [])
                cpu[layout] = time.process_time() - c0
            proj = cpu["compact"] / batches * full_batches
            print(f"| {grid} h | {E.MODEL_LABELS[name]} | {rows['union']:.0f} | {rows['compact']:.0f} | "
                  f"{cpu['union']:.2f} | {cpu['compact']:.2f} | {cpu['union'] / cpu['compact']:.1f}x | {proj:.0f} |",
                  flush=True)
    print(f"(CPU seconds of one training epoch of {args.patients} patients = {math.ceil(args.patients / 50)} batches "
          "of 50, protocol rubanova, one thread; projected: x 64 batches / batches)")


if __name__ == "__main__":
    main()
