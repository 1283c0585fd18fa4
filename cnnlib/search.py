"""Neural architecture search over the NASNet cell space: random search, regularized evolution
and a first-order differentiable (DARTS-style) search, under one budget and one proxy task.

Every strategy takes

* a ``SearchSpace`` (``cnnlib.models.nasnet``): which cells are allowed;
* a ``ProxyTask``: how a candidate is judged — a short training of a small network built from
  it, on part of the training set, scored on a held-out *validation* part (never the test set);
* a ``Budget``: how many evaluations (architectures; for DARTS, supernet epochs) and/or how
  many seconds of compute,

and returns a ``SearchHistory``: one ``Trial(genotype, accuracy, cost, params)`` per evaluation,
in order, ready for best-so-far curves. Proxy evaluations and whole DARTS runs are cached on
disk (``cnnlib.cache``), so re-running a search is instant. The cost of a trial is the compute
it took when it was first measured (``compute_clock``: CPU time of this process on the CPU,
synchronized wall time on a GPU), stored with the cached result, so re-runs report the same
costs and a busy machine does not inflate them the way wall-clock time would.

References: Bergstra & Bengio (2012), random search; Real, Aggarwal, Huang & Le (2019),
regularized ("aging") evolution, Algorithm 1; Liu, Simonyan & Yang (2019), DARTS, Sec. 2.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import random
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import cache as _cache
from .data import ImageData, batches
from .measure import count_params
from .models.nasnet import (PARAMETER_FREE, Block, FactorizedReduce, Genotype, NASNet, ReLUConvBN,
                            SearchSpace, make_op)
from .train import evaluate, fit

# --------------------------------------------------------------------------------------------
# Budget, trials, histories
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How much search is allowed: at most ``evaluations`` evaluations and/or ``seconds`` of
    summed evaluation cost (``Trial.cost``). A search stops before the first evaluation that
    would start with either limit reached.

    What one evaluation is depends on the strategy: ``random_search`` and
    ``regularized_evolution`` evaluate one *architecture* (a proxy training) at a time;
    ``darts_search`` trains a single supernet, and for it ``evaluations`` counts *supernet
    epochs* (one ``Trial`` per epoch: the genotype discretized after it). The same Budget thus
    means the same number of trials, not the same compute: compare strategies by cost too."""

    evaluations: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if self.evaluations is None and self.seconds is None:
            raise ValueError("a Budget needs evaluations=..., seconds=... or both")
        if self.evaluations is not None and (isinstance(self.evaluations, bool)
                                             or not isinstance(self.evaluations, numbers.Integral)
                                             or self.evaluations < 1):
            raise ValueError(f"evaluations must be a whole number, at least 1, got {self.evaluations!r}")
        if self.seconds is not None and (isinstance(self.seconds, bool) or not isinstance(self.seconds, numbers.Real)
                                         or not 0 < self.seconds < math.inf):
            raise ValueError(f"seconds must be a positive, finite number, got {self.seconds!r}")

    def allows(self, evaluations: int, seconds: float) -> bool:
        """Whether another evaluation may start after ``evaluations`` costing ``seconds``."""
        return ((self.evaluations is None or evaluations < self.evaluations)
                and (self.seconds is None or seconds < self.seconds))


@dataclass(frozen=True)
class Trial:
    """One evaluated architecture: validation ``accuracy`` after the proxy training, its
    ``cost`` in seconds of compute (``compute_clock``) and the proxy network's parameter count."""

    genotype: Genotype
    accuracy: float
    cost: float
    params: int


