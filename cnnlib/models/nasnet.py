"""The NASNet search space (Zoph, Vasudevan, Shlens & Le 2018): search a *cell*, not a network.

A network is a stack of two kinds of cells — **normal** cells keep the spatial size, **reduction**
cells halve it (their operations on the cell inputs use stride 2) — repeated N times per stage.
A cell takes the outputs of the two previous cells, ``h[i-1]`` and ``h[i]``, and builds B blocks;
block b

1. picks two hidden states among ``h[i-1]``, ``h[i]`` and the outputs of blocks 0..b-1,
2. picks an operation for each of them from the 13-op list of the paper (``OPS``),
3. combines the two results by element-wise addition or by concatenation.

The cell's output concatenates every block output that no later block uses (Sec. 3 of the
paper), unless the genotype lists the blocks to concatenate (DARTS' cells take all of them).
A **genotype** is the list of these choices for the normal and the reduction cell: a small,
hashable, printable value, validated on construction. ``NASNet`` builds a network from it.

Index convention (as in DARTS' ``genotypes.py``): input 0 is ``h[i-1]`` (the older cell),
input 1 is ``h[i]`` (the previous cell), input 2 + k is the output of block k.

Two details the paper leaves open, chosen as in the public NASNet/DARTS code:
* every convolution is ReLU → conv → BatchNorm, and a depthwise-separable convolution is
  applied twice (ReLU, depthwise, pointwise, BN, twice);
* an ``identity`` on a cell input of a reduction cell is a ``FactorizedReduce`` (two offset
  stride-2 1×1 convolutions, concatenated), the only way to halve the size without pooling.
One detail is ours: a block that *concatenates* its two inputs is projected back to C channels
by ReLU → 1×1 conv → BN, so that every hidden state in a cell has the same C channels.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import random
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import register

# The 13 operations of Zoph et al. (2018), Sec. 3 — the lecture's list, in a fixed order.
OPS = ("identity", "conv_1x3_3x1", "conv_1x7_7x1", "dil_conv_3x3",
       "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "conv_1x1", "conv_3x3",
       "avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7")
PARAMETER_FREE = frozenset({"identity", "avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7"})
COMBINERS = ("add", "concat")


# --------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------

class ReLUConvBN(nn.Sequential):
    """ReLU → k×k convolution (optionally dilated) → BatchNorm, the NASNet convolution unit."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 affine: bool = True):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, dilation * (kernel // 2),
                                              dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class FactorizedConv(nn.Sequential):
    """ReLU → 1×k conv → k×1 conv → BN: a k×k receptive field with 2k instead of k² weights per
    channel pair (Szegedy et al. 2016, "Rethinking the Inception architecture", Sec. 3.2)."""

    def __init__(self, channels: int, kernel: int, stride: int = 1, affine: bool = True):
        p = kernel // 2
        super().__init__(nn.ReLU(),
                         nn.Conv2d(channels, channels, (1, kernel), (1, stride), (0, p), bias=False),
                         nn.Conv2d(channels, channels, (kernel, 1), (stride, 1), (p, 0), bias=False),
                         nn.BatchNorm2d(channels, affine=affine))


