"""The classic ImageNet architectures, 1998–2015: LeNet-5, AlexNet, ZFNet, VGG, GoogLeNet.

Each family is one class driven by a small, readable config, with named configurations:

* the **paper** as published (AlexNet with local response normalization and its two-GPU grouped
  convolutions; GoogLeNet with 5×5 branches, LRN and no BatchNorm);
* **torchvision**'s variant where it differs, whose parameter count equals torchvision's exactly
  (its ``alexnet`` is the single-GPU network of Krizhevsky 2014, its ``googlenet`` adds BatchNorm
  and uses 3×3 kernels in the "5×5" branch);
* a **small-input** variant for 32×32 images (digits, CIFAR) so the live experiments run on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from . import register
from .layers import LocalResponseNorm, init_weights

# --------------------------------------------------------------------------------------------
# LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998)
# --------------------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeNet-5 for 32×32 inputs: C1 6@5×5 → S2 → C3 16@5×5 → S4 → C5 120@5×5 → F6 84 → output.

    Faithful in shape and size (61,706 parameters with full C3 connectivity). Simplifications,
    as in most modern re-implementations: C3 connects to all six S2 maps (the paper used a sparse
    table), subsampling is average pooling without the trainable coefficient, and the output is
    a linear layer instead of Euclidean RBF units.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, activation: str = "tanh"):
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), act(), nn.AvgPool2d(2),   # C1, S2
            nn.Conv2d(6, 16, 5), act(), nn.AvgPool2d(2),            # C3, S4
            nn.Conv2d(16, 120, 5), act(),                           # C5
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), act(),
                                        nn.Linear(84, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"LeNet-5 expects 32×32 inputs, got {tuple(x.shape[-2:])}; "
                             f"use data.resize(32)")
        return self.classifier(self.features(x))


@register
def lenet5(num_classes: int = 10, in_channels: int = 1, activation: str = "tanh") -> LeNet5:
    return LeNet5(num_classes, in_channels, activation)


# --------------------------------------------------------------------------------------------
# AlexNet (Krizhevsky, Sutskever & Hinton 2012) and ZFNet (Zeiler & Fergus 2014)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of an AlexNet-style feature extractor."""

    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1      # 2 = split across AlexNet's two GPUs
    lrn: bool = False    # local response normalization after the ReLU
    pool: bool = False   # 3×3 max-pool with stride 2 after it (overlapping pooling)


ALEXNET_CONFIGS = {
    # Krizhevsky et al. 2012, Fig. 2: conv2, conv4 and conv5 see only their own GPU's half.
    "paper": [ConvSpec(96, 11, 4, 2, lrn=True, pool=True), ConvSpec(256, 5, 1, 2, 2, True, True),
              ConvSpec(384, 3, 1, 1), ConvSpec(384, 3, 1, 1, 2), ConvSpec(256, 3, 1, 1, 2, pool=True)],
    # torchvision.models.alexnet: "One weird trick" (Krizhevsky 2014), one GPU, no LRN.
    "torchvision": [ConvSpec(64, 11, 4, 2, pool=True), ConvSpec(192, 5, 1, 2, pool=True),
                    ConvSpec(384, 3, 1, 1), ConvSpec(256, 3, 1, 1), ConvSpec(256, 3, 1, 1, pool=True)],
    # Zeiler & Fergus 2014, Fig. 3: 7×7/2 first layer instead of 11×11/4, stride-2 conv2, one GPU.
    "zfnet": [ConvSpec(96, 7, 2, 1, lrn=True, pool=True), ConvSpec(256, 5, 2, 0, lrn=True, pool=True),
              ConvSpec(384, 3, 1, 1), ConvSpec(384, 3, 1, 1), ConvSpec(256, 3, 1, 1, pool=True)],
    # 32×32 inputs, a quarter of the channels: a large-kernel, strided first layer (5×5/2),
    # LRN and the two-GPU groups kept.
    "small": [ConvSpec(24, 5, 2, 2, lrn=True, pool=True), ConvSpec(64, 5, 1, 2, 2, True, True),
              ConvSpec(96, 3, 1, 1), ConvSpec(96, 3, 1, 1, 2), ConvSpec(64, 3, 1, 1, 2, pool=True)],
    # ZFNet's changes at the same scale: small kernel and stride first (3×3/1), stride-2 conv2.
    "zfnet_small": [ConvSpec(24, 3, 1, 1, lrn=True, pool=True), ConvSpec(64, 5, 2, 2, lrn=True, pool=True),
                    ConvSpec(96, 3, 1, 1), ConvSpec(96, 3, 1, 1), ConvSpec(64, 3, 1, 1, pool=True)],
}


