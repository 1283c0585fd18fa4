"""Mode connectivity: paths between trained networks, the barrier on them, and how to remove it.

Two networks trained from different random seeds reach different minima θ₁ and θ₂ of the
training loss. On the straight line between them the loss rises — a *barrier*. Three ideas of
2018–2023 show how thin that barrier is:

* **Curves** (Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast ensembling of
  DNNs"): a quadratic Bezier curve ``φ(t) = (1−t)²θ₁ + 2t(1−t)θ_c + t²θ₂`` or a polygonal chain
  through one bend ``θ_c``, whose bend is trained by minimizing ``E_{t∼U(0,1)} L(φ(t))`` with the
  ends fixed. The trained curve has (almost) no barrier.
* **(Auto)NEB** (Draxler et al. 2018, "Essentially no barriers in neural network energy
  landscape"): the minimum energy path ``argmin_p max_{θ∈p} L(θ)``, found with the nudged
  elastic band of physical chemistry — a chain of pivots moved by the loss gradient
  perpendicular to the path, kept evenly spaced — with new pivots inserted where the loss
  between two pivots is highest (AutoNEB).
* **Weight matching** (Ainsworth et al. 2023, "Git Re-Basin"): hidden units can be permuted
  without changing the function. Permuting θ₂'s units to line up with θ₁'s (a linear assignment
  problem per layer, Sec. 3.2) makes even the *straight line* nearly barrier-free for wide nets.

The vocabulary, shared with ``cnnlib.landscape``:

``Point``
    a ``dict`` from parameter (and optionally buffer) names to tensors, e.g.
    ``landscape.weights(model, buffers=True)``.
``Path``
    ``φ(t) = Σ_j w_j(t)·θ_j`` for control points θ_j and weights that sum to one: ``line``,
    ``bezier``, ``polychain`` and ``chain`` (the pivots of an NEB). Every path is therefore
    ``θ_0 + Σ_j w_j(t)(θ_j − θ_0)`` — a centre, directions and coordinates — and is evaluated in
    one batched call of ``landscape.evaluate_points`` (``evaluate_path``).
barrier
    ``barrier(values, t)``: the largest amount by which a metric along a path rises above the
    straight line between its values at the two ends (Entezari et al. 2022) — used for the
    loss and the error alike, everywhere in the course.

BatchNorm: at a point between two networks neither network's running statistics describe the
activations, so paths are evaluated with the statistics recomputed at every point
(``bn="recompute"``, as Garipov et al. do; "reset" in Ainsworth et al.). ``bn="keep"``
interpolates the stored statistics instead — usually wrong, and instructive to compare.
"""
from __future__ import annotations

import copy
import hashlib
import operator
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import landscape
from .landscape import Point

PATH_KINDS = ("line", "bezier", "polychain", "chain")
CURVE_KINDS = ("bezier", "polychain")
SPLITS = ("train", "test")
METRICS = ("loss", "error")


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
    from .data import ImageData

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
    from .data import ImageData

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
# Curves (Garipov et al. 2018)
# --------------------------------------------------------------------------------------------


def train_curve(model: nn.Module, a, b, data, *, kind: str = "bezier", epochs: int = 10,
                lr: float = 0.05, batch_size: int = 128, momentum: float = 0.9,
                weight_decay: float = 5e-4, warmup: float = 0.1, augment_data: bool | None = None,
                bend=None, seed: int = 0, progress: bool | None = None, desc: str | None = None,
                cache: bool = True) -> Path:
    """Train the bend θ_c of a curve between two fixed networks (Garipov et al. 2018).

    The loss of a curve is the average loss along it, ``E_{t∼U(0,1)} L(φ_θ(t))``; it
    is minimized by SGD where every mini-batch draws its own ``t ∼ U(0, 1)`` and takes one step
    on ``L(φ_θ(t))`` with respect to θ_c only — an unbiased estimate of the gradient of the
    average. ``kind`` is ``"bezier"`` or ``"polychain"``. The bend starts at the
    midpoint ``(θ₁ + θ₂)/2`` (or at ``bend``), so the untrained curve is the straight line.

    BatchNorm layers normalize with the batch statistics during this training, as in ordinary
    training; evaluate the curve with ``bn="recompute"``. The optimizer and schedule are
    ``fit``'s (SGD + Nesterov momentum, warm-up and cosine decay, weight decay on weights only,
    the same augmentation). ``data`` is an ``ImageData`` (its training split, augmented as it
    says unless ``augment_data=False``) or an ``(x, y)`` pair of training tensors (used as they
    are: a pair does not say which flips and shifts keep its labels). Only parameters move; a
    bend's BatchNorm buffers stay at their starting value. Returns the curve as a ``Path`` with
    the mean training loss of every epoch in ``path.meta["history"]``; cached on disk like
    ``fit``.
    """
    from . import cache as _cache
    from . import profile as _profile
    from .data import augment, batches
    from .train import _progress_enabled, lr_at

    if kind not in CURVE_KINDS:
        raise ValueError(f"kind must be one of {CURVE_KINDS} (a trainable curve), got {kind!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    x, y, fingerprint, augmentation = _training_data(data)
    if augment_data is None:
        augment_data = augmentation is not None
    elif augment_data and augmentation is None:
        raise ValueError("augment_data=True needs an ImageData, which says which flips and shifts "
                         "keep the labels; an (x, y) pair does not — pass augment_data=False")
    pa, pb = _point(a), _point(b)
    if pa.keys() != pb.keys():
        raise ValueError("the two ends do not have the same parameter names")
    names = [k for k, _ in model.named_parameters()]
    missing = [k for k in names if k not in pa]
    if missing:
        raise ValueError(f"the ends lack parameters of the model, e.g. {missing[0]!r}")
    start_bend = ({k: (pa[k] + pb[k]) / 2 for k in pa} if bend is None
                  else {**{k: (pa[k] + pb[k]) / 2 for k in pa}, **_point(bend)})
    hyper = dict(kind=kind, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                 weight_decay=weight_decay, warmup=warmup, augment_data=augment_data, seed=seed)

    def compute() -> dict:
        net = copy.deepcopy(model).to(x.device).train()
        theta = {k: start_bend[k].detach().clone().to(x.device).requires_grad_(True)
                 for k in names}
        ends = [{k: p[k].to(x.device) for k in names} for p in (pa, pb)]
        decay = [p for p in theta.values() if p.ndim > 1]
        rest = [p for p in theta.values() if p.ndim <= 1]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                               {"params": rest, "weight_decay": 0.0}],
                              lr=lr, momentum=momentum, nesterov=momentum > 0)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        steps = max(1, len(x) // batch_size)
        total, step, history = epochs * steps, 0, []
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc or f"{kind} curve", unit="step",
                   disable=not _progress_enabled(progress))
        for _ in range(epochs):
            loss_sum, seen = 0.0, 0
            for xb, yb in batches(x, y, batch_size, shuffle=True, generator=gen, drop_last=True):
                if augment_data:
                    xb = augment(xb, generator=gen, **augmentation)
                t = float(torch.rand((), generator=gen))
                w = (bezier_coefficients(t)[0] if kind == "bezier"
                     else chain_coefficients(t, [0.0, 0.5, 1.0])[0])
                params = {k: w[0] * ends[0][k] + w[1] * theta[k] + w[2] * ends[1][k] for k in names}
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, lr, warmup)
                out = torch.func.functional_call(net, params, (xb,))
                loss = F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(yb)
                seen += len(yb)
                step += 1
                bar.update(1)
            history.append(loss_sum / max(seen, 1))
        bar.close()
        bend_point = {k: v.detach().cpu().clone() for k, v in start_bend.items()}
        bend_point.update({k: v.detach().cpu().clone() for k, v in theta.items()})
        return {"bend": bend_point, "history": history}

    if cache and _cache.cache_dir() is not None:
        config = ("curve", repr(model), _digest(pa, pb, start_bend), fingerprint,
                  str(x.device.type), hyper)
        entry = _cache.cached("curve", config, compute)
    else:
        entry = compute()
    device = next(iter(pa.values())).device
    bend_point = {k: v.to(device) for k, v in entry["bend"].items()}
    path = Path(kind, [pa, bend_point, pb])
    path.meta.update(history=list(entry["history"]), **hyper)
    return path