class SepConv(nn.Sequential):
    """Depthwise-separable convolution, applied twice as in NASNet: (ReLU → k×k depthwise →
    1×1 pointwise → BN) × 2; only the first depthwise convolution has the stride."""

    def __init__(self, channels: int, kernel: int, stride: int = 1, affine: bool = True):
        layers = []
        for s in (stride, 1):
            layers += [nn.ReLU(),
                       nn.Conv2d(channels, channels, kernel, s, kernel // 2, groups=channels, bias=False),
                       nn.Conv2d(channels, channels, 1, bias=False),
                       nn.BatchNorm2d(channels, affine=affine)]
        super().__init__(*layers)


class FactorizedReduce(nn.Module):
    """Halve the spatial size without losing half the pixels: ReLU, then two stride-2 1×1
    convolutions, one on the input and one on the input shifted by one pixel, concatenated
    along channels, then BN (Zoph et al. 2018's code; DARTS' ``FactorizedReduce``)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # same size as x, moved by one pixel
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], 1))


def make_op(name: str, channels: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """The module for one of ``OPS`` on ``channels`` channels; ``stride`` 2 halves the size
    (rounding up, the same for every op). ``affine=False`` gives BatchNorm without learnable
    scale and shift, as DARTS uses inside its supernet."""
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; the NASNet operations are {', '.join(OPS)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    c = channels
    if name == "identity":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "conv_1x3_3x1":
        return FactorizedConv(c, 3, stride, affine)
    if name == "conv_1x7_7x1":
        return FactorizedConv(c, 7, stride, affine)
    if name == "dil_conv_3x3":
        return ReLUConvBN(c, c, 3, stride, dilation=2, affine=affine)
    if name.startswith("sep_conv_"):   # sep_conv_3x3, _5x5, _7x7
        return SepConv(c, int(name[-1]), stride, affine)
    if name == "conv_1x1":
        return ReLUConvBN(c, c, 1, stride, affine=affine)
    if name == "conv_3x3":
        return ReLUConvBN(c, c, 3, stride, affine=affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    k = int(name[-1])                  # max_pool_3x3, _5x5, _7x7: the last op family left
    return nn.MaxPool2d(k, stride, k // 2)


# --------------------------------------------------------------------------------------------
# Genotypes
# --------------------------------------------------------------------------------------------

def state_name(index: int) -> str:
    """Readable name of hidden state ``index`` of a cell: h[i-1], h[i], b0, b1, ..."""
    return ("h[i-1]", "h[i]")[index] if index < 2 else f"b{index - 2}"


def _is_pair(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2


def _is_index(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Block:
    """One block of a cell: ``ops[0](state inputs[0]) ⊕ ops[1](state inputs[1])`` with ⊕ = ``combine``.

    ``inputs`` is a pair of state indices (ints), ``ops`` a pair of operation names; anything
    else is a ``TypeError``, an unknown operation or combiner a ``ValueError``."""

    inputs: tuple[int, int]
    ops: tuple[str, str]
    combine: str = "add"

    def __post_init__(self):
        if not _is_pair(self.inputs) or not all(_is_index(i) for i in self.inputs):
            raise TypeError(f"a block's inputs must be a pair of state indices (ints), got {self.inputs!r}")
        if not _is_pair(self.ops) or not all(isinstance(op, str) for op in self.ops):
            raise TypeError(f"a block's ops must be a pair of operation names (str), got {self.ops!r}")
        object.__setattr__(self, "inputs", tuple(int(i) for i in self.inputs))
        object.__setattr__(self, "ops", tuple(self.ops))
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown operation {op!r}; the NASNet operations are {', '.join(OPS)}")
        if self.combine not in COMBINERS:
            raise ValueError(f"unknown combiner {self.combine!r}; choose one of {COMBINERS}")

    def __str__(self) -> str:
        sym = " + " if self.combine == "add" else " ‖ "
        return sym.join(f"{op}({state_name(i)})" for op, i in zip(self.ops, self.inputs))


def _allowed_inputs(b: int) -> str:
    """What block ``b`` may read, in words (for error messages)."""
    if b == 0:
        return "0 (h[i-1]) or 1 (h[i]); there is no earlier block"
    if b == 1:
        return "0 (h[i-1]), 1 (h[i]) or 2 (block 0)"
    return f"0 (h[i-1]), 1 (h[i]) or an earlier block (2..{b + 1} for blocks 0..{b - 1})"


def _check_cell(blocks: tuple[Block, ...], kind: str) -> None:
    for b, block in enumerate(blocks):
        for i in block.inputs:
            if not 0 <= i < 2 + b:
                raise ValueError(f"{kind} cell, block {b}: input index {i} is out of range; block {b} "
                                 f"may use {_allowed_inputs(b)}")


def unused_blocks(blocks) -> list[int]:
    """Indices of the blocks no later block reads: the cell concatenates these as its output."""
    used = {i - 2 for block in blocks for i in block.inputs if i >= 2}
    return [b for b in range(len(blocks)) if b not in used]


@dataclass(frozen=True)
class Genotype:
    """The choices that define a NASNet-style network: the normal and the reduction cell.

    Immutable and hashable (usable as a dict key or cache key); ``str`` prints one block per line.
    A cell is a sequence of ``Block``s or of ``(inputs, ops[, combine])`` tuples. Invalid genotypes
    (unknown op, input index out of range, cells of different length) raise ``ValueError`` on
    construction, values of the wrong type ``TypeError``.

    ``normal_concat`` / ``reduce_concat`` say which states the cell's output concatenates, as
    state indices (2 + k for block k, DARTS' ``normal_concat``). ``None`` (the default) is the
    NASNet rule: every block output that no later block uses. DARTS' cells concatenate all
    their blocks, including those another block reads.
    """

    normal: tuple[Block, ...]
    reduce: tuple[Block, ...]
    normal_concat: tuple[int, ...] | None = None
    reduce_concat: tuple[int, ...] | None = None

    def __post_init__(self):
        for kind in ("normal", "reduce"):
            cell = getattr(self, kind)
            if not isinstance(cell, (tuple, list)) or not all(isinstance(b, (Block, tuple, list)) for b in cell):
                raise TypeError(f"the {kind} cell must be a sequence of Blocks or (inputs, ops, combine) "
                                f"tuples, got {cell!r}")
            blocks = tuple(b if isinstance(b, Block) else Block(*b) for b in cell)
            object.__setattr__(self, kind, blocks)
            if not blocks:
                raise ValueError(f"the {kind} cell has no blocks")
            _check_cell(blocks, kind)
        if len(self.normal) != len(self.reduce):
            raise ValueError(f"normal and reduction cells must have the same number of blocks, "
                             f"got {len(self.normal)} and {len(self.reduce)}")
        for kind in ("normal", "reduce"):
            concat = getattr(self, f"{kind}_concat")
            if concat is None:
                continue
            if not isinstance(concat, (tuple, list)) or not all(_is_index(i) for i in concat):
                raise TypeError(f"{kind}_concat must be a sequence of state indices (ints), got {concat!r}")
            concat = tuple(int(i) for i in concat)
            if not concat:
                raise ValueError(f"{kind}_concat is empty: the cell would have no output")
            for i in concat:
                if not 2 <= i < 2 + self.blocks:
                    raise ValueError(f"{kind}_concat: state {i} is not a block output (2..{self.blocks + 1} "
                                     f"for blocks 0..{self.blocks - 1})")
            object.__setattr__(self, f"{kind}_concat", concat)

    @property
    def blocks(self) -> int:
        return len(self.normal)

    def concat(self, kind: str) -> list[int]:
        """The blocks (0-based block indices, not state indices) whose outputs the ``kind`` cell
        concatenates: ``{kind}_concat`` if given, else the unused blocks."""
        if kind not in ("normal", "reduce"):
            raise ValueError(f"kind must be 'normal' or 'reduce', got {kind!r}")
        concat = getattr(self, f"{kind}_concat")
        return unused_blocks(getattr(self, kind)) if concat is None else [i - 2 for i in concat]

    def ops(self) -> list[str]:
        """Every operation of both cells, in order."""
        return [op for cell in (self.normal, self.reduce) for block in cell for op in block.ops]

    def __str__(self) -> str:
        lines = []
        for kind in ("normal", "reduce"):
            blocks = getattr(self, kind)
            out = " ‖ ".join(f"b{b}" for b in self.concat(kind))
            lines.append(f"{kind} cell (output = {out}):")
            lines += [f"  b{b} = {block}" for b, block in enumerate(blocks)]
        return "\n".join(lines)


def from_darts(normal, reduce, combine: str = "add", normal_concat=None, reduce_concat=None) -> Genotype:
    """A genotype from DARTS-style lists ``[(op, input), (op, input), ...]`` (two per block) and,
    optionally, DARTS' ``normal_concat`` / ``reduce_concat`` (state indices; None: the unused blocks)."""
    def cell(pairs):
        names = {"skip_connect": "identity", "conv_7x1_1x7": "conv_1x7_7x1"}
        pairs = [(names.get(op, op), i) for op, i in pairs]
        return tuple(Block((a[1], b[1]), (a[0], b[0]), combine) for a, b in zip(pairs[::2], pairs[1::2]))
    return Genotype(cell(normal), cell(reduce), normal_concat, reduce_concat)


# NASNet-A (Zoph et al. 2018, Fig. 4) and AmoebaNet-A (Real et al. 2019, Fig. 4), as transcribed
# in DARTS' genotypes.py (Liu et al. 2019). Both concatenate exactly their unused blocks.
NASNET_A = from_darts(
    normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("identity", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("identity", 1)],
    reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("identity", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1)])
AMOEBANET_A = from_darts(
    normal=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("identity", 1),
            ("identity", 0), ("avg_pool_3x3", 1)],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_1x7_7x1", 0), ("sep_conv_3x3", 5)])
# The cells DARTS found (Liu et al. 2019), exactly as in its cnn/genotypes.py (quark0/darts, from
# commit a00cad0 on): DARTS_V1 is the cell of the first code release (named "DARTS" there), DARTS_V2
# the one a later commit added ("new genotypes obtained by rerunning the experiments") and made
# the default (``DARTS = DARTS_V2``), the cell usually meant by "the DARTS cell". Four blocks;
# DARTS concatenates all four block outputs (states 2..5), also those another block reads, hence
# the explicit concat. ``dil_conv_3x3`` is built here as the NASNet op (a dilated full 3×3
# convolution); DARTS' own is a dilated depthwise-separable one.
DARTS_V1 = from_darts(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5])
DARTS_V2 = from_darts(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])
DARTS = DARTS_V2


