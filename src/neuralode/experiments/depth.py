"""Single-image depth: a VGG encoder (vgg11_bn layout) vs an ODE-Net encoder, same decoder.

Data: rendered rooms with exact z-depth (:mod:`neuralode.data.render`: textured ground and
walls, spheres, boxes and cylinders, Lambertian shading with shadows, textures cut from CIFAR-10
photographs; training and held-out scenes use disjoint textures), rendered once and cached.
Models: :mod:`neuralode.nn.depth` (U-Net decoder with skips; encoders of equal widths).
Training: L1 loss on log-depth, Adam with warm-up and cosine decay, horizontal flips.

Evaluation (Eigen et al. 2014 metrics, :mod:`neuralode.experiments.depth_metrics`):

* the held-out rendered split, metric depth (the renderer's units), and median-scaled;
* zero-shot on two real scenes, median-scaled (their depth is known up to scale or the
  network's scale cannot transfer): Middlebury 2006 "Aloe" and Middlebury 2014 "Motorcycle"
  (scikit-image); each real image is resized to ``real_height`` rows (width: the nearest
  multiple of 32 keeping the aspect ratio) and the prediction upsampled to the ground truth;
* baselines: the training set's mean depth map (and its median-scaled version on real scenes);
* parameters (total and encoder), peak training memory, activations saved for backward,
  training and inference images/s, forward/backward NFE per training step.

Full configuration (GPU): 128 px, 8,000 training scenes, widths 0.5× vgg11_bn, 30 epochs, the
ODE encoder with dopri5 (rtol = atol = 1e-3) and adjoint gradients. Quick configuration (CPU,
~5 min): 64 px, 800 scenes, widths 0.125×, 2 epochs, the ODE encoder with the fixed-step
midpoint method (step 1: two evaluations per stage) and direct backprop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register
from neuralode.report.headlines import Headline, declare

ENCODERS = ("vgg", "odenet")
REAL_SCENES = ("aloe", "motorcycle")


@dataclass
class Config:
    encoders: str = "vgg,odenet"      # comma list of vgg, odenet
    image_size: int = 128             # rendered scenes are image_size x image_size (multiple of 32)
    n_train: int = 8000               # rendered training scenes
    n_test: int = 1000                # held-out rendered scenes (other textures)
    width: float = 0.5                # channel multiplier of vgg11_bn's widths (1 = 64..512)
    # ODE encoder solver
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float | None = None    # step of a fixed-step method
    gradient: str = "adjoint"
    # optimisation
    epochs: float = 30.0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    flip: bool = True                 # random horizontal flips
    log_every: int = 20
    checkpoint_every: int = 200
    eval_batch_size: int = 50
    # evaluation
    real_scenes: str = "aloe,motorcycle"   # zero-shot scenes ("" for none)
    real_height: int | None = None    # rows of the resized real image (default image_size)
    n_figure: int = 4                 # rendered test scenes in the figure
    texture_source: str = "auto"      # CIFAR-10 source for textures: auto, pickle or jpeg
    scene_seed: int = 0               # the rendered data set; --seed varies initialisation and batches only

    @classmethod
    def quick(cls) -> "Config":
        return cls(image_size=64, n_train=800, n_test=200, width=0.125, method="midpoint", step_size=1.0,
                   gradient="direct", epochs=2.0, batch_size=16, lr=2e-3, warmup_steps=10, log_every=10,
                   checkpoint_every=50)


def _parse(spec: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"{what}={spec!r}: unknown {bad}; expected a comma list of {', '.join(allowed)}")
    return names


def _check(config: Config) -> None:
    if config.image_size < 32 or config.image_size % 32:
        raise ValueError(f"image_size={config.image_size}; expected a multiple of 32 (five 2x poolings)")
    if config.n_train < config.batch_size:
        raise ValueError(f"n_train={config.n_train} is smaller than batch_size={config.batch_size}")
    if config.n_test < 1:
        raise ValueError(f"n_test={config.n_test}; expected at least 1")
    if not _parse(config.encoders, ENCODERS, "encoders"):
        raise ValueError(f"encoders={config.encoders!r}; name at least one of {', '.join(ENCODERS)}")
    _parse(config.real_scenes, REAL_SCENES, "real_scenes")


class _Norm:
    """Per-channel standardisation with the training images' statistics."""

    def __init__(self, images: torch.Tensor) -> None:
        x = images.float() / 255
        self.mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
        self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = images.to(device).float() / 255
        return (x - self.mean.to(device)) / self.std.to(device)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))
    return f


