"""Paths through weight space, the barrier on them, and their evaluation.

The vocabulary of mode connectivity (the overview is ``cnnlib.connectivity``'s docstring): a
``Path`` ``φ(t) = Σ_j w_j(t)·θ_j`` through control points — the straight line between two
networks (``line``, Goodfellow et al. 2015), the quadratic Bezier curve and the polygonal chain
through one bend (``bezier``, ``polychain``, Garipov et al. 2018) and the chain through many
pivots that an NEB returns (``chain``) — the ``barrier`` of a metric along a path (Entezari et
al. 2022), and ``evaluate_path``, which measures loss and error at all positions of a path in one
batched call of ``landscape.evaluate_points``. The Point helpers here (``parameters``,
``_point``, ``_training_data``, ``_digest``) are shared by the other modules of the package.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch.nn as nn
from torch import Tensor

from .. import landscape
from ..landscape import Point

PATH_KINDS = ("line", "bezier", "polychain", "chain")
SPLITS = ("train", "test")
METRICS = ("loss", "error")


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------


def _point(x, buffers: bool = True) -> Point:
    """A model's parameters and floating-point buffers, or a copy of a mapping, as a Point."""
    if isinstance(x, Mapping):
        return {k: v.detach() for k, v in x.items()}
    return landscape.weights(x, buffers=buffers)


def parameters(point, model: nn.Module) -> Point:
    """Only the entries of ``point`` (a model or a Point) that are parameters of ``model`` —
    e.g. to span a plane by weights alone, without BatchNorm's running statistics."""
    p = _point(point)
    return {k: p[k] for k, _ in model.named_parameters()}


def _training_data(data) -> tuple[Tensor, Tensor, str, dict | None]:
    """``(x, y, fingerprint, augmentation)`` of the training split of an ``ImageData`` or of an
    ``(x, y)`` pair; ``augmentation`` holds the data's flip and pad settings, ``None`` for a pair
    (which does not say which flips and shifts keep its labels)."""
    from ..data import ImageData

    if isinstance(data, ImageData):
        return data.x_train, data.y_train, data.fingerprint(), dict(flip=data.flip, pad=data.pad)
    x, y = landscape._eval_tensors(data, "train")
    return x, y, landscape._digest(x, y), None


def _digest(*points: Mapping[str, Tensor]) -> str:
    """A short hash of the contents of points (for cache keys)."""
    h = hashlib.sha1()
    for p in points:
        for k in sorted(p):
            h.update(k.encode())
            h.update(p[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Paths through weight space
# --------------------------------------------------------------------------------------------


def bezier_coefficients(t) -> np.ndarray:
    """The weights ``((1−t)², 2t(1−t), t²)`` of θ₁, θ_c, θ₂ on a quadratic Bezier curve
    (Garipov et al. 2018; the Bernstein polynomials of degree 2); one row per t."""
    t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    return np.hstack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2])


