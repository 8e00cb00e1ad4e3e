"""Object detection with Faster R-CNN: ResNet vs ODE-Net vs RK-Net backbones of the same widths.

The study proposed in issue 11: replace the residual stages of a detector's backbone by ODE
stages and compare precision, recall, AP, parameters, memory, speed and NFE side by side.

Data (:mod:`neuralode.data.canvas`, deterministic by ``canvas_seed``): canvases with 1..k real
objects and exact boxes. ``dataset="cifar10"`` (full): CIFAR-10 images scaled 0.5-2x pasted
(overlap <= ``max_overlap`` of the smaller box) on crops of real photographs bundled with
scikit-image (train/val: eight photos, test: two others). ``dataset="mnist"`` (quick): MNIST
digits in white ink on black, box = the digit's ink. Train and validation canvases draw objects
from disjoint parts of the training split (the last 10% feed validation); test canvases use the
test split.

Model: ``torchvision.models.detection.FasterRCNN`` (no pretrained weights) via
:func:`neuralode.nn.detection.make_faster_rcnn`, backbone from
:func:`neuralode.nn.backbones.make_backbone` (``depth`` preset, ``width``, ``n_stages``): stage
bodies of k residual blocks (resnet), one dopri5 ODE stage with adjoint gradients (odenet) or
its fixed-step rk4 twin (rknet).

Metrics on the test canvases: precision, recall and F1 at IoU 0.5 at the score threshold that
maximises F1 on the validation canvases; COCO mAP@[.5:.95] and mAP@0.5 (pycocotools) and
per-class AP; parameters (all / backbone / stage bodies); peak training memory (peak RSS on
CPU, allocator peak on GPU) and the exact bytes autograd saves for backward (whole step and
backbone alone); training and inference images/s; forward/backward NFE. The ODE-Net is also
evaluated at other solver tolerances (accuracy vs NFE), and a box-at-random baseline is scored.

Configurations: ``Config()`` is the full one (CIFAR-10 canvases of 128 px, 8,000 training
canvases, 20 epochs, widths 32-64-128: a GPU run). ``--quick``: MNIST canvases, ~3 CPU-minutes
on one thread. The largest run made on the 2-core CPU so far (README) was::

    neuralode run detect --set image_size=96 --set width=8 --set n_stages=2 --set stem_stride=2 \
        --set representation_size=128 --set n_train=400 --set n_val=60 --set n_test=150 \
        --set max_objects=3 --set epochs=2 --set lr=2e-3 --set rtol=1e-2 --set atol=1e-2 \
        --set rk_step=0.5 --set test_tolerances=0.1,0.01
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register

VARIANTS = ("resnet", "odenet", "rknet")
_TEST_PHOTOS = ("rocket", "gravel")
_TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "hubble_deep_field", "immunohistochemistry", "camera",
                 "brick", "grass")


@dataclass
class Config:
    dataset: str = "cifar10"            # "cifar10" (objects on photo crops) or "mnist" (digits on black)
    variants: str = "resnet,odenet,rknet"
    depth: str = "resnet18"             # backbone preset: resnet18, resnet34, chen6
    width: int = 32                     # channels of the first stage (x2 per stage)
    n_stages: int = 3                   # stages kept from the preset
    stem_stride: int = 2                # output stride = stem_stride * 2**(n_stages - 1)
    fpn: bool = False                   # torchvision FPN over the stage outputs
    image_size: int = 128               # canvas side (px)
    anchor_sizes: tuple[int, ...] = (16, 32, 64)
    representation_size: int = 256      # box head width (torchvision: 1024)
    n_train: int = 8000
    n_val: int = 500
    n_test: int = 1000
    max_objects: int = 4                # 1..max_objects per canvas
    scale_min: float = 0.5              # object side = 32 px (CIFAR) or 28 px (MNIST) x scale
    scale_max: float = 2.0
    max_overlap: float = 0.2
    canvas_seed: int = 11
    epochs: float = 20.0
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    method: str = "dopri5"              # the ODE-Net's solver
    rtol: float = 1e-3
    atol: float = 1e-3
    gradient: str = "adjoint"
    rk_step: float = 0.25               # the RK-Net's rk4 step
    test_tolerances: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    eval_batch_size: int = 25
    n_figure: int = 6
    log_every: int = 10
    checkpoint_every: int = 100

    @classmethod
    def quick(cls) -> "Config":
        # MNIST digits 14-28 px on 64 px canvases; a 2-stage width-8 backbone of output stride 4
        # (stride 8 reached mAP@0.5 0.06 where stride 4 reached 0.24 in the same steps); < 5 min on 2 CPU cores.
        return cls(dataset="mnist", width=8, n_stages=2, stem_stride=2, image_size=64, anchor_sizes=(16, 32),
                   representation_size=128, n_train=500, n_val=100, n_test=200, max_objects=3,
                   scale_min=0.5, scale_max=1.0, epochs=2.0, batch_size=8, lr=2e-3, rtol=1e-2, atol=1e-2,
                   rk_step=0.5, test_tolerances=(1e-1, 1e-2, 1e-3), n_figure=4)


# ----------------------------------------------------------------------------- data


def _split(images: Any, lo: float, hi: float) -> Any:
    from neuralode.data.images import ImageSet

    n = len(images)
    idx = torch.arange(int(lo * n), int(hi * n))
    return ImageSet(images.images[idx], images.labels[idx], images.classes, images.name, images.pixel_max)


def make_splits(config: Config) -> dict[str, Any]:
    """Train / val / test canvases (see the module docstring)."""
    from neuralode.data.canvas import make_canvases, photo_backgrounds

    if config.dataset == "mnist":
        from neuralode.data.mnist import load_mnist

        train_src, test_src = load_mnist("train"), load_mnist("test")
        kw: dict[str, Any] = {"mode": "ink"}
        bgs: dict[str, list[torch.Tensor] | None] = {"train": None, "val": None, "test": None}
    elif config.dataset == "cifar10":
        from neuralode.data.cifar10 import load_cifar10

        train_src, test_src = load_cifar10("train"), load_cifar10("test")
        kw = {"mode": "paste"}
        bgs = {"train": photo_backgrounds(_TRAIN_PHOTOS), "test": photo_backgrounds(_TEST_PHOTOS)}
        bgs["val"] = bgs["train"]
    else:
        raise ValueError(f"dataset={config.dataset!r}; expected 'mnist' or 'cifar10'")
    sources = {"train": _split(train_src, 0.0, 0.9), "val": _split(train_src, 0.9, 1.0), "test": test_src}
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    return {s: make_canvases(sources[s], sizes[s], size=config.image_size, seed=config.canvas_seed + i,
                             objects_per_canvas=(1, config.max_objects),
                             scale=(config.scale_min, config.scale_max), max_overlap=config.max_overlap,
                             backgrounds=bgs[s], name=f"{train_src.name} canvases ({s})", **kw)
            for i, s in enumerate(("train", "val", "test"))}


def _targets(canvases: Any, idx: Any, device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": canvases.boxes[i].to(device), "labels": canvases.labels[i].to(device) + 1} for i in idx]


def _inputs(canvases: Any, idx: Any, device: torch.device) -> list[torch.Tensor]:
    return list(canvases.images[torch.as_tensor(list(idx))].to(device).float().div_(255.0))


# ----------------------------------------------------------------------------- model


def make_model(config: Config, variant: str, n_classes: int, in_channels: int) -> tuple[torch.nn.Module, Any]:
    """(Faster R-CNN, its Backbone) for ``variant``."""
    from neuralode.nn.backbones import make_backbone
    from neuralode.nn.detection import make_faster_rcnn

    ode = variant == "odenet"  # the RK-Net keeps its own solver (rk4, direct backprop)
    backbone = make_backbone(variant, config.depth, width=config.width, in_channels=in_channels,
                             n_stages=config.n_stages, stem_stride=config.stem_stride,
                             method=config.method if ode else None, rtol=config.rtol, atol=config.atol,
                             gradient=config.gradient if ode else None, rk_step=config.rk_step)
    model = make_faster_rcnn(backbone, n_classes + 1, image_size=config.image_size, anchor_sizes=config.anchor_sizes,
                             fpn=config.fpn, representation_size=config.representation_size)
    return model, backbone


@torch.no_grad()
def predict(model: torch.nn.Module, backbone: Any, canvases: Any, device: torch.device,
            batch_size: int) -> tuple[list[dict], float, float]:
    """Predictions (0-based labels, on the CPU), inference images/s and mean forward NFE per batch."""
    model.eval()
    out, nfe, t0 = [], [], time.perf_counter()
    for i in range(0, len(canvases), batch_size):
        idx = range(i, min(i + batch_size, len(canvases)))
        for p in model(_inputs(canvases, idx, device)):
            out.append({"boxes": p["boxes"].cpu(), "scores": p["scores"].cpu(), "labels": p["labels"].cpu() - 1})
        nfe.append(backbone.nfe)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    model.train()
    return out, len(canvases) / max(elapsed, 1e-9), float(np.mean(nfe)) if nfe else 0.0


def _truths(canvases: Any) -> list[dict]:
    return [{"boxes": b, "labels": lab} for b, lab in zip(canvases.boxes, canvases.labels)]


def score(preds: list[dict], val_preds: list[dict] | None, data: dict[str, Any], threshold: float | None = None) -> dict[str, Any]:
    """P/R/F1 at IoU 0.5 at the validation's F1-best threshold (or ``threshold``), COCO AP, PR curve."""
    from neuralode.experiments import detection_metrics as dm

    if threshold is None:
        if val_preds is None:
            raise ValueError("score() needs val_preds (to choose the threshold) or an explicit threshold")
        threshold = dm.best_f1_threshold(*dm.match_detections(val_preds, _truths(data["val"])))
    s, tp, n = dm.match_detections(preds, _truths(data["test"]))
    coco = dm.coco_map(preds, _truths(data["test"]), data["test"].classes)
    sweep = dm.pr_sweep(s, tp, n)
    return {"threshold": threshold, **dm.prf_at(s, tp, n, threshold), "map": coco["map"], "map50": coco["map50"],
            "per_class": coco["per_class"],
            "pr_curve": [sweep["recall"].tolist(), sweep["precision"].tolist()]}