# --------------------------------------------------------------------------------------------
# Nudged elastic band and AutoNEB (Draxler et al. 2018)
# --------------------------------------------------------------------------------------------

EnergyGrad = Callable[[Tensor], tuple[Tensor, Tensor]]  # (K, D) points -> (K,) energies, (K, D) grads


def tangents(points: Tensor, energies: Tensor) -> Tensor:
    """Unit tangents at the interior pivots of a chain ``points`` (K, D), by the upwind rule of
    Henkelman & Jónsson (2000): the segment towards the higher neighbour, and at a
    local maximum or minimum of the energy a blend of both segments weighted by the energy
    differences (which keeps the chain from kinking). Returns (K − 2, D)."""
    if points.shape[0] < 3:
        return points.new_zeros((0, points.shape[1]))
    e = energies.to(points.dtype)
    fwd = points[2:] - points[1:-1]
    bwd = points[1:-1] - points[:-2]
    e_prev, e_mid, e_next = e[:-2], e[1:-1], e[2:]
    up = (e_next > e_mid) & (e_mid > e_prev)
    down = (e_next < e_mid) & (e_mid < e_prev)
    d_max = torch.maximum((e_next - e_mid).abs(), (e_prev - e_mid).abs())
    d_min = torch.minimum((e_next - e_mid).abs(), (e_prev - e_mid).abs())
    next_higher = (e_next > e_prev).unsqueeze(1)
    mixed = torch.where(next_higher, fwd * d_max.unsqueeze(1) + bwd * d_min.unsqueeze(1),
                        fwd * d_min.unsqueeze(1) + bwd * d_max.unsqueeze(1))
    tau = torch.where(up.unsqueeze(1), fwd, torch.where(down.unsqueeze(1), bwd, mixed))
    flat = tau.norm(dim=1, keepdim=True) == 0  # equal energies: the chord
    tau = torch.where(flat, fwd + bwd, tau)
    return tau / tau.norm(dim=1, keepdim=True).clamp_min(1e-30)


def neb_force(points: Tensor, grads: Tensor, tau: Tensor, spring: float | None = None,
              climb: int | None = None) -> Tensor:
    """The NEB force on the interior pivots (Jónsson et al. 1998; Henkelman et al. 2000):

        F_i = −(∇L(p_i) − (∇L(p_i)·τ_i) τ_i) + k (‖p_{i+1} − p_i‖ − ‖p_i − p_{i−1}‖) τ_i

    The first term is the true force with its component along the path removed, so pivots
    slide down to the minimum energy path without sliding along it into the minima; the spring
    term (``spring = k``) keeps them evenly spaced. ``spring=None`` leaves it out — then the
    caller re-spaces the pivots after each step (``respace``; Draxler et al.'s choice). The
    pivot with index ``climb`` (an interior index, 1 … K−2) instead climbs up along the path,
    ``F = −∇L + 2(∇L·τ)τ`` (climbing image, Henkelman, Uberuaga & Jónsson 2000), and ends on
    the saddle. ``points`` and ``grads`` are (K, D), ``tau`` (K − 2, D); returns (K − 2, D).
    """
    g = grads[1:-1]
    along = (g * tau).sum(1, keepdim=True)
    force = -(g - along * tau)
    if spring is not None:
        seg = (points[1:] - points[:-1]).norm(dim=1)
        force = force + spring * (seg[1:] - seg[:-1]).unsqueeze(1) * tau
    if climb is not None:
        if not 1 <= climb <= points.shape[0] - 2:
            raise ValueError(f"the climbing pivot must be interior (1 … {points.shape[0] - 2}), "
                             f"got {climb}")
        i = climb - 1
        force[i] = -g[i] + 2 * along[i] * tau[i]
    return force


