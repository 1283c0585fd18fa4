"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin").

Hidden units can be permuted without changing the function a network computes.
``permutation_spec`` finds those symmetries by tracing the network with ``torch.fx``;
``weight_matching`` permutes network B's units to line up with network A's weights (a linear
assignment problem per group of units, Sec. 3.2 and Alg. 1); ``permute`` applies a permutation
and ``align`` does all three. After weight matching even the *straight line* between two
networks is nearly barrier-free for wide nets.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..landscape import Point
from .paths import _point


@dataclass
class PermutationGroup:
    """Hidden units that may be permuted together without changing the network's function.

    ``slots`` maps ``(name, axis)`` of a parameter or buffer to a LongTensor (size, k): the k
    positions along that axis that belong to each of the ``size`` units (k > 1 where a
    convolution's channel was flattened into a linear layer's inputs)."""

    name: str
    size: int
    slots: dict

    def __repr__(self) -> str:
        return f"PermutationGroup({self.name!r}, {self.size} units, {len(self.slots)} tensor axes)"


@dataclass
class PermutationSpec:
    """Every permutation symmetry of a network, as found by ``permutation_spec``."""

    groups: list
    params: set

    def __getitem__(self, name: str) -> PermutationGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def __repr__(self) -> str:
        body = ", ".join(f"{g.name}: {g.size}" for g in self.groups)
        return f"PermutationSpec({len(self.groups)} groups — {body})"


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = [0]  # unit 0 is "fixed": the input and output channels

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, u: int) -> int:
        root = u
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[u] != root:
            self.parent[u], u = root, self.parent[u]
        return root

    def union(self, a, b) -> None:
        for u, v in zip(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)):
            ru, rv = self.find(int(u)), self.find(int(v))
            if ru != rv:
                lo, hi = min(ru, rv), max(ru, rv)  # the fixed unit 0 always stays a root
                self.parent[hi] = lo


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                 nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d,
                 nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.MaxPool1d, nn.AvgPool1d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid,
                   torch.tanh, F.tanh, F.leaky_relu, F.hardswish, F.elu, F.dropout, F.max_pool2d,
                   F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
                   torch.clone}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "to",
                 "detach"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
                torch.mul, torch.div, operator.iadd, operator.imul}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}


def permutation_spec(model: nn.Module, example: Tensor) -> PermutationSpec:
    """Find which hidden units of ``model`` can be permuted without changing its function.

    The network is traced with ``torch.fx`` and every tensor's channels (dimension 1) are
    labelled with *units*: a convolution or linear layer creates new units for its outputs;
    BatchNorm, activations, pooling and dropout pass them on; an addition or multiplication of
    two tensors ties their units together (a residual stream shares one permutation across all
    the blocks it runs through, as Ainsworth et al. 2023 note for ResNets); flattening repeats a channel's
    unit over its spatial positions; zero-padding of channels (the option-A shortcut) adds
    units of zeros; concatenation joins labels. The network's input and output channels are
    fixed. Units whose tensors and weights coincide form a ``PermutationGroup``. Works for MLPs,
    VGG-style nets and every ResNet in ``cnnlib.models.resnet`` with ``groups=1`` convolutions;
    an operation it does not know raises a ``ValueError`` that names it.

    ``example`` is a small input batch (its shape fixes the flattening sizes)."""
    gm = _trace_with_shapes(model, example)
    labelling = _label_channels(gm)
    roots = _unit_roots(labelling)
    signature = _classes_by_tensor_axes(roots)
    groups = _build_groups(signature, roots)
    return PermutationSpec(groups, {k for k, _ in model.named_parameters()})


# The steps of permutation_spec, in the order it takes them.


def _trace_with_shapes(model: nn.Module, example: Tensor) -> fx.GraphModule:
    """Trace ``model`` with ``torch.fx`` and record every node's output shape on ``example``."""
    gm = fx.symbolic_trace(model)
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return gm


class _Labelling:
    """The units of every traced node's channels, and the units tied to every tensor axis."""

    def __init__(self):
        self.uf = _UnionFind()
        self.labels: dict[fx.Node, np.ndarray | None] = {}
        self.ties: dict[tuple[str, int], np.ndarray] = {}
        # module -> (input, output) units
        self.created: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def lab(self, arg):
        """The units of a node's channels (``None`` for a non-tensor or a non-node argument)."""
        return self.labels.get(arg) if isinstance(arg, fx.Node) else None

    def tie(self, name: str, axis: int, units: np.ndarray) -> None:
        """Record that axis ``axis`` of tensor ``name`` carries ``units`` (union if seen before)."""
        key = (name, axis)
        if key in self.ties:
            self.uf.union(self.ties[key], units)
        else:
            self.ties[key] = np.asarray(units)