def chain_coefficients(t, knots) -> np.ndarray:
    """The weights of the control points of a polygonal chain that passes through control
    point j at ``t = knots[j]`` and runs straight between them (hat functions); one row per t."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    knots = np.asarray(knots, dtype=np.float64)
    eye = np.eye(len(knots))
    return np.stack([np.interp(t, knots, eye[j]) for j in range(len(knots))], axis=1)


@dataclass
class Path:
    """A path ``φ(t) = Σ_j w_j(t)·θ_j``, ``t ∈ [0, 1]``, through control points ``θ_j``
    (Points with the same names) from ``points[0]`` at t = 0 to ``points[-1]`` at t = 1.

    ``kind`` fixes the weights ``w(t)``: ``"line"`` (θ₁, θ₂), ``"bezier"`` (θ₁, bend, θ₂),
    ``"polychain"`` (θ₁ → bend at t = ½ → θ₂) or ``"chain"`` (straight segments through all
    points, point j at ``t = knots[j]``). ``meta`` holds what made the path (training loss of a
    curve, NEB energies).
    """

    kind: str
    points: list
    knots: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in PATH_KINDS:
            raise ValueError(f"kind must be one of {PATH_KINDS}, got {self.kind!r}")
        need = {"line": 2, "bezier": 3, "polychain": 3}.get(self.kind)
        if need is not None and len(self.points) != need:
            raise ValueError(f"a {self.kind} path has {need} control points, got {len(self.points)}")
        if len(self.points) < 2:
            raise ValueError("a path needs at least its two ends")
        keys = set(self.points[0])
        for p in self.points[1:]:
            if set(p) != keys:
                raise ValueError("all control points of a path must have the same names")
        if self.kind == "polychain":
            self.knots = np.array([0.0, 0.5, 1.0])
        if self.kind == "chain":
            knots = (np.linspace(0, 1, len(self.points)) if self.knots is None
                     else np.asarray(self.knots, dtype=np.float64))
            if (len(knots) != len(self.points) or knots[0] != 0 or knots[-1] != 1
                    or np.any(np.diff(knots) <= 0)):
                raise ValueError("chain knots must increase from 0 to 1, one per point")
            self.knots = knots

    def coefficients(self, t) -> np.ndarray:
        """``w(t)``: one row per t, one column per control point; every row sums to one."""
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        if np.any((t < 0) | (t > 1)):
            raise ValueError("a path is parametrized by t in [0, 1]")
        if self.kind == "line":
            return np.stack([1 - t, t], axis=1)
        if self.kind == "bezier":
            return bezier_coefficients(t)
        return chain_coefficients(t, self.knots)

    def point(self, t: float) -> Point:
        """``φ(t)`` as a Point."""
        w = self.coefficients([t])[0]
        return {k: sum(float(wj) * p[k] for wj, p in zip(w, self.points)) for k in self.points[0]}

    def basis(self, t) -> tuple[Point, list[Point], np.ndarray]:
        """``(center, directions, coords)`` with ``φ(t_i) = center + Σ_j coords[i, j]·directions[j]``
        (``center = θ_0``, ``directions[j] = θ_{j+1} − θ_0``): what ``landscape.evaluate_points``
        evaluates, all points in one call."""
        c = self.points[0]
        dirs = [{k: p[k] - c[k] for k in c} for p in self.points[1:]]
        return c, dirs, self.coefficients(t)[:, 1:]


def line(a, b) -> Path:
    """The straight line ``(1−t)·θ₁ + t·θ₂`` between two models or points (Goodfellow et al.
    2015). Models contribute their parameters and BatchNorm statistics."""
    return Path("line", [_point(a), _point(b)])


def interpolate(a, b, t: float) -> Point:
    """The point ``(1−t)·θ₁ + t·θ₂``."""
    return line(a, b).point(t)


def bezier(a, b, bend) -> Path:
    """The quadratic Bezier curve from θ₁ to θ₂ pulled towards ``bend`` (Garipov et al. 2018)."""
    return Path("bezier", [_point(a), _point(bend), _point(b)])


def polychain(a, b, bend) -> Path:
    """Two straight segments θ₁ → bend → θ₂, the bend reached at t = ½ (Garipov et al. 2018)."""
    return Path("polychain", [_point(a), _point(bend), _point(b)])


def chain(points: Sequence, knots=None) -> Path:
    """Straight segments through ``points``; ``knots`` (default: evenly spaced) are the t at
    which the path passes each point — ``arc_length_knots`` gives the natural choice."""
    return Path("chain", [_point(p) for p in points], knots)


def arc_length_knots(points: Sequence) -> np.ndarray:
    """Normalized cumulative Euclidean distances along a chain of points (0, …, 1)."""
    pts = [_point(p) for p in points]
    d = [landscape.norm({k: b[k] - a[k] for k in a}) for a, b in zip(pts, pts[1:])]
    cum = np.concatenate([[0.0], np.cumsum(d)])
    if cum[-1] == 0:
        raise ValueError("the chain has zero length")
    return cum / cum[-1]


# --------------------------------------------------------------------------------------------
# The barrier
# --------------------------------------------------------------------------------------------


def barrier(values, t=None) -> float:
    """The barrier of a metric along a path: its largest rise above the straight line between
    its values at the two ends,

        B = max_t [ f(φ(t)) − ((1 − t)·f(φ(0)) + t·f(φ(1))) ],

    (Entezari et al. 2022), with ``t`` rescaled to [0, 1]. Ainsworth et al. (2023) subtract the
    mean of the two end values instead; the two agree when the ends are equally good.
    ``values`` are f at the parameters ``t`` (default: evenly spaced, ends included); the ends
    themselves contribute 0, so B ≥ 0. For f = loss it is the loss barrier, for f = error the
    error barrier. Zero means the path is as good as its ends (linear mode connectivity).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) < 2:
        raise ValueError(f"a barrier needs the metric at two or more points, got {len(v)}")
    if not np.all(np.isfinite(v)):
        raise ValueError("the metric has non-finite values along the path")
    t = np.linspace(0, 1, len(v)) if t is None else np.asarray(t, dtype=np.float64).reshape(-1)
    if len(t) != len(v):
        raise ValueError(f"{len(t)} positions for {len(v)} values")
    if np.any(np.diff(t) <= 0):
        raise ValueError("positions along the path must increase")
    s = (t - t[0]) / (t[-1] - t[0])
    return float(np.max(v - ((1 - s) * v[0] + s * v[-1])))


