"""Loss landscapes: directions in weight space, and the loss evaluated on lines and planes.

Li et al. (2018), "Visualizing the loss landscape of neural nets", plot

    f(α)    = L(θ* + α·δ)                 (1D)
    f(α, β) = L(θ* + α·δ + β·η)           (2D, Sec. 3)

around a trained point θ*, with random Gaussian directions δ, η rescaled filter by filter,

    δ_{i,j} ← δ_{i,j} / ‖δ_{i,j}‖ · ‖θ_{i,j}‖      (filter j of layer i, Sec. 4),

so that a direction moves every filter by as much as the filter itself weighs. Without that
rescaling, networks that compute the same function with differently scaled weights (ReLU and
BatchNorm make the scale arbitrary; ``rescaled_copy`` builds such a pair) would look sharper or
flatter for no reason.

Everything here works for any ``nn.Module`` and any loss. The vocabulary:

``Point``
    a ``dict`` from parameter (and optionally buffer) names to tensors — a position in weight
    space, e.g. ``weights(model)``. A *direction* is a ``Point`` too: the same names, the step to
    take. A point and a direction may cover only some names; the others stay at the centre.
directions
    ``random_direction`` (filter/layer/no normalization; biases and BatchNorm parameters zeroed
    or included), ``direction_between`` (from one model to another: linear interpolation,
    Goodfellow et al. 2015), ``plane`` (through three models, Garipov et al. 2018) and
    ``pca_directions`` (principal directions of a training trajectory, Li et al. Sec. 7).
evaluation
    ``surface`` evaluates a 1D or 2D grid and returns a ``Surface`` (save, load, plot);
    ``evaluate_points`` evaluates arbitrary points ``θ* + Σ_k c_k d_k``. Two strategies sit
    behind both calls: ``"loop"`` writes each point's weights into a working copy of the model
    (channels-last for images) and runs the evaluation set through it — the fastest on a CPU;
    ``"vmap"`` evaluates a chunk of grid points at once with ``torch.func.functional_call`` +
    ``vmap`` — for a GPU, which one small model leaves mostly idle — chunked to a memory budget.
    ``"auto"`` picks per device; ``estimate`` states the cost before the run. (On a 2-core CPU
    vmap over convolution weights ran 2–4× slower than the loop, folding BatchNorm into the
    convolutions gained nothing measurable and ``torch.compile`` under 10% for ~15 s of
    compilation, so the loop has none of them; see ``bench/landscape.py``.)
BatchNorm statistics
    ``bn="keep"`` evaluates with the centre's running statistics (moved along a direction only
    if the direction has entries for them — ``direction_between(..., buffers=True)``);
    ``bn="recompute"`` re-estimates them at every point from training images
    (``recompute_bn``), as mode-connectivity studies must (Garipov et al. 2018).

The evaluation set is held as tensors on the device (an ``ImageData`` split or an ``(x, y)``
pair): no per-sample ``Dataset``/``DataLoader`` work per grid point.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..measure import median_time
from ..models import eval_mode

Point = dict  # name -> Tensor: a position (or a direction) in weight space

NORMS = ("filter", "layer", "none")
BIAS_BN = ("zero", "include")
BN_MODES = ("keep", "recompute")
STRATEGIES = ("auto", "loop", "vmap")
METRICS = ("loss", "acc", "error")
EPS = 1e-10

# --------------------------------------------------------------------------------------------
# Points and directions
# --------------------------------------------------------------------------------------------


def weights(model: nn.Module | Mapping[str, Tensor], buffers: bool = False) -> Point:
    """Detached copies of ``model``'s parameters — and, with ``buffers``, of its floating-point
    buffers (BatchNorm's running mean and variance) — as a ``Point``. A mapping is copied."""
    if isinstance(model, Mapping):
        return {k: v.detach().clone() for k, v in model.items()}
    point = {k: p.detach().clone() for k, p in model.named_parameters()}
    if buffers:
        point.update({k: b.detach().clone() for k, b in model.named_buffers()
                      if b.is_floating_point()})
    return point


def _as_point(x, buffers: bool = False) -> Point:
    return dict(x) if isinstance(x, Mapping) else weights(x, buffers)


def dot(a: Point, b: Point) -> float:
    """Inner product ⟨a, b⟩ over the names both points share (in float64)."""
    return float(sum((a[k].double() * b[k].double()).sum() for k in a if k in b))


def norm(a: Point) -> float:
    """Euclidean norm ‖a‖ over all of a point's entries."""
    return math.sqrt(dot(a, a))


def combine(center: Point, directions: Sequence[Point], coords: Sequence[float]) -> Point:
    """``center + Σ_k coords[k] · directions[k]``; names absent from a direction stay put."""
    if len(directions) != len(coords):
        raise ValueError(f"{len(coords)} coordinates for {len(directions)} directions")
    out = dict(center)
    for d, c in zip(directions, coords):
        for k, v in d.items():
            out[k] = out[k] + float(c) * v
    return out


def normalize_direction(direction: Point, reference: Point, norm: str = "filter",
                        bias_bn: str = "zero") -> Point:
    """Rescale ``direction`` to the scale of the ``reference`` weights (Li et al. 2018, Sec. 4).

    ``norm="filter"``: every filter (a slice along dim 0 of a weight with ≥ 2 dimensions: one
    output channel of a convolution, one row of a linear layer) gets the norm of the reference's
    filter, ``d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖``. ``"layer"``: every tensor gets the norm
    of the reference tensor. ``"none"``: unchanged.

    ``bias_bn`` handles one-dimensional tensors (biases and BatchNorm's γ, β): ``"zero"`` leaves
    them unperturbed, as the paper does; ``"include"`` keeps them, rescaled as a whole tensor
    (‖d‖ = ‖θ‖) unless ``norm="none"``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} (Li et al. use 'filter'), got {norm!r}")
    if bias_bn not in BIAS_BN:
        raise ValueError(f"bias_bn must be 'zero' (leave biases and BatchNorm parameters "
                         f"unperturbed) or 'include', got {bias_bn!r}")
    out = {}
    for k, d in direction.items():
        if k not in reference:
            raise ValueError(f"the reference has no entry {k!r} to normalize the direction by")
        w = reference[k].to(d)
        if d.shape != w.shape:
            raise ValueError(f"direction {k!r} has shape {tuple(d.shape)}, the weights "
                             f"{tuple(w.shape)}")
        if d.ndim <= 1:
            if bias_bn == "zero":
                out[k] = torch.zeros_like(d)
            else:
                out[k] = d if norm == "none" else d * (w.norm() / (d.norm() + EPS))
        elif norm == "filter":
            dims = tuple(range(1, d.ndim))
            vnorm = torch.linalg.vector_norm
            out[k] = d * (vnorm(w, dim=dims, keepdim=True) / (vnorm(d, dim=dims, keepdim=True) + EPS))
        elif norm == "layer":
            out[k] = d * (w.norm() / (d.norm() + EPS))
        else:
            out[k] = d.clone()
    return out


def random_direction(model: nn.Module | Mapping[str, Tensor], norm: str = "filter",
                     bias_bn: str = "zero", seed: int = 0) -> Point:
    """A random Gaussian direction over ``model``'s parameters, normalized by
    ``normalize_direction`` (filter-wise by default, biases and BatchNorm parameters zeroed).

    The same ``seed`` gives the same direction on every device (drawn on the CPU)."""
    reference = _as_point(model)
    g = torch.Generator().manual_seed(seed)
    raw = {k: torch.randn(w.shape, generator=g, dtype=torch.float32).to(w)
           for k, w in reference.items()}
    return normalize_direction(raw, reference, norm, bias_bn)


def direction_between(a, b, buffers: bool = False) -> Point:
    """``b − a`` for two models (or points) of the same architecture. With ``buffers`` the
    BatchNorm running statistics are included, so that walking along the direction also
    interpolates them (what the reference code calls a "states" direction)."""
    pa, pb = _as_point(a, buffers), _as_point(b, buffers)
    if pa.keys() != pb.keys():
        raise ValueError("the two models do not have the same parameter names")
    return {k: pb[k] - pa[k] for k in pa}


@dataclass
class Plane:
    """A plane in weight space: ``center + x·directions[0] + y·directions[1]``.

    ``anchors`` holds the (x, y) coordinates of the points the plane was built from (for
    ``plane``: a, b, c; for ``pca_directions``: the checkpoints)."""

    center: Point
    directions: tuple[Point, Point]
    anchors: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def coordinates(self, point) -> tuple[float, float, float]:
        """``(x, y, distance)``: the least-squares coordinates of ``point`` in the plane and its
        Euclidean distance from the plane (zero for a point in it)."""
        p = _as_point(point, buffers=True)
        u, v = self.directions
        delta = {k: p[k] - self.center[k] for k in u}
        gram = np.array([[dot(u, u), dot(u, v)], [dot(v, u), dot(v, v)]])
        rhs = np.array([dot(u, delta), dot(v, delta)])
        x, y = np.linalg.solve(gram, rhs)
        rest = {k: delta[k].double() - x * u[k].double() - y * v[k].double() for k in u}
        return float(x), float(y), norm(rest)


def _orthonormal_pair(u: Point, v: Point) -> tuple[Point, Point]:
    nu = norm(u)
    if nu == 0:
        raise ValueError("the first direction of the plane is zero (the points coincide)")
    u = {k: t / nu for k, t in u.items()}
    proj = dot(u, v)
    v = {k: v[k] - proj * u[k] for k in u}
    nv = norm(v)
    if nv < 1e-5 * nu:  # float32 rounding leaves ~1e-7 of a collinear point
        raise ValueError("the three points lie on one line; they do not span a plane")
    return u, {k: t / nv for k, t in v.items()}


def plane(a, b, c, orthonormal: bool = True, buffers: bool = False) -> Plane:
    """The plane through three models (or points) ``a``, ``b``, ``c``, centred at ``a``.

    With ``orthonormal`` (default) the directions are ``u = (b − a)/‖b − a‖`` and the unit vector
    of ``c − a`` orthogonal to ``u`` (Gram–Schmidt), so plane coordinates are distances in weight
    space and angles are true (as in the plots of Garipov et al. 2018); otherwise ``b − a`` and ``c − a``,
    so that b sits at (1, 0) and c at (0, 1). ``plane.anchors`` holds the coordinates of a, b, c.
    """
    pa, pb, pc = (_as_point(m, buffers) for m in (a, b, c))
    u = {k: pb[k] - pa[k] for k in pa}
    v = {k: pc[k] - pa[k] for k in pa}
    if orthonormal:
        u, v = _orthonormal_pair(u, v)
    result = Plane(pa, (u, v))
    result.anchors = np.array([result.coordinates(p)[:2] for p in (pa, pb, pc)])
    return result


@dataclass
class TrajectoryPCA:
    """The plane of the two principal directions of a training trajectory (Li et al. Sec. 7).

    ``explained_variance`` is the fraction of the trajectory's variance along each direction;
    ``coords[i]`` the (x, y) of checkpoint i in the plane; ``off_plane[i]`` its distance from
    the plane and ``distance[i]`` its distance from the centre (the last checkpoint), so
    ``off_plane / distance`` says how much of each checkpoint the plot cannot show."""

    plane: Plane
    explained_variance: np.ndarray
    coords: np.ndarray
    off_plane: np.ndarray
    distance: np.ndarray


def pca_directions(trajectory: Sequence, center=None, buffers: bool = False) -> TrajectoryPCA:
    """PCA of the matrix ``[θ_0 − θ_n; …; θ_{n−1} − θ_n]`` of a training trajectory (a list of
    models or points; ``center`` defaults to the last one): the two leading principal directions
    span the plane in which the optimizer moved the most (Li et al. 2018, Sec. 7). As in the
    reference implementation the rows are mean-centred before the decomposition; the directions
    have unit norm, so plane coordinates are distances in weight space."""
    points = [_as_point(p, buffers) for p in trajectory]
    if len(points) < 3:
        raise ValueError(f"a PCA plane needs at least 3 checkpoints, got {len(points)}")
    center_point = points[-1] if center is None else _as_point(center, buffers)
    keys = list(center_point)
    rows = torch.stack([torch.cat([(p[k] - center_point[k]).double().flatten() for k in keys])
                        for p in points])
    spread = rows - rows.mean(0)
    if not spread.abs().max() > 1e-12 * max(1.0, float(rows.abs().max())):
        raise ValueError(f"the {len(points)} checkpoints are all the same point: a trajectory "
                         f"that never moves has no principal directions (pass checkpoints "
                         f"saved at different times of training)")
    _, s, vh = torch.linalg.svd(spread, full_matrices=False)
    var = (s ** 2) / (s ** 2).sum()
    dirs = []
    for comp in vh[:2]:
        d, offset = {}, 0
        for k in keys:
            n = center_point[k].numel()
            d[k] = comp[offset:offset + n].view_as(center_point[k]).to(center_point[k].dtype)
            offset += n
        dirs.append(d)
    u, v = vh[0], vh[1]
    coords = torch.stack([rows @ u, rows @ v], 1)
    off = (rows - coords[:, :1] * u - coords[:, 1:] * v).norm(dim=1)
    result = Plane(center_point, (dirs[0], dirs[1]), coords.numpy())
    return TrajectoryPCA(result, var[:2].numpy(), coords.numpy(), off.numpy(), rows.norm(dim=1).numpy())


# --------------------------------------------------------------------------------------------
# BatchNorm statistics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def recompute_bn(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance from the images ``x``
    (in place; returns ``model``).

    Statistics are reset and then averaged over the batches of ``x`` (``batch_size`` images
    each), every batch weighted by its size: the running mean becomes the exact mean over ``x``
    of each layer's input in training mode, the running variance the average of the batch
    variances (as ``torch.optim.swa_utils.update_bn``). Only the BatchNorm layers are put in
    training mode, so dropout and the like stay off. A point between two trained networks
    needs this: neither network's statistics describe the activations there (Garipov et al.
    2018)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.train()
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            for m in norms:  # new = (1 − m)·old + m·batch: the size-weighted average so far
                m.momentum = len(xb) / (i + len(xb))
            model(xb)
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        for m, mode in modes.items():
            m.train(mode)
    return model


def _conv_bn_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """The (convolution, BatchNorm) node pairs of a traced network in which the BatchNorm
    (with running statistics) is the convolution's only consumer."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                and type(modules[prev.target]) is nn.Conv2d
                and modules[node.target].running_mean is not None):
            pairs.append((prev, node))
    return pairs


