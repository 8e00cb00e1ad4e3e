"""Small matplotlib helpers shared by the experiments' reports.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than through
``pyplot``: no global figure registry to leak, no GUI backend needed, safe in threads. Save
them with ``run.save_figure(fig, "name.png")``, which returns the path to put in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["figure", "heatmap", "line_plot", "scatter_2d", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """Tensors (any device, with grad) and sequences to a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2)) -> tuple[Figure, Any]:
    """A figure with a grid of axes, each panel ``size`` inches; returns ``(fig, axes)``."""
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got nrows={nrows}, ncols={ncols}")
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def line_plot(
    series: Mapping[str, Any],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    ax: Any = None,
) -> Figure:
    """One line per entry of ``series``: ``{label: ys}`` or ``{label: (xs, ys)}``.

    Pass ``ax`` to draw into an existing panel (the figure is returned either way).
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict {label: ys or (xs, ys)}")
    if ax is None:
        fig, ax = figure()
    else:
        fig = ax.figure
    for label, data in series.items():
        if isinstance(data, tuple) and len(data) == 2:
            xs, ys = to_numpy(data[0]), to_numpy(data[1])
        else:
            ys = to_numpy(data)
            xs = np.arange(len(ys))
        ax.plot(xs, ys, label=str(label))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def scatter_2d(
    points: Any,
    *,
    labels: Any = None,
    title: str = "",
    ax: Any = None,
    s: float = 4.0,
    alpha: float = 0.7,
) -> Figure:
    """Scatter an ``(N, 2)`` array, coloured by ``labels`` (class ids or values) if given."""
    pts = to_numpy(points)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    if ax is None:
        fig, ax = figure()
    else:
        fig = ax.figure
    c = None if labels is None else to_numpy(labels)
    ax.scatter(pts[:, 0], pts[:, 1], c=c, s=s, alpha=alpha, cmap="coolwarm" if c is not None else None)
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    return fig


def heatmap(
    values: Any,
    *,
    extent: Sequence[float] | None = None,
    title: str = "",
    ax: Any = None,
    cmap: str = "viridis",
    colorbar: bool = True,
) -> Figure:
    """Show a 2-D array (e.g. a density on a grid); ``extent`` = (xmin, xmax, ymin, ymax)."""
    arr = to_numpy(values)
    if arr.ndim != 2:
        raise ValueError(f"values must be 2-D, got shape {arr.shape}")
    if ax is None:
        fig, ax = figure()
    else:
        fig = ax.figure
    im = ax.imshow(arr, origin="lower", extent=None if extent is None else tuple(extent), cmap=cmap, aspect="auto")
    if colorbar:
        fig.colorbar(im, ax=ax)
    if title:
        ax.set_title(title)
    return fig
