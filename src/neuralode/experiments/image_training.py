"""The train / evaluate loop shared by the image experiments (mnist, digits, cifar10).

It works unchanged on one process and under ``torchrun`` (DistributedDataParallel; gloo on
CPU, nccl on GPU):

* **Batches are global.** Epoch ``e`` draws one permutation of the training set from a
  generator seeded with ``(seed, e)``; global batch ``b`` is the slice ``[b*B, (b+1)*B)`` and
  rank ``r`` of ``W`` takes every ``W``-th image of it. The step counter counts global
  batches, so a checkpoint taken under one world size resumes under any other (and a resumed
  run sees exactly the batches an uninterrupted one would).
* **Only rank 0 writes** (the :class:`Run` makes other ranks' writes no-ops); metrics that
  are logged are averaged over ranks first.
* **Evaluation is sharded**: each rank predicts every ``W``-th test image and the predictions
  are gathered, so every rank ends with the full prediction vector.

Measured per run (Table 1 of Chen et al. 2018): test error, parameters, peak training
memory (``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak resident set
size ``VmHWM``, reset before training through ``/proc/self/clear_refs``, falling back to
``resource.getrusage``), the memory the forward pass *saves for backward* (exact, counted by
``torch.autograd.graph.saved_tensors_hooks``; the quantity the adjoint method makes O(1) in
depth), time per epoch, and mean forward / backward NFE per training step.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuralode.data.images import ImageSet

__all__ = [
    "MemoryMeter",
    "SolverSettings",
    "TrainSettings",
    "augment",
    "count_saved_bytes",
    "return_freed_memory_to_os",
    "evaluate",
    "global_batches",
    "settings_from",
    "train_classifier",
    "unwrap",
]


# ----------------------------------------------------------------------------- settings


@dataclass
class SolverSettings:
    """The ODE-Net and RK-Net solver fields every image experiment's Config starts with."""

    method: str = "dopri5"           # ODE-Net (paper: dopri5, rtol = atol = 1e-3, adjoint gradients)
    rtol: float = 1e-3
    atol: float = 1e-3
    gradient: str = "adjoint"
    step_size: float | None = None   # step of a fixed-step ODE-Net method
    rk_step: float = 0.25            # RK-Net: rk4 with this step, direct backprop


@dataclass
class TrainSettings:
    """Optimisation settings; experiments' Configs carry fields of the same names."""

    epochs: float = 1.0              # fractional epochs allowed
    batch_size: int = 128            # global batch (split over ranks)
    optimizer: str = "sgd"           # "sgd" (momentum 0.9, as in the paper) or "adam"
    lr: float = 0.1
    weight_decay: float = 0.0
    schedule: str = "step"           # "step" (x0.1 at 60/100/140 of 160 epochs, scaled), "cosine", "constant"
    warmup_steps: int = 0
    augment: bool = False            # random crop (pad 4) + (CIFAR only) horizontal flip
    flip: bool = False
    eval_batch_size: int = 1000
    eval_every: float = 0.0          # epochs between test evaluations; 0: only at the end
    log_every: int = 20              # steps between loss log lines
    checkpoint_every: int = 200      # steps between checkpoints
    max_train: int | None = None     # use a random subset of the training set
    max_test: int | None = None


def settings_from(config: Any) -> TrainSettings:
    """Pick the :class:`TrainSettings` fields out of an experiment Config."""
    return TrainSettings(**{f.name: getattr(config, f.name) for f in fields(TrainSettings)
                            if hasattr(config, f.name)})


# ----------------------------------------------------------------------------- distributed


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def _all_mean(values: list[float], device: torch.device) -> list[float]:
    dist = _dist()
    if dist is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def _all_max(value: float, device: torch.device) -> float:
    dist = _dist()
    if dist is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


# ----------------------------------------------------------------------------- data


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's global batches as an index matrix ``(n // batch_size, batch_size)``."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({n} images)")
    return perm[: steps * batch_size].view(steps, batch_size)


def augment(x: torch.Tensor, g: torch.Generator, *, pad: int = 4, flip: bool = False) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero padding) and optional horizontal flip."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=g) < 0.5).to(x.device)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out.contiguous()


