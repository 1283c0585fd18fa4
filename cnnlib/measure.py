"""Measuring networks: parameters, FLOPs, receptive fields, forward time.

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


@torch.no_grad()
def forward_time(model: nn.Module, input_size, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass in seconds (eval mode, no autograd)."""
    x = _example(model, input_size)
    times = []
    with eval_mode(model):
        for i in range(warmup + repeats):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


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


def unit_gradient(model: nn.Module, x: Tensor, position=None, channel: int | None = None) -> Tensor:
    """Gradient of one output unit of ``model(x)`` w.r.t. the input, summed over input channels.

    ``model`` maps ``(1, C, H, W)`` to a feature map ``(1, C', H', W')``; the unit is at spatial
    ``position`` (default: the centre), summed over output channels unless ``channel`` is given.
    This is the *effective* receptive field of Luo et al. (2016) when the weights are real ones.
    """
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    if out.ndim != 4:
        raise ValueError(f"model must output a feature map (N, C, H, W); got shape {tuple(out.shape)}")
    h, w = out.shape[-2:]
    i, j = position if position is not None else (h // 2, w // 2)
    unit = out[0, :, i, j] if channel is None else out[0, channel, i, j]
    (grad,) = torch.autograd.grad(unit.sum(), x)
    return grad[0].sum(0)


_NONLINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
              nn.Dropout, nn.Dropout2d, nn.LocalResponseNorm, nn.BatchNorm2d, nn.GroupNorm,
              nn.LayerNorm)


def _linear_surrogate(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every path passes signal: positive uniform kernels, zero biases,
    max-pooling replaced by average pooling, activations and normalization by the identity.
    Its input gradient is non-zero exactly on the theoretical receptive field."""
    m = copy.deepcopy(model).eval().double()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NONLINEAR):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
                if mod.bias is not None:
                    mod.bias.zero_()
    return m


def receptive_field(model: nn.Module, input_size=(1, 3, 224, 224), position=None) -> tuple[int, int]:
    """Measured theoretical receptive field ``(height, width)`` of one output unit of ``model``.

    Works for any convolutional feature extractor (branches and concatenations included):
    the gradient of one unit of a positive linear surrogate of the network is non-zero exactly
    on the input pixels that can influence it. Raises if the field reaches the input border
    (then the input is too small to measure it).
    """
    surrogate = _linear_surrogate(model)
    x = torch.ones(tuple(input_size), dtype=torch.float64,
                   device=next(surrogate.parameters()).device)
    support = unit_gradient(surrogate, x, position) != 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    if len(rows) == 0:
        raise ValueError("the unit's gradient is zero everywhere; is the model a feature extractor?")
    h, w = support.shape
    if rows[0] == 0 or cols[0] == 0 or rows[-1] == h - 1 or cols[-1] == w - 1:
        raise ValueError(f"the receptive field reaches the border of the {h}×{w} input; "
                         f"measure it on a larger input_size")
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
