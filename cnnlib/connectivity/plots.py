"""Pictures of paths and of the loss around them.

Loss and error along several paths on one figure (``plot_profiles``); the network at one point
of a path, for the interactive explorer (``snapshot``, ``plot_snapshot``); a two-dimensional
energy such as ``muller_brown`` with NEB chains drawn on it (``plot_energy_2d``); and the loss in
the plane through θ₁, θ₂ and the bend of a curve, the picture of Garipov et al. (2018, Fig. 1)
(``path_in_plane``, ``plane_surface``, ``plot_plane``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import landscape
from .paths import Path, PathProfile


# --------------------------------------------------------------------------------------------
# Loss and error along paths
# --------------------------------------------------------------------------------------------


def plot_profiles(profiles: Sequence[PathProfile] | Mapping[str, PathProfile],
                  loss_split: str = "train", error_split: str = "test", title: str | None = None):
    """Several paths on one figure: ``loss_split`` loss (left) and ``error_split`` error (right)
    against t, each curve labelled with its barrier. Returns the figure."""
    import matplotlib.pyplot as plt

    items = list(profiles.items()) if isinstance(profiles, Mapping) else [(p.label, p) for p in profiles]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3 + 0.2 * len(items)), constrained_layout=True)
    for i, (name, prof) in enumerate(items):
        color = f"C{i}"
        b_loss = prof.barrier("loss", loss_split)
        b_err = prof.barrier("error", error_split)
        axes[0].plot(prof.t, prof.values("loss", loss_split), "o-", ms=3, color=color,
                     label=f"{name}: barrier {b_loss:.3f}")
        axes[1].plot(prof.t, 100 * prof.values("error", error_split), "o-", ms=3, color=color,
                     label=f"{name}: barrier {100 * b_err:.1f}%")
    axes[0].set(xlabel="t", ylabel=f"{loss_split} loss", title=f"{loss_split} loss along the path")
    axes[1].set(xlabel="t", ylabel=f"{error_split} error (%)",
                title=f"{error_split} error along the path")
    for ax in axes:  # legends below the axes, where they cannot hide a peak of a curve
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# One point of a path, for the interactive explorer
# --------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The network at ``φ(t)``: its loss and accuracy on a split, and its predictions for a few
    images (``images`` on the CPU, normalized as the data; ``confidence`` = softmax probability
    of the predicted class)."""

    t: float
    loss: float
    acc: float
    images: Tensor
    labels: Tensor
    predicted: Tensor
    confidence: Tensor


