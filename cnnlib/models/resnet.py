"""Residual networks and their family: ResNet, plain nets, pre-activation ResNet, Wide ResNet,
stochastic depth, ResNeXt — for CIFAR-size inputs, plus the ImageNet ResNets of torchvision.

A residual block computes ``y = relu(F(x) + shortcut(x))`` (He et al. 2016a, Eq. 1–2): when the
weights of the residual branch ``F`` are zero the block is the identity, so extra depth can never
make the optimum worse. Every network here has the same three parts, so analysis code (lesions,
weight matching) can treat them alike::

    net.stem     the first convolution(s)
    net.blocks   ONE flat nn.Sequential of all residual blocks, in forward order
    net.head     global average pooling -> flatten -> linear (pre-activation nets: BN -> ReLU first)
    net(x) == net.head(net.blocks(net.stem(x)))

and each block has ``.residual`` (the branch F), ``.shortcut`` (``nn.Identity`` when shapes
match, a zero-padding or projection module when the block downsamples, ``None`` in a plain net)
and ``.downsample`` (whether the block changes the shape).

Shortcuts when the shape changes (He et al. 2016a, Sec. 3.3): option **A** subsamples and pads
the extra channels with zeros (no parameters; the paper's CIFAR nets), option **B** is a strided
1×1 convolution + BatchNorm (the ImageNet nets).

CIFAR sizes: depth 6n+2 with n basic blocks per stage and 16/32/64 channels (Sec. 4.2); the
parameter counts equal the paper's 0.27M/0.46M/0.66M/0.85M/1.7M for depth 20/32/44/56/110.
"""
from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import register
from .layers import init_weights

Attention = Callable[[int], nn.Module]  # channels -> module applied to the residual branch


def attention_module(attention: Attention | None, channels: int) -> list[nn.Module]:
    """``[attention(channels)]``, or ``[]`` without attention. ``attention`` is a *factory*
    (channels -> module, e.g. ``SqueezeExcitation`` or ``functools.partial(SqueezeExcitation,
    reduction=8)``): every block gets its own module, sized for its own width."""
    if attention is None:
        return []
    if isinstance(attention, nn.Module) or not callable(attention):
        raise TypeError(f"attention must be a factory channels -> module (e.g. SqueezeExcitation or "
                        f"functools.partial(SqueezeExcitation, reduction=8)), got a "
                        f"{type(attention).__name__} instance: every block builds its own module for "
                        f"its own number of channels")
    return [attention(channels)]


def positive_int(value, what: str) -> int:
    """``value`` if it is an integer ≥ 1, else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an integer ≥ 1, got {value!r}")
    return int(value)


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


# --------------------------------------------------------------------------------------------
# Shortcuts
# --------------------------------------------------------------------------------------------


class ZeroPadShortcut(nn.Module):
    """Option A (He et al. 2016a, Sec. 3.3): keep every ``stride``-th pixel and pad the new
    channels with zeros — an identity on the old channels, no parameters."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout < cin:
            raise ValueError(f"an option-A (zero-padding) shortcut cannot reduce channels "
                             f"({cin} -> {cout}); use shortcut='B'")
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        extra = self.cout - self.cin
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.cin}, {self.cout}, stride={self.stride}"