# ----------------------------------------------------------------------------- training


def train_variant(config: Config, run: Run, variant: str, index: int, data: dict[str, Any],
                  results: dict[str, Any]) -> dict[str, Any]:
    """Train one detector (resumable), then evaluate it; returns its metrics."""
    from neuralode.experiments.image_training import MemoryMeter, count_saved_bytes, global_batches
    from neuralode.nn.image import count_parameters as count_parameters_of

    device = run.device
    train = data["train"]
    torch.manual_seed(run.seed + index)
    model, backbone = make_model(config, variant, len(train.classes), train.images.shape[1])
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train) // config.batch_size)
    total = max(1, round(config.epochs * steps_per_epoch))
    step, curve = 0, []
    acc = {"time": 0.0, "images": 0, "nfe_f": 0.0, "nfe_b": 0.0, "steps": 0, "saved": 0.0}
    ckpt = run.load_checkpoint()
    if ckpt is not None and ckpt.get("extra", {}).get("tag") == variant:
        step = run.restore_training(model, opt)
        curve, acc = list(ckpt["extra"]["curve"]), dict(ckpt["extra"]["acc"])

    def state() -> dict[str, Any]:
        return run.training_state(step, model, opt, tag=variant, curve=curve, acc=acc, results=results)

    meter = MemoryMeter(device)
    meter.reset()
    bar = run.progress(total, variant, initial=step)
    window: list[float] = []
    model.train()
    while step < total:
        run.check_interrupt(state)
        epoch, b = divmod(step, steps_per_epoch)
        idx = global_batches(len(train), config.batch_size, run.seed, epoch)[b].tolist()
        t0 = time.perf_counter()
        images, targets = _inputs(train, idx, device), _targets(train, idx, device)
        with count_saved_bytes() as saved:
            loss = sum(model(images, targets).values())
        nfe_f = backbone.nfe
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        acc["time"] += time.perf_counter() - t0
        acc["images"] += len(idx)
        acc["nfe_f"] += nfe_f
        acc["nfe_b"] += backbone.nfe_backward
        acc["steps"] += 1
        acc["saved"] = max(acc["saved"], float(saved["bytes"]))
        step += 1
        window.append(loss.item())
        bar.update()
        if step % config.log_every == 0 or step == total:
            curve.append([step, float(np.mean(window))])
            window = []
            run.log(step, **{f"{variant}/loss": curve[-1][1], f"{variant}/nfe_forward": nfe_f})
            bar.set_postfix(loss=f"{curve[-1][1]:.3g}", nfe=nfe_f)
        if step % config.checkpoint_every == 0 and step < total:
            run.save_checkpoint(state())
    bar.close()
    peak = meter.peak()
    # activation memory of the backbone alone: one forward of a training batch, bytes saved for backward
    idx = list(range(min(config.batch_size, len(train))))
    with count_saved_bytes() as bb:
        backbone(torch.stack(_inputs(train, idx, device)))
    val_preds, _, _ = predict(model, backbone, data["val"], device, config.eval_batch_size)
    test_preds, infer_ips, nfe_test = predict(model, backbone, data["test"], device, config.eval_batch_size)
    metrics = score(test_preds, val_preds, data)
    n = max(1, acc["steps"])
    out = {"model": variant, **metrics, "params": count_parameters_of(model),
           "backbone_params": count_parameters_of(backbone), "body_params": backbone.body_parameters(),
           "peak_memory_mb": peak, "memory_kind": meter.kind, "saved_mb": acc["saved"] / 2**20,
           "backbone_saved_mb": bb["bytes"] / 2**20, "train_images_per_s": acc["images"] / max(acc["time"], 1e-9),
           "infer_images_per_s": infer_ips, "nfe_forward": acc["nfe_f"] / n, "nfe_backward": acc["nfe_b"] / n,
           "nfe_test": nfe_test, "steps": step, "loss_curve": curve}
    if variant == "odenet":
        out["tolerance_sweep"] = tolerance_sweep(config, model, backbone, data, device, metrics["threshold"])
    if run.is_main:
        from neuralode.io import atomic_torch_save

        atomic_torch_save(model.state_dict(), run.dir / f"{variant}.pt")
    out["examples"] = [{k: v[:20].tolist() for k, v in p.items()} for p in test_preds[: config.n_figure]]
    return out