def _shape(node) -> tuple | None:
    """The output shape ShapeProp recorded for a node, ``None`` if it is not a tensor."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _flatten(units: np.ndarray, in_shape: tuple) -> np.ndarray:
    """The units of a flattened tensor: each channel's unit repeated over its positions."""
    return np.repeat(units, int(np.prod(in_shape[2:], dtype=np.int64)))


def _unknown(node, what: str) -> ValueError:
    """The error for an operation whose treatment of channels weight matching does not know."""
    return ValueError(f"weight matching does not know how {what} (node {node.name!r}) treats "
                      f"channels; supported: convolutions (groups=1 or depthwise), linear "
                      f"layers, BatchNorm, activations, pooling, dropout, flatten, +/×, "
                      f"channel padding and concatenation")


def _label_channels(gm: fx.GraphModule) -> _Labelling:
    """Walk the graph in order, labelling every node's channels with units and tying axes."""
    modules = dict(gm.named_modules())
    state = _Labelling()
    for node in gm.graph.nodes:
        out: np.ndarray | None = None
        if node.op == "placeholder":
            s = _shape(node)
            out = np.zeros(s[1] if s and len(s) > 1 else 1, dtype=np.int64)
        elif node.op == "get_attr":
            raise _unknown(node, f"a tensor attribute used directly ({node.target})")
        elif node.op == "call_module":
            out = _label_module(state, node, modules[node.target])
        elif node.op in ("call_function", "call_method"):
            out = _label_call(state, node)
        elif node.op == "output":
            _fix_outputs(state, node)
        state.labels[node] = out
    return state


def _label_module(state: _Labelling, node, m: nn.Module) -> np.ndarray:
    """The units of a module call's output; ties the module's parameters and buffers."""
    x = state.lab(node.args[0])
    prefix = f"{node.target}."
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return _label_layer(state, node, m, x)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        for k in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, k, None) is not None:
                state.tie(prefix + k, 0, x)
        return x
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1:
            raise _unknown(node, f"nn.Flatten(start_dim={m.start_dim})")
        return _flatten(x, _shape(node.args[0]))
    if isinstance(m, _PASS_MODULES):
        if any(True for _ in m.parameters()):
            raise _unknown(node, f"{type(m).__name__} with parameters")
        return x
    raise _unknown(node, f"the module {type(m).__name__} ({node.target})")


def _label_layer(state: _Labelling, node, m: nn.Module, x: np.ndarray) -> np.ndarray:
    """A convolution or linear layer: new output units (a depthwise one passes its input's on)."""
    prefix = f"{node.target}."
    depthwise = (isinstance(m, nn.Conv2d) and m.groups > 1
                 and m.groups == m.in_channels == m.out_channels)
    if isinstance(m, nn.Conv2d) and m.groups > 1 and not depthwise:
        raise _unknown(node, f"a grouped convolution with {m.groups} groups ({node.target})")
    n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    if node.target in state.created:  # a module called twice shares its units
        state.uf.union(state.created[node.target][0], x)
        out = state.created[node.target][1]
    else:
        out = x if depthwise else state.uf.new(n_out)
        state.created[node.target] = (x, out)
    state.tie(prefix + "weight", 0, out)
    if not depthwise:
        state.tie(prefix + "weight", 1, x)
    if m.bias is not None:
        state.tie(prefix + "bias", 0, out)
    return out


def _label_call(state: _Labelling, node) -> np.ndarray | None:
    """The units of a function or method call's output, by the kind of operation."""
    fn, args = node.target, node.args
    method = node.op == "call_method"
    if _shape(node) is None:
        return None  # a size, a shape, a Python number: no channels
    if (fn in _ELEMENTWISE) or (method and fn in _ELEMENTWISE_METHODS):
        return _label_elementwise(state, node)
    if fn in _PASS_FUNCTIONS or (method and fn in _PASS_METHODS):
        return state.lab(args[0])
    if fn is torch.flatten or (method and fn == "flatten"):
        return _label_flatten(state, node)
    if method and fn in ("view", "reshape"):
        return _label_reshape(state, node)
    if (fn in (torch.mean, torch.sum, torch.amax) or (method and fn in ("mean", "sum", "amax"))):
        return _label_reduction(state, node)
    if fn is operator.getitem:
        return _label_getitem(state, node)
    if fn is F.pad:
        return _label_pad(state, node)
    if fn is torch.cat:
        return _label_cat(state, node)
    raise _unknown(node, f"the function {getattr(fn, '__name__', fn)}")