def respace(points: Tensor, fixed: int | None = None) -> Tensor:
    """The same chain with its interior pivots moved to equal arc-length spacing along the
    current polygon (the ends stay). With ``fixed`` (an interior index, e.g. a climbing pivot)
    the two sub-chains on either side of it are re-spaced separately and it stays put."""
    if fixed is not None:
        left = respace(points[:fixed + 1])
        right = respace(points[fixed:])
        return torch.cat([left, right[1:]])
    k = points.shape[0]
    if k < 3:
        return points.clone()
    seg = (points[1:] - points[:-1]).norm(dim=1)
    cum = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    if cum[-1] == 0:
        return points.clone()
    targets = torch.linspace(0, float(cum[-1]), k, dtype=cum.dtype, device=cum.device)[1:-1]
    j = torch.searchsorted(cum, targets, right=True).clamp(1, k - 1) - 1
    s = ((targets - cum[j]) / seg[j].clamp_min(1e-30)).unsqueeze(1).to(points.dtype)
    out = points.clone()
    out[1:-1] = (1 - s) * points[j] + s * points[j + 1]
    return out


def neb(points: Tensor, energy_grad: EnergyGrad, *, steps: int = 100, lr: float = 0.01,
        momentum: float = 0.9, spring: float | None = None, climb: bool = False,
        max_step: float | None = None) -> tuple[Tensor, Tensor]:
    """Relax a chain of pivots (K, D) towards the minimum energy path; the ends stay fixed.

    Each step evaluates ``energy_grad`` at all pivots, computes the ``neb_force`` and moves the
    interior pivots along it by SGD with heavy-ball ``momentum``; with ``spring=None`` the chain
    is then re-spaced (``respace``), as Draxler et al. do. ``climb`` turns the highest interior
    pivot into a climbing image. ``max_step`` caps the length of every pivot's step (useful on
    steep analytic energies). Returns the chain and its energies."""
    if points.ndim != 2 or points.shape[0] < 3:
        raise ValueError("an elastic band needs a (K, D) chain with K ≥ 3 (at least one pivot "
                         "between the ends)")
    points = points.detach().clone()
    velocity = torch.zeros_like(points[1:-1])
    for _ in range(steps):
        energies, grads = energy_grad(points)
        tau = tangents(points, energies)
        c = int(energies[1:-1].argmax()) + 1 if climb else None
        step = lr * neb_force(points, grads, tau, spring, c)
        if max_step is not None:
            n = step.norm(dim=1, keepdim=True)
            step = step * (max_step / n.clamp_min(max_step))
        velocity = momentum * velocity + step
        points[1:-1] += velocity
        if spring is None:
            points = respace(points, c)
    energies, _ = energy_grad(points)
    return points, energies.detach()


@dataclass
class NEBResult:
    """The outcome of ``auto_neb``: the pivots (K, D), their energies, the densely interpolated
    energy profile between them (``t`` = normalized arc length) and the saddle — the highest
    point of that profile, the barrier of the path's energy."""

    points: Tensor
    energies: np.ndarray
    t: np.ndarray
    profile: np.ndarray
    saddle_t: float
    saddle_energy: float
    saddle_point: Tensor
    history: list = field(default_factory=list)

    @property
    def knots(self) -> np.ndarray:
        """The normalized arc length of every pivot."""
        seg = (self.points[1:] - self.points[:-1]).norm(dim=1).double().cpu().numpy()
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        return cum / cum[-1]


def _segment_energies(points: Tensor, energy: Callable[[Tensor], Tensor], n: int) -> Tensor:
    """Energies at ``n`` interior points of every segment: (K − 1, n)."""
    alphas = torch.linspace(0, 1, n + 2, dtype=points.dtype, device=points.device)[1:-1]
    inner = (points[:-1, None] * (1 - alphas[None, :, None]) + points[1:, None] * alphas[None, :, None])
    return energy(inner.reshape(-1, points.shape[1])).reshape(points.shape[0] - 1, n)


def dense_profile(points: Tensor, energy: Callable[[Tensor], Tensor], n: int = 9):
    """``(t, E, P)``: the energies of the pivots and of ``n`` points evenly spaced inside every
    segment, at their normalized arc length ``t``, with the points ``P`` themselves."""
    k = points.shape[0]
    alphas = torch.linspace(0, 1, n + 2, dtype=points.dtype, device=points.device)[:-1]
    dense = (points[:-1, None] * (1 - alphas[None, :, None]) + points[1:, None] * alphas[None, :, None])
    dense = torch.cat([dense.reshape(-1, points.shape[1]), points[-1:]])
    e = energy(dense).detach().double().cpu().numpy()
    seg = (dense[1:] - dense[:-1]).norm(dim=1).double().cpu().numpy()
    t = np.concatenate([[0.0], np.cumsum(seg)])
    return t / max(t[-1], 1e-300), e, dense