# --------------------------------------------------------------------------------------------
# The search space: sampling, mutation, size
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchSpace:
    """Cells of ``blocks`` blocks whose operations come from ``ops`` and combiners from ``combiners``.

    ``NASNET_SPACE`` is the paper's (B = 5, 13 operations, add or concat). Smaller spaces (fewer
    blocks or operations) make searches affordable on a CPU.
    """

    blocks: int = 5
    ops: tuple[str, ...] = OPS
    combiners: tuple[str, ...] = COMBINERS

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "combiners", tuple(self.combiners))
        if not _is_index(self.blocks) or self.blocks < 1:
            raise ValueError(f"a cell needs a whole number of blocks, at least one, got blocks={self.blocks!r}")
        if not self.ops:
            raise ValueError("the space needs at least one operation")
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown operation {op!r}; the NASNet operations are {', '.join(OPS)}")
        if not self.combiners:
            raise ValueError(f"the space needs at least one combiner out of {COMBINERS}")
        for combine in self.combiners:
            if combine not in COMBINERS:
                raise ValueError(f"unknown combiner {combine!r}; the combiners are {COMBINERS}")

    def validate(self, genotype: Genotype) -> Genotype:
        """Return ``genotype`` if it lies in this space, else raise a ``ValueError`` saying why."""
        if not isinstance(genotype, Genotype):
            raise ValueError(f"expected a Genotype, got {type(genotype).__name__}")
        if genotype.blocks != self.blocks:
            raise ValueError(f"this space has {self.blocks} blocks per cell, the genotype has {genotype.blocks}")
        for kind in ("normal", "reduce"):
            for b, block in enumerate(getattr(genotype, kind)):
                for op in block.ops:
                    if op not in self.ops:
                        raise ValueError(f"{kind} cell, block {b}: operation {op!r} is not in this "
                                         f"space ({', '.join(self.ops)})")
                if block.combine not in self.combiners:
                    raise ValueError(f"{kind} cell, block {b}: combiner {block.combine!r} is not in "
                                     f"this space {self.combiners}")
        return genotype

    def size(self) -> int:
        """The number of distinct genotypes, counting the choices as the NASNet controller makes
        them (ordered input pairs): per cell Π_b (b+2)²·|ops|²·|combiners|, squared for two cells."""
        per_cell = math.prod((b + 2) ** 2 * len(self.ops) ** 2 * len(self.combiners)
                             for b in range(self.blocks))
        return per_cell ** 2

    def _random_block(self, b: int, rng: random.Random) -> Block:
        return Block((rng.randrange(b + 2), rng.randrange(b + 2)),
                     (rng.choice(self.ops), rng.choice(self.ops)), rng.choice(self.combiners))

    def random(self, rng: random.Random | int) -> Genotype:
        """A genotype drawn uniformly from the space (each choice independently); ``rng`` is a
        ``random.Random`` or an int seed."""
        rng = as_rng(rng)
        return Genotype(tuple(self._random_block(b, rng) for b in range(self.blocks)),
                        tuple(self._random_block(b, rng) for b in range(self.blocks)))

    def mutate(self, genotype: Genotype, rng: random.Random | int) -> Genotype:
        """A child that differs from ``genotype`` in exactly one choice (Real et al. 2019, Sec. 3):
        in one cell, one block, either an input ("hidden-state mutation"), an operation ("op
        mutation") or — if the space has several — the combiner, replaced by a different value.
        ``rng`` is a ``random.Random`` or an int seed."""
        rng = as_rng(rng)
        self.validate(genotype)
        kind = rng.choice(("normal", "reduce"))
        cell = list(getattr(genotype, kind))
        b = rng.randrange(len(cell))
        block = cell[b]
        kinds = ["input"] + (["op"] if len(self.ops) > 1 else []) + \
                (["combine"] if len(self.combiners) > 1 else [])
        what, slot = rng.choice(kinds), rng.randrange(2)
        if what == "input":  # block b has b + 2 >= 2 candidate inputs, so another one exists
            inputs = list(block.inputs)
            inputs[slot] = rng.choice([i for i in range(b + 2) if i != inputs[slot]])
            block = Block(tuple(inputs), block.ops, block.combine)
        elif what == "op":
            ops = list(block.ops)
            ops[slot] = rng.choice([o for o in self.ops if o != ops[slot]])
            block = Block(block.inputs, tuple(ops), block.combine)
        else:
            block = Block(block.inputs, block.ops, rng.choice([c for c in self.combiners if c != block.combine]))
        cell[b] = block
        return dataclasses.replace(genotype, **{kind: tuple(cell)})  # keeps the concat choices