def _label_elementwise(state: _Labelling, node) -> np.ndarray | None:
    """+, −, ×, ÷ of tensors: the units of operands with the full channel count are tied."""
    fn, args = node.target, node.args
    tensors = [state.lab(a) for a in args if state.lab(a) is not None]
    sizes = {len(t) for t in tensors}
    big = max(sizes) if sizes else 0
    full = [t for t in tensors if len(t) == big]
    for t in full[1:]:
        state.uf.union(full[0], t)
    if any(len(t) not in (1, big) for t in tensors):
        raise _unknown(node, f"{getattr(fn, '__name__', fn)} of tensors with different channels")
    return full[0] if full else None


def _label_flatten(state: _Labelling, node) -> np.ndarray:
    """``flatten`` from dimension 1: each channel's unit repeated over its spatial positions."""
    args = node.args
    start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
    if start != 1 or len(_shape(args[0])) < 2:
        raise _unknown(node, f"flatten from dimension {start}")
    return _flatten(state.lab(args[0]), _shape(args[0]))


def _label_reshape(state: _Labelling, node) -> np.ndarray:
    """``view``/``reshape``: the same shape keeps the units, (N, C, ...) → (N, −1) flattens."""
    fn, args = node.target, node.args
    sin, sout = _shape(args[0]), _shape(node)
    if sin == sout:
        return state.lab(args[0])
    if len(sout) == 2 and sout[0] == sin[0]:
        return _flatten(state.lab(args[0]), sin)
    raise _unknown(node, f"{fn} from {sin} to {sout}")


def _label_reduction(state: _Labelling, node) -> np.ndarray:
    """``mean``/``sum``/``amax`` over dimensions other than the channels keep the units."""
    fn, args = node.target, node.args
    dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    ndim = len(_shape(args[0]))
    if dims is None or any(d % ndim == 1 for d in dims):
        raise _unknown(node, f"{getattr(fn, '__name__', fn)} over the channels")
    return state.lab(args[0])


def _label_getitem(state: _Labelling, node) -> np.ndarray:
    """Indexing that leaves the channels whole keeps the units."""
    args = node.args
    idx = args[1] if isinstance(args[1], tuple) else (args[1],)
    if len(idx) > 1 and idx[1] != slice(None) and idx[1] is not Ellipsis:
        raise _unknown(node, "indexing the channels")
    if any(i is Ellipsis for i in idx[:1]) or any(i is None for i in idx[:2]):
        raise _unknown(node, "indexing with ... or None")
    return state.lab(args[0])


def _label_pad(state: _Labelling, node) -> np.ndarray:
    """``F.pad`` of the channels (the option-A shortcut) adds new units of zeros around them."""
    args = node.args
    pad = args[1] if len(args) > 1 else node.kwargs["pad"]
    ndim = len(_shape(args[0]))
    j = 2 * (ndim - 2)  # the (before, after) pair of dimension 1
    x = state.lab(args[0])
    if len(pad) > j:
        before, after = pad[j], pad[j + 1]
        if len(pad) > j + 2 or before < 0 or after < 0:
            raise _unknown(node, "padding the batch dimension or cropping channels")
        return np.concatenate([state.uf.new(before), x, state.uf.new(after)])
    return x


def _label_cat(state: _Labelling, node) -> np.ndarray:
    """``torch.cat``: along the channels the labels join, along any other dimension they tie."""
    args = node.args
    parts = args[0]
    dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
    ls = [state.lab(p) for p in parts]
    if dim == 1:
        return np.concatenate(ls)
    for t in ls[1:]:
        state.uf.union(ls[0], t)
    return ls[0]


def _fix_outputs(state: _Labelling, node) -> None:
    """Tie the units of the network's outputs to the fixed unit 0: they may not be permuted."""
    for a in _flat_args(node.args):
        if state.lab(a) is not None:
            state.uf.union(np.zeros(len(state.lab(a)), dtype=np.int64), state.lab(a))