def auto_neb(start: Tensor, end: Tensor, energy_grad: EnergyGrad,
             energy: Callable[[Tensor], Tensor] | None = None, *, pivots: int = 3,
             cycles: int = 6, steps: int = 100, lr: float | Sequence[float] = 0.01,
             momentum: float = 0.9, insert: int = 2, insert_threshold: float = 0.1,
             interpolate: int = 9, max_pivots: int = 32, spring: float | None = None,
             climb: bool = False, max_step: float | None = None, callback=None) -> NEBResult:
    """AutoNEB (Kolsbjerg et al. 2016, as used by Draxler et al. 2018): NEB cycles on a chain that grows where
    it is needed.

    The chain starts as the straight line from ``start`` to ``end`` (D-dimensional vectors) with
    ``pivots`` evenly spaced interior pivots. Every cycle runs ``neb`` for ``steps`` steps (with
    ``lr``, a number or one per cycle), then scores every segment by the largest rise of the
    energy at ``interpolate`` points inside it above the line between its two pivots, divided
    by the energy range of the chain; up to ``insert`` new pivots go to the highest-scoring
    segments (where the score exceeds ``insert_threshold``), at the position of the rise.
    ``energy`` (default: the energy part of ``energy_grad``) evaluates a batch of points without
    gradients — for networks, on a fixed evaluation set. The result holds the chain, its dense
    profile and the saddle (the profile's maximum). ``callback(cycle, points, energies)`` is
    called after each cycle.
    """
    if start.shape != end.shape or start.ndim != 1:
        raise ValueError("start and end must be vectors of the same length")
    if pivots < 1:
        raise ValueError(f"AutoNEB starts with at least one pivot between the ends, got {pivots}")
    lrs = [float(lr)] * cycles if np.ndim(lr) == 0 else [float(v) for v in lr]
    if len(lrs) != cycles:
        raise ValueError(f"{len(lrs)} learning rates for {cycles} cycles")
    energy = energy or (lambda p: energy_grad(p)[0])
    s = torch.linspace(0, 1, pivots + 2, dtype=start.dtype, device=start.device).unsqueeze(1)
    points = (1 - s) * start + s * end
    history = []
    for cycle in range(cycles):
        points, energies = neb(points, energy_grad, steps=steps, lr=lrs[cycle], momentum=momentum,
                               spring=spring, climb=climb, max_step=max_step)
        history.append({"cycle": cycle, "pivots": points.shape[0],
                        "max_energy": float(energies.max())})
        if callback is not None:
            callback(cycle, points, energies)
        if cycle == cycles - 1 or insert < 1 or points.shape[0] >= max_pivots:
            break
        e_piv = energy(points).detach().double()
        inner = _segment_energies(points, energy, interpolate).detach().double()
        alphas = torch.linspace(0, 1, interpolate + 2, dtype=torch.float64)[1:-1]
        line_e = e_piv[:-1, None] * (1 - alphas) + e_piv[1:, None] * alphas
        rise = (inner - line_e.to(inner.device)).cpu()
        score, where = rise.max(dim=1)
        score = score / (float(e_piv.max() - e_piv.min()) + 1e-12)
        order = torch.argsort(score, descending=True)
        room = max_pivots - points.shape[0]
        chosen = [int(i) for i in order[:min(insert, room)] if score[i] > insert_threshold]
        if not chosen:
            continue
        new = []
        for i in range(points.shape[0] - 1):
            new.append(points[i])
            if i in chosen:
                a = float(alphas[where[i]])
                new.append((1 - a) * points[i] + a * points[i + 1])
        new.append(points[-1])
        points = torch.stack(new)
    t, profile, dense = dense_profile(points, energy, interpolate)
    i = int(np.argmax(profile))
    return NEBResult(points, energy(points).detach().double().cpu().numpy(), t, profile,
                     float(t[i]), float(profile[i]), dense[i].detach().clone(), history)


# Müller–Brown potential (Müller & Brown 1979): the standard test of minimum-energy-path methods.
MB_A = (-200.0, -100.0, -170.0, 15.0)
MB_a = (-1.0, -1.0, -6.5, 0.7)
MB_b = (0.0, 0.0, 11.0, 0.6)
MB_c = (-10.0, -10.0, -6.5, 0.7)
MB_x0 = (1.0, 0.0, -0.5, -1.0)
MB_y0 = (0.0, 0.5, 1.5, 1.0)
#: its three minima and two saddle points, (x, y, energy), to three decimals
MULLER_BROWN_MINIMA = ((-0.558, 1.442, -146.700), (0.623, 0.028, -108.167), (-0.050, 0.467, -80.768))
MULLER_BROWN_SADDLES = ((-0.822, 0.624, -40.665), (0.212, 0.293, -72.249))


def muller_brown(points: Tensor) -> Tensor:
    """The Müller–Brown potential ``V(x, y) = Σ_k A_k exp(a_k(x−x_k)² + b_k(x−x_k)(y−y_k) +
    c_k(y−y_k)²)`` at points (..., 2). Its minimum energy path from the deepest minimum
    (−0.558, 1.442) to (0.623, 0.028) crosses the saddle (−0.822, 0.624) at V = −40.665, dips
    into a third minimum and crosses a lower saddle (0.212, 0.293) at V = −72.249."""
    x, y = points[..., 0:1], points[..., 1:2]
    t = lambda v: torch.tensor(v, dtype=points.dtype, device=points.device)  # noqa: E731
    dx, dy = x - t(MB_x0), y - t(MB_y0)
    return (t(MB_A) * torch.exp(t(MB_a) * dx ** 2 + t(MB_b) * dx * dy + t(MB_c) * dy ** 2)).sum(-1)


def energy_and_grad(energy: Callable[[Tensor], Tensor]) -> EnergyGrad:
    """Wrap a differentiable energy of a batch of points into an ``EnergyGrad`` (autograd)."""
    def fn(points: Tensor):
        p = points.detach().requires_grad_(True)
        e = energy(p)
        (g,) = torch.autograd.grad(e.sum(), p)
        return e.detach(), g
    return fn


class _Flat:
    """Flattens a network's parameters into one vector and back (for NEB's pivots)."""

    def __init__(self, model: nn.Module):
        self.names = [k for k, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]

    def vector(self, point: Point) -> Tensor:
        return torch.cat([point[k].detach().reshape(-1).float() for k in self.names])

    def point(self, vec: Tensor) -> Point:
        return {k: v.view(s) for k, v, s in zip(self.names, vec.split(self.sizes), self.shapes)}