NASNET_SPACE = SearchSpace()


def as_rng(rng: random.Random | int) -> random.Random:
    """``rng`` itself if it is a ``random.Random``, a ``random.Random(rng)`` for an int seed."""
    if isinstance(rng, random.Random):
        return rng
    if _is_index(rng):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random or an int seed, got {type(rng).__name__} {rng!r}")


def random_genotype(rng: random.Random | int, space: SearchSpace = NASNET_SPACE) -> Genotype:
    """A random genotype of ``space`` (the paper's space by default); valid by construction."""
    return space.random(rng)


def mutate(genotype: Genotype, rng: random.Random | int, space: SearchSpace = NASNET_SPACE) -> Genotype:
    """One random mutation of ``genotype`` inside ``space``; always a different, valid genotype."""
    return space.mutate(genotype, rng)


# --------------------------------------------------------------------------------------------
# Cells and the network
# --------------------------------------------------------------------------------------------

class Cell(nn.Module):
    """A normal or reduction cell built from a tuple of ``Block``s, on ``channels`` channels.

    Both cell inputs are first brought to ``channels`` channels (1×1 convolutions; a
    ``FactorizedReduce`` for ``h[i-1]`` when the previous cell was a reduction and ``h[i-1]``
    is therefore twice as large). Output: the outputs of the blocks ``concat`` (block indices;
    default: the unused blocks), concatenated.
    """

    def __init__(self, blocks, c_prev_prev: int, c_prev: int, channels: int, reduction: bool,
                 reduction_prev: bool, concat=None):
        super().__init__()
        C = channels
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_prev_prev, C) if reduction_prev else ReLUConvBN(c_prev_prev, C, 1)
        self.pre1 = ReLUConvBN(c_prev, C, 1)
        self.inputs = [block.inputs for block in blocks]
        self.combine = [block.combine for block in blocks]
        self.ops = nn.ModuleList(
            nn.ModuleList(make_op(op, C, 2 if reduction and i < 2 else 1) for op, i in zip(block.ops, block.inputs))
            for block in blocks)
        self.project = nn.ModuleDict({str(b): ReLUConvBN(2 * C, C, 1)
                                      for b, block in enumerate(blocks) if block.combine == "concat"})
        self.concat = unused_blocks(blocks) if concat is None else list(concat)
        self.out_channels = len(self.concat) * C

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for b, ((i, j), (op_i, op_j)) in enumerate(zip(self.inputs, self.ops)):
            x, y = op_i(states[i]), op_j(states[j])
            states.append(x + y if self.combine[b] == "add" else self.project[str(b)](torch.cat([x, y], 1)))
        return torch.cat([states[2 + b] for b in self.concat], 1)