# --------------------------------------------------------------------------------------------
# Evaluating a path
# --------------------------------------------------------------------------------------------


@dataclass
class PathProfile:
    """Loss and error along a path, at the positions ``t``, on the training and test split
    (NaN where a split was not evaluated)."""

    t: np.ndarray
    train_loss: np.ndarray
    train_error: np.ndarray
    test_loss: np.ndarray
    test_error: np.ndarray
    label: str = ""
    meta: dict = field(default_factory=dict)

    def values(self, metric: str = "loss", split: str = "train") -> np.ndarray:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"{split}_{metric}")

    def barrier(self, metric: str = "loss", split: str = "train") -> float:
        """``barrier`` of ``metric`` ("loss" or "error") on ``split`` along this path."""
        return barrier(self.values(metric, split), self.t)

    def max(self, metric: str = "error", split: str = "test") -> float:
        """The largest value of ``metric`` on the path."""
        return float(np.max(self.values(metric, split)))


def evaluate_path(model: nn.Module, path: Path, data, t=11, *, splits=SPLITS,
                  bn: str = "recompute", bn_data=None, strategy: str = "auto",
                  batch_size: int | None = None, label: str = "",
                  progress: bool | None = False) -> PathProfile:
    """Loss and error of the networks ``φ(t)`` on a path, on each of ``splits`` of ``data``.

    ``model`` supplies the architecture; ``t`` is a number of evenly spaced positions (ends
    included) or the positions themselves. All points go to ``landscape.evaluate_points`` in one
    call: with ``strategy="vmap"`` (the default on a GPU) they are evaluated in batches of
    networks at once. ``bn="recompute"`` re-estimates BatchNorm statistics at every point from
    ``bn_data`` (default: the training images); ``bn="keep"`` uses the statistics stored in the
    path's points (interpolated along it) — compare the two to see why recomputing matters.
    ``data`` is an ``ImageData`` or an ``(x, y)`` pair (then reported as the training split).
    """
    from ..data import ImageData

    if np.ndim(t) == 0 and int(t) < 2:
        raise ValueError(f"a path is evaluated at 2 or more evenly spaced positions (its two ends "
                         f"at least), got t={t}")
    ts = np.linspace(0, 1, int(t)) if np.ndim(t) == 0 else np.asarray(t, dtype=np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError(f"t must be a number of positions or a 1D sequence of positions in "
                         f"[0, 1], got an array of shape {ts.shape}")
    if not isinstance(data, ImageData):
        splits, data = ("train",), landscape._eval_tensors(data, "train")
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"splits must be among {SPLITS}, got {s!r}")
    center, dirs, coords = path.basis(ts)
    nan = np.full(len(ts), np.nan)
    result = {f"{s}_{m}": nan.copy() for s in SPLITS for m in METRICS}
    start = time.perf_counter()
    for s in splits:
        loss, acc, used = landscape.evaluate_points(
            model, data, dirs, coords, center=center, split=s if isinstance(data, ImageData) else "train",
            bn=bn, bn_data=bn_data, strategy=strategy, batch_size=batch_size,
            progress=progress, desc=label or path.kind)
        result[f"{s}_loss"], result[f"{s}_error"] = loss, 1.0 - acc
    meta = {"kind": path.kind, "bn": bn, "strategy": used,
            "seconds": time.perf_counter() - start}
    return PathProfile(ts, label=label or path.kind, meta=meta, **result)