@torch.no_grad()
def rescaled_copy(model: nn.Module, factor: float) -> nn.Module:
    """A copy of ``model`` that computes the same function with different weights: every
    convolution followed by BatchNorm is multiplied by ``factor`` and that BatchNorm's running
    mean and variance by ``factor`` and ``factor²`` (exact up to BatchNorm's ε). BatchNorm makes
    the scale of those weights meaningless — the scale invariance that makes unnormalized loss
    plots misleading (Li et al. 2018, Sec. 4)."""
    if factor <= 0:
        raise ValueError(f"the factor must be positive (a negative one flips ReLU inputs), got {factor}")
    copy_ = copy.deepcopy(model)
    gm = fx.symbolic_trace(copy_)  # leaves are shared with the copy
    modules = dict(gm.named_modules())
    for conv_node, bn_node in _conv_bn_pairs(gm):
        conv, bn = modules[conv_node.target], modules[bn_node.target]
        conv.weight.mul_(factor)
        if conv.bias is not None:
            conv.bias.mul_(factor)
        bn.running_mean.mul_(factor)
        bn.running_var.mul_(factor ** 2)
    return copy_


# --------------------------------------------------------------------------------------------
# Evaluation: one point at a time, or many at once
# --------------------------------------------------------------------------------------------


def _eval_tensors(data, split: str) -> tuple[Tensor, Tensor]:
    from ..data import ImageData

    if isinstance(data, ImageData):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        what = (f"a tensor of shape {tuple(data.shape)}" if isinstance(data, Tensor)
                else type(data).__name__)
        raise ValueError(f"the evaluation data must be an (inputs, targets) pair or an ImageData, "
                         f"got {what}: a loss needs the targets too")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} targets")
    return x, y


