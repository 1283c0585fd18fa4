"""EfficientNet (Tan & Le 2019): MBConv blocks and compound scaling of depth, width and resolution.

The baseline EfficientNet-B0 (found by architecture search, Table 1 of the paper) is a readable
block table (``B0_STAGES``). A scaled network multiplies

* the number of blocks in every stage by the depth coefficient d (rounded **up**),
* every channel count by the width coefficient w (rounded to a multiple of 8, never more than
  10% below the exact value — the reference implementation's ``round_filters``),
* the input resolution by r.

Compound scaling ties the three to one knob φ (Eq. 3): d = α^φ, w = β^φ, r = γ^φ with
α·β²·γ² ≈ 2, so FLOPs, which grow like d·w²·r², roughly double per unit of φ. B0's grid search
gave α = 1.2, β = 1.1, γ = 1.15. The released B1–B7 use hand-rounded (w, d, resolution) triples
(``EFFICIENTNET``), which the builder reproduces exactly: the parameter counts equal
torchvision's ``efficientnet_b0`` … ``efficientnet_b7`` (tested).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from . import register

# --------------------------------------------------------------------------------------------
# Rounding rules of the reference implementation
# --------------------------------------------------------------------------------------------


def round_filters(channels: float, width: float = 1.0, divisor: int = 8) -> int:
    """``channels · width`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``),
    bumped up one step if that rounding lost more than 10% (TF ``round_filters``)."""
    v = channels * width
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float = 1.0) -> int:
    """The number of blocks of a stage scaled by ``depth``, rounded up (TF ``round_repeats``)."""
    return int(math.ceil(repeats * depth))


PHI_RANGE = (0.0, 10.0)


def compound_multipliers(phi: float, alpha: float = 1.2, beta: float = 1.1,
                         gamma: float = 1.15) -> tuple[float, float, float]:
    """Depth, width and resolution multipliers of compound scaling (Tan & Le 2019, Eq. 3):
    d = α^φ, w = β^φ, r = γ^φ. The defaults are B0's coefficients from the paper's grid search.

    φ must be a finite number in ``PHI_RANGE`` = [0, 10]: compound scaling scales a base
    network *up*, φ = 0 is the base itself, and φ = 10 already means about 2¹⁰ ≈ 1000× its
    FLOPs (the released B7's width, 2.0 = 1.1^7.3, corresponds to φ ≈ 7.3)."""
    lo, hi = PHI_RANGE
    if isinstance(phi, bool) or not isinstance(phi, numbers.Real) or not lo <= phi <= hi:
        raise ValueError(f"φ must be a finite number between {lo:g} and {hi:g} (compound scaling "
                         f"scales the base network up: φ = 0 is the base, each unit of φ about "
                         f"doubles its FLOPs), got {phi!r}")
    if min(alpha, beta, gamma) < 1:
        raise ValueError(f"compound scaling needs α, β, γ ≥ 1, got {alpha}, {beta}, {gamma}")
    return alpha ** phi, beta ** phi, gamma ** phi


def flops_factor(depth: float, width: float, resolution: float) -> float:
    """How much FLOPs grow when depth, width and resolution are scaled: d·w²·r² (Sec. 3.3) —
    a convolution's cost is linear in the number of layers and quadratic in both channels
    (in × out) and image side (height × width)."""
    return depth * width ** 2 * resolution ** 2


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) → BatchNorm → optional SiLU ("swish", Ramachandran et al. 2017)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True, bn_eps: float = 1e-5):
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(c_out, eps=bn_eps)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as used inside MBConv: global average pool,
    1×1 conv to ``squeeze`` channels, SiLU, 1×1 conv back, sigmoid, rescale the channels."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016) per sample: in training, zero a residual branch for a
    random fraction ``p`` of the batch and scale the rest by 1/(1−p), so the expectation is
    unchanged; the identity at test time. ``p = 1`` drops every branch (zeros, as torchvision's
    ``stochastic_depth``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability p must be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018; Tan et al. 2019 "MnasNet") with SE:

        x → [1×1 expand ×e → BN → SiLU] → k×k depthwise (stride s) → BN → SiLU
          → SE → 1×1 project → BN  (+ x, with stochastic depth, when s = 1 and c_in = c_out)

    The expansion (to e·c_in channels) is skipped for e = 1. SE squeezes to
    ``max(1, int(c_in · se_ratio))`` channels of the block's *input* width, as in the reference.
    """

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int,
                 se_ratio: float = 0.25, drop_prob: float = 0.0, bn_eps: float = 1e-5):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        if kernel % 2 == 0:
            raise ValueError(f"MBConv kernel must be odd, got {kernel}")
        mid = c_in * expand
        layers = [ConvBNAct(c_in, mid, 1, bn_eps=bn_eps)] if mid != c_in else []
        layers += [ConvBNAct(mid, mid, kernel, stride, groups=mid, bn_eps=bn_eps)]
        if se_ratio > 0:
            layers.append(SqueezeExcite(mid, max(1, int(c_in * se_ratio))))
        layers.append(ConvBNAct(mid, c_out, 1, act=False, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.residual:
            out = drop_path(out, self.drop_prob, self.training) + x
        return out

    def extra_repr(self) -> str:
        return f"residual={self.residual}, drop_prob={self.drop_prob:.3f}"


# --------------------------------------------------------------------------------------------
# The block table and the builder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One row of the block table: ``repeats`` MBConv blocks with expansion ``expand``, a
    ``kernel``×``kernel`` depthwise conv, ``channels`` outputs; the first block has ``stride``."""

    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# EfficientNet-B0, Table 1 of Tan & Le (2019): stem 3×3 conv with 32 channels at stride 2,
# seven MBConv stages, then a 1×1 conv to 1280 channels, pooling and the classifier.
B0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)

# (width, depth, resolution, dropout) of the released models (reference implementation and
# torchvision); width and depth are *not* exactly 1.1^φ and 1.2^φ but hand-rounded values.
EFFICIENTNET = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def scale_stages(stages, width: float = 1.0, depth: float = 1.0, divisor: int = 8) -> tuple[Stage, ...]:
    """The block table after width and depth scaling, with the reference rounding rules."""
    return tuple(Stage(s.expand, s.kernel, s.stride, round_filters(s.channels, width, divisor),
                       round_repeats(s.repeats, depth)) for s in stages)


class EfficientNet(nn.Module):
    """An EfficientNet from a block table and (width, depth) coefficients.

    stem (3×3 conv, ``stem`` channels, stride ``stem_stride``) → MBConv stages → 1×1 conv to
    ``head`` channels → global average pool → dropout → linear. ``stem`` and ``head`` are scaled
    by the width like every stage. Stochastic depth grows linearly with the block index, from 0
    to ``drop_connect`` (exclusive) at the last block. ``divisor`` is the channel rounding step
    (8 as in the paper; small networks for CPU experiments use a finer one).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 depth: float = 1.0, dropout: float = 0.2, stages=B0_STAGES, stem: int = 32,
                 head: int = 1280, stem_stride: int = 2, drop_connect: float = 0.2,
                 divisor: int = 8, bn_eps: float = 1e-5):
        super().__init__()
        if width <= 0 or depth <= 0:
            raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
        self.width, self.depth = width, depth
        self.stages = scale_stages(stages, width, depth, divisor)
        c = round_filters(stem, width, divisor)
        self.stem = ConvBNAct(in_channels, c, 3, stem_stride, bn_eps=bn_eps)
        total, index, blocks = sum(s.repeats for s in self.stages), 0, []
        for s in self.stages:
            stage = []
            for r in range(s.repeats):
                stage.append(MBConv(c, s.channels, s.expand, s.kernel, s.stride if r == 0 else 1,
                                    drop_prob=drop_connect * index / total, bn_eps=bn_eps))
                c, index = s.channels, index + 1
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        head_channels = round_filters(head, width, divisor)
        self.head = ConvBNAct(c, head_channels, 1, bn_eps=bn_eps)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_channels, num_classes))
        if not self.classifier[1].weight.is_meta:  # shapes only on the meta device: nothing to draw
            _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def count_macs(model: EfficientNet, resolution: int) -> int:
    """Multiply-adds of one forward pass at ``resolution``×``resolution``, counted from the layer
    shapes without running the network (equal to ``cnnlib.macs``, which traces it — tested;
    convolutions and the classifier only, like FlopCounterMode). Fast enough for a slider."""
    se_convs = {id(c) for m in model.modules() if isinstance(m, SqueezeExcite) for c in (m.reduce, m.expand)}
    size, total = resolution, 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            per_pixel = m.out_channels * (m.in_channels // m.groups) * k * k
            if id(m) in se_convs:   # squeeze-excitation works on the pooled 1×1 map
                total += per_pixel
                continue
            size = (size + 2 * p - k) // s + 1
            total += size * size * per_pixel
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def _init(model: nn.Module) -> None:
    """The reference initialization: He (fan-out) for convolutions, uniform ±1/√out for the
    classifier, BatchNorm at the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def resolution(name: str) -> int:
    """The input resolution EfficientNet-``name`` (b0 … b7) was trained and evaluated at."""
    return EFFICIENTNET[_key(name)][2]


def _key(name: str) -> str:
    key = name.lower().removeprefix("efficientnet_").removeprefix("efficientnet-")
    if key not in EFFICIENTNET:
        raise ValueError(f"unknown EfficientNet {name!r}; choose one of {', '.join(EFFICIENTNET)}")
    return key


def efficientnet(name: str = "b0", num_classes: int = 1000, in_channels: int = 3) -> EfficientNet:
    """EfficientNet-B0 … B7 (``name`` "b0" … "b7") with the released (width, depth, dropout).
    B5–B7 use BatchNorm ε = 10⁻³ as in torchvision (no effect on the parameter count)."""
    width, depth, _, dropout = EFFICIENTNET[_key(name)]
    eps = 1e-3 if _key(name) in ("b5", "b6", "b7") else 1e-5
    return EfficientNet(num_classes, in_channels, width, depth, dropout, bn_eps=eps)


def _factory(key: str):
    def build(num_classes: int = 1000, in_channels: int = 3) -> EfficientNet:
        return efficientnet(key, num_classes, in_channels)
    w, d, r, _ = EFFICIENTNET[key]
    build.__name__ = f"efficientnet_{key}"
    build.__doc__ = f"EfficientNet-{key.upper()} (width {w}, depth {d}, trained at {r}×{r}); equals torchvision's."
    return build


for _key_name in EFFICIENTNET:
    register(_factory(_key_name))


# --------------------------------------------------------------------------------------------
# A small base network for CPU scaling experiments
# --------------------------------------------------------------------------------------------

# Three MBConv stages for tiny images (the digits' 8×8, CIFAR's 32×32): a stride-1 stem, two
# downsamplings, few channels — deliberately too small, so that scaling it up pays off. With so
# few channels, widths are rounded to multiples of 2 instead of 8.
MINI_STAGES = (
    Stage(1, 3, 1, 4, 1),
    Stage(4, 3, 2, 8, 1),
    Stage(4, 5, 2, 12, 1),
)


@register
def efficientnet_mini(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                      depth: float = 1.0) -> EfficientNet:
    """A three-stage EfficientNet for small images (stem 8, head 32 channels, stride-1 stem,
    channel rounding to multiples of 2, no dropout or stochastic depth): the base network of the
    lecture's scaling experiments, which scale its ``width`` and ``depth``."""
    return EfficientNet(num_classes, in_channels, width, depth, dropout=0.0, stages=MINI_STAGES,
                        stem=8, head=32, stem_stride=1, drop_connect=0.0, divisor=2)


# --------------------------------------------------------------------------------------------
# Compound-scaling coefficients
# --------------------------------------------------------------------------------------------


def constrained_grid(alphas, betas, target: float = 2.0) -> list[tuple[float, float, float]]:
    """Candidates of the compound-scaling grid search (Sec. 3.3, step 1): every (α, β) of the
    grid with γ solved from the constraint α·β²·γ² = ``target``, kept when γ ≥ 1."""
    out = []
    for a in alphas:
        for b in betas:
            if a < 1 or b < 1:
                raise ValueError(f"α and β must be ≥ 1, got {a}, {b}")
            g = math.sqrt(target / (a * b * b))
            if g >= 1:
                out.append((a, b, g))
    return out
