"""Building blocks shared by several model families.

Each layer cites the paper and equation it implements.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels (Krizhevsky et al. 2012, Sec. 3.3):

        b^i = a^i / (k + α · Σ_{j=max(0, i−n/2)}^{min(N−1, i+n/2)} (a^j)²)^β

    with the paper's constants k=2, n=5, α=1e-4, β=0.75 as defaults. Note the paper's α
    multiplies the plain sum; ``torch.nn.LocalResponseNorm`` divides its α by n, so this layer
    equals ``nn.LocalResponseNorm(n, alpha=α·n, beta=β, k=k)`` (checked in the tests).
    """

    def __init__(self, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.n, self.alpha, self.beta, self.k = n, alpha, beta, k

    def forward(self, a: Tensor) -> Tensor:
        channels, half = a.shape[1], self.n // 2
        squares = F.pad(a * a, (0, 0, 0, 0, half, self.n - 1 - half))  # zero-pad the channel axis
        window_sum = sum(squares[:, i:i + channels] for i in range(self.n))
        return a / (self.k + self.alpha * window_sum).pow(self.beta)

    def extra_repr(self) -> str:
        return f"n={self.n}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def init_weights(model: nn.Module) -> None:
    """He initialization (He et al. 2015, "Delving deep into rectifiers") for convolutions and
    linear layers, zero biases, BatchNorm at the identity. Without it, deep ReLU nets without
    BatchNorm (AlexNet, VGG, GoogLeNet) start with vanishing activations and barely move."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # fan-in: keeps forward variance
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