def snapshot(model: nn.Module, path: Path, t: float, data, *, examples: int = 8,
             split: str = "test", bn: str = "recompute", bn_data=None) -> Snapshot:
    """Build the network at ``φ(t)`` (BatchNorm statistics recomputed from ``bn_data``, default
    the training images, unless ``bn="keep"``), evaluate it on ``split`` and predict the first
    ``examples`` images of that split."""
    from ..train import _split, evaluate

    if bn not in landscape.BN_MODES:
        raise ValueError(f"bn must be one of {landscape.BN_MODES}, got {bn!r}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    net = copy.deepcopy(model)
    net.load_state_dict({k: v.clone() for k, v in path.point(t).items()}, strict=False)
    if bn == "recompute":
        x_bn = bn_data if bn_data is not None else _split(data, "train")[0]
        landscape.recompute_bn(net, x_bn)
    metrics = evaluate(net, data, split)
    x, y = _split(data, split)
    net.eval()
    with torch.inference_mode():
        prob = F.softmax(net(x[:examples]).float(), dim=1)
    conf, pred = prob.max(1)
    return Snapshot(float(t), metrics["loss"], metrics["acc"], x[:examples].cpu(), y[:examples].cpu(),
                    pred.cpu(), conf.cpu())


def plot_snapshot(snap: Snapshot, classes: Sequence[str] | None = None, title: str = "",
                  profile: PathProfile | None = None):
    """The snapshot's images titled with prediction and confidence (red where wrong) under a
    line with t, loss and accuracy; with ``profile``, a panel on the left shows the test error
    along the whole path with the current t marked. Returns the figure."""
    import matplotlib.pyplot as plt

    n = len(snap.images)
    extra = 3 if profile is not None else 0
    fig = plt.figure(figsize=(1.25 * n + 1.2 * extra, 2.1), constrained_layout=True)
    grid = fig.add_gridspec(1, n + extra)
    if profile is not None:
        ax = fig.add_subplot(grid[0, :extra])
        ax.plot(profile.t, 100 * profile.test_error, "o-", ms=2, color="C0")
        ax.axvline(snap.t, color="C3", lw=1.5)
        ax.plot([snap.t], [100 * (1 - snap.acc)], "o", color="C3")
        ax.set(xlabel="t", ylabel="test error (%)", xlim=(0, 1))
        ax.grid(alpha=0.3)
    for i, (img, y, p, c) in enumerate(zip(snap.images, snap.labels, snap.predicted, snap.confidence)):
        ax = fig.add_subplot(grid[0, extra + i])
        shown = img.permute(1, 2, 0).numpy()
        if shown.shape[2] == 1:
            ax.imshow(shown[..., 0], cmap="gray_r")
        else:
            ax.imshow((shown - shown.min()) / (shown.max() - shown.min() + 1e-12))
        name = classes[int(p)] if classes else str(int(p))
        ax.set_title(f"{name} ({100 * float(c):.0f}%)", fontsize=9,
                     color="black" if int(p) == int(y) else "red")
        ax.axis("off")
    fig.suptitle(f"{title + ': ' if title else ''}t = {snap.t:.2f}   test loss {snap.loss:.3f}   "
                 f"test accuracy {100 * snap.acc:.1f}%", fontsize=10)
    return fig


def plot_energy_2d(energy: Callable[[Tensor], Tensor], paths: Mapping[str, Tensor],
                   xlim=(-1.5, 1.2), ylim=(-0.4, 2.0), levels=np.arange(-150, 101, 12.5),
                   resolution: int = 200, ax=None, title: str | None = None):
    """Contours of a two-dimensional energy (e.g. ``muller_brown``) with ``paths`` (name ->
    (n, 2) points) drawn on top, markers on their points. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.2), constrained_layout=True)
    xs, ys = np.linspace(*xlim, resolution), np.linspace(*ylim, resolution)
    X, Y = np.meshgrid(xs, ys)
    Z = energy(torch.tensor(np.stack([X, Y], -1), dtype=torch.float64)).numpy()
    cs = ax.contourf(X, Y, np.clip(Z, levels[0], levels[-1]), levels=levels, cmap="viridis")
    ax.figure.colorbar(cs, ax=ax, label="energy", shrink=0.85)
    for i, (name, pts) in enumerate(paths.items()):
        p = pts.detach().cpu().numpy()
        ax.plot(p[:, 0], p[:, 1], "o-" if len(p) <= 40 else "-", ms=4, lw=1.8,
                color=("white", "C3", "C1", "C0")[i % 4], mec="k", mew=0.5, label=name)
    ax.set(xlabel="x", ylabel="y", xlim=xlim, ylim=ylim, title=title)
    ax.legend(fontsize=8, loc="upper right")
    return ax


# --------------------------------------------------------------------------------------------
# Paths in the plane of three points
# --------------------------------------------------------------------------------------------


def path_in_plane(path: Path, plane: landscape.Plane, t=41) -> tuple[np.ndarray, np.ndarray]:
    """``(xy, distance)``: the plane coordinates of ``n`` points of ``path`` (least-squares
    projection, ``landscape.Plane.coordinates``) and each point's distance from the plane — zero
    for curves through the three points that span it, not for an NEB chain."""
    ts = np.linspace(0, 1, int(t)) if np.ndim(t) == 0 else np.asarray(t, dtype=np.float64)
    coords = [plane.coordinates(path.point(s)) for s in ts]
    return np.array([c[:2] for c in coords]), np.array([c[2] for c in coords])


def plane_surface(model: nn.Module, plane: landscape.Plane, data, resolution: int = 11,
                  margin: float = 0.25, **options) -> landscape.Surface:
    """The loss on a grid over the part of ``plane`` that holds its three anchor points (with
    ``margin`` of their extent added on every side), by ``landscape.surface``; ``options`` go
    there (``bn="recompute"``, ``bn_data``, ``cache``, ...). This is the picture of Garipov et
    al. (2018, Fig. 1): the plane through θ₁, θ₂ and the bend of a curve."""
    lo, hi = plane.anchors.min(0), plane.anchors.max(0)
    span = np.maximum(hi - lo, 0.1 * (hi - lo).max())
    alphas = np.linspace(lo[0] - margin * span[0], hi[0] + margin * span[0], resolution)
    betas = np.linspace(lo[1] - margin * span[1], hi[1] + margin * span[1], resolution)
    return landscape.surface(model, data, list(plane.directions), alphas, betas,
                             center=plane.center, **options)


def plot_plane(surface: landscape.Surface, plane: landscape.Plane,
               paths: Mapping[str, np.ndarray] | None = None, ax=None, log: bool = True,
               names: Sequence[str] = ("θ₁", "θ₂", "bend"), title: str | None = None):
    """The surface of ``plane_surface`` as filled contours with ``paths`` (name -> (n, 2) plane
    coordinates, e.g. from ``path_in_plane``) drawn over it and the three anchors labelled.
    Returns the axes."""
    if ax is None:
        import matplotlib.pyplot as plt

        width = np.ptp(surface.alphas)
        height = np.ptp(surface.betas)
        _, ax = plt.subplots(figsize=(9, float(np.clip(7 * height / width, 2.2, 7)) + 1.2),
                             constrained_layout=True)
    ax = surface.plot("filled", "loss", log=log, ax=ax, title=title or "training loss in the plane")
    for i, (name, xy) in enumerate((paths or {}).items()):
        ax.plot(xy[:, 0], xy[:, 1], "-", lw=2, color=f"C{(i + 1) % 10}", label=name)
    for (x, y), name in zip(plane.anchors, names):
        ax.plot([x], [y], "wo", ms=6, mec="k")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), color="white",
                    fontsize=10, fontweight="bold")
    ax.set(xlabel="x (weight-space distance)", ylabel="y")
    if paths:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(paths))
    return ax
