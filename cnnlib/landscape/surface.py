"""The surface of Li et al. (2018): the loss on a line or a plane around a trained network.

``surface`` evaluates ``L(θ* + α·δ)`` or ``L(θ* + α·δ + β·η)`` on a grid and returns a ``Surface``
(values, save/load, the curvature at the centre, plots), cached on disk on request;
``random_surface`` is the paper's standard plot along filter-normalized random directions and
``curvatures`` the second differences along many of them."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .directions import random_direction
from .evaluate import _bn_images, _eval_tensors, _prepare, estimate

METRICS = ("loss", "acc", "error")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS} ('acc' is the accuracy), got {metric!r}")


@dataclass
class Surface:
    """Loss and accuracy on a 1D line (``betas is None``) or a 2D grid.

    In 2D, ``loss[i, j]`` is the loss at ``center + alphas[i]·δ + betas[j]·η`` ("ij" indexing).
    ``meta`` records how it was computed (strategy, images, seconds, options)."""

    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    acc: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return 1 if self.betas is None else 2

    @property
    def error(self) -> np.ndarray:
        return 1.0 - self.acc

    @property
    def center_loss(self) -> float:
        """The loss at the grid point nearest the centre (0, 0)."""
        i = int(np.abs(self.alphas).argmin())
        return float(self.loss[i] if self.betas is None
                     else self.loss[i, int(np.abs(self.betas).argmin())])

    def curvature(self) -> float:
        """The curvature of the loss at the grid point nearest the centre: the second difference
        ``(f(α+h) − 2f(α) + f(α−h)) / h²`` along each axis, summed over the axes (the Laplacian
        of the slice, exact for a quadratic). With filter-normalized directions it compares the
        sharpness of minima across networks (Li et al. 2018, Sec. 6)."""
        def second(axis_values, values, i):
            if not 0 < i < len(axis_values) - 1:
                raise ValueError("the centre must be an interior grid point to take a curvature")
            h0, h1 = axis_values[i] - axis_values[i - 1], axis_values[i + 1] - axis_values[i]
            return (2 * (h0 * values[i + 1] - (h0 + h1) * values[i] + h1 * values[i - 1])
                    / (h0 * h1 * (h0 + h1)))

        i = int(np.abs(self.alphas).argmin())
        if self.betas is None:
            return float(second(self.alphas, self.loss, i))
        j = int(np.abs(self.betas).argmin())
        return float(second(self.alphas, self.loss[:, j], i) + second(self.betas, self.loss[i, :], j))

    def to_dict(self) -> dict:
        """Plain tensors and values (what ``torch.save`` with ``weights_only`` loading accepts)."""
        t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))
        return {"alphas": t(self.alphas), "betas": t(self.betas), "loss": t(self.loss),
                "acc": t(self.acc), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "Surface":
        a = lambda t: None if t is None else np.asarray(t, dtype=np.float64)
        return cls(a(d["alphas"]), a(d["betas"]), a(d["loss"]), a(d["acc"]), dict(d["meta"]))

    def save(self, path) -> Path:
        """Write to ``path`` (a ``torch.save`` file of plain tensors; atomic)."""
        from ..cache import atomic_save

        path = Path(path)
        atomic_save(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, path) -> "Surface":
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))

    def values(self, metric: str = "loss", log: bool = False) -> np.ndarray:
        """``loss``, ``acc`` or ``error`` values, as log10 if ``log``."""
        _check_metric(metric)
        v = {"loss": self.loss, "acc": self.acc, "error": self.error}[metric]
        return np.log10(np.maximum(v, 1e-12)) if log else v

    def plot(self, kind: str | None = None, metric: str = "loss", log: bool = False, ax=None,
             vmin: float | None = None, vmax: float | None = None, levels: int = 20,
             title: str | None = None, colorbar: bool = True):
        """Draw the surface as a ``"curve"`` (1D), ``"contour"``, ``"filled"`` or ``"surface"``
        (3D) of ``metric``; see ``plots.plot_surface``. Returns the matplotlib axes."""
        from .plots import plot_surface

        return plot_surface(self, kind, metric, log, ax, vmin, vmax, levels, title, colorbar)


def _digest(*items) -> str:
    """A hash of tensors, points, arrays and plain values (for cache keys)."""
    h = hashlib.sha1()

    def feed(x):
        if isinstance(x, Tensor):
            h.update(str((x.dtype, tuple(x.shape))).encode())
            h.update(x.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if x.numel() else b"")
        elif isinstance(x, np.ndarray):
            feed(torch.from_numpy(np.ascontiguousarray(x)))
        elif isinstance(x, Mapping):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"seq{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    for item in items:
        feed(item)
    return h.hexdigest()[:20]


def grid(span: float = 1.0, resolution: int = 21) -> np.ndarray:
    """``resolution`` evenly spaced coordinates from ``−span`` to ``span`` (0 included if odd)."""
    if resolution < 2:
        raise ValueError(f"a grid needs at least 2 points per axis, got {resolution}")
    return np.linspace(-span, span, resolution)


def surface(model: nn.Module, data, directions, alphas, betas=None, *, center=None,
            loss_fn: Callable | None = None, split: str = "train", bn: str = "keep",
            bn_data=None, strategy: str = "auto", batch_size: int | None = None,
            memory_budget: int | None = None, cache: bool = False,
            progress: bool | None = None, announce: bool | None = None, label: str = "",
            meta: dict | None = None) -> Surface:
    """Evaluate ``L(θ* + α·δ)`` on ``alphas`` (one direction) or ``L(θ* + α·δ + β·η)`` on the grid
    ``alphas × betas`` (two directions) and return a ``Surface``.

    ``directions`` is one point (1D) or a sequence of one or two points; the other options are
    those of ``evaluate_points``. With ``cache=True`` the result is stored in ``cnnlib``'s disk
    cache under a hash of the centre, the directions, the data and every option (the default loss
    only: a custom ``loss_fn`` needs ``cache=False``), so the same call is instant the second time (and a widget can revisit a
    setting for free). ``announce`` (default: as ``progress``) prints the ``estimate`` of the
    cost — points, FLOPs, seconds — before a computation starts; a cached result is returned
    without a word.
    """
    from .. import cache as _cache
    from ..train import _progress_enabled
    from . import evaluate_points  # through the package: what patching cnnlib.landscape.X reaches

    dirs = [directions] if isinstance(directions, Mapping) else list(directions)
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = None if betas is None else np.asarray(betas, dtype=np.float64)
    if len(dirs) != (1 if betas is None else 2):
        raise ValueError(f"a {'1D' if betas is None else '2D'} surface needs "
                         f"{1 if betas is None else 2} direction(s), got {len(dirs)}")
    if betas is None:
        coords = alphas[:, None]
    else:
        A, B = np.meshgrid(alphas, betas, indexing="ij")
        coords = np.stack([A.ravel(), B.ravel()], 1)
    x, y = _eval_tensors(data, split)

    def compute() -> dict:
        if _progress_enabled(progress if announce is None else announce):
            est = estimate(model, data, len(coords), dirs, split=split, strategy=strategy,
                           batch_size=batch_size, memory_budget=memory_budget, bn=bn,
                           bn_data=bn_data)
            print(f"{label or 'landscape'}: {est}", flush=True)
        start = time.perf_counter()
        loss, acc, used = evaluate_points(
            model, data, dirs, coords, center=center, loss_fn=loss_fn, split=split, bn=bn,
            bn_data=bn_data, strategy=strategy, batch_size=batch_size,
            memory_budget=memory_budget, progress=progress, desc=label or "landscape")
        shape = (len(alphas),) if betas is None else (len(alphas), len(betas))
        info = {"label": label, "strategy": used, "device": str(x.device), "images": len(x),
                "split": split, "bn": bn, "seconds": time.perf_counter() - start, **(meta or {})}
        return Surface(alphas, betas, loss.reshape(shape), acc.reshape(shape), info).to_dict()

    if not cache:
        return Surface.from_dict(compute())
    if loss_fn is not None:  # the key holds the inputs; a function's name does not say what it computes
        raise ValueError("cache=True works with the default cross-entropy only: the cache cannot tell "
                         "two loss functions apart (two lambdas share a name); pass cache=False with "
                         "a custom loss_fn")
    bn_x = _bn_images(data, bn_data) if bn == "recompute" else None
    state = _prepare(model, center, dirs)
    key = (_digest(state, dirs, x, y, bn_x, alphas, betas), repr(model), split, bn)
    result = Surface.from_dict(_cache.cached("landscape", key, compute))
    result.meta.update(label=label, **(meta or {}))  # display only: not part of the key
    return result


def curvatures(model: nn.Module, data, n_directions: int = 10, step: float = 0.1,
               norm: str = "filter", bias_bn: str = "zero", seed: int = 0,
               **options) -> np.ndarray:
    """The curvature of the loss at the model's weights along ``n_directions`` random normalized
    directions (seeds ``seed``, ``seed + 1``, ...): the second differences
    ``(f(h) − 2 f(0) + f(−h)) / h²`` with ``h = step``, one per direction, all 2n + 1 points in
    one ``evaluate_points`` call (``options`` go there).

    One 2D picture is one random slice; the mean of these numbers is a steadier measure of how
    sharp a minimum is — for unnormalized Gaussian directions its expectation is the trace of
    the Hessian, and with filter normalization it compares networks of different scale
    (Li et al. 2018, Sec. 5–6)."""
    if n_directions < 1 or step <= 0:
        raise ValueError(f"need at least one direction and a positive step, got "
                         f"n_directions={n_directions}, step={step}")
    dirs = [random_direction(model, norm, bias_bn, seed + i) for i in range(n_directions)]
    coords = np.zeros((2 * n_directions + 1, n_directions))
    for k in range(n_directions):
        coords[1 + 2 * k, k], coords[2 + 2 * k, k] = step, -step
    from . import evaluate_points  # through the package, as in surface()

    options.setdefault("progress", False)
    loss, _, _ = evaluate_points(model, data, dirs, coords, **options)
    return (loss[1::2] - 2 * loss[0] + loss[2::2]) / step ** 2


def random_surface(model: nn.Module, data, span: float = 1.0, resolution: int = 21,
                   norm: str = "filter", bias_bn: str = "zero", dims: int = 2, seed: int = 0,
                   **options) -> Surface:
    """The standard plot of Li et al. (2018): ``dims`` (1 or 2) random directions drawn with
    seeds ``seed`` and ``seed + 1``, normalized by ``norm``, evaluated on ``grid(span,
    resolution)`` along each. ``options`` go to ``surface`` (e.g. ``cache=True``, ``label``)."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 (a line) or 2 (a plane), got {dims}")
    dirs = [random_direction(model, norm, bias_bn, seed + i) for i in range(dims)]
    g = grid(span, resolution)
    meta = {"norm": norm, "bias_bn": bias_bn, "seed": seed, **options.pop("meta", {})}
    return surface(model, data, dirs, g, g if dims == 2 else None, meta=meta, **options)