class AlexNet(nn.Module):
    """Five convolutions (ReLU, optional LRN and grouped convolutions, overlapping max-pooling)
    and three fully connected layers with dropout — AlexNet and its refinement ZFNet."""

    def __init__(self, convs: list[ConvSpec], num_classes: int = 1000, in_channels: int = 3,
                 fc: int = 4096, pool_to: int = 6, dropout: float = 0.5):
        super().__init__()
        layers, c = [], in_channels
        for spec in convs:
            if c % spec.groups or spec.out % spec.groups:
                raise ValueError(f"groups={spec.groups} must divide the {c} input and "
                                 f"{spec.out} output channels")
            layers += [nn.Conv2d(c, spec.out, spec.kernel, spec.stride, spec.padding,
                                 groups=spec.groups), nn.ReLU(inplace=True)]
            if spec.lrn:
                layers.append(LocalResponseNorm())
            if spec.pool:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            c = spec.out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_to)  # the identity at the paper's input size
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c * pool_to * pool_to, fc), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(inplace=True),
            nn.Linear(fc, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _alexnet_like(config: str, num_classes: int, in_channels: int, small: bool) -> AlexNet:
    if small:
        return AlexNet(ALEXNET_CONFIGS[config + "_small" if config == "zfnet" else "small"],
                       num_classes, in_channels, fc=256, pool_to=2)
    return AlexNet(ALEXNET_CONFIGS[config], num_classes, in_channels)


@register
def alexnet(num_classes: int = 1000, in_channels: int = 3, variant: str = "paper",
            small: bool = False) -> AlexNet:
    """AlexNet; ``variant`` is ``"paper"`` (LRN, two-GPU groups, 60,965,224 parameters) or
    ``"torchvision"`` (equal to ``torchvision.models.alexnet``); ``small`` for 32×32 inputs."""
    if variant not in ("paper", "torchvision"):
        raise ValueError(f"unknown AlexNet variant {variant!r}; choose 'paper' or 'torchvision'")
    return _alexnet_like(variant, num_classes, in_channels, small)


@register
def zfnet(num_classes: int = 1000, in_channels: int = 3, small: bool = False) -> AlexNet:
    """ZFNet (Zeiler & Fergus 2014): AlexNet with a 7×7/2 first layer and a stride-2 conv2."""
    return _alexnet_like("zfnet", num_classes, in_channels, small)


# --------------------------------------------------------------------------------------------
# VGG (Simonyan & Zisserman 2015)
# --------------------------------------------------------------------------------------------

VGG_CONFIGS = {  # numbers are 3×3 convolutions' channels, "M" a 2×2 max-pool (Table 1, A/B/D/E)
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Stacks of 3×3 convolutions and 2×2 max-pools, then three fully connected layers.

    ``width`` scales every channel count (the small variants use 1/8); ``pool_to`` is the
    spatial size before the classifier (7 at 224×224 as in the paper and torchvision).
    """

    def __init__(self, depth: int = 16, num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = False, width: float = 1.0, fc: int = 4096, pool_to: int = 7,
                 dropout: float = 0.5):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        layers, c = [], in_channels
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = max(1, round(v * width))
            layers.append(nn.Conv2d(c, out, 3, padding=1))
            layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_to)
        self.classifier = nn.Sequential(
            nn.Linear(c * pool_to * pool_to, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg_factory(depth: int):
    def build(num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
              small: bool = False) -> VGG:
        if small:
            return VGG(depth, num_classes, in_channels, batch_norm, width=1 / 8, fc=256, pool_to=1)
        return VGG(depth, num_classes, in_channels, batch_norm)
    build.__name__ = f"vgg{depth}"
    build.__doc__ = (f"VGG-{depth} (configuration {'ABDE'[sorted(VGG_CONFIGS).index(depth)]} of "
                     f"Simonyan & Zisserman); equals torchvision's vgg{depth}[_bn] at full size.")
    return build


for _depth in VGG_CONFIGS:
    register(_vgg_factory(_depth))


# --------------------------------------------------------------------------------------------
# GoogLeNet / Inception v1 (Szegedy et al. 2015)
# --------------------------------------------------------------------------------------------

# Table 1 of the paper: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj; "M" = max-pool.
INCEPTION_TABLE = [
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)), "M",
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)), "M",
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
]


class ConvReLU(nn.Sequential):
    """Convolution + ReLU, with BatchNorm in between (and no conv bias) if ``batch_norm``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 batch_norm: bool = False):
        if batch_norm:  # torchvision's BasicConv2d
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                             nn.BatchNorm2d(cout, eps=0.001), nn.ReLU(inplace=True))
        else:
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """The Inception module: 1×1, 1×1→3×3, 1×1→5×5 and 3×3-max-pool→1×1 branches, concatenated.

    The 1×1 convolutions before the 3×3 and 5×5 ones are per-pixel linear maps that shrink the
    channel count, which is what makes the module affordable (Szegedy et al. 2015, Sec. 4).
    """

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int,
                 batch_norm: bool = False, big_kernel: int = 5):
        super().__init__()
        self.branch1 = ConvReLU(cin, c1, 1, batch_norm=batch_norm)
        self.branch2 = nn.Sequential(ConvReLU(cin, c3r, 1, batch_norm=batch_norm),
                                     ConvReLU(c3r, c3, 3, padding=1, batch_norm=batch_norm))
        self.branch3 = nn.Sequential(ConvReLU(cin, c5r, 1, batch_norm=batch_norm),
                                     ConvReLU(c5r, c5, big_kernel, padding=big_kernel // 2,
                                              batch_norm=batch_norm))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     ConvReLU(cin, cp, 1, batch_norm=batch_norm))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class NaiveInception(nn.Module):
    """The naive Inception module of Fig. 2(a): 1×1, 3×3 and 5×5 convolutions and a 3×3 max-pool
    on the full input, concatenated — no 1×1 reductions, so the pool branch passes every input
    channel through and the module is both expensive and ever wider. For comparison only."""

    def __init__(self, cin: int, c1: int, c3: int, c5: int):
        super().__init__()
        self.branch1 = nn.Conv2d(cin, c1, 1)
        self.branch3 = nn.Conv2d(cin, c3, 3, padding=1)
        self.branch5 = nn.Conv2d(cin, c5, 5, padding=2)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.out_channels = c1 + c3 + c5 + cin

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x).relu(), self.branch3(x).relu(), self.branch5(x).relu(),
                          self.pool(x)], 1)