def make_shortcut(kind: str, cin: int, cout: int, stride: int, batch_norm: bool = True) -> nn.Module:
    """The shortcut of a block mapping ``cin`` to ``cout`` channels at ``stride``: the identity if
    the shape is unchanged, else option ``"A"`` (zero padding) or ``"B"`` (1×1 conv [+ BN])."""
    if kind not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' (zero-padding) or 'B' (projection), got {kind!r}")
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(cin, cout, stride)
    if batch_norm:
        return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    return conv1x1(cin, cout, stride)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a shortcut (He et al. 2016a, Fig. 2 and Eq. 1):

        y = relu(F(x) + shortcut(x)),   F = conv3×3 -> BN -> ReLU -> conv3×3 -> BN [-> attention]

    ``shortcut=None`` makes the plain block ``y = relu(F(x))`` of the paper's plain nets.
    ``attention`` (channels -> module, e.g. squeeze-and-excitation) reweights F's output before
    the addition (Hu et al. 2018, Fig. 3).

    Stochastic depth (Huang et al. 2016, Eq. 2 and 5): with ``survival < 1`` the whole residual
    branch is skipped for a mini-batch with probability ``1 − survival`` during training
    (``y = relu(shortcut(x))``, and F is not even computed — that is where the time is saved);
    at test time every branch is kept and scaled by its survival probability,
    ``y = relu(survival · F(x) + shortcut(x))``.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str | None = "A",
                 attention: Attention | None = None, survival: float = 1.0):
        super().__init__()
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival probability must be in (0, 1], got {survival}")
        if shortcut is None and survival < 1.0:
            raise ValueError("stochastic depth drops residual branches; a plain block (no shortcut) "
                             "has nothing to fall back on")
        layers = [conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                  conv3x3(cout, cout), nn.BatchNorm2d(cout), *attention_module(attention, cout)]
        self.residual = nn.Sequential(*layers)
        self.shortcut = None if shortcut is None else make_shortcut(shortcut, cin, cout, stride)
        self.downsample = stride != 1 or cin != cout
        self.survival = survival

    def forward(self, x: Tensor) -> Tensor:
        if self.shortcut is None:
            return F.relu(self.residual(x))
        identity = self.shortcut(x)
        if self.survival < 1.0:
            if self.training:
                if torch.rand(()).item() >= self.survival:  # dropped: the block is the identity
                    return F.relu(identity)
            else:
                return F.relu(self.survival * self.residual(x) + identity)
        return F.relu(self.residual(x) + identity)

    def extra_repr(self) -> str:
        return f"survival={self.survival:.3f}" if self.survival < 1.0 else ""


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b, Fig. 1b and Eq. 3): ``y = x + F(x)`` with
    ``F = BN -> ReLU -> conv3×3 -> BN -> ReLU [-> dropout] -> conv3×3 [-> attention]``; nothing
    follows the addition, so the shortcut path is a clean identity from block to block.

    With ``dropout`` between the convolutions it is the Wide ResNet block (Zagoruyko & Komodakis
    2016, Fig. 1d). A downsampling shortcut is a 1×1 convolution without BN (option B; the next
    block's BN normalizes the sum) or zero padding (option A). ``attention`` reweights F's output
    before the addition, as in ``BasicBlock``.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "B",
                 dropout: float = 0.0, attention: Attention | None = None):
        super().__init__()
        layers = [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), conv3x3(cin, cout, stride),
                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [conv3x3(cout, cout), *attention_module(attention, cout)]
        self.residual = nn.Sequential(*layers)
        self.shortcut = make_shortcut(shortcut, cin, cout, stride, batch_norm=False)
        self.downsample = stride != 1 or cin != cout

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class Bottleneck(nn.Module):
    """Bottleneck block (He et al. 2016a, Fig. 5 right) with grouped 3×3 convolution — the
    ResNeXt block (Xie et al. 2017, Fig. 3c): ``groups`` is the cardinality C, and

        F = conv1×1(cin→mid) -> BN -> ReLU -> conv3×3(mid→mid, groups=C) -> BN -> ReLU
            -> conv1×1(mid→cout) -> BN [-> attention],     y = relu(F(x) + shortcut(x)).

    The stride sits on the 3×3 convolution, as in torchvision ("ResNet v1.5").
    """

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1,
                 shortcut: str = "B", attention: Attention | None = None):
        super().__init__()
        positive_int(groups, "the cardinality C (groups)")
        if mid % groups:
            raise ValueError(f"the cardinality (groups={groups}) must divide the bottleneck "
                             f"width {mid}")
        layers = [conv1x1(cin, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                  conv3x3(mid, mid, stride, groups), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                  conv1x1(mid, cout), nn.BatchNorm2d(cout), *attention_module(attention, cout)]
        self.residual = nn.Sequential(*layers)
        self.shortcut = make_shortcut(shortcut, cin, cout, stride)
        self.downsample = stride != 1 or cin != cout

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """``stem -> blocks -> head``, the common shape of every network in this module."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def _head(channels: int, num_classes: int, preact: bool = False) -> nn.Sequential:
    pre = [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)] if preact else []
    return nn.Sequential(*pre, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def _blocks_per_stage(depth: int, name: str, per_block: int, extra: int) -> int:
    n, rest = divmod(depth - extra, per_block * 3)
    if not isinstance(depth, numbers.Integral) or rest or n < 1:
        raise ValueError(f"{name} depth must be {per_block * 3}n+{extra} (n ≥ 1 blocks per stage, "
                         f"{per_block} layers each), got {depth}")
    return n


def survival_probs(num_blocks: int, p_last: float) -> list[float]:
    """Linear decay rule of stochastic depth (Huang et al. 2016, Eq. 4): block l of L survives with
    ``p_l = 1 − (l / L)(1 − p_L)``, from nearly 1 at the input to ``p_L`` at the output."""
    if not 0.0 < p_last <= 1.0:
        raise ValueError(f"p_L must be in (0, 1], got {p_last}")
    return [1.0 - (l / num_blocks) * (1.0 - p_last) for l in range(1, num_blocks + 1)]


class CifarResNet(ResNet):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016a, Sec. 4.2): a 3×3 convolution with ``width``
    channels, three stages of n basic blocks with width, 2·width, 4·width channels (the first
    block of stages 2 and 3 halves the resolution), global average pooling and a linear layer.

    ``plain=True`` removes every shortcut (the paper's plain baselines; ``shortcut`` only chooses
    option A or B and has no "off" value); ``survival_prob < 1`` turns on stochastic depth with
    the linear decay rule down to ``p_L = survival_prob``.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 shortcut: str = "A", plain: bool = False, attention: Attention | None = None,
                 survival_prob: float = 1.0):
        n = _blocks_per_stage(depth, "CIFAR ResNet", 2, 2)
        positive_int(width, "width (the first stage's channels)")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding) or 'B' (projection), got {shortcut!r}; "
                             f"for the plain net without shortcuts use plain=True")
        if plain and survival_prob < 1.0:
            raise ValueError("stochastic depth needs shortcuts; it cannot be used with plain=True")
        survival = survival_probs(3 * n, survival_prob)
        blocks, c = [], width
        for stage in range(3):
            cout = width * 2 ** stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c, cout, stride, None if plain else shortcut, attention,
                                         survival[len(blocks)]))
                c = cout
        stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        super().__init__(stem, blocks, _head(c, num_classes))
        self.depth, self.plain = depth, plain


class PreActResNet(ResNet):
    """Pre-activation CIFAR ResNet (He et al. 2016b) and Wide ResNet WRN-d-k (Zagoruyko &
    Komodakis 2016, Table 1): a 3×3 stem convolution with ``width`` channels, three stages of
    pre-activation blocks with ``widen``·(width, 2·width, 4·width) channels, then BN -> ReLU ->
    pooling -> linear. ``depth`` counts the layers as each paper does: 6n+2 for the pre-activation
    ResNet, 6n+4 for WRN (which counts its projection shortcuts)."""

    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3,
                 width: int = 16, widen: int = 1, dropout: float = 0.0, shortcut: str = "A",
                 wrn_depth: bool = False, attention: Attention | None = None):
        name, extra = ("Wide ResNet", 4) if wrn_depth else ("pre-activation ResNet", 2)
        n = _blocks_per_stage(depth, name, 2, extra)
        positive_int(width, "width (the first stage's channels before widening)")
        positive_int(widen, "the widening factor k")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        blocks, c = [], width
        for stage in range(3):
            cout = width * widen * 2 ** stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(c, cout, stride, shortcut, dropout, attention))
                c = cout
        super().__init__(nn.Sequential(conv3x3(in_channels, width)), blocks,
                         _head(c, num_classes, preact=True))
        self.depth = depth


class CifarResNeXt(ResNet):
    """ResNeXt for CIFAR (Xie et al. 2017, Sec. 5.3): a 3×3 stem with ``width`` channels, three
    stages of n bottleneck blocks (depth 9n+2; ResNeXt-29 has n = 3) with 4, 8, 16 × ``width``
    output channels and cardinality × base_width × (1, 2, 4) channels inside the grouped 3×3
    convolution; "ResNeXt-29, 8×64d" is ``cardinality=8, base_width=64``."""

    def __init__(self, depth: int = 29, num_classes: int = 10, in_channels: int = 3,
                 cardinality: int = 8, base_width: int = 64, width: int = 64,
                 attention: Attention | None = None):
        n = _blocks_per_stage(depth, "CIFAR ResNeXt", 3, 2)
        positive_int(width, "width (the stem's channels)")
        positive_int(cardinality, "the cardinality C")
        positive_int(base_width, "the bottleneck width d (base_width)")
        blocks, c = [], width
        for stage in range(3):
            cout, mid = 4 * width * 2 ** stage, cardinality * base_width * 2 ** stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Bottleneck(c, mid, cout, stride, cardinality, "B", attention))
                c = cout
        stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        super().__init__(stem, blocks, _head(c, num_classes))
        self.depth = depth


IMAGENET_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                   50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                   152: ("bottleneck", (3, 8, 36, 3))}


class ImageNetResNet(ResNet):
    """The ImageNet ResNets of He et al. 2016a (Table 1) as torchvision builds them: 7×7/2 stem
    convolution and 3×3/2 max-pool, four stages (64, 128, 256, 512 × expansion channels), option-B
    shortcuts. ``groups`` and ``width_per_group`` give ResNeXt (32, 4) and Wide ResNet-50-2
    (1, 128); parameter counts equal torchvision's."""

    def __init__(self, depth: int = 50, num_classes: int = 1000, in_channels: int = 3,
                 groups: int = 1, width_per_group: int = 64, attention: Attention | None = None):
        if depth not in IMAGENET_LAYERS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_LAYERS)}, got {depth}")
        kind, layers = IMAGENET_LAYERS[depth]
        if kind == "basic" and (groups, width_per_group) != (1, 64):
            raise ValueError("grouped or widened 3×3 convolutions need bottleneck blocks (depth ≥ 50)")
        blocks, c = [], 64
        for stage, n in enumerate(layers):
            planes = 64 * 2 ** stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if kind == "basic":
                    blocks.append(BasicBlock(c, planes, stride, "B", attention))
                    c = planes
                else:
                    mid = planes * width_per_group // 64 * groups
                    blocks.append(Bottleneck(c, mid, 4 * planes, stride, groups, "B", attention))
                    c = 4 * planes
        stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        super().__init__(stem, blocks, _head(c, num_classes))
        self.depth = depth