def _model(config: Config, encoder: str, log_bias: float) -> Any:
    from neuralode.nn.depth import make_depth_net

    if encoder == "vgg":
        return make_depth_net("vgg", width=config.width, log_depth_bias=log_bias)
    options = {"step_size": config.step_size} if config.step_size else None
    return make_depth_net("odenet", width=config.width, log_depth_bias=log_bias, method=config.method,
                          rtol=config.rtol, atol=config.atol, options=options, gradient=config.gradient)


@torch.no_grad()
def predict(model: Any, images: torch.Tensor, norm: _Norm, device: torch.device,
            batch_size: int) -> tuple[torch.Tensor, float, float]:
    """Depth of every image (CPU ``(N, H, W)``), inference images/s and mean forward NFE."""
    model.eval()
    out, nfe, t = [], [], 0.0
    for i in range(0, len(images), batch_size):
        x = norm(images[i: i + batch_size], device)
        t0 = time.perf_counter()
        y = model.depth(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t += time.perf_counter() - t0
        nfe.append(model.nfe()[0])
        out.append(y.cpu())
    model.train()
    return torch.cat(out), len(images) / max(t, 1e-12), sum(nfe) / len(nfe)


def _real_input(image: torch.Tensor, height: int) -> torch.Tensor:
    """Resize ``uint8 (3, H, W)`` to ``height`` rows and the multiple of 32 nearest the aspect ratio."""
    h, w = image.shape[-2:]
    width = max(32, int(round(height * w / h / 32)) * 32)
    x = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def _evaluate_real(model: Any, scene: Any, norm: _Norm, device: torch.device,
                   height: int) -> tuple[dict[str, float], torch.Tensor]:
    from neuralode.experiments.depth_metrics import depth_metrics

    pred, _, _ = predict(model, _real_input(scene.image, height), norm, device, 1)
    full = F.interpolate(pred[None], size=scene.depth.shape, mode="bilinear", align_corners=False)[0, 0]
    return depth_metrics(full, scene.depth, scene.valid, median_scale=True), full


def _train(model: Any, train: Any, norm: _Norm, config: Config, run: Run, tag: str,
           results: dict[str, Any]) -> dict[str, Any]:
    """Train one model (resumable); returns training measurements."""
    from neuralode.experiments.image_training import MemoryMeter, count_saved_bytes, global_batches

    device = run.device
    steps_per_epoch = len(train) // config.batch_size
    total = max(1, round(config.epochs * steps_per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps, total))
    step, curve = 0, []
    acc = {"time": 0.0, "nfe_f": 0.0, "nfe_b": 0.0, "saved": 0.0, "steps": 0}
    ckpt = run.load_checkpoint()
    if ckpt is not None and ckpt.get("extra", {}).get("tag") == tag:
        step = run.restore_training(model, opt, sched)
        curve, acc = list(ckpt["extra"]["curve"]), dict(ckpt["extra"]["acc"])

    def state() -> dict[str, Any]:
        return run.training_state(step, model, opt, sched, tag=tag, curve=curve, acc=acc, results=results)

    log_gt = train.depth.clamp_min(1e-6).log()
    meter = MemoryMeter(device)
    meter.reset()
    flip_gen = torch.Generator()
    bar = run.progress(total, tag, initial=step)
    window: list[float] = []
    model.train()
    while step < total:
        run.check_interrupt(state)
        epoch, b = divmod(step, steps_per_epoch)
        idx = global_batches(len(train), config.batch_size, run.seed, epoch)[b]
        t0 = time.perf_counter()
        x = norm(train.images[idx], device)
        y = log_gt[idx].to(device)
        if config.flip:
            flip_gen.manual_seed(run.seed * 7_919 + step)
            m = (torch.rand(len(idx), generator=flip_gen) < 0.5).to(device)
            x = torch.where(m[:, None, None, None], x.flip(3), x)
            y = torch.where(m[:, None, None], y.flip(2), y)
        with count_saved_bytes() as saved:
            loss = (model(x) - y).abs().mean()
        nfe_f = model.nfe()[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nfe_b = model.nfe()[1]
        opt.step()
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        acc["time"] += time.perf_counter() - t0
        acc["nfe_f"] += nfe_f
        acc["nfe_b"] += nfe_b
        acc["saved"] = max(acc["saved"], float(saved["bytes"]))
        acc["steps"] += 1
        step += 1
        window.append(loss.item())
        bar.update()
        if step % config.log_every == 0 or step == total:
            curve.append([step, sum(window) / len(window)])
            run.log(step, **{f"{tag}/loss": curve[-1][1], f"{tag}/nfe_forward": nfe_f, f"{tag}/nfe_backward": nfe_b})
            bar.set_postfix(loss=f"{curve[-1][1]:.3g}", nfe=f"{nfe_f}/{nfe_b}")
            window = []
        if step % config.checkpoint_every == 0 and step < total:
            run.save_checkpoint(state())
    bar.close()
    n = max(1, acc["steps"])
    return {
        "steps": step,
        "loss_curve": curve,
        "final_loss": curve[-1][1] if curve else None,
        "peak_memory_mb": meter.peak(),
        "memory_kind": meter.kind,
        "saved_activations_mb": acc["saved"] / 2**20,
        "train_images_per_s": acc["steps"] * config.batch_size / max(acc["time"], 1e-12),
        "nfe_forward": acc["nfe_f"] / n,
        "nfe_backward": acc["nfe_b"] / n,
    }


def _figure(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]]) -> Any:
    """One row per scene: input, truth, each model's prediction (shared colour scale per row)."""
    from neuralode.report.plots import figure

    names = list(rows[0][4])
    fig, axes = figure(len(rows), 2 + len(names), size=(2.2, 2.0))
    axes = axes.reshape(len(rows), -1)
    for r, (title, img, truth, valid, preds) in enumerate(rows):
        shown = truth[valid] if valid is not None else truth.flatten()
        lo, hi = float(shown.min()), float(shown.max())
        axes[r, 0].imshow(img.permute(1, 2, 0).numpy())
        axes[r, 0].set_ylabel(title, fontsize=8)
        t = truth.clone()
        if valid is not None:
            t[~valid] = float("nan")
        axes[r, 1].imshow(t.numpy(), vmin=lo, vmax=hi, cmap="magma_r")
        for c, name in enumerate(names):
            axes[r, 2 + c].imshow(preds[name].numpy(), vmin=lo, vmax=hi, cmap="magma_r")
        if r == 0:
            for c, label in enumerate(["input", "truth", *names]):
                axes[r, c].set_title(label, fontsize=9)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    return fig


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.data.render import load_depth_scenes
    from neuralode.experiments.depth_metrics import METRICS, depth_metrics
    from neuralode.experiments.image_training import resume_results, return_freed_memory_to_os, save_finished
    from neuralode.io import atomic_torch_save, atomic_write_json
    from neuralode.report.markdown import image, metrics_table
    from neuralode.report.plots import line_plot

    _check(config)
    return_freed_memory_to_os()
    encoders = _parse(config.encoders, ENCODERS, "encoders")
    train = load_depth_scenes("train", config.n_train, config.image_size, seed=config.scene_seed,
                              source=config.texture_source)
    test = load_depth_scenes("test", config.n_test, config.image_size, seed=config.scene_seed,
                             source=config.texture_source)
    norm = _Norm(train.images)
    mean_map = train.depth.mean(0)
    log_bias = float(train.depth.clamp_min(1e-6).log().mean())
    real = _load_real(_parse(config.real_scenes, REAL_SCENES, "real_scenes"), run)
    height = config.real_height or config.image_size

    # baselines: the training set's mean depth map
    base_rows = [{"model": "mean depth map", **depth_metrics(mean_map.expand_as(test.depth), test.depth)}]
    base_real: dict[str, dict[str, float]] = {}
    for key, scene in real.items():
        full = F.interpolate(mean_map[None, None], size=scene.depth.shape, mode="bilinear", align_corners=False)[0, 0]
        base_real[key] = depth_metrics(full, scene.depth, scene.valid, median_scale=True)

    results = resume_results(run)
    preds: dict[str, torch.Tensor] = {}
    real_preds: dict[str, dict[str, torch.Tensor]] = {k: {} for k in real}
    for i, enc in enumerate(encoders):
        torch.manual_seed(run.seed + i)
        model = _model(config, enc, log_bias).to(run.device)
        if enc in results:
            model.load_state_dict(torch.load(run.dir / f"{enc}.pt", map_location=run.device, weights_only=True))
            run.info(f"{enc}: already trained in the resumed run")
        else:
            params = sum(p.numel() for p in model.parameters())
            run.info(f"{enc}: {params} parameters")
            r = _train(model, train, norm, config, run, enc, results)
            r["params"] = params
            r["encoder_params"] = sum(p.numel() for p in model.encoder.parameters())
            results[enc] = r
            if run.is_main:
                atomic_torch_save(model.state_dict(), run.dir / f"{enc}.pt")
        r = results[enc]
        p, r["infer_images_per_s"], r["nfe_eval"] = predict(model, test.images, norm, run.device,
                                                            config.eval_batch_size)
        preds[enc] = p
        r["test"] = depth_metrics(p, test.depth)
        r["test_median_scaled"] = depth_metrics(p, test.depth, median_scale=True)
        for key, scene in real.items():
            r[key], real_preds[key][enc] = _evaluate_real(model, scene, norm, run.device, height)
        save_finished(run, results)
        run.info(f"{enc}: AbsRel {r['test']['abs_rel']:.4f} on {len(test)} held-out scenes")

    if run.is_main:
        atomic_write_json(run.dir / "models.json", results)
        cols = ["model", *METRICS]
        test_rows = base_rows + [{"model": e, **results[e]["test"]} for e in encoders]
        scaled_rows = [{"model": e, **results[e]["test_median_scaled"]} for e in encoders]
        real_tables = ""
        for key, scene in real.items():
            rows = [{"model": "mean depth map", **base_real[key]}] + [{"model": e, **results[e][key]} for e in encoders]
            real_tables += f"\n### Zero-shot: {scene.name} (median-scaled, {int(scene.valid.sum())} valid pixels)\n\n"
            real_tables += metrics_table(rows, cols)
        cost_cols = ["model", "params", "encoder_params", "peak_memory_mb", "saved_activations_mb",
                     "train_images_per_s", "infer_images_per_s", "nfe_forward", "nfe_backward", "nfe_eval"]
        cost_rows = [{"model": e, **{k: results[e][k] for k in cost_cols[1:]}} for e in encoders]
        k = min(config.n_figure, len(test))
        fig_rows = [(f"test {j}", test.images[j], test.depth[j], None, {e: preds[e][j] for e in encoders})
                    for j in range(k)]
        fig_rows += [(scene.name.split()[-1], scene.image, scene.depth, scene.valid,
                      {e: real_preds[key][e] * (scene.depth[scene.valid].median()
                                                / real_preds[key][e][scene.valid].median()) for e in encoders})
                     for key, scene in real.items()]
        pred_fig = run.save_figure(_figure(fig_rows), "predictions.png")
        loss_fig = run.save_figure(line_plot({e: ([c[0] for c in results[e]["loss_curve"]],
                                                  [c[1] for c in results[e]["loss_curve"]]) for e in encoders},
                                             xlabel="step", ylabel="L1 log-depth loss", title="training loss",
                                             logy=True), "loss.png")
        ode = (f"{config.method}" + (f" step {config.step_size:g}" if config.step_size
                                     else f" rtol={config.rtol:g} atol={config.atol:g}") + f", {config.gradient} gradients")
        verdict = _verdict(results)
        run.write_report(
            "# Single-image depth: VGG (vgg11_bn layout) vs ODE-Net encoder\n\n"
            f"{config.n_train} training and {config.n_test} held-out rendered scenes at {config.image_size} px "
            f"({train.name}; held-out scenes use other textures), widths {config.width:g}× vgg11_bn, "
            f"{config.epochs:g} epochs, batch {config.batch_size}, Adam lr {config.lr:g} (cosine), "
            f"device {run.device}. ODE encoder: {ode}.\n\n"
            f"**Target** (issue 11): ODE encoder within 10% of the VGG encoder's AbsRel with fewer parameters — "
            f"{verdict}\n\n"
            "## Held-out rendered scenes (metric depth)\n\n" + metrics_table(test_rows, cols)
            + "\n### Held-out rendered scenes, median-scaled\n\n" + metrics_table(scaled_rows, cols)
            + real_tables
            + f"\nReal images resized to {height} rows; predictions upsampled to the ground truth's resolution.\n\n"
            "## Cost\n\n" + metrics_table(cost_rows, cost_cols)
            + f"\nMemory in MiB ({results[encoders[0]]['memory_kind']} during training; activations saved for "
            "backward by one step). NFE: function evaluations per training step summed over the ODE stages "
            "(forward / backward), and per evaluation batch.\n\n"
            + image(pred_fig, "input, truth, predictions (real scenes median-scaled; same colour scale per row)")
            + "\n" + image(loss_fig, "training loss"))
    out: dict[str, Any] = {"mean_map_abs_rel": base_rows[0]["abs_rel"]}
    for e in encoders:
        r = results[e]
        out.update({f"{e}_abs_rel": r["test"]["abs_rel"], f"{e}_rmse": r["test"]["rmse"],
                    f"{e}_delta1": r["test"]["delta1"], f"{e}_params": r["params"],
                    f"{e}_encoder_params": r["encoder_params"], f"{e}_nfe_forward": r["nfe_forward"],
                    f"{e}_train_images_per_s": r["train_images_per_s"]})
        for key in real:
            out[f"{e}_{key}_abs_rel"] = r[key]["abs_rel"]
    for key in real:
        out[f"mean_map_{key}_abs_rel"] = base_real[key]["abs_rel"]
    if "vgg" in results and "odenet" in results:
        out["abs_rel_ratio"] = results["odenet"]["test"]["abs_rel"] / results["vgg"]["test"]["abs_rel"]
        out["encoder_params_ratio"] = results["odenet"]["encoder_params"] / results["vgg"]["encoder_params"]
    return out


