"""Points and directions in weight space (Li et al. 2018, Sec. 3–4, 7).

A ``Point`` is a ``dict`` from parameter (and optionally buffer) names to tensors; a direction is
a ``Point`` too. ``random_direction`` draws a Gaussian direction rescaled filter by filter (or
layer by layer), ``direction_between`` points from one model to another (Goodfellow et al. 2015),
``plane`` spans three models (Garipov et al. 2018) and ``pca_directions`` the principal
directions of a training trajectory (Li et al. Sec. 7). ``rescaled_copy`` builds the same
function with differently scaled weights: the reason the directions are normalized."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor


Point = dict  # name -> Tensor: a position (or a direction) in weight space

NORMS = ("filter", "layer", "none")
BIAS_BN = ("zero", "include")
EPS = 1e-10


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

    The same ``seed`` gives the same direction, bit for bit, on every device: it is drawn and
    normalized on the CPU, then moved to the model's device (so a surface cached on a GPU box is
    found by a laptop: its key hashes the directions' bytes)."""
    reference = _as_point(model)
    on_cpu = {k: w.detach().cpu() for k, w in reference.items()}
    g = torch.Generator().manual_seed(seed)
    raw = {k: torch.randn(w.shape, generator=g, dtype=torch.float32).to(w) for k, w in on_cpu.items()}
    return {k: d.to(reference[k]) for k, d in normalize_direction(raw, on_cpu, norm, bias_bn).items()}


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