# --------------------------------------------------------------------------------------------
# Registered constructors
# --------------------------------------------------------------------------------------------


@register
def resnet_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 20, width: int = 16,
                 shortcut: str = "A", plain: bool = False, attention: Attention | None = None,
                 survival_prob: float = 1.0) -> CifarResNet:
    """CIFAR ResNet (or plain net) of depth 6n+2; see ``CifarResNet``."""
    return CifarResNet(depth, num_classes, in_channels, width, shortcut, plain, attention, survival_prob)


def _reject_preset_keys(name: str, preset: dict, kwargs: dict, general: str) -> None:
    """A preset constructor fixes some options (``resnet20`` is depth 20); passing one of them
    is a contradiction, so say which constructor takes it."""
    clash = [key for key in preset if key in kwargs]
    if clash:
        fixed = ", ".join(f"{key}={preset[key]!r}" for key in clash)
        raise TypeError(f"{name} is a preset with {fixed}; to choose {' and '.join(clash)} "
                        f"yourself use {general}")


def _cifar_factory(depth: int, plain: bool):
    preset = dict(depth=depth, plain=plain)

    def build(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
        _reject_preset_keys(build.__name__, preset, kwargs, "resnet_cifar")
        return resnet_cifar(num_classes, in_channels, **preset, **kwargs)
    build.__name__ = f"{'plain' if plain else 'resnet'}{depth}"
    build.__doc__ = (f"The {depth}-layer {'plain net' if plain else 'ResNet'} for CIFAR "
                     f"(He et al. 2016a, Sec. 4.2); keyword options as ``resnet_cifar``.")
    return build


for _depth in (20, 32, 44, 56, 110, 1202):
    register(_cifar_factory(_depth, plain=False))
for _depth in (20, 32, 44, 56, 110):
    register(_cifar_factory(_depth, plain=True))


@register
def preact_resnet_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 110,
                        width: int = 16, shortcut: str = "A",
                        attention: Attention | None = None) -> PreActResNet:
    """Pre-activation CIFAR ResNet of depth 6n+2 (He et al. 2016b)."""
    return PreActResNet(depth, num_classes, in_channels, width, 1, 0.0, shortcut, attention=attention)


