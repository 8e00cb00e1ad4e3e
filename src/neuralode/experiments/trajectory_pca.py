"""Hidden-state trajectories of the MNIST ODE-Net, projected by PCA.

For test digits, the ODE block's state z(t) (64 x 6 x 6 = 2,304 numbers) is recorded at
times t in [0, 1] and projected to two dimensions by PCA (scikit-learn):

* **time-independent**: one PCA fitted over the states of all times together, so that the
  panels share axes and show how the classes move apart along t;
* **time-dependent**: a separate PCA fitted at each time, showing the best 2-D view of the
  state at that time.

Points are coloured by class. A third figure shows, for a few digits, the softmax
probability of each class when the classifier head is applied to z(t) along the trajectory.
Metrics: the head's accuracy on z(t) and the silhouette score of the classes in the
time-independent projection, at each t.

The ODE-Net is trained here (briefly, with a cheap solver) unless ``weights`` names a model
file or an ``mnist`` run folder holding ``odenet.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register

if TYPE_CHECKING:
    from neuralode.nn.image import ImageClassifier


@dataclass
class Config:
    dataset: str = "mnist"           # "mnist" or "digits"
    weights: str | None = None       # model state dict (.pt) or an mnist run folder with odenet.pt
    train_steps: int = 2000          # when training here: Adam steps, rk4 h=0.5
    train_batch: int = 128
    method: str = "dopri5"           # solver for recording the trajectories
    rtol: float = 1e-3
    atol: float = 1e-3
    n_times: int = 21
    n_points: int = 2000             # test digits projected
    n_examples: int = 6              # digits whose class probabilities are plotted
    panels: int = 5                  # times shown as scatter panels

    @classmethod
    def quick(cls) -> "Config":
        return cls(train_steps=300, train_batch=64, n_times=11, n_points=1000)


def _data(dataset: str) -> tuple[Any, Any]:
    if dataset == "mnist":
        from neuralode.data.mnist import load_mnist

        return load_mnist("train"), load_mnist("test")
    if dataset == "digits":
        from neuralode.data.digits import load_digits

        return load_digits("train"), load_digits("test")
    raise ValueError(f"dataset={dataset!r}; expected 'mnist' or 'digits'")


def _weights_file(spec: str) -> Path:
    p = Path(spec)
    if p.is_dir():
        p = p / "odenet.pt"
    if not p.is_file():
        raise FileNotFoundError(f"weights={spec!r}: no such file (give a .pt state dict or an mnist run folder "
                                "containing odenet.pt)")
    return p


def _trained_model(config: Config, run: Run, train: Any, test: Any) -> tuple[ImageClassifier, dict]:
    from neuralode.experiments.image_training import TrainSettings, train_classifier
    from neuralode.nn.image import make_image_classifier

    model = make_image_classifier("odenet", config.dataset, method=config.method, rtol=config.rtol,
                                  atol=config.atol).to(run.device)
    if config.weights:
        state = torch.load(_weights_file(config.weights), map_location="cpu", weights_only=True)
        params = {k: v for k, v in state.items() if k in dict(model.named_parameters())}
        model.load_state_dict(params, strict=False)
        return model, {"weights": str(config.weights)}
    torch.manual_seed(run.seed)
    trainer = make_image_classifier("odenet", config.dataset, method="rk4", options={"step_size": 0.5},
                                    gradient="direct").to(run.device)
    n_train = min(len(train), config.train_steps * config.train_batch)
    epochs = config.train_steps * config.train_batch / n_train
    s = TrainSettings(epochs=epochs, batch_size=config.train_batch, optimizer="adam", lr=2e-3,
                      schedule="cosine", warmup_steps=20, max_train=n_train, max_test=2000,
                      log_every=25, checkpoint_every=200)
    r = train_classifier(trainer, train, test, s, run, tag="odenet")
    model.load_state_dict({k: v for k, v in trainer.state_dict().items()
                           if k in dict(model.named_parameters())}, strict=False)
    return model, {"train_test_accuracy_rk4": r["test_accuracy"]}


@torch.no_grad()
def _trajectories(model: ImageClassifier, x: torch.Tensor, t: torch.Tensor, batch: int = 250
                  ) -> tuple[np.ndarray, np.ndarray]:
    """States ``(T, N, D)`` and head probabilities ``(T, N, K)``."""
    model.eval()
    zs, ps = [], []
    for i in range(0, len(x), batch):
        z = model.trajectory(x[i: i + batch], t)            # (T, n, C, H, W)
        T, n = z.shape[:2]
        logits = model.head(z.reshape(T * n, *z.shape[2:])).reshape(T, n, -1)
        zs.append(z.reshape(T, n, -1).cpu())
        ps.append(torch.softmax(logits, -1).cpu())
    return torch.cat(zs, 1).numpy(), torch.cat(ps, 1).numpy()


def _scatter_panels(proj: list[np.ndarray], labels: np.ndarray, times: np.ndarray, panel_idx: list[int],
                    title: str, share: bool) -> Any:
    from neuralode.report.plots import figure

    fig, axes = figure(1, len(panel_idx), size=(3.2, 3.2))
    axes = np.atleast_1d(axes)
    if share:
        allp = np.concatenate([proj[i] for i in panel_idx])
        lo, hi = allp.min(0), allp.max(0)
        pad = 0.05 * (hi - lo)
    for ax, i in zip(axes, panel_idx):
        sc = ax.scatter(proj[i][:, 0], proj[i][:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.7)
        ax.set_title(f"t = {times[i]:.2f}")
        ax.set_xticks([])
        ax.set_yticks([])
        if share:
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    fig.colorbar(sc, ax=list(axes), ticks=range(10), label="class", shrink=0.8)
    fig.suptitle(title)
    return fig


def run(config: Config, run: Run) -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    from neuralode.experiments.image_training import Normaliser
    from neuralode.io import atomic_write_json
    from neuralode.report.markdown import image, metrics_table
    from neuralode.report.plots import figure

    train, test = _data(config.dataset)
    model, info = _trained_model(config, run, train, test)
    norm = Normaliser(train)
    sub = test.subset(config.n_points, seed=run.seed)
    x = norm(sub.images, run.device)
    labels = sub.labels.numpy()
    t = torch.linspace(0.0, 1.0, config.n_times)
    Z, P = _trajectories(model, x, t.to(run.device))
    T, N, D = Z.shape
    times = t.numpy()

    # time-independent: one PCA over all times
    pca_all = PCA(n_components=2, random_state=0).fit(Z.reshape(T * N, D))
    proj_all = [pca_all.transform(Z[i]) for i in range(T)]
    # time-dependent: a PCA per time
    proj_t, evr_t = [], []
    for i in range(T):
        p = PCA(n_components=2, random_state=0).fit(Z[i])
        proj_t.append(p.transform(Z[i]))
        evr_t.append(float(p.explained_variance_ratio_.sum()))
    acc_t = [(P[i].argmax(-1) == labels).mean().item() for i in range(T)]
    sil_t = [float(silhouette_score(proj_all[i], labels)) for i in range(T)]
    panel_idx = sorted(set(np.linspace(0, T - 1, min(config.panels, T)).round().astype(int).tolist()))

    figs = []
    fig = _scatter_panels(proj_all, labels, times, panel_idx,
                          "time-independent PCA (fitted over all t)", share=True)
    figs.append(run.save_figure(fig, "pca_time_independent.png"))
    fig = _scatter_panels(proj_t, labels, times, panel_idx, "time-dependent PCA (fitted at each t)", share=False)
    figs.append(run.save_figure(fig, "pca_time_dependent.png"))
    # trajectories of a few points in the shared projection
    fig, ax = figure(size=(5.0, 4.5))
    traj = np.stack(proj_all)  # (T, N, 2)
    for k in range(10):
        for j in np.flatnonzero(labels == k)[:8]:
            ax.plot(traj[:, j, 0], traj[:, j, 1], color=f"C{k}", lw=0.8, alpha=0.8)
            ax.scatter(traj[-1, j, 0], traj[-1, j, 1], color=f"C{k}", s=8)
    ax.set_title("z(t) in the time-independent PCA plane (dot: t = 1)")
    figs.append(run.save_figure(fig, "pca_trajectories.png"))
    # class probabilities along the trajectory for a few digits
    n_ex = min(config.n_examples, N)
    fig, axes = figure(2, n_ex, size=(2.6, 2.4))
    axes = np.asarray(axes).reshape(2, n_ex)
    examples = [int(np.flatnonzero(labels == k)[0]) for k in range(10) if (labels == k).any()][:n_ex]
    for col, j in enumerate(examples):
        img = sub.images[j].float().mean(0).numpy()
        axes[0, col].imshow(img, cmap="gray")
        axes[0, col].set_title(f"label {labels[j]}")
        axes[0, col].axis("off")
        for k in range(P.shape[-1]):
            axes[1, col].plot(times, P[:, j, k], color=f"C{k}", lw=2.0 if k == labels[j] else 0.8,
                              label=str(k))
        axes[1, col].set_ylim(-0.02, 1.02)
        axes[1, col].set_xlabel("t")
    axes[1, 0].set_ylabel("softmax probability")
    axes[1, -1].legend(fontsize="x-small", ncol=2, title="class")
    figs.append(run.save_figure(fig, "class_probabilities.png"))

    rows = [{"t": float(times[i]), "head_accuracy": acc_t[i], "silhouette_time_independent": sil_t[i],
             "explained_variance_2pc_time_dependent": evr_t[i]} for i in range(T)]
    if run.is_main:
        atomic_write_json(run.dir / "per_time.json", rows)
    run.write_report(
        f"# ODE-Net hidden-state trajectories ({train.name})\n\n"
        f"{N} test digits, z(t) recorded at {T} times in [0, 1] with {config.method} "
        f"(rtol={config.rtol:g}); state dimension {D}. Model: "
        + ", ".join(f"{k} {v}" for k, v in info.items()) + ".\n\n"
        f"Time-independent PCA: explained variance of 2 components "
        f"{pca_all.explained_variance_ratio_.sum():.3f}.\n\n"
        + metrics_table(rows, digits=3) + "\n"
        "head_accuracy: accuracy of the classifier head applied to z(t); silhouette of the classes in "
        "the time-independent 2-D projection.\n\n" + "\n".join(image(f) for f in figs)
    )
    return {"n_points": N, "head_accuracy_t0": acc_t[0], "head_accuracy_t1": acc_t[-1],
            "silhouette_t0": sil_t[0], "silhouette_t1": sil_t[-1],
            "explained_variance_time_independent": float(pca_all.explained_variance_ratio_.sum()), **info}


register("trajectory-pca", config=Config, run=run,
         description="PCA of MNIST ODE-Net hidden-state trajectories z(t) (time-independent and per-time), "
                     "class probabilities along t",
         quick_time="~3-5 min (CPU)", in_demo=False)