def network_energy(model: nn.Module, data, *, batch_size: int = 128, eval_size: int = 512,
                   seed: int = 0, strategy: str = "auto", chunk: int = 16):
    """``(energy_grad, energy, flat)`` for running (Auto)NEB on a network's training loss.

    ``energy_grad`` evaluates the cross-entropy of every pivot on one fresh training mini-batch
    (the same batch for all pivots of a step) with its gradient — stochastic, like SGD;
    ``energy`` evaluates points without gradients on a fixed set of ``eval_size`` training
    images (AutoNEB's insertion scores and profile). BatchNorm layers normalize with the
    statistics of the batch they see (training mode), everything else is in evaluation mode; so
    no stored statistics are needed between the two networks. ``flat`` maps vectors to Points.

    ``strategy``: ``"loop"`` runs the pivots one after another; ``"vmap"`` runs ``chunk`` of them
    at once as one batched computation (``torch.func.vmap`` of ``grad`` over the stacked pivot
    vectors — on a GPU a small network leaves most of the device idle otherwise); ``"auto"``
    picks vmap on CUDA and the loop elsewhere. Both give the same numbers up to rounding.
    """
    from torch.func import functional_call, grad_and_value, replace_all_batch_norm_modules_, vmap

    from .train import _split

    if strategy not in landscape.STRATEGIES:
        raise ValueError(f"strategy must be one of {landscape.STRATEGIES}, got {strategy!r}")
    x, y = _split(data, "train")
    if strategy == "auto":
        strategy = "vmap" if x.device.type == "cuda" else "loop"
    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    if strategy == "vmap":  # batch statistics only: no running-statistics updates inside vmap
        replace_all_batch_norm_modules_(net)
    flat = _Flat(net)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x), generator=gen)[:eval_size].to(x.device)
    x_eval, y_eval = x[pick], y[pick]

    def loss_at(vec: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(net, flat.point(vec), (xb,)), yb)

    batched_grad = vmap(grad_and_value(loss_at), in_dims=(0, None, None))
    batched_loss = vmap(loss_at, in_dims=(0, None, None))

    def energy_grad(points: Tensor):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen).to(x.device)
        xb, yb = x[idx], y[idx]
        if strategy == "vmap":
            parts = [batched_grad(points[i:i + chunk].detach(), xb, yb)
                     for i in range(0, len(points), chunk)]
            return torch.cat([e for _, e in parts]).detach(), torch.cat([g for g, _ in parts])
        energies, grads = [], []
        for p in points:
            v = p.detach().requires_grad_(True)
            loss = loss_at(v, xb, yb)
            (g,) = torch.autograd.grad(loss, v)
            energies.append(loss.detach())
            grads.append(g)
        return torch.stack(energies), torch.stack(grads)

    @torch.no_grad()
    def energy(points: Tensor) -> Tensor:
        if strategy == "vmap":
            return torch.cat([batched_loss(points[i:i + chunk], x_eval, y_eval)
                              for i in range(0, len(points), chunk)])
        return torch.stack([loss_at(p, x_eval, y_eval) for p in points])

    return energy_grad, energy, flat


def neb_path(model: nn.Module, a, b, data, *, pivots: int = 3, cycles: int = 4,
             steps: int = 50, lr: float | Sequence[float] = 0.05, momentum: float = 0.9,
             batch_size: int = 128, eval_size: int = 512, insert: int = 2,
             insert_threshold: float = 0.1, interpolate: int = 5, max_pivots: int = 32,
             seed: int = 0, strategy: str = "auto", cache: bool = True) -> Path:
    """AutoNEB between two trained networks on their training loss (Draxler et al. 2018).

    ``data`` is an ``ImageData`` (its training split) or an ``(x, y)`` pair of training tensors.
    Runs ``auto_neb`` on the parameters with ``network_energy``'s stochastic energy and returns
    the resulting chain as a ``Path`` (``kind="chain"``, knots at the pivots' arc length) whose
    ``meta`` holds the pivots' energies, the saddle energy on the evaluation set and the cycle
    history. BatchNorm statistics in the path's points are interpolated from the ends —
    evaluate it with ``bn="recompute"``. ``strategy`` is ``network_energy``'s (pivots one by one,
    or batched with vmap; the result does not depend on it). Cached on disk like ``fit``."""
    from . import cache as _cache

    pa, pb = _point(a), _point(b)
    hyper = dict(pivots=pivots, cycles=cycles, steps=steps, lr=lr, momentum=momentum,
                 batch_size=batch_size, eval_size=eval_size, insert=insert,
                 insert_threshold=insert_threshold, interpolate=interpolate,
                 max_pivots=max_pivots, seed=seed)

    def compute() -> dict:
        torch.manual_seed(seed)
        energy_grad, energy, flat = network_energy(model, data, batch_size=batch_size,
                                                   eval_size=eval_size, seed=seed,
                                                   strategy=strategy)
        res = auto_neb(flat.vector(pa), flat.vector(pb), energy_grad, energy, pivots=pivots,
                       cycles=cycles, steps=steps, lr=lr, momentum=momentum, insert=insert,
                       insert_threshold=insert_threshold, interpolate=interpolate,
                       max_pivots=max_pivots)
        # tensors and plain Python values only: the cache loads with torch.load(weights_only=True),
        # which rejects NumPy arrays (the entry would never load, and every run would recompute)
        return {"points": res.points.detach().cpu(), "energies": torch.from_numpy(np.asarray(res.energies)),
                "saddle_energy": float(res.saddle_energy),
                "history": [{k: float(v) if isinstance(v, float) else v for k, v in h.items()}
                            for h in res.history]}

    if cache and _cache.cache_dir() is not None:
        config = ("neb", repr(model), _digest(pa, pb), _training_data(data)[2], hyper)
        entry = _cache.cached("neb", config, compute)
    else:
        entry = compute()
    flat = _Flat(model)
    device = next(iter(pa.values())).device
    vectors = entry["points"].to(device)
    seg = (vectors[1:] - vectors[:-1]).norm(dim=1).double().cpu().numpy()
    knots = np.concatenate([[0.0], np.cumsum(seg)[:-1] / seg.sum(), [1.0]])
    points = []
    for k, vec in zip(knots, vectors):  # buffers: interpolated between the ends at the knot
        p = {name: (1 - k) * pa[name] + k * pb[name] for name in pa}
        p.update({name: v.clone().to(pa[name].dtype) for name, v in flat.point(vec).items()})
        points.append(p)
    points[0], points[-1] = pa, pb
    path = Path("chain", points, knots)
    path.meta.update(energies=np.asarray(entry["energies"], dtype=np.float64),
                     saddle_energy=float(entry["saddle_energy"]), history=list(entry["history"]), **hyper)
    return path