@dataclass
class SearchHistory:
    """The trials of one search run, in evaluation order; ``unit`` says what one trial is
    ("architectures" for random search and evolution, "supernet epochs" for DARTS)."""

    strategy: str
    trials: list[Trial] = field(default_factory=list)
    unit: str = "architectures"

    def append(self, trial: Trial) -> None:
        self.trials.append(trial)

    def __len__(self) -> int:
        return len(self.trials)

    def __iter__(self):
        return iter(self.trials)

    @property
    def total_cost(self) -> float:
        return sum(t.cost for t in self.trials)

    @property
    def best(self) -> Trial:
        if not self.trials:
            raise ValueError(f"{self.strategy}: no architecture was evaluated")
        return max(self.trials, key=lambda t: t.accuracy)

    def best_so_far(self) -> list[float]:
        """Best validation accuracy after each evaluation (the curve NAS papers plot)."""
        out, best = [], -math.inf
        for t in self.trials:
            best = max(best, t.accuracy)
            out.append(best)
        return out

    def mean_accuracy(self, start: int = 0) -> float:
        """Mean validation accuracy of the trials from the ``start``-th on: where a strategy spent
        its budget. Unlike the best accuracy (the maximum of noisy scores, inflated by the luckiest
        proxy training), a mean over many trials is barely moved by any one of them."""
        accs = [t.accuracy for t in self.trials[start:]]
        if not accs:
            raise ValueError(f"{self.strategy}: no trial from evaluation {start + 1} on "
                             f"({len(self)} {self.unit} in all)")
        return sum(accs) / len(accs)

    def cumulative_cost(self) -> list[float]:
        return list(_accumulate(t.cost for t in self.trials))

    def __repr__(self) -> str:
        if not self.trials:
            return f"SearchHistory({self.strategy}, empty)"
        return (f"SearchHistory({self.strategy}: {len(self)} {self.unit}, best val acc "
                f"{self.best.accuracy:.1%}, {self.total_cost:.1f}s of compute)")


def _accumulate(values):
    total = 0.0
    for v in values:
        total += v
        yield total


def compute_clock(device: torch.device) -> float:
    """The clock search costs are measured with, in seconds. On the CPU: this process's CPU
    time (``time.process_time``, summed over its threads, as GPU-days sum over GPUs), which
    other programs on a busy machine do not inflate the way they inflate wall time. On a GPU: wall time after ``torch.cuda.synchronize``, i.e. GPU-seconds of a
    device that does nothing else. Take differences of two readings."""
    if device.type == "cpu":
        return time.process_time()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# --------------------------------------------------------------------------------------------
# The proxy task: short training on a subset, scored on a validation split
# --------------------------------------------------------------------------------------------


def validation_split(data: ImageData, val_size: int, train_size: int | None = None,
                     seed: int = 0) -> ImageData:
    """An ``ImageData`` whose *test* split is ``val_size`` images held out of ``data``'s
    training set and whose training split is (up to ``train_size`` of) the rest. The real
    test set is not touched: architectures chosen on it would be tuned to it."""
    n = len(data.x_train)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1}, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(data.device)
    val, train = order[:val_size], order[val_size:]
    if train_size is not None:
        train = train[:train_size]
    return dataclasses.replace(data, x_train=data.x_train[train], y_train=data.y_train[train],
                               x_test=data.x_train[val], y_test=data.y_train[val])


@dataclass(eq=False)
class ProxyTask:
    """Judge a genotype by a short training: build ``NASNet(genotype, channels, cells_per_stage,
    stages)``, train it ``epochs`` epochs on ``data``'s training split and report accuracy on its
    test split (pass a ``validation_split``). Results are cached by genotype, data and settings,
    together with the cost measured when they were computed (``compute_clock``)."""

    data: ImageData
    channels: int = 8
    cells_per_stage: int = 1
    stages: int = 2
    epochs: int = 3
    lr: float = 0.1
    batch_size: int = 128
    seed: int = 0
    cache: bool = True

    def __post_init__(self):
        self._fingerprint = self.data.fingerprint()

    def settings(self) -> tuple:
        return (self._fingerprint, self.channels, self.cells_per_stage, self.stages, self.epochs,
                self.lr, self.batch_size, self.seed)

    def build(self, genotype: Genotype) -> NASNet:
        torch.manual_seed(self.seed)
        return NASNet(genotype, self.data.num_classes, self.data.in_channels, self.channels,
                      self.cells_per_stage, self.stages)

    def __call__(self, genotype: Genotype) -> Trial:
        def compute():
            start = compute_clock(self.data.device)
            net = self.build(genotype)
            hist = fit(net, self.data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                       seed=self.seed, progress=False, cache=False)
            return {"accuracy": hist.final["test_acc"], "cost": compute_clock(self.data.device) - start,
                    "params": count_params(net)}
        value = (_cache.cached("nas-proxy", (repr(genotype), self.settings()), compute)
                 if self.cache else compute())
        return Trial(genotype, float(value["accuracy"]), float(value["cost"]), int(value["params"]))


