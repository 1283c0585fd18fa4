"""Matplotlib figures used across lectures. Thin: the numbers come from the modules below."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch


def plot_history(history, axes=None, label: str | None = None, color=None):
    """Loss (left) and error in % (right) per epoch: training dashed, test solid."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    label = label or "model"
    ax_loss, ax_err = axes
    line, = ax_loss.plot(history.epoch, history.test_loss, "-", color=color, label=f"{label} (test)")
    color = line.get_color()
    ax_loss.plot(history.epoch, history.train_loss, "--", color=color, label=f"{label} (train)")
    ax_err.plot(history.epoch, [100 * (1 - a) for a in history.test_acc], "-", color=color,
                label=f"{label} (test)")
    ax_err.plot(history.epoch, [100 * (1 - a) for a in history.train_acc], "--", color=color,
                label=f"{label} (train)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error (train dashed, test solid)")
    for ax in axes:
        ax.grid(alpha=0.3)
    ax_err.legend(fontsize=8)
    return axes


def plot_histories(histories: dict, title: str | None = None):
    """Several training runs on one pair of axes (one colour per run)."""
    _, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for name, hist in histories.items():
        plot_history(hist, axes=axes, label=name)
    if title:
        axes[0].figure.suptitle(title)
    return axes


def show_filters(weight: torch.Tensor, title: str = "first-layer filters", max_filters: int = 64,
                 ax=None):
    """A grid of convolution kernels ``(out, in, k, k)``, each scaled to its own [0, 1] range.

    Three-channel kernels are shown in colour, others as the mean over input channels."""
    w = weight.detach().float().cpu()[:max_filters]
    w = w if w.shape[1] == 3 else w.mean(1, keepdim=True)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo + 1e-8)
    n = len(w)
    cols = min(n, 16)
    rows = math.ceil(n / cols)
    k = w.shape[-1]
    grid = torch.ones(w.shape[1], rows * (k + 1) - 1, cols * (k + 1) - 1)
    for i, f in enumerate(w):
        r, c = divmod(i, cols)
        grid[:, r * (k + 1):r * (k + 1) + k, c * (k + 1):c * (k + 1) + k] = f
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, cols * 0.7 + 1), rows * 0.7 + 0.6))
    img = grid.permute(1, 2, 0).numpy()
    ax.imshow(img if img.shape[2] == 3 else img[..., 0], cmap=None if img.shape[2] == 3 else "gray",
              interpolation="nearest")
    ax.set_title(f"{title} ({n} of {weight.shape[0]}, {k}×{k})")
    ax.axis("off")
    return ax