# --------------------------------------------------------------------------------------------
# Weight matching (Ainsworth et al. 2023, "Git Re-Basin")
# --------------------------------------------------------------------------------------------


@dataclass
class PermutationGroup:
    """Hidden units that may be permuted together without changing the network's function.

    ``slots`` maps ``(name, axis)`` of a parameter or buffer to a LongTensor (size, k): the k
    positions along that axis that belong to each of the ``size`` units (k > 1 where a
    convolution's channel was flattened into a linear layer's inputs)."""

    name: str
    size: int
    slots: dict

    def __repr__(self) -> str:
        return f"PermutationGroup({self.name!r}, {self.size} units, {len(self.slots)} tensor axes)"


@dataclass
class PermutationSpec:
    """Every permutation symmetry of a network, as found by ``permutation_spec``."""

    groups: list
    params: set

    def __getitem__(self, name: str) -> PermutationGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def __repr__(self) -> str:
        body = ", ".join(f"{g.name}: {g.size}" for g in self.groups)
        return f"PermutationSpec({len(self.groups)} groups — {body})"


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = [0]  # unit 0 is "fixed": the input and output channels

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, u: int) -> int:
        root = u
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[u] != root:
            self.parent[u], u = root, self.parent[u]
        return root

    def union(self, a, b) -> None:
        for u, v in zip(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)):
            ru, rv = self.find(int(u)), self.find(int(v))
            if ru != rv:
                lo, hi = min(ru, rv), max(ru, rv)  # the fixed unit 0 always stays a root
                self.parent[hi] = lo


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                 nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d,
                 nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.MaxPool1d, nn.AvgPool1d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid,
                   torch.tanh, F.tanh, F.leaky_relu, F.hardswish, F.elu, F.dropout, F.max_pool2d,
                   F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
                   torch.clone}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "to",
                 "detach"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
                torch.mul, torch.div, operator.iadd, operator.imul}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}