# --------------------------------------------------------------------------------------------
# Random search and regularized evolution
# --------------------------------------------------------------------------------------------


def random_search(space: SearchSpace, evaluate, budget: Budget, seed: int = 0) -> SearchHistory:
    """Random search (Bergstra & Bengio 2012): evaluate independent uniform samples of the
    space until the budget is spent. ``evaluate`` maps a genotype to a ``Trial``."""
    rng = random.Random(seed)
    history = SearchHistory("random search")
    while budget.allows(len(history), history.total_cost):
        history.append(evaluate(space.random(rng)))
    return history


def evolution_step(population: deque, space: SearchSpace, evaluate, rng: random.Random,
                   sample_size: int) -> Trial:
    """One cycle of regularized evolution (Real et al. 2019, Algorithm 1): draw ``sample_size``
    members at random, mutate the most accurate of them, evaluate the child, add it to the
    young end of the population and remove the **oldest** member (not the worst)."""
    sample = rng.sample(list(population), sample_size)
    parent = max(sample, key=lambda t: t.accuracy)
    child = evaluate(space.mutate(parent.genotype, rng))
    population.append(child)
    population.popleft()
    return child


def regularized_evolution(space: SearchSpace, evaluate, budget: Budget, population_size: int = 10,
                          sample_size: int = 3, seed: int = 0) -> SearchHistory:
    """Regularized (aging) evolution: a population of ``population_size`` random architectures,
    then ``evolution_step`` until the budget is spent. The initial population is drawn exactly
    as ``random_search`` with the same seed draws its first samples, so the two strategies
    share their first ``population_size`` evaluations (common random numbers) and differ only
    where evolution starts to mutate. With a caching ``evaluate`` (``ProxyTask``) the shared
    evaluations are computed once; each history still lists their cost, as the strategy alone
    would have spent it — count distinct genotypes to get the compute both runs needed."""
    if not 1 <= sample_size <= population_size:
        raise ValueError(f"need 1 <= sample_size <= population_size, got {sample_size}, {population_size}")
    rng = random.Random(seed)
    history = SearchHistory("regularized evolution")
    population: deque = deque()
    while len(population) < population_size and budget.allows(len(history), history.total_cost):
        trial = evaluate(space.random(rng))
        population.append(trial)
        history.append(trial)
    while len(population) == population_size and budget.allows(len(history), history.total_cost):
        history.append(evolution_step(population, space, evaluate, rng, sample_size))
    return history


# --------------------------------------------------------------------------------------------
# DARTS: a differentiable relaxation of the cell (Liu et al. 2019)
# --------------------------------------------------------------------------------------------

ZERO = "zero"


