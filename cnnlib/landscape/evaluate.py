"""The loss at many points θ* + Σ_k c_k d_k of weight space, and what it costs.

``evaluate_points`` runs the evaluation set through the network at each point, by one of two
strategies: ``"loop"`` writes each point's weights into a working copy of the model (the fastest
on a CPU) and ``"vmap"`` evaluates a chunk of points at once with ``torch.func.functional_call``
+ ``vmap`` (for a GPU); ``estimate`` states the cost (points, FLOPs, seconds) before a run.
``recompute_bn`` re-estimates BatchNorm's running statistics at a point, as mode-connectivity
studies must (Garipov et al. 2018)."""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..measure import median_time
from ..models import eval_mode

from .directions import Point, _as_point, combine

BN_MODES = ("keep", "recompute")
STRATEGIES = ("auto", "loop", "vmap")


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
