"""The nudged elastic band and AutoNEB (Draxler et al. 2018, "Essentially no barriers in neural
network energy landscape").

The minimum energy path ``argmin_p max_{θ∈p} L(θ)`` between two minima, found with the nudged
elastic band of physical chemistry: a chain of pivots moved by the gradient perpendicular to the
path and kept evenly spaced (``tangents``, ``neb_force``, ``respace``, ``neb``), with new pivots
inserted where the energy between two pivots is highest (``auto_neb``, after Kolsbjerg et al.
2016). ``muller_brown`` is the classic two-dimensional test energy; ``network_energy`` and
``neb_path`` run AutoNEB on a network's training loss.

The module is named ``autoneb``, not ``neb``, so that ``cnnlib.connectivity.neb`` is the function
``neb`` without a module of the same name competing for the attribute.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import landscape
from ..landscape import Point
from .paths import Path, _digest, _point, _training_data

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

    from ..train import _split

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
    from .. import cache as _cache
    from .. import connectivity  # auto_neb is looked up on the package, where a test may replace it

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
        res = connectivity.auto_neb(flat.vector(pa), flat.vector(pb), energy_grad, energy,
                                    pivots=pivots, cycles=cycles, steps=steps, lr=lr,
                                    momentum=momentum, insert=insert,
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
