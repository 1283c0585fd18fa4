"""Measuring networks: parameters, FLOPs, receptive fields, forward and training-step time.

FLOPs vs multiply-adds
----------------------
``flops()`` counts floating-point operations with ``torch.utils.flop_counter.FlopCounterMode``:
one multiply-add is **2 FLOPs**, and only convolutions and matrix products are counted
(elementwise ops, pooling and normalization are not — they are a few percent at most).
Most papers (AlexNet, ResNet, EfficientNet's "0.39B FLOPs") report **multiply-adds**, i.e.
``macs() == flops() / 2``. Every table in the course says which one it shows.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .models import eval_mode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _example(model: nn.Module, input_size) -> Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(tuple(input_size), device=device, dtype=dtype)


@torch.no_grad()
def flops(model: nn.Module, input_size=(1, 3, 224, 224)) -> int:
    """FLOPs of one forward pass (2 per multiply-add; convolutions and matrix products only)."""
    counter = FlopCounterMode(display=False)
    with eval_mode(model), counter:
        model(_example(model, input_size))
    return counter.get_total_flops()


def macs(model: nn.Module, input_size=(1, 3, 224, 224)) -> int:
    """Multiply-accumulate operations of one forward pass (= ``flops() // 2``), as papers report."""
    return flops(model, input_size) // 2


@torch.no_grad()
def flops_by_module(model: nn.Module, input_size=(1, 3, 224, 224)) -> dict[str, int]:
    """FLOPs of each direct child module of ``model`` (in forward order), for tables."""
    counter = FlopCounterMode(display=False, depth=None)
    with eval_mode(model), counter:
        model(_example(model, input_size))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out = {}
    for name, _ in model.named_children():
        out[name] = sum(counts.get(f"{root}.{name}", {}).values())
    return out


def median_time(fn, device: torch.device, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` untimed
    ones; on a GPU each call is bracketed by ``torch.cuda.synchronize`` (kernels run
    asynchronously, so an unsynchronized clock would time only their launch)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def forward_time(model: nn.Module, input_size, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass in seconds (eval mode, no autograd)."""
    x = _example(model, input_size)
    with eval_mode(model):
        return median_time(lambda: model(x), x.device, repeats, warmup)


def step_times(models: dict[str, nn.Module], x: Tensor, y: Tensor, steps: int = 20,
               warmup: int = 2) -> dict[str, list[float]]:
    """Wall times (s) of ``steps`` training steps — forward, cross-entropy, backward, SGD update —
    of each model on the batch ``(x, y)``, after ``warmup`` untimed rounds. The models take turns
    step by step, so a busy machine slows them alike; each trains a copy (in its own memory
    layout), so the models passed in are left as they were."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    copies = {name: copy.deepcopy(m).train() for name, m in models.items()}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in copies.items()}
    times = {name: [] for name in models}
    for step in range(warmup + steps):
        for name, m in copies.items():
            start = time.perf_counter()
            optimizers[name].zero_grad()
            F.cross_entropy(m(x), y).backward()
            optimizers[name].step()
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------------------------
# Receptive fields
# --------------------------------------------------------------------------------------------

def receptive_field_formula(layers) -> int:
    """Theoretical receptive field of a chain of layers given as ``(kernel, stride, dilation)``.

    With jump ``j`` (distance in input pixels between neighbouring units) the recursion is
    ``r ← r + (k − 1)·d·j`` and ``j ← j·s``, starting from ``r = j = 1`` (Araujo et al. 2019).
    """
    r, j = 1, 1
    for layer in layers:
        k, s, d = (tuple(layer) + (1, 1))[:3]
        r += (k - 1) * d * j
        j *= s
    return r


def _unit(out: Tensor, position=None, channel: int | None = None) -> Tensor:
    """One output unit of a feature map ``out`` (1, C', H', W'): spatial ``position`` (default: the
    centre), summed over output channels unless ``channel`` is given."""
    if out.ndim != 4:
        raise ValueError(f"model must output a feature map (N, C, H, W); got shape {tuple(out.shape)}")
    h, w = out.shape[-2:]
    i, j = position if position is not None else (h // 2, w // 2)
    return out[0, :, i, j] if channel is None else out[0, channel, i, j]


def unit_gradient(model: nn.Module, x: Tensor, position=None, channel: int | None = None) -> Tensor:
    """Gradient of one output unit of ``model(x)`` w.r.t. the input, summed over input channels.

    ``model`` maps ``(1, C, H, W)`` to a feature map ``(1, C', H', W')``; the unit is at spatial
    ``position`` (default: the centre), summed over output channels unless ``channel`` is given.
    This is the *effective* receptive field of Luo et al. (2016) when the weights are real ones.
    """
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_unit(model(x), position, channel).sum(), x)
    return grad[0].sum(0)


_NONLINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
              nn.Dropout, nn.Dropout2d, nn.LocalResponseNorm, nn.BatchNorm2d, nn.GroupNorm,
              nn.LayerNorm)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _pad_with(fill: Tensor, x: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Zero-pad ``x`` spatially, except that the padded pixels hold ``fill`` (a scalar that is 0 but
    has a gradient): the unit's gradient w.r.t. ``fill`` says whether its field reaches the padding."""
    sides = (left, right, top, bottom)
    return F.pad(x, sides) + fill * F.pad(torch.zeros_like(x), sides, value=1.0)


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of ``conv``, as ``F.pad`` orders it."""
    if conv.padding == "valid":
        return 0, 0, 0, 0
    if conv.padding == "same":  # PyTorch puts the odd pixel of an even total on the right/bottom
        (th, tw) = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        return tw // 2, tw - tw // 2, th // 2, th - th // 2
    ph, pw = conv.padding
    return pw, pw, ph, ph


class _PaddedAvgPool(nn.Module):
    """Average pooling over explicitly padded input (see ``_pad_with``): the surrogate's stand-in for
    max- and average pooling. Windows that ``ceil_mode`` lets hang over the edge read padding too."""

    def __init__(self, pool: nn.Module, fill: Tensor):
        super().__init__()
        self.kernel_size, self.stride, self.padding = (_pair(v) for v in (pool.kernel_size, pool.stride,
                                                                        pool.padding))
        self.ceil_mode, self.fill = pool.ceil_mode, fill

    def forward(self, x: Tensor) -> Tensor:
        sides = []
        for n, k, s, p in zip(x.shape[-2:], self.kernel_size, self.stride, self.padding):
            out = -(-(n + 2 * p - k) // s) + 1 if self.ceil_mode else (n + 2 * p - k) // s + 1
            if self.ceil_mode and (out - 1) * s >= n + p:  # the last window starts inside (PyTorch's rule)
                out -= 1
            sides.append((p, max(p, (out - 1) * s + k - n - p)))
        (top, bottom), (left, right) = sides
        return F.avg_pool2d(_pad_with(self.fill, x, left, right, top, bottom), self.kernel_size, self.stride)


def _linear_surrogate(model: nn.Module) -> tuple[nn.Module, Tensor]:
    """A copy of ``model`` whose every path passes signal: positive uniform kernels, zero biases,
    max- and average pooling by average pooling, activations and normalization by the identity.
    Its input gradient is non-zero exactly on the theoretical receptive field.

    The zero padding of every convolution and pooling is made explicit, filled with the returned
    scalar ``fill`` (= 0): a unit's gradient w.r.t. ``fill`` is non-zero exactly when some path of its
    field leaves the input, so a field cut off by the border is detected even where the field has
    holes (a dilated stack's grid) at the border."""
    m = copy.deepcopy(model).eval().double()
    fill = torch.zeros((), dtype=torch.float64, device=next(m.parameters()).device, requires_grad=True)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NONLINEAR):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
                setattr(parent, name, _PaddedAvgPool(child, fill))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
                if mod.bias is not None:
                    mod.bias.zero_()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros":
            sides = _conv_padding(mod)
            mod.padding = (0, 0)
            mod.register_forward_pre_hook(lambda _m, args, sides=sides: (_pad_with(fill, args[0], *sides),))
    return m, fill


def _field(surrogate: nn.Module, fill: Tensor, input_size, position=None) -> tuple[int, int] | None:
    """Height and width of the unit's field in an input of ``input_size``, or None where the field
    does not fit (it reaches past the border into the padding, or touches the border)."""
    x = torch.ones(tuple(input_size), dtype=torch.float64, device=fill.device, requires_grad=True)
    grad, grad_fill = torch.autograd.grad(_unit(surrogate(x), position).sum(), (x, fill), allow_unused=True)
    support = grad[0].sum(0) != 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    if len(rows) == 0:
        raise ValueError("the unit's gradient is zero everywhere; is the model a feature extractor?")
    h, w = support.shape
    outside = grad_fill is not None and grad_fill.item() != 0
    # touching the border is a conservative check for padding the surrogate cannot see (F.pad in a forward)
    if outside or rows[0] == 0 or cols[0] == 0 or rows[-1] == h - 1 or cols[-1] == w - 1:
        return None
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def receptive_field(model: nn.Module, input_size=(1, 3, 224, 224), position=None) -> tuple[int, int]:
    """Measured theoretical receptive field ``(height, width)`` of one output unit of ``model``.

    Works for any convolutional feature extractor (branches and concatenations included):
    the gradient of one unit of a positive linear surrogate of the network is non-zero exactly
    on the input pixels that can influence it. The field must lie inside the input, clear of its
    border; if it does not, the error says how large an input is (found by measuring on larger
    ones). Deformable layers are rejected: their field moves with the input (their offsets).
    """
    from .models.layers import DeformConv2d

    if any(isinstance(m, DeformConv2d) for m in model.modules()):
        raise TypeError("receptive_field is not supported for deformable layers (DeformConv2d): their "
                        "field depends on the input, through the offsets; use unit_gradient(model, x) "
                        "for the field of one input")
    surrogate, fill = _linear_surrogate(model)
    field = _field(surrogate, fill, input_size, position)
    if field is not None:
        return field
    *lead, h, w = input_size
    where = f"the unit at {tuple(position)}" if position is not None else "the centre unit"
    message = (f"the input is too small: the receptive field of {where} does not fit inside the {h}×{w} "
               f"input (it reaches the border or past it, into the padding)")
    size = (h, w)
    for _ in range(4):                         # up to 16× larger, centre unit
        size = (2 * size[0] + 1, 2 * size[1] + 1)
        larger = _field(surrogate, fill, (*lead, *size))
        if larger is not None:
            raise ValueError(f"{message}; the field is {larger[0]}×{larger[1]} (measured at the centre "
                             f"of a {size[0]}×{size[1]} input), so the input must be larger than that, "
                             f"e.g. input_size={(*lead, *size)}")
    raise ValueError(f"{message}; it does not fit in a {size[0]}×{size[1]} input either: measure it on a "
                     f"larger input_size")