def _unit_roots(state: _Labelling) -> dict[tuple[str, int], np.ndarray]:
    """Every tied tensor axis's units replaced by their class (union-find root), in tie order."""
    return {key: np.array([state.uf.find(int(u)) for u in units])
            for key, units in state.ties.items()}


def _classes_by_tensor_axes(roots: dict[tuple[str, int], np.ndarray]) -> dict[tuple, list[int]]:
    """The free classes (not tied to the fixed unit 0) keyed by the tensor axes they appear in."""
    members: dict[int, list] = {}
    for key, r in roots.items():
        for c in np.unique(r):
            if c != 0:
                members.setdefault(int(c), []).append(key)
    signature: dict[tuple, list[int]] = {}
    for c in sorted(members):
        signature.setdefault(tuple(sorted(members[c])), []).append(c)
    return signature


def _build_groups(signature: dict[tuple, list[int]],
                  roots: dict[tuple[str, int], np.ndarray]) -> list[PermutationGroup]:
    """One named ``PermutationGroup`` per set of tensor axes, in the order the axes were tied."""
    order = {key: i for i, key in enumerate(roots)}  # the order of the ties
    groups, taken = [], {}
    for keys, classes in sorted(signature.items(), key=lambda kv: min(order[k] for k in kv[0])):
        slots = {}
        for key in sorted(keys, key=order.get):
            pos = [np.nonzero(roots[key] == c)[0] for c in classes]
            if len({len(p) for p in pos}) != 1:
                raise ValueError(f"weight matching: units of {key[0]} (axis {key[1]}) repeat "
                                 f"unevenly; this network's symmetry is not a plain permutation")
            slots[key] = torch.as_tensor(np.stack(pos), dtype=torch.long)
        first = min(keys, key=order.get)[0].rsplit(".", 1)[0]
        taken[first] = taken.get(first, 0) + 1
        name = first if taken[first] == 1 else f"{first}#{taken[first]}"
        groups.append(PermutationGroup(name, len(classes), slots))
    return groups




def _flat_args(args):
    for a in args:
        if isinstance(a, (tuple, list)):
            yield from _flat_args(a)
        elif isinstance(a, dict):
            yield from _flat_args(list(a.values()))
        else:
            yield a


def _index(size: int, slot_groups, perms: Mapping[str, Tensor], skip: str | None = None) -> Tensor:
    """The position permutation of one tensor axis: every group's units moved by its perm."""
    idx = torch.arange(size)
    for g, pos in slot_groups:
        if g.name == skip or g.name not in perms:
            continue
        p = torch.as_tensor(perms[g.name], dtype=torch.long)
        idx[pos.reshape(-1)] = pos[p].reshape(-1)
    return idx


def _axes(spec: PermutationSpec) -> dict:
    axes: dict = {}
    for g in spec.groups:
        for key, pos in g.slots.items():
            axes.setdefault(key, []).append((g, pos))
    return axes


def permute(point, spec: PermutationSpec, perms: Mapping[str, Tensor]) -> Point:
    """The point with every group's hidden units reordered: unit i of the result is unit
    ``perms[group][i]`` of ``point``. For a permutation found by ``permutation_spec`` the network
    computes exactly the same function (up to floating-point summation order)."""
    out = dict(_point(point))
    for (name, axis), groups in _axes(spec).items():
        if name not in out:
            continue
        idx = _index(out[name].shape[axis], groups, perms).to(out[name].device)
        out[name] = out[name].index_select(axis, idx)
    return out


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """A random permutation of every group's units."""
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randperm(grp.size, generator=g) for grp in spec.groups}


def identity_permutation(spec: PermutationSpec) -> dict[str, Tensor]:
    return {g.name: torch.arange(g.size) for g in spec.groups}


def match_units(wa: Tensor, wb: Tensor) -> Tensor:
    """The permutation of B's units that best lines them up with A's: ``wa``, ``wb`` are
    (units, features); returns ``p`` maximizing ``Σ_i ⟨wa[i], wb[p[i]]⟩`` — a linear assignment
    problem (Ainsworth et al. 2023, Sec. 3.2), solved exactly by
    ``scipy.optimize.linear_sum_assignment``."""
    from scipy.optimize import linear_sum_assignment

    cost = (wa.double() @ wb.double().T).cpu().numpy()
    rows, cols = linear_sum_assignment(cost, maximize=True)
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)