def permutation_spec(model: nn.Module, example: Tensor) -> PermutationSpec:
    """Find which hidden units of ``model`` can be permuted without changing its function.

    The network is traced with ``torch.fx`` and every tensor's channels (dimension 1) are
    labelled with *units*: a convolution or linear layer creates new units for its outputs;
    BatchNorm, activations, pooling and dropout pass them on; an addition or multiplication of
    two tensors ties their units together (a residual stream shares one permutation across all
    the blocks it runs through, as Ainsworth et al. 2023 note for ResNets); flattening repeats a channel's
    unit over its spatial positions; zero-padding of channels (the option-A shortcut) adds
    units of zeros; concatenation joins labels. The network's input and output channels are
    fixed. Units whose tensors and weights coincide form a ``PermutationGroup``. Works for MLPs,
    VGG-style nets and every ResNet in ``cnnlib.models.resnet`` with ``groups=1`` convolutions;
    an operation it does not know raises a ``ValueError`` that names it.

    ``example`` is a small input batch (its shape fixes the flattening sizes)."""
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    uf = _UnionFind()
    labels: dict[fx.Node, np.ndarray | None] = {}
    ties: dict[tuple[str, int], np.ndarray] = {}
    created: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # module -> (input, output) units
    params = {k for k, _ in model.named_parameters()}

    def shape(node) -> tuple | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def lab(arg):
        return labels.get(arg) if isinstance(arg, fx.Node) else None

    def tie(name: str, axis: int, units: np.ndarray) -> None:
        key = (name, axis)
        if key in ties:
            uf.union(ties[key], units)
        else:
            ties[key] = np.asarray(units)

    def flatten(units: np.ndarray, in_shape: tuple) -> np.ndarray:
        return np.repeat(units, int(np.prod(in_shape[2:], dtype=np.int64)))

    def unknown(node, what: str):
        return ValueError(f"weight matching does not know how {what} (node {node.name!r}) treats "
                          f"channels; supported: convolutions (groups=1 or depthwise), linear "
                          f"layers, BatchNorm, activations, pooling, dropout, flatten, +/×, "
                          f"channel padding and concatenation")

    for node in gm.graph.nodes:
        out: np.ndarray | None = None
        if node.op == "placeholder":
            s = shape(node)
            out = np.zeros(s[1] if s and len(s) > 1 else 1, dtype=np.int64)
        elif node.op == "get_attr":
            raise unknown(node, f"a tensor attribute used directly ({node.target})")
        elif node.op == "call_module":
            m = modules[node.target]
            x = lab(node.args[0])
            prefix = f"{node.target}."
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                depthwise = (isinstance(m, nn.Conv2d) and m.groups > 1
                             and m.groups == m.in_channels == m.out_channels)
                if isinstance(m, nn.Conv2d) and m.groups > 1 and not depthwise:
                    raise unknown(node, f"a grouped convolution with {m.groups} groups ({node.target})")
                n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                if node.target in created:  # a module called twice shares its units
                    uf.union(created[node.target][0], x)
                    out = created[node.target][1]
                else:
                    out = x if depthwise else uf.new(n_out)
                    created[node.target] = (x, out)
                tie(prefix + "weight", 0, out)
                if not depthwise:
                    tie(prefix + "weight", 1, x)
                if m.bias is not None:
                    tie(prefix + "bias", 0, out)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                out = x
                for k in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, k, None) is not None:
                        tie(prefix + k, 0, x)
            elif isinstance(m, nn.Flatten):
                if m.start_dim != 1:
                    raise unknown(node, f"nn.Flatten(start_dim={m.start_dim})")
                out = flatten(x, shape(node.args[0]))
            elif isinstance(m, _PASS_MODULES):
                if any(True for _ in m.parameters()):
                    raise unknown(node, f"{type(m).__name__} with parameters")
                out = x
            else:
                raise unknown(node, f"the module {type(m).__name__} ({node.target})")
        elif node.op in ("call_function", "call_method"):
            fn, args = node.target, node.args
            method = node.op == "call_method"
            if shape(node) is None:
                out = None  # a size, a shape, a Python number: no channels
            elif (fn in _ELEMENTWISE) or (method and fn in _ELEMENTWISE_METHODS):
                tensors = [lab(a) for a in args if lab(a) is not None]
                sizes = {len(t) for t in tensors}
                big = max(sizes) if sizes else 0
                full = [t for t in tensors if len(t) == big]
                for t in full[1:]:
                    uf.union(full[0], t)
                if any(len(t) not in (1, big) for t in tensors):
                    raise unknown(node, f"{getattr(fn, '__name__', fn)} of tensors with different channels")
                out = full[0] if full else None
            elif fn in _PASS_FUNCTIONS or (method and fn in _PASS_METHODS):
                out = lab(args[0])
            elif fn is torch.flatten or (method and fn == "flatten"):
                start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
                if start != 1 or len(shape(args[0])) < 2:
                    raise unknown(node, f"flatten from dimension {start}")
                out = flatten(lab(args[0]), shape(args[0]))
            elif method and fn in ("view", "reshape"):
                sin, sout = shape(args[0]), shape(node)
                if sin == sout:
                    out = lab(args[0])
                elif len(sout) == 2 and sout[0] == sin[0]:
                    out = flatten(lab(args[0]), sin)
                else:
                    raise unknown(node, f"{fn} from {sin} to {sout}")
            elif (fn in (torch.mean, torch.sum, torch.amax) or (method and fn in ("mean", "sum", "amax"))):
                dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
                dims = (dims,) if isinstance(dims, int) else dims
                ndim = len(shape(args[0]))
                if dims is None or any(d % ndim == 1 for d in dims):
                    raise unknown(node, f"{getattr(fn, '__name__', fn)} over the channels")
                out = lab(args[0])
            elif fn is operator.getitem:
                idx = args[1] if isinstance(args[1], tuple) else (args[1],)
                if len(idx) > 1 and idx[1] != slice(None) and idx[1] is not Ellipsis:
                    raise unknown(node, "indexing the channels")
                if any(i is Ellipsis for i in idx[:1]) or any(i is None for i in idx[:2]):
                    raise unknown(node, "indexing with ... or None")
                out = lab(args[0])
            elif fn is F.pad:
                pad = args[1] if len(args) > 1 else node.kwargs["pad"]
                ndim = len(shape(args[0]))
                j = 2 * (ndim - 2)  # the (before, after) pair of dimension 1
                x = lab(args[0])
                if len(pad) > j:
                    before, after = pad[j], pad[j + 1]
                    if len(pad) > j + 2 or before < 0 or after < 0:
                        raise unknown(node, "padding the batch dimension or cropping channels")
                    out = np.concatenate([uf.new(before), x, uf.new(after)])
                else:
                    out = x
            elif fn is torch.cat:
                parts = args[0]
                dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
                ls = [lab(p) for p in parts]
                if dim == 1:
                    out = np.concatenate(ls)
                else:
                    for t in ls[1:]:
                        uf.union(ls[0], t)
                    out = ls[0]
            else:
                raise unknown(node, f"the function {getattr(fn, '__name__', fn)}")
        elif node.op == "output":
            for a in _flat_args(node.args):
                if lab(a) is not None:
                    uf.union(np.zeros(len(lab(a)), dtype=np.int64), lab(a))
        labels[node] = out

    # Units -> classes (roots); classes that appear in the same tensor axes form a group.
    roots = {key: np.array([uf.find(int(u)) for u in units]) for key, units in ties.items()}
    members: dict[int, list] = {}
    for key, r in roots.items():
        for c in np.unique(r):
            if c != 0:
                members.setdefault(int(c), []).append(key)
    signature: dict[tuple, list[int]] = {}
    for c in sorted(members):
        signature.setdefault(tuple(sorted(members[c])), []).append(c)
    order = {key: i for i, key in enumerate(ties)}
    groups, taken = [], {}
    for keys, classes in sorted(signature.items(), key=lambda kv: min(order[k] for k in kv[0])):
        slots = {}
        for key in sorted(keys, key=order.get):
            pos = [np.nonzero(roots[key] == c)[0] for c in classes]
            if len({len(p) for p in pos}) != 1:
                raise ValueError(f"weight matching: units of {key[0]} (axis {key[1]}) repeat "
                                 f"unevenly; this network's symmetry is not a plain permutation")
            slots[key] = torch.as_tensor(np.stack(pos), dtype=torch.long)
        first = min(keys, key=order.get)[0].rsplit(".", 1)[0]
        taken[first] = taken.get(first, 0) + 1
        name = first if taken[first] == 1 else f"{first}#{taken[first]}"
        groups.append(PermutationGroup(name, len(classes), slots))
    return PermutationSpec(groups, params)


def _flat_args(args):
    for a in args:
        if isinstance(a, (tuple, list)):
            yield from _flat_args(a)
        elif isinstance(a, dict):
            yield from _flat_args(list(a.values()))
        else:
            yield a


def _index(size: int, slot_groups, perms: Mapping[str, Tensor], skip: str | None = None) -> Tensor:
    """The position permutation of one tensor axis: every group's units moved by its perm."""
    idx = torch.arange(size)
    for g, pos in slot_groups:
        if g.name == skip or g.name not in perms:
            continue
        p = torch.as_tensor(perms[g.name], dtype=torch.long)
        idx[pos.reshape(-1)] = pos[p].reshape(-1)
    return idx


def _axes(spec: PermutationSpec) -> dict:
    axes: dict = {}
    for g in spec.groups:
        for key, pos in g.slots.items():
            axes.setdefault(key, []).append((g, pos))
    return axes