def _bn_images(data, bn_data) -> Tensor:
    from ..data import ImageData

    if bn_data is not None:
        return bn_data[0] if isinstance(bn_data, (tuple, list)) else bn_data
    if isinstance(data, ImageData):
        return data.x_train
    return data[0]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _resolve_strategy(strategy: str, device: torch.device) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "vmap" if device.type == "cuda" else "loop"
    return strategy


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    return 2 * 2 ** 30


def _accumulate(out: Tensor, yb: Tensor, loss_fn) -> tuple[float, float]:
    """Sum of the loss and number of correct predictions of one batch (NaN if not a classifier)."""
    if out.dtype in (torch.float16, torch.bfloat16):
        out = out.float()
    loss = float(loss_fn(out, yb)) * len(yb)
    if out.ndim == 2 and not yb.is_floating_point() and yb.ndim == 1:
        return loss, float((out.argmax(1) == yb).sum())
    return loss, math.nan


class _LoopRunner:
    """Evaluates one point at a time in a private copy of the network (in the channels-last
    memory layout for images, which oneDNN and cuDNN convolutions run faster in)."""

    def __init__(self, model: nn.Module, channels_last: bool = False):
        self.net = copy.deepcopy(model).eval()
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.slots = {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}

    @torch.no_grad()
    def load(self, state: Point, bn_x: Tensor | None, batch_size: int) -> None:
        for k, t in state.items():
            self.slots[k].copy_(t)
        if bn_x is not None:
            recompute_bn(self.net, bn_x, batch_size)

    @torch.inference_mode()
    def evaluate(self, x: Tensor, y: Tensor, loss_fn, batch_size: int) -> tuple[float, float]:
        loss, correct = 0.0, 0.0
        for i in range(0, len(x), batch_size):
            l, c = _accumulate(self.net(x[i:i + batch_size]), y[i:i + batch_size], loss_fn)
            loss, correct = loss + l, correct + c
        return loss / len(x), correct / len(x)