def _check_same_architecture(points: Mapping[str, Point], rule: str) -> None:
    """Weight matching pairs the units of networks of one architecture: the names two points
    share must have the same shapes. ``points`` maps a label ("A", "B", ...) to a point."""
    (first, ref), *others = points.items()
    for label, point in others:
        shapes = [k for k in sorted(ref) if k in point and ref[k].shape != point[k].shape]
        if shapes:
            where = "; ".join(f"{k!r} is {tuple(ref[k].shape)} in {first}, "
                              f"{tuple(point[k].shape)} in {label}" for k in shapes[:3])
            more = f" (and {len(shapes) - 3} more)" if len(shapes) > 3 else ""
            raise ValueError(f"{rule} (the same widths); shapes differ: {where}{more}")


def weight_matching(a, b, spec: PermutationSpec, *, max_iter: int = 100, seed: int = 0,
                    init: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Permute network B's hidden units to match network A's weights (Ainsworth et al. 2023,
    Sec. 3.2 and Alg. 1, "weight matching").

    Maximizing ``Σ_layers ⟨W_A, P_ℓ W_B P_{ℓ−1}ᵀ⟩`` over all permutations at once is NP-hard,
    but with all permutations but one held fixed it is a linear assignment problem. So the
    groups are visited in random order, each solved exactly given the others, until a full
    sweep improves nothing (at most ``max_iter`` sweeps). The objective uses parameters only
    (not BatchNorm's running statistics). Returns ``perms`` for ``permute(b, spec, perms)``.
    """
    pa = {k: v.double() for k, v in _point(a).items() if k in spec.params}
    pb = {k: v.double() for k, v in _point(b).items() if k in spec.params}
    only = sorted(pa.keys() ^ pb.keys())
    if only:
        where = ", ".join(f"{k!r} only in {'A' if k in pa else 'B'}" for k in only[:3])
        raise ValueError(f"weight matching needs two networks of one architecture; their "
                         f"parameter names differ: {where}")
    _check_same_architecture({"A": pa, "B": pb}, "weight matching needs two networks of one "
                                                 "architecture")
    perms = dict(init) if init is not None else identity_permutation(spec)
    perms = {k: torch.as_tensor(v, dtype=torch.long).clone() for k, v in perms.items()}
    by_name: dict = {}
    for (name, axis), groups in _axes(spec).items():
        by_name.setdefault(name, []).append((axis, groups))

    def rows(point: Point, name: str, axis: int, pos: Tensor) -> Tensor:
        t = point[name].movedim(axis, 0)[pos.reshape(-1).to(point[name].device)]
        return t.reshape(pos.shape[0], -1)

    # A's side of every group's objective never changes.
    slots = {g.name: [(n, ax, pos) for (n, ax), pos in g.slots.items() if n in pa and n in pb]
             for g in spec.groups}
    targets = {g.name: torch.cat([rows(pa, n, ax, pos) for n, ax, pos in slots[g.name]], 1)
               for g in spec.groups if slots[g.name]}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for gi in rng.permutation(len(spec.groups)):
            g = spec.groups[gi]
            if g.name not in targets:
                continue
            parts = []
            for name, axis, pos in slots[g.name]:
                t = pb[name]
                for ax, groups in by_name[name]:  # every permutation but this group's own
                    skip = g.name if ax == axis else None
                    t = t.index_select(ax, _index(t.shape[ax], groups, perms, skip).to(t.device))
                parts.append(rows({name: t}, name, axis, pos))
            wa, wb = targets[g.name], torch.cat(parts, 1)
            new = match_units(wa, wb)
            old_score = float((wa * wb[perms[g.name]]).sum())
            new_score = float((wa * wb[new]).sum())
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[g.name] = new
                improved = True
        if not improved:
            break
    return perms


def align(model: nn.Module, a, b, example: Tensor, **options) -> tuple[Point, dict]:
    """``(b_aligned, perms)``: network B's point with its hidden units permuted to match A's
    (``permutation_spec`` of ``model`` + ``weight_matching``). The aligned point computes the
    same function as B; only its position in weight space changes."""
    pa, pb = _point(a), _point(b)
    _check_same_architecture({"the model": _point(model), "A": pa, "B": pb},
                             "align needs two networks of the model's architecture")
    spec = permutation_spec(model, example)
    perms = weight_matching(pa, pb, spec, **options)
    return permute(b, spec, perms), perms