def tolerance_sweep(config: Config, model: torch.nn.Module, backbone: Any, data: dict[str, Any],
                    device: torch.device, threshold: float) -> list[dict[str, float]]:
    """Test accuracy and NFE of the trained ODE-Net at other solver tolerances (threshold kept)."""
    rows = []
    for tol in config.test_tolerances:
        backbone.set_tolerance(tol)
        preds, ips, nfe = predict(model, backbone, data["test"], device, config.eval_batch_size)
        m = score(preds, None, data, threshold=threshold)
        rows.append({"tolerance": tol, "nfe": nfe, "map50": m["map50"], "map": m["map"], "f1": m["f1"],
                     "infer_images_per_s": ips})
    backbone.set_tolerance(config.rtol, config.atol)
    return rows


# ----------------------------------------------------------------------------- figures


def boxes_figure(data: dict[str, Any], results: dict[str, Any], n: int) -> Any:
    """Test canvases: truth (green) and each model's detections above its threshold (red)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    test, names = data["test"], list(results)
    n = min(n, len(test))
    fig, axes = plt.subplots(len(names), n, figsize=(2.0 * n, 2.1 * len(names)), squeeze=False)
    for r, v in enumerate(names):
        thr = results[v]["threshold"]
        for c in range(n):
            ax = axes[r][c]
            img = test.images[c].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
            for b, lab in zip(test.boxes[c].tolist(), test.labels[c].tolist()):
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=1.5))
            ex = results[v]["examples"][c]
            for b, lab, s in zip(ex["boxes"], ex["labels"], ex["scores"]):
                if s >= thr:
                    ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.0, ls="--"))
                    ax.text(b[0], b[1], f"{test.classes[lab]} {s:.2f}", color="yellow", fontsize=5, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(v)
    fig.suptitle("test canvases: truth (green), detections above the val-F1 threshold (red)", fontsize=8)
    fig.tight_layout()
    return fig


def pr_figure(results: dict[str, Any], baseline: dict[str, Any]) -> Any:
    from neuralode.report.plots import line_plot

    series = {f"{v} (mAP@.5 {r['map50']:.3f})": tuple(r["pr_curve"]) for v, r in results.items()}
    series[f"random boxes (mAP@.5 {baseline['map50']:.3f})"] = tuple(baseline["pr_curve"])
    return line_plot(series, xlabel="recall (IoU 0.5)", ylabel="precision", title="test precision-recall")


def nfe_figure(results: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    sweep = results.get("odenet", {}).get("tolerance_sweep", [])
    if sweep:
        ax.plot([r["nfe"] for r in sweep], [r["map50"] for r in sweep], "o-", label="odenet, test tolerance")
        for r in sweep:
            ax.annotate(f"{r['tolerance']:g}", (r["nfe"], r["map50"]), fontsize=7)
    for v in ("resnet", "rknet"):
        if v in results:
            ax.plot([results[v]["nfe_test"]], [results[v]["map50"]], "s", label=v)
    ax.set_xlabel("backbone NFE per forward pass")
    ax.set_ylabel("test mAP@0.5")
    ax.set_title("accuracy vs NFE (solver tolerance changed at test time)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- run


COLUMNS = ["model", "precision", "recall", "f1", "map50", "map", "params", "backbone_params", "body_params",
           "peak_memory_mb", "saved_mb", "backbone_saved_mb", "train_images_per_s", "infer_images_per_s",
           "nfe_forward", "nfe_backward", "nfe_test"]


def _ratio(results: dict[str, Any], key: str, a: str = "odenet", b: str = "resnet") -> float | None:
    if a in results and b in results and results[b][key]:
        return float(results[a][key]) / float(results[b][key])
    return None


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.experiments import detection_metrics as dm
    from neuralode.experiments.image_training import loss_curve_figure, resume_results, save_finished
    from neuralode.io import atomic_write_json
    from neuralode.report.markdown import image, metrics_table

    variants = [v.strip() for v in config.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        raise ValueError(f"variants={config.variants!r}; expected a comma list of {', '.join(VARIANTS)}")
    data = make_splits(config)
    run.info(f"canvases: train {len(data['train'])} ({data['train'].n_objects()} objects), "
             f"val {len(data['val'])}, test {len(data['test'])} ({data['test'].n_objects()} objects)")
    results = resume_results(run)
    for i, v in enumerate(variants):
        if v not in results:
            results[v] = train_variant(config, run, v, i, data, results)
            save_finished(run, results)
            run.info(f"{v}: F1 {results[v]['f1']:.3f}, mAP@.5 {results[v]['map50']:.3f}")
    results = {v: results[v] for v in variants}
    base_preds = dm.random_box_predictions(_truths(data["train"]), len(data["test"]), config.image_size,
                                           len(data["test"].classes), seed=config.canvas_seed)
    baseline = score(base_preds, None, data, threshold=0.0)
    out: dict[str, Any] = {"dataset": data["test"].name, "random_map50": baseline["map50"],
                           "random_map": baseline["map"], "random_f1": baseline["f1"]}
    for v, r in results.items():
        for k in ("precision", "recall", "f1", "map50", "map", "backbone_params", "saved_mb", "backbone_saved_mb",
                  "peak_memory_mb", "train_images_per_s", "infer_images_per_s", "nfe_forward", "nfe_backward"):
            out[f"{v}_{k}"] = r[k]
    for a in ("odenet", "rknet"):
        for k in ("f1", "map50", "backbone_params", "backbone_saved_mb", "saved_mb"):
            ratio = _ratio(results, k, a)
            if ratio is not None:
                out[f"{a}_vs_resnet_{k}"] = ratio
    if run.is_main:
        slim = {v: {k: x for k, x in r.items() if k != "examples"} for v, r in results.items()}
        atomic_write_json(run.dir / "models.json", {**slim, "random_boxes": baseline})
        figs = {"boxes": run.save_figure(boxes_figure(data, results, config.n_figure), "boxes.png"),
                "pr": run.save_figure(pr_figure(results, baseline), "pr_curves.png"),
                "nfe": run.save_figure(nfe_figure(results), "accuracy_vs_nfe.png"),
                "loss": run.save_figure(loss_curve_figure(results, "Faster R-CNN training loss"), "loss.png")}
        run.write_report(_report(config, data, results, baseline, out, figs, metrics_table, image))
    return out


def _report(config: Config, data: dict[str, Any], results: dict[str, Any], baseline: dict[str, Any],
            out: dict[str, Any], figs: dict[str, str], metrics_table: Any, image: Any) -> str:
    rows = [{k: r[k] for k in COLUMNS} for r in results.values()]
    rows.append({"model": "random boxes", "precision": baseline["precision"], "recall": baseline["recall"],
                 "f1": baseline["f1"], "map50": baseline["map50"], "map": baseline["map"]})
    classes = data["test"].classes
    per_class = [{"class": c, **{f"{v} AP50": r["per_class"][c]["ap50"] for v, r in results.items()},
                  **{f"{v} AP": r["per_class"][c]["ap"] for v, r in results.items()}} for c in classes]
    sweep = results.get("odenet", {}).get("tolerance_sweep", [])
    recipe = data["test"].recipe
    text = (
        f"# Faster R-CNN on {data['test'].name.replace(' (test)', '')}: ResNet vs ODE-Net vs RK-Net backbones\n\n"
        f"Canvases: {len(data['train'])} train / {len(data['val'])} val / {len(data['test'])} test, "
        f"{config.image_size} px, 1-{config.max_objects} objects scaled {config.scale_min:g}-{config.scale_max:g}x, "
        f"overlap <= {config.max_overlap:g} of the smaller box, mode {recipe['mode']}, backgrounds "
        f"{recipe['backgrounds']}; generator seeds {config.canvas_seed} / {config.canvas_seed + 1} / "
        f"{config.canvas_seed + 2} (train / val / test; `neuralode.data.canvas.make_canvases`).\n\n"
        f"Backbone: `{config.depth}` preset, {config.n_stages} stages, widths "
        f"{[config.width * 2 ** i for i in range(config.n_stages)]}, stem stride {config.stem_stride}, "
        f"FPN {config.fpn}. ODE-Net: {config.method} rtol={config.rtol:g} atol={config.atol:g}, {config.gradient} "
        f"gradients; RK-Net: rk4 step {config.rk_step:g}. {config.epochs:g} epochs, batch {config.batch_size}, "
        f"AdamW lr {config.lr:g}. Precision/recall/F1 at IoU 0.5 at the validation F1-best score threshold; "
        f"mAP from pycocotools. `saved_mb`: bytes autograd keeps for backward in one training step "
        f"(`backbone_saved_mb`: the backbone alone); `peak_memory_mb`: {next(iter(results.values()))['memory_kind']}.\n\n"
        + metrics_table(rows, COLUMNS, digits=3)
        + "\n## Per-class AP (AP50: IoU 0.5; AP: COCO [.5:.95])\n\n" + metrics_table(per_class, digits=3)
    )
    if sweep:
        text += ("\n## ODE-Net at other solver tolerances (test time)\n\n"
                 + metrics_table(sweep, ["tolerance", "nfe", "map50", "map", "f1", "infer_images_per_s"], digits=3))
    ratios = {k: v for k, v in out.items() if "_vs_resnet_" in k}
    if ratios:
        text += "\n## ODE-Net / RK-Net relative to the ResNet\n\n" + metrics_table([ratios], digits=3)
    text += "\n" + "\n".join(image(p, n) for n, p in figs.items()) + "\n\nConfig: `" + str(asdict(config)) + "`\n"
    return text


register("detect", config=Config, run=run,
         description="Faster R-CNN with ResNet vs ODE-Net vs RK-Net backbones on real-object canvases: "
                     "P/R/F1, COCO mAP, memory, speed, NFE",
         quick_time="~4 min (CPU)", in_demo=False)


def _declare_headlines() -> None:
    from neuralode.report.headlines import Headline, declare

    declare("detect",
            Headline("odenet_vs_resnet_f1", "F1 (IoU 0.5), ODE-Net / ResNet", target=0.9, goal="at_least",
                     source="issue 11 target"),
            Headline("odenet_vs_resnet_map50", "mAP@0.5, ODE-Net / ResNet", target=0.9, goal="at_least",
                     source="issue 11 target"),
            Headline("odenet_vs_resnet_backbone_params", "backbone parameters, ODE-Net / ResNet", target=1.0,
                     goal="at_most", source="issue 11 target (fewer)"),
            Headline("odenet_vs_resnet_backbone_saved_mb", "backbone training activation memory, ODE-Net / ResNet",
                     target=1.0, goal="at_most", source="issue 11 target (lower)"),
            Headline("odenet_map50", "test mAP@0.5, ODE-Net", goal="info"))


_declare_headlines()