class NASNet(nn.Module):
    """A CIFAR-style NASNet built from a genotype (Zoph et al. 2018, Fig. 2, left):

        stem (3×3 conv) → N normal → reduction → N normal → reduction → N normal → pool → linear

    with ``channels`` channels per hidden state in the first stage, doubled at every reduction.
    "NASNet-A (6 @ 768)" in the paper means N = 6 and 768 channels before the classifier.
    ``stages`` (3 in the paper) sets the number of stages; 2 (one reduction) suits 8×8 images.
    """

    def __init__(self, genotype: Genotype, num_classes: int = 10, in_channels: int = 3,
                 channels: int = 16, cells_per_stage: int = 2, stages: int = 3, stem_multiplier: int = 3):
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise ValueError(f"genotype must be a Genotype, got {type(genotype).__name__}")
        if channels % 2:
            raise ValueError(f"channels must be even (reductions split them in two halves), got {channels}")
        if cells_per_stage < 1 or stages < 1:
            raise ValueError(f"cells_per_stage and stages must be at least 1, got {cells_per_stage}, {stages}")
        self.genotype = genotype
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_stem))
        c_pp, c_p, C = c_stem, c_stem, channels
        cells, reduction_prev = [], False
        for stage in range(stages):
            if stage > 0:
                C *= 2
                cells.append(Cell(genotype.reduce, c_pp, c_p, C, True, reduction_prev, genotype.concat("reduce")))
                c_pp, c_p, reduction_prev = c_p, cells[-1].out_channels, True
            for _ in range(cells_per_stage):
                cells.append(Cell(genotype.normal, c_pp, c_p, C, False, reduction_prev, genotype.concat("normal")))
                c_pp, c_p, reduction_prev = c_p, cells[-1].out_channels, False
        self.cells = nn.ModuleList(cells)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_p, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)


