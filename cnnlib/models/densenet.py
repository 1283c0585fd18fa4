"""Densely connected networks (Huang, Liu, van der Maaten & Weinberger 2017).

Inside a dense block, layer ℓ sees the concatenation of every earlier feature map (Eq. 2):

    x_ℓ = H_ℓ([x_0, x_1, …, x_{ℓ−1}])

and adds only k new channels (the **growth rate**), so the block's width grows linearly,
``c_0 + ℓ·k``. H_ℓ is BN -> ReLU -> conv3×3; DenseNet-**B** puts a 1×1 "bottleneck" convolution
to 4k channels in front of it. Between blocks a **transition** (BN -> ReLU -> conv1×1 -> 2×2
average pool) halves the resolution and, in DenseNet-**C**, multiplies the channels by the
compression factor θ < 1. DenseNet-BC uses both.

The networks share the ``stem -> blocks -> head`` shape of ``cnnlib.models.resnet``:
``net.blocks`` holds the dense blocks and transitions in forward order.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from . import register
from .layers import init_weights


class DenseLayer(nn.Module):
    """H_ℓ of Eq. 2: ``[BN -> ReLU -> conv1×1(→ bottleneck·k)] -> BN -> ReLU -> conv3×3(→ k)``;
    returns its input with the k new channels appended (the concatenation of Eq. 2)."""

    def __init__(self, cin: int, growth: int, bottleneck: int | None = 4):
        super().__init__()
        layers, c = [], cin
        if bottleneck:
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, bottleneck * growth, 1, bias=False)]
            c = bottleneck * growth
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, growth, 3, padding=1, bias=False)]
        self.new_features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.new_features(x)], 1)


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; ``cin`` channels in, ``cin + num_layers·growth`` out."""

    def __init__(self, num_layers: int, cin: int, growth: int, bottleneck: int | None = 4):
        super().__init__(*[DenseLayer(cin + i * growth, growth, bottleneck) for i in range(num_layers)])
        self.out_channels = cin + num_layers * growth


class Transition(nn.Sequential):
    """BN -> ReLU -> conv1×1(cin → cout) -> 2×2 average pooling (Sec. 3, "Pooling layers")."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    """``stem -> [dense block -> transition] × (B−1) -> dense block -> BN -> ReLU -> pool -> linear``.

    ``block_layers`` is the number of layers in each dense block, ``init_channels`` the stem's
    output, ``compression`` θ the transitions' channel factor (output ``floor(θ·c)``),
    ``bottleneck`` the 1×1 width in units of k (``None``: no bottleneck layer).
    """

    def __init__(self, block_layers, growth: int, init_channels: int, num_classes: int = 10,
                 in_channels: int = 3, bottleneck: int | None = 4, compression: float = 0.5,
                 imagenet_stem: bool = False):
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression θ must be in (0, 1], got {compression}")
        if growth < 1:
            raise ValueError(f"growth rate k must be ≥ 1, got {growth}")
        if imagenet_stem:  # torchvision: 7×7/2 convolution, BN, ReLU, 3×3/2 max-pool
            self.stem = nn.Sequential(nn.Conv2d(in_channels, init_channels, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(init_channels), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:  # CIFAR: one 3×3 convolution (Sec. 3, "Implementation details")
            self.stem = nn.Sequential(nn.Conv2d(in_channels, init_channels, 3, padding=1, bias=False))
        blocks, c = [], init_channels
        for i, n in enumerate(block_layers):
            block = DenseBlock(n, c, growth, bottleneck)
            blocks.append(block)
            c = block.out_channels
            if i < len(block_layers) - 1:
                cout = int(compression * c)
                blocks.append(Transition(c, cout))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(c, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


@register
def densenet_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 100, growth: int = 12,
                   bc: bool = True) -> DenseNet:
    """CIFAR DenseNet with three dense blocks (Huang et al. 2017, Sec. 3 and Table 2).

    ``bc=False``: plain DenseNet, (depth−4)/3 layers per block, 16 stem channels, no compression
    (L=40, k=12: 1.0M parameters). ``bc=True``: DenseNet-BC, (depth−4)/6 bottleneck layers per
    block (two convolutions each), 2k stem channels, θ = 0.5 (L=100, k=12: 0.8M parameters).
    """
    per_layer = 2 if bc else 1
    n, rest = divmod(depth - 4, 3 * per_layer)
    if rest or n < 1:
        raise ValueError(f"a CIFAR DenseNet{'-BC' if bc else ''} has depth {3 * per_layer}n+4 "
                         f"(three dense blocks of n {'bottleneck ' if bc else ''}layers), got {depth}")
    if bc:
        return DenseNet((n,) * 3, growth, 2 * growth, num_classes, in_channels, 4, 0.5)
    return DenseNet((n,) * 3, growth, 16, num_classes, in_channels, None, 1.0)


IMAGENET_DENSENETS = {  # name: (layers per block, growth rate, stem channels) — Table 1 / torchvision
    "densenet121": ((6, 12, 24, 16), 32, 64), "densenet169": ((6, 12, 32, 32), 32, 64),
    "densenet201": ((6, 12, 48, 32), 32, 64), "densenet161": ((6, 12, 36, 24), 48, 96),
}


def _imagenet_factory(name: str):
    layers, growth, init = IMAGENET_DENSENETS[name]

    def build(num_classes: int = 1000, in_channels: int = 3) -> DenseNet:
        return DenseNet(layers, growth, init, num_classes, in_channels, 4, 0.5, imagenet_stem=True)
    build.__name__ = name
    build.__doc__ = f"ImageNet DenseNet-BC {name}; the same parameter count as ``torchvision.models.{name}``."
    return build


for _name in IMAGENET_DENSENETS:
    register(_imagenet_factory(_name))
