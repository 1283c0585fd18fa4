"""Drawing surfaces: a curve (1D), contours, filled contours or a 3D surface, and several
surfaces side by side on one colour scale so that their sharpness compares (Li et al. 2018,
Figs. 5–7)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .surface import Surface, _check_metric


def _contour_levels(lo: float, hi: float, levels: int = 20) -> np.ndarray:
    """About ``levels`` contour levels at round values (steps of 1, 2, 2.5 or 5 times a power of
    ten) from the first at or below ``lo`` to the first at or above ``hi``, so that the ticks of
    a colour bar, which sit on the levels, read as round numbers."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=levels, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)


def plot_surface(surface: Surface, kind: str | None = None, metric: str = "loss",
                 log: bool = False, ax=None, vmin: float | None = None,
                 vmax: float | None = None, levels: int = 20, title: str | None = None,
                 colorbar: bool = True):
    """What ``Surface.plot`` draws: ``"curve"`` (1D: loss and accuracy), ``"contour"``, ``"filled"``
    (filled contours) or ``"surface"`` (3D) of ``metric`` (one of ``METRICS``; a curve shows
    loss and accuracy). ``log`` plots log10 of the metric (a curve gets a logarithmic axis
    instead); ``vmin`` and ``vmax`` (in plotted units) fix the colour scale so several plots
    can share it; contour levels fall on round values. Returns the matplotlib axes."""
    import matplotlib.pyplot as plt

    _check_metric(metric)
    kind = kind or ("curve" if surface.ndim == 1 else "contour")
    kinds = ("curve",) if surface.ndim == 1 else ("contour", "filled", "surface")
    if kind not in kinds:
        raise ValueError(f"a {surface.ndim}D surface can be drawn as {kinds}, not {kind!r}")
    label = surface.meta.get("label", "")
    zlabel = ("log10 " if log else "") + {"loss": "loss", "acc": "accuracy",
                                          "error": "error"}[metric]
    if kind == "curve":
        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
        ax.plot(surface.alphas, surface.loss, "b-", label="loss")
        ax.set(xlabel="α", title=title or label)
        ax.set_ylabel("loss", color="b")
        if log:
            ax.set_yscale("log")
        if vmin is not None or vmax is not None:
            ax.set_ylim(vmin, vmax)
        twin = ax.twinx()
        twin.plot(surface.alphas, 100 * surface.acc, "r--", label="accuracy")
        twin.set_ylabel("accuracy (%)", color="r")
        twin.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        return ax
    X, Y = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    Z = surface.values(metric, log)
    lo = np.nanmin(Z) if vmin is None else vmin
    hi = np.nanmax(Z) if vmax is None else vmax
    if not hi > lo:
        hi = lo + 1e-6
    Zc = np.clip(Z, lo, hi)
    if kind == "surface":
        if ax is None:
            fig = plt.figure(figsize=(5.5, 4.5), constrained_layout=True)
            ax = fig.add_subplot(projection="3d")
        ax.plot_surface(X, Y, Zc, cmap="viridis", vmin=lo, vmax=hi, rstride=1, cstride=1,
                        linewidth=0, antialiased=True)
        ax.set(xlabel="α", ylabel="β", zlabel=zlabel, title=title or label)
        ax.set_zlim(lo, hi)
        return ax
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4), constrained_layout=True)
    lv = _contour_levels(lo, hi, levels)
    if kind == "filled":
        cs = ax.contourf(X, Y, Zc, levels=lv, cmap="viridis", vmin=lo, vmax=hi)
    else:
        cs = ax.contour(X, Y, Zc, levels=lv, cmap="viridis", vmin=lo, vmax=hi, linewidths=1)
    ax.plot([0], [0], "r*", ms=10)
    ax.set(xlabel="α", ylabel="β", title=title or label, aspect="equal")
    if colorbar:
        ax.figure.colorbar(cs, ax=ax, label=zlabel, shrink=0.85)
    return ax


def plot_surfaces(surfaces: Mapping[str, Surface], kind: str = "contour", metric: str = "loss",
                  log: bool = False, vmin: float | None = None, vmax: float | None = None,
                  cols: int | None = None, levels: int = 20, suptitle: str | None = None):
    """Several surfaces side by side on one figure with one shared colour scale (the range of
    all of them unless ``vmin``/``vmax`` are given), so that their sharpness compares.
    Returns the figure."""
    import matplotlib.pyplot as plt

    items = list(surfaces.items())
    if not items:
        raise ValueError("no surfaces to plot")
    values = [s.values(metric, log) for _, s in items]
    lo = min(np.nanmin(v) for v in values) if vmin is None else vmin
    hi = max(np.nanmax(v) for v in values) if vmax is None else vmax
    cols = cols or len(items)
    rows = math.ceil(len(items) / cols)
    three_d = kind == "surface"
    fig = plt.figure(figsize=(3.6 * cols + (0 if three_d or kind == "curve" else 0.8),
                              3.4 * rows), constrained_layout=True)
    axes = [fig.add_subplot(rows, cols, i + 1, projection="3d" if three_d else None)
            for i in range(len(items))]
    for ax, (name, s) in zip(axes, items):
        s.plot(kind, metric, log, ax=ax, vmin=lo, vmax=hi, levels=levels, title=name,
               colorbar=False)
    if kind in ("contour", "filled"):
        mappable = plt.cm.ScalarMappable(plt.Normalize(lo, hi), cmap="viridis")
        fig.colorbar(mappable, ax=axes, shrink=0.85,
                     label=("log10 " if log else "") + metric)
    if suptitle:
        fig.suptitle(suptitle)
    return fig
