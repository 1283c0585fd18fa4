"""Residual networks as ensembles of paths: lesion studies and path statistics (Veit et al. 2016).

Unrolling ``y_i = y_{i−1} + f_i(y_{i−1})`` over n blocks writes a ResNet as a sum over
2ⁿ paths — each block is either entered (through its residual branch f_i) or skipped (through
its shortcut). The number of branches a path enters is its *length*; over all 2ⁿ paths the
length is Binomial(n, ½) distributed (Veit et al., Sec. 3). If the paths behave like an
ensemble, deleting one block only removes half the paths and the network should keep working,
while deleting a layer of a plain network breaks its only path.

The block functions work on any network with the course's ResNet shape (``cnnlib.models.resnet``):
``net.stem``, ``net.blocks`` (one flat ``nn.Sequential``) and ``net.head``, each block having
``.residual``, ``.shortcut`` (``None`` in a plain net) and ``.downsample``. A "plain" ResNet block
is two convolution layers; the layer functions delete single layers of a VGG-style network
(Veit et al.'s plain baseline), whose ``net.features`` is one ``nn.Sequential`` of convolutions,
BatchNorm, ReLU and pooling (the VGG models of ``cnnlib.models.classic``).

* ``delete_blocks`` — a block becomes what its shortcut computes (Sec. 4.1). A downsampling
  block cannot become the identity: its shortcut (zero padding or projection) is kept, and
  in a plain net, which has none, a parameter-free zero-padding shortcut stands in for it.
  Either way these blocks are reported (``downsample``) so plots can mark them.
* ``reorder_blocks`` / ``random_order`` — permute interchangeable blocks (Sec. 4.3);
* ``single_deletions``, ``multiple_deletions``, ``reorderings`` — the three lesion experiments;
* ``conv_layers``, ``delete_layers``, ``single_layer_deletions`` — the same for the layers of a
  VGG-style network: a layer that keeps the shape of its input becomes the identity, the others
  are reported as not deletable;
* ``path_length_distribution`` — Binomial(n, ½);
* ``path_gradient`` / ``path_gradients`` — the gradient that flows along one path, and its
  magnitude per path length measured on a trained network (Sec. 5).
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .models import eval_mode
from .models.resnet import PreActBlock, ZeroPadShortcut

# --------------------------------------------------------------------------------------------
# Blocks: what is deletable, what is interchangeable
# --------------------------------------------------------------------------------------------


def _blocks(net: nn.Module) -> nn.Sequential:
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not all(
            hasattr(b, "residual") and hasattr(b, "shortcut") and hasattr(b, "downsample")
            for b in blocks):
        raise ValueError("lesion studies need the course's ResNet shape: net.stem, net.blocks "
                         "(one nn.Sequential of blocks with .residual, .shortcut, .downsample) "
                         "and net.head (see cnnlib.models.resnet)")
    return blocks


def _convs(block: nn.Module) -> list[nn.Conv2d]:
    return [m for m in block.residual.modules() if isinstance(m, nn.Conv2d)]


def is_plain(net: nn.Module) -> bool:
    """Whether every block lacks a shortcut (the paper's plain baselines)."""
    return all(b.shortcut is None for b in _blocks(net))


def downsampling(net: nn.Module) -> list[bool]:
    """For every block, whether it changes the shape (stride or channel count)."""
    return [bool(b.downsample) for b in _blocks(net)]


def stage_of_blocks(net: nn.Module) -> list[int]:
    """The stage (0, 1, ...) of every block; a new stage starts at each downsampling block after
    the first block."""
    stages, s = [], 0
    for i, down in enumerate(downsampling(net)):
        if down and i > 0:
            s += 1
        stages.append(s)
    return stages


class DeletedBlock(nn.Module):
    """What remains of a residual block whose residual branch was deleted: ``relu(shortcut(x))``
    (the ReLU is the block's own post-addition ReLU, a no-op on the non-negative output of the
    previous block; pre-activation blocks have none). In a plain block, which has no shortcut,
    an identity stands in — or, if the block downsamples, the parameter-free zero-padding
    shortcut (option A, He et al. 2016)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.downsample = bool(block.downsample)
        self.post_relu = not isinstance(block, PreActBlock)
        if block.shortcut is not None:
            self.shortcut = block.shortcut
        elif not self.downsample:
            self.shortcut = nn.Identity()
        else:
            convs = _convs(block)
            stride = math.prod(c.stride[0] for c in convs)
            self.shortcut = ZeroPadShortcut(convs[0].in_channels, convs[-1].out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.shortcut(x)
        return F.relu(out) if self.post_relu else out


def _with_blocks(net: nn.Module, blocks: Sequence[nn.Module]) -> nn.Module:
    """A new network object sharing every module of ``net`` except its block list (no weights
    are copied: a lesioned network costs nothing and never changes the original)."""
    new = copy.copy(net)
    new._modules = dict(net._modules)
    new.blocks = nn.Sequential(*blocks)
    return new


def delete_blocks(net: nn.Module, indices: Sequence[int]) -> nn.Module:
    """``net`` with the blocks at ``indices`` deleted at test time (Veit et al. 2016, Sec. 4.1):
    each becomes a ``DeletedBlock``. The original network is left unchanged."""
    blocks = list(_blocks(net))
    for i in indices:
        if not -len(blocks) <= i < len(blocks):
            raise ValueError(f"block index {i} out of range: the network has {len(blocks)} blocks")
    gone = {i % len(blocks) for i in indices}
    return _with_blocks(net, [DeletedBlock(b) if i in gone else b for i, b in enumerate(blocks)])


def reorder_blocks(net: nn.Module, order: Sequence[int]) -> nn.Module:
    """``net`` with its blocks in a new ``order`` (a permutation of ``range(n)``; Sec. 4.3).

    Only interchangeable blocks may move: non-downsampling blocks of the same stage (the same
    input and output shape). Downsampling blocks stay in place."""
    blocks = list(_blocks(net))
    n = len(blocks)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {list(order)}")
    stages, down = stage_of_blocks(net), downsampling(net)
    for pos, src in enumerate(order):
        if pos != src and (down[pos] or down[src] or stages[pos] != stages[src]):
            raise ValueError(f"block {src} cannot move to position {pos}: only non-downsampling "
                             f"blocks of the same stage are interchangeable")
    return _with_blocks(net, [blocks[i] for i in order])


def kendall_tau(order: Sequence[int]) -> float:
    """Kendall's rank correlation between ``order`` and ``range(n)``: 1 for the original
    order, −1 for the reversed one."""
    n = len(order)
    if n < 2:
        return 1.0
    concordant = sum(1 if order[i] < order[j] else -1 for i in range(n) for j in range(i + 1, n))
    return concordant / (n * (n - 1) / 2)


def random_order(net: nn.Module, swaps: int, seed: int = 0) -> list[int]:
    """The block order after ``swaps`` random swaps of interchangeable blocks (Sec. 4.3)."""
    stages, down = stage_of_blocks(net), downsampling(net)
    groups: dict[int, list[int]] = {}
    for i, (s, d) in enumerate(zip(stages, down)):
        if not d:
            groups.setdefault(s, []).append(i)
    groups = {s: g for s, g in groups.items() if len(g) >= 2}
    order = list(range(len(stages)))
    if swaps and not groups:
        raise ValueError("the network has no two interchangeable blocks to swap")
    rng = random.Random(seed)
    for _ in range(swaps):
        i, j = rng.sample(groups[rng.choice(sorted(groups))], 2)
        order[i], order[j] = order[j], order[i]
    return order


# --------------------------------------------------------------------------------------------
# The lesion experiments
# --------------------------------------------------------------------------------------------


def _error(net: nn.Module, data, split: str) -> float:
    from .train import evaluate

    return 1.0 - evaluate(net, data, split=split)["acc"]


@dataclass
class SingleDeletions:
    """Test error after deleting each block alone; ``baseline`` is the intact network's."""

    baseline: float
    errors: np.ndarray
    downsample: np.ndarray


def single_deletions(net: nn.Module, data, split: str = "test") -> SingleDeletions:
    """Delete every block in turn and measure the error (Veit et al. Fig. 3)."""
    n = len(_blocks(net))
    return SingleDeletions(_error(net, data, split),
                           np.array([_error(delete_blocks(net, [i]), data, split) for i in range(n)]),
                           np.array(downsampling(net)))


def multiple_deletions(net: nn.Module, data, counts: Sequence[int], trials: int = 10,
                       seed: int = 0, include_downsampling: bool = False,
                       spare: Sequence[int] = (), split: str = "test") -> dict[int, np.ndarray]:
    """Error after deleting ``k`` random blocks, ``trials`` times for every ``k`` in ``counts``
    (Veit et al. Fig. 5a). Downsampling blocks are spared unless ``include_downsampling``, and
    so are the blocks in ``spare`` (e.g. a first block that the whole network depends on)."""
    n = len(_blocks(net))
    for i in spare:
        if not -n <= i < n:
            raise ValueError(f"block index {i} out of range: the network has {n} blocks")
    kept = {i % n for i in spare}
    candidates = [i for i, d in enumerate(downsampling(net))
                  if (include_downsampling or not d) and i not in kept]
    rng = random.Random(seed)
    out = {}
    for k in counts:
        if not 0 <= k <= len(candidates):
            raise ValueError(f"cannot delete {k} of the {len(candidates)} deletable blocks")
        runs = 1 if k in (0, len(candidates)) else trials
        out[k] = np.array([_error(delete_blocks(net, rng.sample(candidates, k)), data, split)
                           for _ in range(runs)])
    return out


def reorderings(net: nn.Module, data, swaps: Sequence[int], trials: int = 5, seed: int = 0,
                split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(kendall_tau, error)`` for ``trials`` random re-orderings with each number of swaps
    (Veit et al. Fig. 5b)."""
    taus, errors = [], []
    for s in swaps:
        for t in range(trials if s else 1):
            order = random_order(net, s, seed=seed * 1_000_003 + s * 1009 + t)
            taus.append(kendall_tau(order))
            errors.append(_error(reorder_blocks(net, order), data, split))
    return np.array(taus), np.array(errors)


# --------------------------------------------------------------------------------------------
# Plain convolutional networks (VGG): one layer at a time
# --------------------------------------------------------------------------------------------


@dataclass
class ConvLayer:
    """One layer of a VGG-style ``net.features``: a convolution with the BatchNorm and ReLU that
    follow it, the modules ``start:stop``. ``why_not`` says why the identity cannot stand in for
    it (empty when it can: it keeps the shape of its input)."""

    start: int
    stop: int
    in_channels: int
    out_channels: int
    why_not: str

    @property
    def deletable(self) -> bool:
        return not self.why_not


def _keeps_shape(conv: nn.Conv2d) -> str:
    """Why ``conv`` changes the shape of its input ("" if it does not)."""
    if conv.in_channels != conv.out_channels:
        return f"it changes the number of channels ({conv.in_channels} → {conv.out_channels})"
    if any(s != 1 for s in conv.stride):
        return f"it has stride {tuple(conv.stride)}"
    if isinstance(conv.padding, str):
        same = conv.padding == "same" or all(k == 1 for k in conv.kernel_size)
    else:
        same = all(2 * p == d * (k - 1) for p, d, k in
                   zip(conv.padding, conv.dilation, conv.kernel_size))
    return "" if same else "its padding changes the image size"


def conv_layers(net: nn.Module) -> list[ConvLayer]:
    """The convolution layers of ``net.features`` in order, each with whether it can be deleted."""
    features = getattr(net, "features", None)
    if not isinstance(features, nn.Sequential) or not any(
            isinstance(m, nn.Conv2d) for m in features):
        raise ValueError("layer deletion needs a VGG-style network: net.features, one "
                         "nn.Sequential of Conv2d, BatchNorm2d, ReLU and pooling layers (see "
                         "cnnlib.models.classic.VGG); for a ResNet delete blocks (delete_blocks)")
    modules, layers, i = list(features), [], 0
    while i < len(modules):
        if isinstance(modules[i], nn.Conv2d):
            stop = i + 1
            while stop < len(modules) and isinstance(modules[stop], (nn.BatchNorm2d, nn.ReLU)):
                stop += 1
            conv = modules[i]
            layers.append(ConvLayer(i, stop, conv.in_channels, conv.out_channels, _keeps_shape(conv)))
            i = stop
        else:
            i += 1
    return layers


def delete_layers(net: nn.Module, indices: Sequence[int]) -> nn.Module:
    """``net`` with the convolution layers at ``indices`` (positions in ``conv_layers(net)``)
    deleted at test time: the convolution and its BatchNorm and ReLU become identities (Veit et
    al. 2016, Sec. 4.1, plain network). Only a layer that keeps the shape of its input can be
    deleted; the others are refused with the reason. The original network is left unchanged."""
    layers = conv_layers(net)
    gone = set()
    for i in indices:
        if not -len(layers) <= i < len(layers):
            raise ValueError(f"layer index {i} out of range: the network has {len(layers)} "
                             f"convolution layers")
        layer = layers[i]
        if not layer.deletable:
            raise ValueError(f"layer {i % len(layers)} cannot be deleted: {layer.why_not}, so "
                             f"the identity cannot stand in for it (only a layer that keeps the "
                             f"shape of its input can)")
        gone.update(range(layer.start, layer.stop))
    new = copy.copy(net)
    new._modules = dict(net._modules)
    new.features = nn.Sequential(*[nn.Identity() if j in gone else m
                                   for j, m in enumerate(net.features)])
    return new


@dataclass
class LayerDeletions:
    """Test error after deleting each deletable layer alone: ``layers`` are their positions in
    ``conv_layers``, ``errors`` the errors; ``not_deletable`` maps every other layer to the
    reason; ``baseline`` is the intact network's error."""

    baseline: float
    layers: np.ndarray
    errors: np.ndarray
    not_deletable: dict[int, str]


def single_layer_deletions(net: nn.Module, data, split: str = "test") -> LayerDeletions:
    """Delete every deletable layer of a VGG-style network in turn and measure the error (the
    plain network of Veit et al. Fig. 3)."""
    layers = conv_layers(net)
    ok = [i for i, layer in enumerate(layers) if layer.deletable]
    return LayerDeletions(_error(net, data, split), np.array(ok, dtype=int),
                          np.array([_error(delete_layers(net, [i]), data, split) for i in ok]),
                          {i: layer.why_not for i, layer in enumerate(layers) if not layer.deletable})


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def path_length_distribution(n: int) -> np.ndarray:
    """``p[k] = C(n, k) / 2ⁿ``: the fraction of the 2ⁿ paths through n residual blocks that pass
    through exactly k residual branches — Binomial(n, ½) (Veit et al. Sec. 3)."""
    if n < 0:
        raise ValueError(f"the number of blocks must be non-negative, got {n}")
    return np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64) / 2.0 ** n


class _Unrolled:
    """One forward pass that keeps, for every block, its input and both branch outputs, so the
    gradient can be sent back along any single path."""

    def __init__(self, net: nn.Module, x: Tensor, y: Tensor):
        blocks = _blocks(net)
        if any(b.shortcut is None for b in blocks):
            raise ValueError("a plain network has a single path; path gradients need shortcuts")
        self.inputs, self.residuals, self.shortcuts, self.masks = [], [], [], []
        h = net.stem(x).detach()
        for b in blocks:
            xi = h.detach().requires_grad_(True)
            r, s = b.residual(xi), b.shortcut(xi)
            total = r + s
            post_relu = not isinstance(b, PreActBlock)
            self.inputs.append(xi)
            self.residuals.append(r)
            self.shortcuts.append(s)
            self.masks.append((total > 0).to(total.dtype) if post_relu else None)
            h = F.relu(total) if post_relu else total
        top = h.detach().requires_grad_(True)
        loss = F.cross_entropy(net.head(top), y)
        (self.top_grad,) = torch.autograd.grad(loss, top)

    def gradient(self, path: set[int]) -> Tensor:
        g = self.top_grad
        for i in reversed(range(len(self.inputs))):
            if self.masks[i] is not None:
                g = g * self.masks[i]
            branch = self.residuals[i] if i in path else self.shortcuts[i]
            if branch is self.inputs[i]:  # identity shortcut
                continue
            (g,) = torch.autograd.grad(branch, self.inputs[i], g, retain_graph=True)
        return g


def path_gradient(net: nn.Module, x: Tensor, y: Tensor, path: Sequence[int]) -> Tensor:
    """The part of ∂L/∂(input of the first block) that flows along one path: through the
    residual branches of the blocks in ``path`` and the shortcuts of all others (the post-
    addition ReLU masks apply on every path). Summed over all 2ⁿ paths it is the whole
    gradient — the unrolled view is exact. The network is used in eval mode."""
    with eval_mode(net):
        return _Unrolled(net, x, y).gradient(set(path))


@dataclass
class PathGradients:
    """Gradient magnitude per path length (Veit et al. Fig. 6).

    ``norms[k]`` holds the sampled norms of single-path gradients of length k; ``mean`` their
    average; ``distribution`` the Binomial(n, ½) share of paths of each length; ``total`` =
    ``mean · C(n, k)``, the gradient magnitude all paths of length k carry together (up to
    cancellation between them), normalized to sum to one."""

    lengths: np.ndarray
    norms: list[np.ndarray]
    mean: np.ndarray
    distribution: np.ndarray
    total: np.ndarray

    def effective_range(self, mass: float = 0.9) -> tuple[int, int]:
        """The shortest range of path lengths holding ``mass`` of ``total`` (Veit et al. call
        the paths that carry most of the gradient the *effective paths*)."""
        best = (0, len(self.total) - 1)
        for lo in range(len(self.total)):
            acc = 0.0
            for hi in range(lo, len(self.total)):
                acc += self.total[hi]
                if acc >= mass - 1e-12:  # shares are normalized in floating point
                    if hi - lo < best[1] - best[0]:
                        best = (lo, hi)
                    break
        return int(self.lengths[best[0]]), int(self.lengths[best[1]])


def path_gradients(net: nn.Module, x: Tensor, y: Tensor, samples: int = 20,
                   batch_size: int = 64, lengths: Sequence[int] | None = None,
                   seed: int = 0) -> PathGradients:
    """Sample single-path gradients of every length k (Veit et al. Sec. 5): for each sample draw
    a mini-batch of ``batch_size`` from ``(x, y)`` and k random blocks whose residual branches
    the gradient passes through (it takes the shortcut everywhere else), and record the norm of
    the gradient at the input of the first block."""
    n = len(_blocks(net))
    lengths = list(range(n + 1)) if lengths is None else list(lengths)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    norms = {k: [] for k in lengths}
    with eval_mode(net):
        for _ in range(samples):
            idx = torch.randperm(len(x), generator=g)[:batch_size].to(x.device)
            unrolled = _Unrolled(net, x[idx], y[idx])
            for k in lengths:
                path = set(rng.sample(range(n), k))
                norms[k].append(unrolled.gradient(path).norm().item())
    mean = np.array([np.mean(norms[k]) for k in lengths])
    dist = path_length_distribution(n)[lengths]
    total = mean * dist
    return PathGradients(np.array(lengths), [np.array(norms[k]) for k in lengths], mean, dist,
                         total / total.sum())