@register
def nasnet(num_classes: int = 10, in_channels: int = 3, genotype: Genotype = NASNET_A,
           channels: int = 16, cells_per_stage: int = 2, stages: int = 3) -> NASNet:
    """A CIFAR-style network from a genotype (NASNet-A's cells by default)."""
    return NASNet(genotype, num_classes, in_channels, channels, cells_per_stage, stages)


def residual_genotype(blocks: int) -> Genotype:
    """A hand-designed baseline in the same space: each block is a 3×3 convolution of the
    previous state plus a skip connection, ``b_k = conv_3x3(b_{k-1}) + identity(b_{k-1})``
    (starting from h[i]) — a chain of residual units (He et al. 2016), in both cells."""
    cell = tuple(Block((1 if b == 0 else b + 1,) * 2, ("conv_3x3", "identity")) for b in range(blocks))
    return Genotype(cell, cell)


def match_channels(genotype: Genotype, params: int, **network) -> int:
    """The even ``channels`` for which ``NASNet(genotype, channels=..., **network)`` has the
    parameter count closest to ``params`` — to compare two cells at equal size."""
    def size(c):
        with torch.device("meta"):
            return sum(p.numel() for p in NASNet(genotype, channels=c, **network).parameters())
    lo, hi = 2, 2
    while size(hi) < params:
        lo, hi = hi, hi * 2
    while hi - lo > 2:  # parameters grow with channels: bisect on even values
        mid = (lo + hi) // 4 * 2
        lo, hi = (mid, hi) if size(mid) < params else (lo, mid)
    return min((lo, hi), key=lambda c: abs(size(c) - params))