class Zero(nn.Module):
    """DARTS' ``none`` operation: the edge is absent (output zero, with the op's stride)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, ::self.stride, ::self.stride] * 0.0


class MixedOp(nn.Module):
    """Every candidate operation on one edge, mixed by softmax weights (DARTS, Eq. 1):
    ō(x) = Σ_o softmax(α)_o · o(x). BatchNorm without affine parameters, as in DARTS."""

    def __init__(self, ops: tuple[str, ...], channels: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(Zero(stride) if op == ZERO else make_op(op, channels, stride, affine=False)
                                 for op in ops)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    """A DARTS cell: node b = Σ over every earlier state j of MixedOp_{b,j}(state j); the
    output concatenates all B nodes."""

    def __init__(self, ops, blocks: int, c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        C = channels
        self.reduction, self.blocks = reduction, blocks
        self.pre0 = (FactorizedReduce(c_prev_prev, C, affine=False) if reduction_prev
                     else ReLUConvBN(c_prev_prev, C, 1, affine=False))
        self.pre1 = ReLUConvBN(c_prev, C, 1, affine=False)
        self.edges = nn.ModuleList(MixedOp(ops, C, 2 if reduction and j < 2 else 1)
                                   for b in range(blocks) for j in range(b + 2))
        self.out_channels = blocks * C

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states, e = [self.pre0(s0), self.pre1(s1)], 0
        for b in range(self.blocks):
            n = len(states)
            states.append(sum(self.edges[e + j](states[j], weights[e + j]) for j in range(n)))
            e += n
        return torch.cat(states[2:], 1)


def edge_count(blocks: int) -> int:
    """Edges of a DARTS cell with ``blocks`` nodes: node b has b + 2 incoming edges."""
    return sum(b + 2 for b in range(blocks))


class SuperNet(nn.Module):
    """The DARTS one-shot network: NASNet's layout with ``SearchCell``s, whose every edge holds
    all operations; architecture parameters ``alpha_normal`` and ``alpha_reduce`` (one row of
    logits per edge) are shared by all cells of a kind."""

    def __init__(self, ops: tuple[str, ...], blocks: int, num_classes: int, in_channels: int,
                 channels: int = 8, cells_per_stage: int = 1, stages: int = 2):
        super().__init__()
        c_stem = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_stem))
        c_pp, c_p, C, reduction_prev, cells = c_stem, c_stem, channels, False, []
        for stage in range(stages):
            kinds = ([True] if stage > 0 else []) + [False] * cells_per_stage
            for reduction in kinds:
                C = C * 2 if reduction else C
                cells.append(SearchCell(ops, blocks, c_pp, c_p, C, reduction, reduction_prev))
                c_pp, c_p, reduction_prev = c_p, cells[-1].out_channels, reduction
        self.cells = nn.ModuleList(cells)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_p, num_classes))
        shape = (edge_count(blocks), len(ops))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> Tensor:
        w_normal, w_reduce = F.softmax(self.alpha_normal, -1), F.softmax(self.alpha_reduce, -1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.head(s1)


def discretize(alpha: Tensor, ops: tuple[str, ...], blocks: int) -> tuple[Block, ...]:
    """DARTS' derivation rule (Sec. 2.4): for every node keep the two incoming edges whose
    strongest non-zero operation has the largest softmax weight, and on each that operation."""
    weights = F.softmax(alpha.detach().float(), -1)
    keep = [k for k, op in enumerate(ops) if op != ZERO]
    cell, e = [], 0
    for b in range(blocks):
        n = b + 2
        w = weights[e:e + n][:, keep]
        strength, best = w.max(1)
        top = sorted(torch.topk(strength, 2).indices.tolist())
        cell.append(Block(tuple(top), tuple(ops[keep[best[j]]] for j in top), "add"))
        e += n
    return tuple(cell)


def parameter_free_share(genotype: Genotype, cell: str | None = None) -> float:
    """Fraction of a genotype's operations that have no weights (identity and pooling) — the
    ops a collapsing DARTS search drifts to (Liang et al. 2019; Zela et al. 2020)."""
    blocks = genotype.normal + genotype.reduce if cell is None else getattr(genotype, cell)
    ops = [op for b in blocks for op in b.ops]
    return sum(op in PARAMETER_FREE for op in ops) / len(ops)


def genotype_to_plain(genotype: Genotype) -> tuple:
    """Nested tuples of ints and strings (storable in the cache); ``Genotype(*t)`` inverts it."""
    return dataclasses.astuple(genotype)


def darts_search(space: SearchSpace, task: ProxyTask, budget: Budget, *, arch_lr: float = 3e-4,
                 weight_lr: float = 0.025, arch_weight_decay: float = 1e-3, batch_size: int = 64,
                 channels: int | None = None, seed: int = 0) -> tuple[SearchHistory, dict]:
    """First-order DARTS (Liu et al. 2019, Sec. 2.3 with ξ = 0) for at most
    ``budget.evaluations`` **supernet epochs** and/or ``budget.seconds`` of compute.

    The same ``Budget`` as the other strategies, read differently: DARTS evaluates no
    architecture on its own, it trains one supernet, so an "evaluation" is one epoch of it.
    Every epoch the current α is discretized (``discretize``) into a genotype and recorded as
    a ``Trial`` whose accuracy is the *supernet's* validation accuracy and whose cost is that
    epoch's compute (``compute_clock``); the history's ``unit`` is "supernet epochs". The
    weights' learning rate decays by a cosine over ``budget.evaluations`` epochs (with only
    ``seconds``, it is constant).

    The supernet has ``space``'s operations plus ``zero`` on every edge, the proxy task's
    network layout (``channels`` overrides its width: the supernet runs every operation on
    every edge) and data: weights w are trained by SGD on the training split, architecture
    logits α by Adam on the validation split, alternating one step each.

    Returns the history and a dict with the final ``genotype``, the softmax weights of every
    epoch (``weights_normal``/``weights_reduce``, shape epochs × edges × ops) and ``ops``.
    The whole run is cached.
    """
    if "add" not in space.combiners:
        raise ValueError("DARTS sums the edges into a node: the space must allow the 'add' combiner")
    ops = tuple(space.ops) + (ZERO,)
    channels = task.channels if channels is None else channels
    config = ("darts", space, task.settings(), budget, arch_lr, weight_lr, arch_weight_decay, batch_size,
              channels, seed)

    def compute():
        return _darts(space, ops, task, budget, arch_lr, weight_lr, arch_weight_decay, batch_size, channels, seed)

    raw = _cache.cached("nas-darts", config, compute) if task.cache else compute()
    history = SearchHistory("DARTS (first order)",
                            [Trial(Genotype(*g), acc, cost, params) for g, acc, cost, params in raw["trials"]],
                            unit="supernet epochs")
    result = {"genotype": history.trials[-1].genotype, "ops": ops,
              "weights_normal": raw["weights_normal"], "weights_reduce": raw["weights_reduce"]}
    return history, result


def _darts(space, ops, task, budget, arch_lr, weight_lr, arch_weight_decay, batch_size, channels, seed) -> dict:
    torch.manual_seed(seed)
    data = task.data
    net = SuperNet(ops, space.blocks, data.num_classes, data.in_channels, channels,
                   task.cells_per_stage, task.stages).to(data.device)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=weight_lr, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999),
                             weight_decay=arch_weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, min(len(data.x_train), len(data.x_test)) // batch_size)
    epochs = budget.evaluations or 10**9
    # cosine decay of the weights' learning rate over the epochs, when their number is known
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs * steps)
                if budget.evaluations else None)
    trials, w_normal, w_reduce, elapsed = [], [], [], 0.0
    for epoch in range(epochs):
        if not budget.allows(epoch, elapsed):
            break
        start = compute_clock(data.device)
        net.train()
        train = batches(data.x_train, data.y_train, batch_size, shuffle=True, generator=generator, drop_last=True)
        val = batches(data.x_test, data.y_test, batch_size, shuffle=True, generator=generator, drop_last=True)
        for (xt, yt), (xv, yv) in zip(train, val):  # one pass over the smaller split
            a_opt.zero_grad(set_to_none=True)         # α-step on a validation batch (first order)
            F.cross_entropy(net(xv), yv).backward()
            a_opt.step()
            w_opt.zero_grad(set_to_none=True)         # w-step on a training batch
            F.cross_entropy(net(xt), yt).backward()
            nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
            w_opt.step()
            if schedule is not None:
                schedule.step()
        accuracy = evaluate(net, data)["acc"]
        cost = compute_clock(data.device) - start
        elapsed += cost
        genotype = Genotype(discretize(net.alpha_normal, ops, space.blocks),
                            discretize(net.alpha_reduce, ops, space.blocks))
        trials.append((genotype_to_plain(genotype), accuracy, cost, count_params(task.build(genotype))))
        w_normal.append(F.softmax(net.alpha_normal.detach(), -1).cpu())
        w_reduce.append(F.softmax(net.alpha_reduce.detach(), -1).cpu())
    return {"trials": trials, "weights_normal": torch.stack(w_normal), "weights_reduce": torch.stack(w_reduce)}


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _seed_runs(runs) -> list[SearchHistory]:
    """One ``SearchHistory`` or a list of them (one per seed) as a list."""
    return [runs] if isinstance(runs, SearchHistory) else list(runs)


def plot_best_so_far(histories: dict, ax=None, x: str = "evaluations"):
    """Best validation accuracy so far against the number of evaluations (``x="evaluations"``)
    or the compute spent (``x="cost"``); ``histories`` maps a label to one ``SearchHistory`` or
    a list of them (one per seed: thin lines, and their mean as a thick line)."""
    import matplotlib.pyplot as plt
    import numpy as np

    if x not in ("evaluations", "cost"):
        raise ValueError(f"x must be 'evaluations' or 'cost', got {x!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    for label, runs in histories.items():
        runs = _seed_runs(runs)
        color = None
        # several seeds: against evaluations the mean line below carries the label; against cost
        # (no common x to average over) the first seed's line does
        first_label = label if len(runs) == 1 else (f"{label} ({len(runs)} seeds)" if x == "cost" else None)
        for k, run in enumerate(runs):
            xs = range(1, len(run) + 1) if x == "evaluations" else run.cumulative_cost()
            line, = ax.step(list(xs), [100 * a for a in run.best_so_far()], where="post",
                            lw=1 if len(runs) > 1 else 2, alpha=0.45 if len(runs) > 1 else 1, color=color,
                            label=first_label if k == 0 else None)
            color = line.get_color()
        if len(runs) > 1 and x == "evaluations":
            n = min(len(r) for r in runs)
            mean = np.mean([r.best_so_far()[:n] for r in runs], axis=0)
            ax.step(range(1, n + 1), 100 * mean, where="post", lw=2.5, color=color,
                    label=f"{label} (mean of {len(runs)} seeds)")
    ax.set(xlabel="architectures evaluated" if x == "evaluations" else "compute spent (CPU- or GPU-seconds)",
           ylabel="best validation accuracy so far (%)", title="search progress")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_evaluations(histories: dict, start: int = 0, ax=None):
    """Validation accuracy of every evaluated architecture against its place in the search, one
    colour per strategy (``histories`` maps a label to a list of ``SearchHistory``, one per seed),
    with each strategy's mean over the evaluations from the ``start``-th on as a horizontal line:
    what each strategy chose to spend its budget on, not only its luckiest score."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    offsets = np.linspace(-0.15, 0.15, len(histories))
    for (label, runs), dx in zip(histories.items(), offsets):
        runs = _seed_runs(runs)
        xs = [i + 1 + dx for run in runs for i in range(len(run))]
        ys = [100 * t.accuracy for run in runs for t in run]
        dots = ax.scatter(xs, ys, s=14, alpha=0.6)
        n = max(len(r) for r in runs)
        if start < n:
            mean = 100 * np.mean([t.accuracy for run in runs for t in run.trials[start:]])
            ax.hlines(mean, start + 0.5, n + 0.5, color=dots.get_facecolor()[0][:3], lw=2.5,
                      label=f"{label}: mean of evaluations {start + 1}–{n} ({mean:.1f}%)")
    ax.set(xlabel="evaluation number", ylabel="validation accuracy (%)",
           title="every evaluated architecture (all seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_operation_weights(result: dict, ax=None):
    """DARTS: the softmax weight of each operation, averaged over the edges of the normal and
    the reduction cell, per epoch — where the mass goes as the search proceeds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True, sharey=True)
    for a, kind in zip(ax, ("normal", "reduce")):
        w = result[f"weights_{kind}"].mean(1)  # epochs × ops
        epochs = range(1, len(w) + 1)
        for k, op in enumerate(result["ops"]):
            style = "--" if op in PARAMETER_FREE or op == ZERO else "-"
            a.plot(epochs, w[:, k].numpy(), style, marker="o", ms=3, label=op)
        a.set(xlabel="epoch", title=f"{kind} cell: mean softmax(α) per operation")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    ax[0].set_ylabel("weight (dashed: no parameters)")
    ax[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return ax