class AuxClassifier(nn.Module):
    """The auxiliary classifier attached to 4a and 4d during training (Sec. 5): average pool to
    4×4, 1×1 conv to 128 channels, FC 1024, dropout 0.7, FC to the classes."""

    def __init__(self, cin: int, num_classes: int, batch_norm: bool = False):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = ConvReLU(cin, 128, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(128 * 16, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """GoogLeNet: a stem, nine Inception modules (Table 1), global average pooling, one FC layer.

    ``width`` scales every channel count; ``small_input`` replaces the 224×224 stem
    (7×7/2 conv, 1×1 and 3×3 convs, two max-pools, LRN) by one 3×3 convolution and one max-pool,
    for 32×32 images. In training mode with ``aux_logits`` the forward pass returns
    ``(logits, aux1, aux2)``; in eval mode only the logits.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
                 big_kernel: int = 5, lrn: bool = True, aux_logits: bool = True,
                 width: float = 1.0, small_input: bool = False, dropout: float = 0.4):
        super().__init__()

        def w(c):
            return max(1, round(c * width))

        if small_input:
            self.stem = nn.Sequential(ConvReLU(in_channels, w(192), 3, padding=1, batch_norm=batch_norm),
                                      nn.MaxPool2d(3, 2, ceil_mode=True))
        else:
            pool = [nn.MaxPool2d(3, 2, ceil_mode=True)]
            norm = [LocalResponseNorm()] if lrn else []
            self.stem = nn.Sequential(
                ConvReLU(in_channels, w(64), 7, 2, 3, batch_norm), *pool, *norm,
                ConvReLU(w(64), w(64), 1, batch_norm=batch_norm),
                ConvReLU(w(64), w(192), 3, padding=1, batch_norm=batch_norm), *norm,
                nn.MaxPool2d(3, 2, ceil_mode=True))
        blocks, c = {}, w(192)
        for i, entry in enumerate(INCEPTION_TABLE):
            if entry == "M":
                blocks[f"pool{i}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
                continue
            name, channels = entry
            blocks[name] = Inception(c, *map(w, channels), batch_norm=batch_norm, big_kernel=big_kernel)
            c = blocks[name].out_channels
        self.inception = nn.ModuleDict(blocks)
        self.aux = nn.ModuleDict({
            "4a": AuxClassifier(self.inception["4a"].out_channels, num_classes, batch_norm),
            "4d": AuxClassifier(self.inception["4d"].out_channels, num_classes, batch_norm),
        }) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: Tensor):
        x = self.stem(x)
        aux_out = []
        for name, block in self.inception.items():
            x = block(x)
            if self.aux is not None and self.training and name in self.aux:
                aux_out.append(self.aux[name](x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return (logits, *aux_out) if aux_out else logits


GOOGLENET_VARIANTS = {
    "paper": dict(batch_norm=False, big_kernel=5, lrn=True),
    "torchvision": dict(batch_norm=True, big_kernel=3, lrn=False),
}


@register
def googlenet(num_classes: int = 1000, in_channels: int = 3, variant: str = "paper",
              aux_logits: bool = True, small: bool = False) -> GoogLeNet:
    """GoogLeNet; ``variant`` ``"paper"`` (5×5 branches, LRN, no BN) or ``"torchvision"``
    (BatchNorm, 3×3 in the "5×5" branch; equal to ``torchvision.models.googlenet``).
    ``small`` builds an eighth-width, no-aux version for 32×32 inputs."""
    if variant not in GOOGLENET_VARIANTS:
        raise ValueError(f"unknown GoogLeNet variant {variant!r}; choose one of "
                         f"{sorted(GOOGLENET_VARIANTS)}")
    if small:
        return GoogLeNet(num_classes, in_channels, aux_logits=False, width=1 / 8, small_input=True,
                         **GOOGLENET_VARIANTS[variant])
    return GoogLeNet(num_classes, in_channels, aux_logits=aux_logits, **GOOGLENET_VARIANTS[variant])