class Normaliser:
    """``(x / pixel_max - mean) / std`` per channel, statistics from the training set."""

    def __init__(self, train: ImageSet) -> None:
        x = train.images.float().div_(train.pixel_max)
        self.mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
        self.pixel_max = train.pixel_max

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = images.to(device, non_blocking=True).float().div_(self.pixel_max)
        return (x - self.mean.to(device)) / self.std.to(device)


# ----------------------------------------------------------------------------- measurement


class MemoryMeter:
    """Peak memory of a code region: CUDA allocator peak on GPU, peak RSS on CPU (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS"
        self.baseline = 0.0

    @staticmethod
    def _rss_hwm() -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    @staticmethod
    def _current_rss() -> float | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError):
            return None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:  # reset the kernel's peak-RSS counter of this process (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.baseline = self._current_rss() or 0.0

    def peak(self) -> float:
        """Peak MiB since :meth:`reset`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = self._rss_hwm()
        if hwm is None:  # no /proc: the lifetime peak (KiB on Linux)
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return hwm


def return_freed_memory_to_os() -> bool:
    """Make glibc give large freed blocks back to the OS at once (``mallopt``).

    By default glibc raises its mmap threshold dynamically and keeps freed heap memory, so
    the resident set size of one measurement includes what an earlier one freed, and peak-RSS
    comparisons between settings in one process are biased. Fixing ``M_MMAP_THRESHOLD`` at
    64 KiB (which also disables the dynamic adjustment) serves every tensor buffer larger than
    that from its own mapping, released on free. Returns False where it is unavailable.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1
        ok = libc.mallopt(m_trim_threshold, 128 * 1024) == 1 and ok
        return ok
    except (OSError, AttributeError):
        return False


@contextmanager
def count_saved_bytes() -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside the block (each storage once).

    ``with count_saved_bytes() as c: loss = model(x)...`` then ``c["bytes"]``.
    """
    seen: set[tuple[int, int]] = set()
    box = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                box["bytes"] += storage.nbytes()
        except (RuntimeError, NotImplementedError):
            box["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box


def _nfe(model: nn.Module) -> tuple[float, float]:
    """(forward, backward) NFE of the ODE block's last call; (0, 0) for a ResNet."""
    ode_stats = getattr(unwrap(model), "ode_stats", None)
    stats = ode_stats() if callable(ode_stats) else None
    if stats is None:
        return 0.0, 0.0
    return float(getattr(stats, "nfe", 0) or 0), float(getattr(stats, "nfe_backward", 0) or 0)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, norm: Normaliser, device: torch.device,
             batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels for every image of ``data`` (sharded over ranks, then gathered)."""
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    model.eval()
    mine = torch.arange(rank, len(data), world)
    preds = []
    for i in range(0, len(mine), batch_size):
        idx = mine[i: i + batch_size]
        preds.append(unwrap(model)(norm(data.images[idx], device)).argmax(1).cpu())
    model.train()
    local = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    if dist is None:
        return local
    size = math.ceil(len(data) / world)
    buf = torch.full((size,), -1, dtype=torch.long)
    buf[: len(local)] = local
    buf = buf.to(device)
    gathered = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(gathered, buf)
    out = torch.empty(len(data), dtype=torch.long)
    for r, g in enumerate(gathered):
        n_r = len(range(r, len(data), world))
        out[r::world] = g[:n_r].cpu()
    return out


# ----------------------------------------------------------------------------- training


def _make_optimizer(params: Any, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"optimizer={s.optimizer!r}; expected 'sgd' or 'adam'")


def _lr_factor(s: TrainSettings, total_steps: int) -> Callable[[int], float]:
    if s.schedule not in ("step", "cosine", "constant"):
        raise ValueError(f"schedule={s.schedule!r}; expected 'step', 'cosine' or 'constant'")

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else 1.0
        frac = step / max(1, total_steps)
        if s.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * frac))
        if s.schedule == "step":  # torchdiffeq's MNIST schedule: x0.1 at epochs 60, 100, 140 of 160
            return warm * 0.1 ** sum(frac >= b for b in (60 / 160, 100 / 160, 140 / 160))
        return warm

    return factor


def train_classifier(
    model: nn.Module,
    train: ImageSet,
    test: ImageSet,
    settings: TrainSettings,
    run: Any,
    *,
    tag: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train``, evaluate on ``test``; return the Table-1 metrics.

    ``tag`` names this model in logs and checkpoints (``"odenet"``); ``extra`` is stored in
    every checkpoint (an experiment that trains several models keeps finished results there,
    see :func:`resume_results`). On resume, training continues from the checkpoint if it was
    taken while training ``tag``. Returns a dict with ``test_accuracy``, ``test_error``,
    ``params``, ``peak_memory_mb``, ``saved_activations_mb``, ``time_per_epoch_s``,
    ``train_images_per_s``, ``infer_images_per_s``,
    ``nfe_forward``, ``nfe_backward``, ``loss_curve`` (``[[step, loss], ...]``),
    ``eval_curve`` and ``predictions`` / ``labels`` of the test set.
    """
    s = settings
    device = run.device
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    if s.batch_size % world:
        raise ValueError(f"batch_size={s.batch_size} must be divisible by the world size {world}")
    train = train.subset(s.max_train, seed=run.seed)
    test = test.subset(s.max_test, seed=run.seed)
    norm = Normaliser(train)
    steps_per_epoch = len(train) // s.batch_size
    total_steps = max(1, round(s.epochs * steps_per_epoch))
    base = unwrap(model).to(device)
    opt = _make_optimizer(base.parameters(), s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(s, total_steps))
    params = sum(p.numel() for p in base.parameters() if p.requires_grad)

    # state that survives a resume
    step, curve, evals = 0, [], []
    acc = {"train_time": 0.0, "nfe_f": 0.0, "nfe_b": 0.0, "nfe_steps": 0, "saved_bytes": 0.0}
    ckpt = run.load_checkpoint()
    if ckpt is not None and ckpt.get("extra", {}).get("tag") == tag:
        step = run.restore_training(base, opt, sched)
        e = ckpt["extra"]
        curve, evals, acc = list(e["curve"]), list(e["evals"]), dict(e["acc"])

    def state() -> dict[str, Any]:
        return run.training_state(step, base, opt, sched, **{**(extra or {}), "tag": tag,
                                  "curve": curve, "evals": evals, "acc": acc})

    net = model
    if dist is not None and not isinstance(model, nn.parallel.DistributedDataParallel):
        net = nn.parallel.DistributedDataParallel(
            base, device_ids=[device.index] if device.type == "cuda" else None)
    meter = MemoryMeter(device)
    meter.reset()
    aug_gen = torch.Generator()
    bar = run.progress(total_steps, f"{tag}", initial=step)
    window: list[float] = []
    net.train()
    while step < total_steps:
        run.check_interrupt(state)
        epoch, b = divmod(step, steps_per_epoch)
        idx = global_batches(len(train), s.batch_size, run.seed, epoch)[b][rank::world]
        t0 = time.perf_counter()
        x = norm(train.images[idx], device)
        y = train.labels[idx].to(device, non_blocking=True)
        if s.augment:
            aug_gen.manual_seed(run.seed * 7_919 + step)
            x = augment(x, aug_gen, flip=s.flip)
        with count_saved_bytes() as saved:
            loss = F.cross_entropy(net(x), y)
        nfe_f, _ = _nfe(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _, nfe_b = _nfe(net)
        opt.step()
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        acc["train_time"] += time.perf_counter() - t0
        acc["nfe_f"] += nfe_f
        acc["nfe_b"] += nfe_b
        acc["nfe_steps"] += 1
        acc["saved_bytes"] = max(acc["saved_bytes"], float(saved["bytes"]))
        step += 1
        window.append(loss.item())
        bar.update()
        if step % s.log_every == 0 or step == total_steps:
            mean_loss, = _all_mean([sum(window) / len(window)], device)
            window = []
            curve.append([step, mean_loss])
            run.log(step, **{f"{tag}/loss": mean_loss, f"{tag}/lr": sched.get_last_lr()[0],
                             f"{tag}/nfe_forward": nfe_f, f"{tag}/nfe_backward": nfe_b})
            bar.set_postfix(loss=f"{mean_loss:.3g}", nfe=f"{nfe_f:.0f}/{nfe_b:.0f}")
        if s.eval_every and step % max(1, round(s.eval_every * steps_per_epoch)) == 0 and step < total_steps:
            preds = evaluate(net, test, norm, device, s.eval_batch_size)
            test_acc = (preds == test.labels).float().mean().item()
            evals.append([step, test_acc])
            run.log(step, **{f"{tag}/test_accuracy": test_acc})
        if step % s.checkpoint_every == 0 and step < total_steps:
            run.save_checkpoint(state())
    bar.close()
    peak = _all_max(meter.peak(), device)
    t_eval = time.perf_counter()
    preds = evaluate(net, test, norm, device, s.eval_batch_size)
    t_eval = time.perf_counter() - t_eval
    test_acc = (preds == test.labels).float().mean().item()
    evals.append([step, test_acc])
    run.log(step, **{f"{tag}/test_accuracy": test_acc})
    n = max(1, acc["nfe_steps"])
    epochs_done = acc["nfe_steps"] / steps_per_epoch
    return {
        "model": tag,
        "test_accuracy": test_acc,
        "test_error": 1.0 - test_acc,
        "params": params,
        "peak_memory_mb": peak,
        "memory_kind": meter.kind,
        "saved_activations_mb": acc["saved_bytes"] / 2**20,
        "time_per_epoch_s": acc["train_time"] / max(epochs_done, 1e-12) if acc["nfe_steps"] else None,
        "train_images_per_s": (acc["nfe_steps"] * s.batch_size / acc["train_time"]
                               if acc["nfe_steps"] and acc["train_time"] > 0 else None),
        "infer_images_per_s": len(test) / max(t_eval, 1e-12),
        "epochs": s.epochs,
        "steps": step,
        "nfe_forward": acc["nfe_f"] / n,
        "nfe_backward": acc["nfe_b"] / n,
        "world_size": world,
        "loss_curve": curve,
        "eval_curve": evals,
        "predictions": preds.tolist(),
        "labels": test.labels.tolist(),
        "final_loss": curve[-1][1] if curve else None,
    }


def resume_results(run: Any) -> dict[str, Any]:
    """Results of the models an interrupted multi-model run had already finished."""
    ckpt = run.load_checkpoint()
    if ckpt is None:
        return {}
    return dict(ckpt.get("extra", {}).get("results", {}))


def save_finished(run: Any, results: dict[str, Any], model: nn.Module | None = None) -> None:
    """Checkpoint after a model finished, so a resumed run skips it."""
    state = {"step": 0, "extra": {"results": results, "tag": None}}
    if model is not None:
        state["model"] = unwrap(model).state_dict()
    run.save_checkpoint(state)


# ----------------------------------------------------------------------------- several models


def parse_variants(spec: str) -> list[str]:
    """``"all"`` (odenet, resnet, rknet: Chen et al.'s network), ``"deep18"`` / ``"deep34"``
    (resnet, odenet and rknet at ResNet-18/34 depth) or a comma list of those names."""
    from neuralode.nn.deep_classifier import DEEP_VARIANTS
    from neuralode.nn.image import FEATURE_BLOCKS

    groups = {"all": list(FEATURE_BLOCKS), "deep18": [v for v in DEEP_VARIANTS if v.endswith("18")],
              "deep34": [v for v in DEEP_VARIANTS if v.endswith("34")]}
    names: list[str] = []
    for v in (v.strip() for v in spec.split(",")):
        for name in groups.get(v, [v] if v else []):
            if name not in names:
                names.append(name)
    allowed = (*FEATURE_BLOCKS, *DEEP_VARIANTS)
    bad = [v for v in names if v not in allowed]
    if bad or not names:
        raise ValueError(f"variants={spec!r}; expected 'all', 'deep18', 'deep34' or a comma list of "
                         f"{', '.join(allowed)}")
    return names


def model_kwargs(config: Any, variant: str) -> dict[str, Any]:
    """Solver settings of a Chen-network variant from an experiment Config (fields method, rtol, atol, ...)."""
    if variant == "resnet":
        return {}
    if variant == "rknet":
        return {"rk_step": getattr(config, "rk_step", 0.25)}
    kw: dict[str, Any] = {"method": config.method, "rtol": config.rtol, "atol": config.atol,
                          "gradient": config.gradient}
    if getattr(config, "step_size", None):
        kw["options"] = {"step_size": config.step_size}
    return kw


def make_variant(config: Any, variant: str, dataset: str, n_classes: int, in_channels: int = 3) -> nn.Module:
    """The model of ``variant``: Chen et al.'s classifier or a ResNet-18/34-depth one (``deep_width``)."""
    from neuralode.nn.deep_classifier import DEEP_VARIANTS, make_deep_classifier
    from neuralode.nn.image import make_image_classifier

    if variant in DEEP_VARIANTS:
        kw: dict[str, Any] = {"width": getattr(config, "deep_width", 64), "rk_step": getattr(config, "rk_step", 0.25)}
        if variant.startswith("odenet"):
            kw.update(method=config.method, rtol=config.rtol, atol=config.atol, gradient=config.gradient,
                      step_size=getattr(config, "step_size", None))
        return make_deep_classifier(variant, n_classes=n_classes, in_channels=in_channels, **kw)
    return make_image_classifier(variant, dataset, n_classes=n_classes, **model_kwargs(config, variant))


def train_variants(config: Any, run: Any, dataset: str, train: ImageSet, test: ImageSet) -> dict[str, dict]:
    """Train every variant named by ``config.variants`` in turn; resumable between and within models.

    Variants: Chen et al.'s ``odenet``/``resnet``/``rknet`` and the ResNet-18/34-depth ones of
    :mod:`neuralode.nn.deep_classifier` (width from ``config.deep_width``, default 64).

    Returns ``{variant: metrics}`` (see :func:`train_classifier`).
    """
    from neuralode.experiments.base import init_distributed

    run.device = init_distributed(run.device)
    variants = parse_variants(config.variants)
    results = resume_results(run)
    for i, variant in enumerate(variants):
        if variant in results:
            run.info(f"{variant}: already finished in the resumed run")
            continue
        torch.manual_seed(run.seed + i)  # same initialisation on every rank and every resume
        model = make_variant(config, variant, dataset, len(train.classes), train.images.shape[1])
        run.info(f"{variant}: {sum(p.numel() for p in model.parameters())} parameters")
        results[variant] = train_classifier(model, train, test, settings_from(config), run,
                                            tag=variant, extra={"results": results})
        save_finished(run, results)
        if run.is_main:  # the trained weights, e.g. for trajectory-pca --set weights=<run folder>
            from neuralode.io import atomic_torch_save

            atomic_torch_save(unwrap(model).state_dict(), run.dir / f"{variant}.pt")
        run.info(f"{variant}: test accuracy {results[variant]['test_accuracy']:.4f}")
    return {v: results[v] for v in variants}


TABLE1_COLUMNS = ["model", "test_error", "params", "peak_memory_mb", "saved_activations_mb",
                  "time_per_epoch_s", "nfe_forward", "nfe_backward"]


def table1_rows(results: dict[str, dict]) -> list[dict[str, Any]]:
    """Table 1 rows (test error in %)."""
    rows = []
    for r in results.values():
        row = {k: r[k] for k in TABLE1_COLUMNS}
        row["test_error"] = 100.0 * r["test_error"]
        rows.append(row)
    return rows


def headline(results: dict[str, dict]) -> dict[str, Any]:
    """Flat headline metrics for result.json: ``<variant>_<metric>``."""
    out: dict[str, Any] = {}
    for v, r in results.items():
        for k in ("test_accuracy", "params", "peak_memory_mb", "saved_activations_mb",
                  "time_per_epoch_s", "nfe_forward", "nfe_backward"):
            out[f"{v}_{k}"] = r[k]
    return out


def loss_curve_figure(results: dict[str, dict], title: str) -> Any:
    """Training-loss curves of every variant (log scale)."""
    from neuralode.report.plots import line_plot

    series = {v: ([c[0] for c in r["loss_curve"]], [c[1] for c in r["loss_curve"]])
              for v, r in results.items() if r["loss_curve"]}
    return line_plot(series, xlabel="step (global batches)", ylabel="training loss", title=title, logy=True)


def save_results_json(run: Any, results: dict[str, dict], name: str = "models.json") -> None:
    """Full per-model results (without the prediction vectors) next to result.json."""
    if not run.is_main:
        return
    from neuralode.io import atomic_write_json

    slim = {v: {k: x for k, x in r.items() if k not in ("predictions", "labels")} for v, r in results.items()}
    atomic_write_json(run.dir / name, slim)