# --------------------------------------------------------------------------------------------
# Drawing a cell
# --------------------------------------------------------------------------------------------

def _bezier(p0, pc, p1, t: float):
    """Point at parameter ``t`` of the quadratic Bézier curve p0 → p1 with control point pc."""
    return tuple((1 - t) ** 2 * a + 2 * (1 - t) * t * c + t ** 2 * b for a, c, b in zip(p0, pc, p1))


def _overlap(a, b) -> float:
    """Overlap area of two rectangles (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


WEIGHTED_COLOR, PARAMETER_FREE_COLOR, OUTPUT_COLOR = "#2b6cb0", "#b5651d", "0.55"


def draw_cell(genotype: Genotype, kind: str = "normal", ax=None, title: str | None = None):
    """Draw one cell of ``genotype`` as a DAG: the two cell inputs on the left, the blocks on a
    horizontal chain, each operation as an arrow from its input to its block, coloured and
    labelled by the operation (blue: with weights, brown: parameter-free), ``+``/``‖`` for the
    combiner, and dashed grey arrows into the concatenated output ``h[i+1]``. ``h[i-1]``'s
    arrows arrive at a block from above, ``h[i]``'s from below; every label sits on its arrow
    where it overlaps no other label. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path

    if kind not in ("normal", "reduce"):
        raise ValueError(f"kind must be 'normal' or 'reduce', got {kind!r}")
    blocks = getattr(genotype, kind)
    step, W, H = 2.4, 1.0, 0.5            # column spacing, box width and height (data units)
    pos = {0: (0.0, 1.3), 1: (0.0, -1.3)}
    pos.update({b + 2: (step * (b + 1), 0.0) for b in range(len(blocks))})
    out = (step * (len(blocks) + 1), 0.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.7 * len(blocks) + 2.8, 4.4))
    boxes = []                            # rectangles labels must avoid

    def box(xy, text, color, w=W, h=H):
        x, y = xy
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.1",
                                    fc=color, ec="0.3", lw=1, zorder=3))
        ax.text(x, y, text, ha="center", va="center", fontsize=10, zorder=4)
        boxes.append((x - w / 2, y - h / 2, x + w / 2, y + h / 2))

    box(pos[0], r"$h_{i-1}$", "#d9e8f5")
    box(pos[1], r"$h_i$", "#d9e8f5")
    for b, block in enumerate(blocks):
        box(pos[b + 2], f"b{b}  " + ("+" if block.combine == "add" else "‖"),
            "#fde2c8" if block.combine == "add" else "#e3d7f0")
    box(out, "concat\n" + r"$h_{i+1}$", "#d5efd5", w=1.3, h=0.8)

    edges = []   # (source state, exit side, target xy, entry side, entry offset, bulge, label, color)
    for b, block in enumerate(blocks):
        target = pos[b + 2]
        # h[i-1] arrives from above, h[i] from below; a block input takes the side the other input
        # leaves free (slot 0 above, slot 1 below when both are blocks)
        fixed = {0: +1, 1: -1}
        sides = [fixed.get(i, 0) for i in block.inputs]
        for slot in (0, 1):
            if not sides[slot]:
                other = sides[1 - slot]
                sides[slot] = -other if other else (+1 if slot == 0 else -1)
        same_side = sides[0] == sides[1]
        for slot, (i, op) in enumerate(zip(block.inputs, block.ops)):
            span = (target[0] - pos[i][0]) / step  # columns crossed
            # an arrow from the neighbouring block is straight, unless slot 0 already is
            straight = i >= 2 and span <= 1 and not (slot == 1 and block.inputs[0] == i)
            side = 0 if straight else sides[slot]
            bulge = 0.0 if straight else side * (0.2 + 0.2 * span) * (1.6 if same_side and slot else 1)
            # two arrows on the same side of a block enter it side by side
            entry = (-0.22 + 0.44 * slot) * W if same_side else -0.22 * W
            edges.append((i, 0 if i < 2 else side, target, side, entry, bulge, op,
                          PARAMETER_FREE_COLOR if op in PARAMETER_FREE else WEIGHTED_COLOR))
    for k, b in enumerate(reversed(genotype.concat(kind))):
        span = (out[0] - pos[b + 2][0]) / step
        side = 0 if span <= 1 else (-1) ** k
        edges.append((b + 2, side, out, side, 0.0, side * (0.15 + 0.15 * span), None, OUTPUT_COLOR))

    # arrows leaving the same edge of a box start at different points, the outermost arc first
    exits = {}
    for e, (i, exit_side, *_) in sorted(enumerate(edges), key=lambda e: -abs(e[1][5])):
        exits.setdefault((i, exit_side), []).append(e)
    start = {}
    for (i, exit_side), members in exits.items():
        x, y = pos[i]
        for k, e in enumerate(members):
            f = (k + 0.5) / len(members)              # 0 … 1 along the edge
            if exit_side == 0 and i < 2:              # a cell input's right edge, top to bottom for h[i-1]
                start[e] = (x + W / 2, y + (0.35 - 0.7 * f) * H * (1 if i == 0 else -1))
            elif exit_side == 0:                      # a block's right edge: straight ahead
                start[e] = (x + W / 2, y)
            else:                                     # a block's top or bottom edge, left to right
                start[e] = (x + (0.05 + 0.4 * f) * W, y + exit_side * H / 2)

    curves = []  # (p0, control point, p1, label, color, dashed)
    for e, (i, _, target, side, entry, bulge, label, color) in enumerate(edges):
        w, h = (1.3, 0.8) if target == out else (W, H)
        p1 = (target[0] - w / 2 - 0.02, target[1]) if side == 0 else \
             (target[0] + entry, target[1] + side * (h / 2 + 0.02))
        p0 = start[e]
        pc = ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + 2 * bulge)
        curves.append((p0, pc, p1, label, color, label is None))

    extent = max(abs(_bezier(p0, pc, p1, 0.5)[1]) for p0, pc, p1, *_ in curves)
    xlim, ylim = (-0.7, out[0] + 0.8), (-max(extent, 1.6) - 0.3, max(extent, 1.6) + 0.3)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    # data units per typographic point, to size the labels before anything is drawn
    fig_w, fig_h = ax.figure.get_size_inches()
    bbox = ax.get_position()
    per_pt_x = (xlim[1] - xlim[0]) / (bbox.width * fig_w * 72)
    per_pt_y = (ylim[1] - ylim[0]) / (bbox.height * fig_h * 72)
    placed = []
    for p0, pc, p1, label, color, dashed in curves:
        path = Path([p0, pc, p1], [Path.MOVETO, Path.CURVE3, Path.CURVE3])
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=10, color=color,
                                     lw=1.0 if dashed else 1.3, ls="--" if dashed else "-", zorder=2))
        if label is None:
            continue
        text = label.replace("_", " ")
        half_w, half_h = (0.3 * 7.5 * len(text) + 3) * per_pt_x, 7 * per_pt_y
        best = None
        for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.25, 0.75, 0.2, 0.8):
            x, y = _bezier(p0, pc, p1, t)
            if p0[1] == p1[1] == pc[1]:   # a straight arrow between neighbours: label above it,
                y += H / 2 + half_h + 0.02  # clear of the boxes
            rect = (x - half_w, y - half_h, x + half_w, y + half_h)
            clash = sum(_overlap(rect, r) for r in placed + boxes)
            if best is None or clash < best[0]:
                best = (clash, x, y, rect)
            if clash == 0:
                break
        _, x, y, rect = best
        placed.append(rect)
        ax.text(x, y, text, fontsize=7.5, ha="center", va="center", zorder=5, color=color,
                bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.9))
    ax.axis("off")
    ax.set_title(title or f"{kind} cell", fontsize=11)
    return ax