def permute(point, spec: PermutationSpec, perms: Mapping[str, Tensor]) -> Point:
    """The point with every group's hidden units reordered: unit i of the result is unit
    ``perms[group][i]`` of ``point``. For a permutation found by ``permutation_spec`` the network
    computes exactly the same function (up to floating-point summation order)."""
    out = dict(_point(point))
    for (name, axis), groups in _axes(spec).items():
        if name not in out:
            continue
        idx = _index(out[name].shape[axis], groups, perms).to(out[name].device)
        out[name] = out[name].index_select(axis, idx)
    return out


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """A random permutation of every group's units."""
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randperm(grp.size, generator=g) for grp in spec.groups}


def identity_permutation(spec: PermutationSpec) -> dict[str, Tensor]:
    return {g.name: torch.arange(g.size) for g in spec.groups}


def match_units(wa: Tensor, wb: Tensor) -> Tensor:
    """The permutation of B's units that best lines them up with A's: ``wa``, ``wb`` are
    (units, features); returns ``p`` maximizing ``Σ_i ⟨wa[i], wb[p[i]]⟩`` — a linear assignment
    problem (Ainsworth et al. 2023, Sec. 3.2), solved exactly by
    ``scipy.optimize.linear_sum_assignment``."""
    from scipy.optimize import linear_sum_assignment

    cost = (wa.double() @ wb.double().T).cpu().numpy()
    rows, cols = linear_sum_assignment(cost, maximize=True)
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)


def _check_same_architecture(points: Mapping[str, Point], rule: str) -> None:
    """Weight matching pairs the units of networks of one architecture: the names two points
    share must have the same shapes. ``points`` maps a label ("A", "B", ...) to a point."""
    (first, ref), *others = points.items()
    for label, point in others:
        shapes = [k for k in sorted(ref) if k in point and ref[k].shape != point[k].shape]
        if shapes:
            where = "; ".join(f"{k!r} is {tuple(ref[k].shape)} in {first}, "
                              f"{tuple(point[k].shape)} in {label}" for k in shapes[:3])
            more = f" (and {len(shapes) - 3} more)" if len(shapes) > 3 else ""
            raise ValueError(f"{rule} (the same widths); shapes differ: {where}{more}")


def weight_matching(a, b, spec: PermutationSpec, *, max_iter: int = 100, seed: int = 0,
                    init: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Permute network B's hidden units to match network A's weights (Ainsworth et al. 2023,
    Sec. 3.2 and Alg. 1, "weight matching").

    Maximizing ``Σ_layers ⟨W_A, P_ℓ W_B P_{ℓ−1}ᵀ⟩`` over all permutations at once is NP-hard,
    but with all permutations but one held fixed it is a linear assignment problem. So the
    groups are visited in random order, each solved exactly given the others, until a full
    sweep improves nothing (at most ``max_iter`` sweeps). The objective uses parameters only
    (not BatchNorm's running statistics). Returns ``perms`` for ``permute(b, spec, perms)``.
    """
    pa = {k: v.double() for k, v in _point(a).items() if k in spec.params}
    pb = {k: v.double() for k, v in _point(b).items() if k in spec.params}
    only = sorted(pa.keys() ^ pb.keys())
    if only:
        where = ", ".join(f"{k!r} only in {'A' if k in pa else 'B'}" for k in only[:3])
        raise ValueError(f"weight matching needs two networks of one architecture; their "
                         f"parameter names differ: {where}")
    _check_same_architecture({"A": pa, "B": pb}, "weight matching needs two networks of one "
                                                 "architecture")
    perms = dict(init) if init is not None else identity_permutation(spec)
    perms = {k: torch.as_tensor(v, dtype=torch.long).clone() for k, v in perms.items()}
    by_name: dict = {}
    for (name, axis), groups in _axes(spec).items():
        by_name.setdefault(name, []).append((axis, groups))

    def rows(point: Point, name: str, axis: int, pos: Tensor) -> Tensor:
        t = point[name].movedim(axis, 0)[pos.reshape(-1).to(point[name].device)]
        return t.reshape(pos.shape[0], -1)

    # A's side of every group's objective never changes.
    slots = {g.name: [(n, ax, pos) for (n, ax), pos in g.slots.items() if n in pa and n in pb]
             for g in spec.groups}
    targets = {g.name: torch.cat([rows(pa, n, ax, pos) for n, ax, pos in slots[g.name]], 1)
               for g in spec.groups if slots[g.name]}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for gi in rng.permutation(len(spec.groups)):
            g = spec.groups[gi]
            if g.name not in targets:
                continue
            parts = []
            for name, axis, pos in slots[g.name]:
                t = pb[name]
                for ax, groups in by_name[name]:  # every permutation but this group's own
                    skip = g.name if ax == axis else None
                    t = t.index_select(ax, _index(t.shape[ax], groups, perms, skip).to(t.device))
                parts.append(rows({name: t}, name, axis, pos))
            wa, wb = targets[g.name], torch.cat(parts, 1)
            new = match_units(wa, wb)
            old_score = float((wa * wb[perms[g.name]]).sum())
            new_score = float((wa * wb[new]).sum())
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[g.name] = new
                improved = True
        if not improved:
            break
    return perms


def align(model: nn.Module, a, b, example: Tensor, **options) -> tuple[Point, dict]:
    """``(b_aligned, perms)``: network B's point with its hidden units permuted to match A's
    (``permutation_spec`` of ``model`` + ``weight_matching``). The aligned point computes the
    same function as B; only its position in weight space changes."""
    pa, pb = _point(a), _point(b)
    _check_same_architecture({"the model": _point(model), "A": pa, "B": pb},
                             "align needs two networks of the model's architecture")
    spec = permutation_spec(model, example)
    perms = weight_matching(pa, pb, spec, **options)
    return permute(b, spec, perms), perms


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
    from .train import _split, evaluate

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
