"""Mode connectivity: paths between trained networks, the barrier on them, and how to remove it.

Two networks trained from different random seeds reach different minima θ₁ and θ₂ of the
training loss. On the straight line between them the loss rises — a *barrier*. Three ideas of
2018–2023 show how thin that barrier is:

* **Curves** (Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast ensembling of
  DNNs"): a quadratic Bezier curve ``φ(t) = (1−t)²θ₁ + 2t(1−t)θ_c + t²θ₂`` or a polygonal chain
  through one bend ``θ_c``, whose bend is trained by minimizing ``E_{t∼U(0,1)} L(φ(t))`` with the
  ends fixed. The trained curve has (almost) no barrier.
* **(Auto)NEB** (Draxler et al. 2018, "Essentially no barriers in neural network energy
  landscape"): the minimum energy path ``argmin_p max_{θ∈p} L(θ)``, found with the nudged
  elastic band of physical chemistry — a chain of pivots moved by the loss gradient
  perpendicular to the path, kept evenly spaced — with new pivots inserted where the loss
  between two pivots is highest (AutoNEB).
* **Weight matching** (Ainsworth et al. 2023, "Git Re-Basin"): hidden units can be permuted
  without changing the function. Permuting θ₂'s units to line up with θ₁'s (a linear assignment
  problem per layer, Sec. 3.2) makes even the *straight line* nearly barrier-free for wide nets.

The vocabulary, shared with ``cnnlib.landscape``:

``Point``
    a ``dict`` from parameter (and optionally buffer) names to tensors, e.g.
    ``landscape.weights(model, buffers=True)``.
``Path``
    ``φ(t) = Σ_j w_j(t)·θ_j`` for control points θ_j and weights that sum to one: ``line``,
    ``bezier``, ``polychain`` and ``chain`` (the pivots of an NEB). Every path is therefore
    ``θ_0 + Σ_j w_j(t)(θ_j − θ_0)`` — a centre, directions and coordinates — and is evaluated in
    one batched call of ``landscape.evaluate_points`` (``evaluate_path``).
barrier
    ``barrier(values, t)``: the largest amount by which a metric along a path rises above the
    straight line between its values at the two ends (Entezari et al. 2022) — used for the
    loss and the error alike, everywhere in the course.

BatchNorm: at a point between two networks neither network's running statistics describe the
activations, so paths are evaluated with the statistics recomputed at every point
(``bn="recompute"``, as Garipov et al. do; "reset" in Ainsworth et al.). ``bn="keep"``
interpolates the stored statistics instead — usually wrong, and instructive to compare.

The package holds one idea per module; every name is re-exported here, so
``connectivity.train_curve`` and ``from cnnlib.connectivity import align`` work as they always
have:

``paths``
    Points, ``Path`` with ``line``, ``bezier``, ``polychain`` and ``chain``, the ``barrier``, and
    ``evaluate_path`` / ``PathProfile``.
``curves``
    ``train_curve``: the trained Bezier curve or polygonal chain (Garipov et al. 2018).
``autoneb``
    ``neb``, ``auto_neb``, the Müller–Brown test energy and ``neb_path`` between two networks
    (Draxler et al. 2018).
``matching``
    ``permutation_spec``, ``permute``, ``weight_matching`` and ``align`` (Ainsworth et al. 2023).
``plots``
    profiles along paths, snapshots of one point for the explorer, and the plane through two
    networks and a bend (``plane_surface``, ``plot_plane``).
"""
from __future__ import annotations

# What the single-module version imported at its top level stays importable from here (and in
# ``import *``, below), so that nothing that reached it through this namespace breaks.
import copy
import hashlib
import operator
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import landscape
from ..landscape import Point
from .paths import (METRICS, PATH_KINDS, SPLITS, Path, PathProfile, arc_length_knots, barrier,
                    bezier, bezier_coefficients, chain, chain_coefficients, evaluate_path,
                    interpolate, line, parameters, polychain)
# The private helpers are re-exported too: tests and bench/connectivity.py use ``_Flat``, and
# every name the single module had stays reachable as ``connectivity.<name>``.
from .paths import _digest, _point, _training_data  # noqa: F401
from .curves import CURVE_KINDS, train_curve
from .autoneb import (MB_A, MULLER_BROWN_MINIMA, MULLER_BROWN_SADDLES, EnergyGrad, MB_a, MB_b,
                      MB_c, MB_x0, MB_y0, NEBResult, auto_neb, dense_profile, energy_and_grad,
                      muller_brown, neb, neb_force, neb_path, network_energy, respace, tangents)
from .autoneb import _Flat, _segment_energies  # noqa: F401
from .matching import (PermutationGroup, PermutationSpec, align, identity_permutation, match_units,
                       permutation_spec, permute, random_permutation, weight_matching)
from .matching import (_ELEMENTWISE, _ELEMENTWISE_METHODS, _PASS_FUNCTIONS,  # noqa: F401
                       _PASS_METHODS, _PASS_MODULES, _UnionFind, _axes, _check_same_architecture,
                       _flat_args, _index)
from .plots import (Snapshot, path_in_plane, plane_surface, plot_energy_2d, plot_plane,
                    plot_profiles, plot_snapshot, snapshot)

__all__ = [
    # paths
    "PATH_KINDS", "SPLITS", "METRICS", "parameters", "bezier_coefficients", "chain_coefficients",
    "Path", "line", "interpolate", "bezier", "polychain", "chain", "arc_length_knots", "barrier",
    "PathProfile", "evaluate_path",
    # curves
    "CURVE_KINDS", "train_curve",
    # autoneb
    "EnergyGrad", "tangents", "neb_force", "respace", "neb", "NEBResult", "dense_profile",
    "auto_neb", "MB_A", "MB_a", "MB_b", "MB_c", "MB_x0", "MB_y0", "MULLER_BROWN_MINIMA",
    "MULLER_BROWN_SADDLES", "muller_brown", "energy_and_grad", "network_energy", "neb_path",
    # matching
    "PermutationGroup", "PermutationSpec", "permutation_spec", "permute", "random_permutation",
    "identity_permutation", "match_units", "weight_matching", "align",
    # plots
    "plot_profiles", "Snapshot", "snapshot", "plot_snapshot", "plot_energy_2d", "path_in_plane",
    "plane_surface", "plot_plane",
    # The single-module version had no __all__, so ``import *`` also bound the names it imported;
    # they stay, so that a star import binds the same names as before (and not the submodules).
    "annotations", "copy", "hashlib", "operator", "time", "dataclass", "field", "Callable",
    "Mapping", "Sequence", "np", "torch", "fx", "nn", "F", "Tensor", "landscape", "Point",
]