def _verdict(results: dict[str, Any]) -> str:
    if "vgg" not in results or "odenet" not in results:
        return "not measured (needs both encoders)."
    v, o = results["vgg"], results["odenet"]
    ratio = o["test"]["abs_rel"] / v["test"]["abs_rel"]
    fewer = o["encoder_params"] < v["encoder_params"]
    met = ratio <= 1.1 and fewer
    return (f"**{'met' if met else 'missed'}**: AbsRel {o['test']['abs_rel']:.4f} vs {v['test']['abs_rel']:.4f} "
            f"({ratio:.3f}×), encoder parameters {o['encoder_params']} vs {v['encoder_params']} "
            f"({o['encoder_params'] / v['encoder_params']:.2f}×).")


def _load_real(keys: list[str], run: Run) -> dict[str, Any]:
    """The zero-shot scenes that are available; a missing one is reported, not fatal."""
    from neuralode.data.cache import DataUnavailableError
    from neuralode.data.middlebury import load_aloe, load_motorcycle

    loaders = {"aloe": load_aloe, "motorcycle": load_motorcycle}
    out = {}
    for key in keys:
        try:
            out[key] = loaders[key]()
        except (DataUnavailableError, ImportError, OSError) as exc:
            run.info(f"zero-shot scene {key!r} skipped: {exc}")
    return out


declare("depth",
        Headline("abs_rel_ratio", "AbsRel, ODE encoder / VGG encoder", 1.10, "at_most", source="issue 11 target"),
        Headline("encoder_params_ratio", "encoder parameters, ODE / VGG", 1.0, "at_most", source="issue 11 target"),
        Headline("odenet_abs_rel", "AbsRel, ODE encoder (held-out scenes)", goal="info"),
        Headline("vgg_abs_rel", "AbsRel, VGG encoder (held-out scenes)", goal="info"),
        Headline("mean_map_abs_rel", "AbsRel, training mean depth map", goal="info"))

register("depth", config=Config, run=run,
         description="single-image depth on rendered scenes: VGG (vgg11_bn) vs ODE-Net encoder; zero-shot on Middlebury",
         quick_time="~5 min (CPU)", in_demo=False)