class _VmapRunner:
    """Evaluates a chunk of points at once: the network is run as a pure function of its
    weights (``functional_call``) and ``vmap`` maps it over a stacked weight dimension."""

    def __init__(self, model: nn.Module):
        self.net = copy.deepcopy(model).eval()

    @torch.inference_mode()
    def evaluate(self, batched: Point, fixed: Point, x: Tensor, y: Tensor, loss_fn,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        from torch.func import functional_call, vmap

        def run(state, xb):
            return functional_call(self.net, (state, fixed), (xb,))

        n = next(iter(batched.values())).shape[0]
        loss, correct = np.zeros(n), np.zeros(n)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            out = vmap(run, in_dims=(0, None))(batched, xb)
            for p in range(n):
                l, c = _accumulate(out[p], yb, loss_fn)
                loss[p] += l
                correct[p] += c
        return loss / len(x), correct / len(x)


def _stack_points(center: Point, directions: Sequence[Point], coords: np.ndarray) -> Point:
    """``center[k] + coords @ d[k]`` for every name any direction moves, stacked over points."""
    c = torch.as_tensor(coords)
    out = {}
    for k in {k for d in directions for k in d}:
        base = center[k]
        steps = torch.stack([d[k] if k in d else torch.zeros_like(base) for d in directions])
        weights_ = c.to(device=base.device, dtype=base.dtype)
        out[k] = base + torch.tensordot(weights_, steps, dims=1)
    return out


def _prepare(model: nn.Module, center, directions: Sequence[Point]) -> Point:
    """The full centre state (parameters and buffers) with ``center``'s entries laid over it."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    if center is not None:
        for k, v in _as_point(center, buffers=True).items():
            if k not in state:
                raise ValueError(f"the centre has an entry {k!r} the model does not have")
            state[k] = v.detach()
    for d in directions:
        for k, v in d.items():
            if k not in state:
                raise ValueError(f"a direction has an entry {k!r} the model does not have")
            if v.shape != state[k].shape:
                raise ValueError(f"direction {k!r} has shape {tuple(v.shape)}, the model "
                                 f"{tuple(state[k].shape)}")
    return state


@dataclass
class Estimate:
    """What an evaluation will cost, stated before it runs."""

    strategy: str
    device: str
    points: int
    images: int
    flops_per_point: int     # forward FLOPs over the whole evaluation set (2 per multiply-add)
    bytes_per_point: int     # memory one more point in a vmap chunk needs
    chunk: int               # points evaluated together (1 for the loop)
    seconds: float           # from timing one batch

    def __str__(self) -> str:
        chunk = f", {self.chunk} points per chunk" if self.strategy == "vmap" else ""
        return (f"{self.points} points × {self.images} images, strategy {self.strategy} on "
                f"{self.device}{chunk}: {self.flops_per_point / 1e9:.2f} GFLOP per point, "
                f"{self.points * self.flops_per_point / 1e9:.1f} GFLOP in all, ≈ {self.seconds:.1f} s")


def _forward_profile(net: nn.Module, xb: Tensor) -> tuple[int, int]:
    """``(FLOPs, largest activation in bytes)`` of one forward pass of ``xb``: convolutions and
    linear layers count 2 FLOPs per multiply-add, as in ``cnnlib.measure.flops`` (counted with
    hooks here, which is instant, where ``FlopCounterMode`` first imports the compiler stack)."""
    flops, sizes = [0], []

    def hook(module, _, out):
        if not isinstance(out, Tensor):
            return
        sizes.append(out.numel() * out.element_size())
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            flops[0] += 2 * out.numel() * k
        elif isinstance(module, nn.Linear):
            flops[0] += 2 * out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:  # eval mode: in training mode BatchNorm would update the model's running statistics
        with eval_mode(net), torch.inference_mode():
            net(xb)
    finally:
        for h in handles:
            h.remove()
    return flops[0], max(sizes, default=xb.numel() * xb.element_size())


def estimate(model: nn.Module, data, n_points: int, directions: Sequence[Point] = (), *,
             split: str = "train", strategy: str = "auto", batch_size: int | None = None,
             memory_budget: int | None = None, bn: str = "keep", bn_data=None,
             time_it: bool = True) -> Estimate:
    """The cost of evaluating ``n_points`` points: FLOPs, the vmap chunk that fits
    ``memory_budget`` bytes (default: half the free GPU memory, 2 GiB on a CPU) and, with
    ``time_it``, the seconds it will take, extrapolated from timing one batch."""
    x, y = _eval_tensors(data, split)
    device = x.device
    strategy = _resolve_strategy(strategy, device)
    batch_size = batch_size or min(len(x), 1024 if strategy == "loop" else 256)
    state = _prepare(model, None, directions)
    moved = {k for d in directions for k in d} or {k for k, _ in model.named_parameters()}
    xb = x[:batch_size]
    batch_flops, act = _forward_profile(model, xb)
    fpp = batch_flops * len(x) // len(xb)
    per_point = sum(state[k].numel() * state[k].element_size() for k in moved) + 3 * act
    budget = memory_budget or _default_budget(device)
    chunk = 1 if strategy == "loop" else int(max(1, min(n_points, budget // per_point)))
    seconds = math.nan
    if time_it:
        batches = math.ceil(len(x) / batch_size)
        if strategy == "loop":
            images = xb.ndim == 4
            runner = _LoopRunner(model, channels_last=images)
            runner.load(state, None, batch_size)
            xl = xb.contiguous(memory_format=torch.channels_last) if images else xb
            t = median_time(lambda: runner.evaluate(xl, y[:batch_size], F.cross_entropy,
                                                    batch_size), device, repeats=1, warmup=1)
            seconds = t * batches * n_points
        else:
            vr = _VmapRunner(model)
            zero = {k: torch.zeros_like(state[k]) for k in moved}
            stacked = _stack_points(state, [zero], np.zeros((chunk, 1)))
            fixed = {k: v for k, v in state.items() if k not in stacked}
            t = median_time(lambda: vr.evaluate(stacked, fixed, xb, y[:batch_size],
                                                F.cross_entropy, batch_size), device, repeats=1,
                            warmup=1)
            seconds = t * batches * math.ceil(n_points / chunk)
        if bn == "recompute":
            bx = _bn_images(data, bn_data)
            seconds *= 1 + len(bx) / len(x)
    return Estimate(strategy, str(device), n_points, len(x), int(fpp), int(per_point), chunk,
                    seconds)


def evaluate_points(model: nn.Module, data, directions: Sequence[Point], coords, *,
                    center=None, loss_fn: Callable | None = None, split: str = "train",
                    bn: str = "keep", bn_data=None, strategy: str = "auto",
                    batch_size: int | None = None, memory_budget: int | None = None,
                    progress: bool | None = None,
                    desc: str = "landscape") -> tuple[np.ndarray, np.ndarray, str]:
    """Loss and accuracy at the points ``center + Σ_k coords[p, k] · directions[k]``.

    ``model`` supplies the architecture and, unless ``center`` (a model or point) is given, the
    centre. ``data`` is an ``ImageData`` (``split`` picks train or test; Li et al. plot the
    training loss) or an ``(x, y)`` pair on the model's device. ``loss_fn(output, target)``
    returns the batch mean (default: cross-entropy); accuracy is NaN unless the model outputs
    class scores for integer labels. ``bn``: ``"keep"`` or ``"recompute"`` BatchNorm statistics
    at each point (from ``bn_data`` images, default the training images). ``strategy``:
    ``"loop"``, ``"vmap"`` or ``"auto"`` (vmap on CUDA, loop elsewhere).

    Returns ``(loss, acc, strategy used)`` with one entry per point.
    """
    from ..train import _progress_enabled

    if bn not in BN_MODES:
        raise ValueError(f"bn must be 'keep' (the centre's running statistics) or 'recompute' "
                         f"(re-estimated at each point), got {bn!r}")
    coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
    if coords.shape[1] != len(directions):
        raise ValueError(f"coordinates have {coords.shape[1]} columns for {len(directions)} "
                         f"directions")
    loss_fn = loss_fn or F.cross_entropy
    x, y = _eval_tensors(data, split)
    device = _device_of(model)
    if x.device != device:
        raise ValueError(f"the evaluation data is on {x.device}, the model on {device}; "
                         f"move one of them (data.to(device))")
    state = _prepare(model, center, directions)
    bn_x = _bn_images(data, bn_data) if bn == "recompute" else None
    chosen = _resolve_strategy(strategy, device)
    n = len(coords)
    show = _progress_enabled(progress)
    if chosen == "vmap":
        try:
            return (*_evaluate_vmap(model, state, directions, coords, x, y, loss_fn, bn_x,
                                    batch_size, memory_budget, show, desc), "vmap")
        except Exception as err:
            if strategy == "vmap":
                raise
            warnings.warn(f"landscape: vmap evaluation failed ({type(err).__name__}: {err}); "
                          f"falling back to the per-point loop", RuntimeWarning)
            chosen = "loop"
    from tqdm.auto import tqdm

    batch_size = batch_size or min(len(x), 1024)
    images = x.ndim == 4
    if images:
        x = x.contiguous(memory_format=torch.channels_last)
    runner = _LoopRunner(model, channels_last=images)
    loss, acc = np.zeros(n), np.zeros(n)
    for p in tqdm(range(n), desc=desc, disable=not show, unit="point", leave=False):
        runner.load(combine(state, directions, coords[p]), bn_x, batch_size)
        loss[p], acc[p] = runner.evaluate(x, y, loss_fn, batch_size)
    return loss, acc, chosen


def _evaluate_vmap(model, state, directions, coords, x, y, loss_fn, bn_x, batch_size,
                   memory_budget, show, desc):
    from tqdm.auto import tqdm

    n = len(coords)
    batch_size = batch_size or min(len(x), 256)
    est = estimate(model, (x, y), n, directions, strategy="vmap", batch_size=batch_size,
                   memory_budget=memory_budget, time_it=False)
    chunk = est.chunk
    runner = _VmapRunner(model)
    helper = _LoopRunner(model) if bn_x is not None else None
    loss, acc = np.zeros(n), np.zeros(n)
    bar = tqdm(total=n, desc=desc, disable=not show, unit="point", leave=False)
    for start in range(0, n, chunk):
        part = coords[start:start + chunk]
        batched = _stack_points(state, directions, part)
        if helper is not None:  # per-point statistics, then stacked like the weights
            stats = []
            for c in part:
                helper.load(combine(state, directions, c), bn_x, batch_size)
                stats.append({k: b.detach().clone() for k, b in helper.net.named_buffers()
                              if b.is_floating_point()})
            batched.update({k: torch.stack([s[k] for s in stats]) for k in stats[0]})
        fixed = {k: v for k, v in state.items() if k not in batched}
        loss[start:start + len(part)], acc[start:start + len(part)] = runner.evaluate(
            batched, fixed, x, y, loss_fn, batch_size)
        bar.update(len(part))
    bar.close()
    return loss, acc


# --------------------------------------------------------------------------------------------
# Surfaces: the result object
# --------------------------------------------------------------------------------------------


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS} ('acc' is the accuracy), got {metric!r}")


def _contour_levels(lo: float, hi: float, levels: int = 20) -> np.ndarray:
    """About ``levels`` contour levels at round values (steps of 1, 2, 2.5 or 5 times a power of
    ten) from the first at or below ``lo`` to the first at or above ``hi``, so that the ticks of
    a colour bar, which sit on the levels, read as round numbers."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=levels, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)


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
        """Draw the surface: ``"curve"`` (1D: loss and accuracy), ``"contour"``, ``"filled"``
        (filled contours) or ``"surface"`` (3D) of ``metric`` (one of ``METRICS``; a curve shows
        loss and accuracy). ``log`` plots log10 of the metric (a curve gets a logarithmic axis
        instead); ``vmin`` and ``vmax`` (in plotted units) fix the colour scale so several plots
        can share it; contour levels fall on round values. Returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        _check_metric(metric)
        kind = kind or ("curve" if self.ndim == 1 else "contour")
        kinds = ("curve",) if self.ndim == 1 else ("contour", "filled", "surface")
        if kind not in kinds:
            raise ValueError(f"a {self.ndim}D surface can be drawn as {kinds}, not {kind!r}")
        label = self.meta.get("label", "")
        zlabel = ("log10 " if log else "") + {"loss": "loss", "acc": "accuracy",
                                              "error": "error"}[metric]
        if kind == "curve":
            if ax is None:
                _, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
            ax.plot(self.alphas, self.loss, "b-", label="loss")
            ax.set(xlabel="α", title=title or label)
            ax.set_ylabel("loss", color="b")
            if log:
                ax.set_yscale("log")
            if vmin is not None or vmax is not None:
                ax.set_ylim(vmin, vmax)
            twin = ax.twinx()
            twin.plot(self.alphas, 100 * self.acc, "r--", label="accuracy")
            twin.set_ylabel("accuracy (%)", color="r")
            twin.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            return ax
        X, Y = np.meshgrid(self.alphas, self.betas, indexing="ij")
        Z = self.values(metric, log)
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


# --------------------------------------------------------------------------------------------
# The one call
# --------------------------------------------------------------------------------------------


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


# Curvature (curvature.py): Hessian-vector products, eigenvalues, trace, spectral density.
from .curvature import (Density, HessianOperator, Ratio, RatioMap, eigen_ratio, eigen_ratio_map,  # noqa: E402
                        eigenvalues, hessian, lanczos, power_iteration, spectral_density, trace)