@register
def wide_resnet_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 28, widen: int = 10,
                      dropout: float = 0.0, width: int = 16,
                      attention: Attention | None = None) -> PreActResNet:
    """Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016), depth 6n+4, option-B shortcuts;
    the paper's dropout setting is 0.3."""
    return PreActResNet(depth, num_classes, in_channels, width, widen, dropout, "B", wrn_depth=True,
                        attention=attention)


@register
def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> PreActResNet:
    """WRN-28-10: 36.5M parameters, about 4% CIFAR-10 error (Zagoruyko & Komodakis 2016, Table 4)."""
    return wide_resnet_cifar(num_classes, in_channels, 28, 10, dropout)


@register
def resnext_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 29, cardinality: int = 8,
                  base_width: int = 64, width: int = 64,
                  attention: Attention | None = None) -> CifarResNeXt:
    """CIFAR ResNeXt of depth 9n+2; see ``CifarResNeXt``."""
    return CifarResNeXt(depth, num_classes, in_channels, cardinality, base_width, width, attention)


@register
def resnext29_8x64d(num_classes: int = 10, in_channels: int = 3) -> CifarResNeXt:
    """ResNeXt-29, 8×64d: 34.4M parameters (Xie et al. 2017, Table 7)."""
    return resnext_cifar(num_classes, in_channels, 29, 8, 64)


@register
def resnext29_16x64d(num_classes: int = 10, in_channels: int = 3) -> CifarResNeXt:
    """ResNeXt-29, 16×64d: 68.1M parameters (Xie et al. 2017, Table 7)."""
    return resnext_cifar(num_classes, in_channels, 29, 16, 64)


def _imagenet_factory(name: str, depth: int, groups: int = 1, width_per_group: int = 64):
    preset = dict(depth=depth, groups=groups, width_per_group=width_per_group)

    def build(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ImageNetResNet:
        _reject_preset_keys(name, preset, kwargs, "cnnlib.models.resnet.ImageNetResNet")
        return ImageNetResNet(num_classes=num_classes, in_channels=in_channels, **preset, **kwargs)
    build.__name__ = name
    build.__doc__ = f"ImageNet {name}; the same parameter count as ``torchvision.models.{name}``."
    return build


for _depth in IMAGENET_LAYERS:
    register(_imagenet_factory(f"resnet{_depth}", _depth))
register(_imagenet_factory("resnext50_32x4d", 50, 32, 4))
register(_imagenet_factory("resnext101_32x8d", 101, 32, 8))
register(_imagenet_factory("wide_resnet50_2", 50, 1, 128))
