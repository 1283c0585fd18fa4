"""Curvature of the loss at a point: the Hessian as a linear map, its extreme eigenvalues, its
trace and its spectral density.

A random 2D slice can make a minimum look convex or sharp from a chance angle; Li et al. (2018,
Sec. 6, Fig. 8) settle it with the Hessian ∇²L(θ): its largest eigenvalue λ_max says how sharp
the minimum is, and the ratio |λ_min / λ_max| over the plotted plane says whether the surface is
convex there (ratio ≈ 0: no negative curvature) or only looks convex in two directions (a
sizeable ratio: strong negative curvature in some other direction). PyHessian (Yao et al. 2020)
computes the same quantities for whole networks. None of them stores H (n × n for n weights);
each uses Hessian-vector products

    H v = d/dε ∇L(θ + ε v) |_{ε=0},

computed with ``torch.func`` through ``functional_call`` on the network itself (no second copy
of the model): forward-mode over reverse-mode (``jvp`` of ``grad``) or, since H is symmetric,
reverse over reverse (``vjp`` of ``grad``). ``mode="auto"`` takes the first on CUDA and the second
on the CPU, where it measured 1.6× faster (47 vs 75 ms for ResNet-20 on 128 digits,
``python bench/hessian.py``); both give the same vector to float rounding.

* ``hessian(model, data)`` — the operator ``v ↦ H v`` of the mean loss over a data split, the
  model in eval mode (BatchNorm uses its running statistics, as ``surface`` evaluates).
* ``eigenvalues`` — extreme eigenvalues by implicitly restarted Lanczos (SciPy's ``eigsh``,
  ARPACK); ``power_iteration`` — the largest-magnitude ones by power iteration with deflation, as
  PyHessian computes them; ``eigen_ratio`` — λ_min, λ_max (the extreme Ritz values of a short Lanczos
  run) and |λ_min/λ_max|, and ``eigen_ratio_map`` — that ratio over a plane, Li et al.'s Fig. 8.
* ``trace`` — Hutchinson's estimator E[vᵀHv] = tr H with Rademacher v (Hutchinson 1989), with its
  standard error.
* ``spectral_density`` — stochastic Lanczos quadrature (Golub & Meurant; Ghorbani, Krishnan &
  Xiao 2019): m Lanczos steps from a random unit vector give m Ritz values θ_j and weights
  τ_j = (first component of the j-th eigenvector of the tridiagonal matrix)²; averaged over
  starting vectors, Σ_j τ_j δ(λ − θ_j) estimates the density of H's eigenvalues (each weighs 1/n).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..models import eval_mode

MODES = ("auto", "forward", "reverse")  # forward-over-reverse or reverse-over-reverse HVPs


class HessianOperator:
    """``v ↦ H v`` for the Hessian of the mean loss over ``(x, y)`` with respect to the trainable
    parameters, at ``center`` (default: the model's current weights). Vectors are flat (``dim``
    entries, in ``named_parameters`` order) on the model's device; ``unflatten`` gives the named
    tensors back. ``calls`` counts the products computed (each one pass over the data)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, loss_fn: Callable | None = None,
                 batch_size: int = 1024, center: Mapping[str, Tensor] | None = None, mode: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode if mode != "auto" else ("forward" if x.device.type == "cuda" else "reverse")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many targets as inputs, and at least one: {len(x)} inputs, {len(y)} targets")
        self.model, self.x, self.y = model, x, y
        self.loss_fn = loss_fn or F.cross_entropy
        self.batch_size = batch_size
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("the model has no trainable parameters")
        center = dict(center or {})
        named = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        unknown = set(center) - set(named)
        if unknown:
            raise ValueError(f"center has entries the model does not: {sorted(unknown)[:5]}")
        self.names = list(params)
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.dim = sum(self.sizes)
        self.theta = torch.cat([center.get(n, params[n]).detach().reshape(-1).to(params[n]) for n in self.names])
        # everything the product does not differentiate: frozen weights and buffers (BN statistics),
        # taken from the centre where it has them
        self.fixed = {n: center.get(n, t).detach().to(t) for n, t in named.items() if n not in params}
        self.calls = 0

    # ---------------------------------------------------------------- vectors and the loss
    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def _batch_loss(self, flat: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        out = torch.func.functional_call(self.model, {**self.fixed, **self.unflatten(flat)}, (xb,))
        return self.loss_fn(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, yb)

    def _batches(self):
        for i in range(0, len(self.x), self.batch_size):
            xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
            yield xb, yb, len(xb) / len(self.x)

    def loss(self) -> float:
        """The mean loss at the centre."""
        with eval_mode(self.model), torch.no_grad():
            return float(sum(w * self._batch_loss(self.theta, xb, yb) for xb, yb, w in self._batches()))

    # ---------------------------------------------------------------- the product
    def __call__(self, v: Tensor) -> Tensor:
        if v.shape != (self.dim,):
            raise ValueError(f"a flat vector of {self.dim} entries, got shape {tuple(v.shape)}")
        v = v.to(self.theta)
        hv = torch.zeros_like(self.theta)
        with eval_mode(self.model):
            for xb, yb, w in self._batches():
                grad = lambda flat: torch.func.grad(self._batch_loss)(flat, xb, yb)  # noqa: E731
                if self.mode == "forward":
                    hv += w * torch.func.jvp(grad, (self.theta,), (v,))[1].detach()
                else:
                    hv += w * torch.func.vjp(grad, self.theta)[1](v)[0].detach()
        self.calls += 1
        return hv

    def dense(self) -> Tensor:
        """The full n × n matrix, one HVP per column: only for small networks (tests, exercises)."""
        eye = torch.eye(self.dim, dtype=self.theta.dtype, device=self.theta.device)
        return torch.stack([self(e) for e in eye], 1)

    def as_linear_operator(self):
        """A SciPy ``LinearOperator`` (float64 NumPy in and out) for ``scipy.sparse.linalg``."""
        from scipy.sparse.linalg import LinearOperator

        def matvec(v):
            return self(torch.as_tensor(np.asarray(v).reshape(-1), dtype=self.theta.dtype)).double().cpu().numpy()
        return LinearOperator((self.dim, self.dim), matvec=matvec, dtype=np.float64)


def hessian(model: nn.Module, data, *, split: str = "train", n_images: int | None = None,
            loss_fn: Callable | None = None, batch_size: int = 1024, center=None,
            mode: str = "auto") -> HessianOperator:
    """The Hessian of ``model``'s mean loss on ``data`` (an ``ImageData`` and a ``split``, or an
    ``(inputs, targets)`` pair — as ``surface`` takes them; the first ``n_images`` only, if given)
    at ``center`` (a point from ``weights``, default: the current weights), as a ``HessianOperator``.
    The model is used in eval mode: BatchNorm's running statistics, no dropout."""
    from . import _eval_tensors

    x, y = _eval_tensors(data, split)
    if n_images is not None:
        x, y = x[:n_images], y[:n_images]
    return HessianOperator(model, x, y, loss_fn=loss_fn, batch_size=batch_size, center=center, mode=mode)


def _start(H: HessianOperator, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(H.dim, generator=g, dtype=torch.float64)
    return v / v.norm()


# -------------------------------------------------------------------- eigenvalues

def eigenvalues(H: HessianOperator, k: int = 1, which: str = "LA", tol: float = 1e-4,
                seed: int = 0, max_iterations: int | None = None) -> np.ndarray:
    """``k`` eigenvalues of H by implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``):
    ``which="LA"`` the largest, ``"SA"`` the smallest (most negative), ``"BE"`` from both ends.
    Sorted in decreasing order; ``tol`` is ARPACK's relative accuracy."""
    from scipy.sparse.linalg import eigsh

    if not 1 <= k < H.dim:
        raise ValueError(f"k must be between 1 and {H.dim - 1} (the dimension minus one), got {k}")
    if which not in ("LA", "SA", "BE"):
        raise ValueError(f"which must be 'LA', 'SA' or 'BE', got {which!r}")
    values = eigsh(H.as_linear_operator(), k=k, which=which, tol=tol, v0=_start(H, seed).numpy(),
                   maxiter=max_iterations, return_eigenvectors=False)
    return np.sort(values)[::-1]


def power_iteration(H: HessianOperator, k: int = 1, iterations: int = 100, tol: float = 1e-4,
                    seed: int = 0) -> tuple[np.ndarray, list[Tensor]]:
    """The ``k`` largest-magnitude eigenvalues and their eigenvectors by power iteration with
    deflation (PyHessian's method, Yao et al. 2020): iterate v ← Hv/‖Hv‖, keeping v orthogonal to
    the eigenvectors already found, until the Rayleigh quotient vᵀHv changes by less than ``tol``
    (relative). Near a minimum the largest-magnitude eigenvalue is λ_max."""
    values, vectors = [], []
    g = torch.Generator().manual_seed(seed)
    for _ in range(k):
        v = torch.randn(H.dim, generator=g).to(H.theta)
        value = None
        for _ in range(iterations):
            for u in vectors:
                v = v - (u @ v) * u
            v = v / v.norm()
            hv = H(v)
            new = float(v @ hv)
            v = hv
            if value is not None and abs(new - value) <= tol * (abs(value) + 1e-12):
                value = new
                break
            value = new
        for u in vectors:
            v = v - (u @ v) * u
        values.append(value)
        vectors.append(v / v.norm())
    return np.array(values), vectors


@dataclass
class Ratio:
    """The extreme eigenvalues of H at a point and Li et al.'s convexity measure |λ_min/λ_max|."""
    min: float
    max: float

    @property
    def ratio(self) -> float:
        return abs(self.min / self.max) if self.max else float("inf")


def eigen_ratio(H: HessianOperator, steps: int = 20, seed: int = 0) -> Ratio:
    """λ_min and λ_max of H — the extreme Ritz values of ``steps`` Lanczos iterations, which converge
    first (Kaniel–Paige), so one short run gives both ends — and their ratio (Li et al. 2018, Sec. 6):
    near 0 the surface is locally convex; a sizeable ratio means strong negative curvature in some
    direction a 2D slice may not show. ``eigenvalues(H, which="BE")`` is the slower, tolerance-driven
    alternative."""
    alphas, betas = lanczos(H, steps, _start(H, seed))
    theta = np.linalg.eigvalsh(_tridiagonal(alphas, betas))
    return Ratio(float(theta[0]), float(theta[-1]))


# -------------------------------------------------------------------- trace and density

def trace(H: HessianOperator, samples: int = 100, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's estimate of tr H — the mean of vᵀHv over ``samples`` Rademacher vectors v
    (entries ±1, so E[vvᵀ] = I) — and its standard error."""
    if samples < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {samples}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        v = (torch.randint(0, 2, (H.dim,), generator=g) * 2 - 1).to(H.theta)
        values.append(float(v @ H(v)))
    values = np.array(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(samples))


def lanczos(H: HessianOperator, steps: int, v0: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos iterations from ``v0`` with full re-orthogonalization (in float64):
    the diagonal α and off-diagonal β of the tridiagonal matrix T = VᵀHV. Stops early when the
    Krylov space is exhausted (β ≈ 0)."""
    steps = min(steps, H.dim)
    basis = [v0.double() / v0.double().norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = H(basis[j].to(H.theta)).double()
        alpha = float(w @ basis[j])
        w = w - alpha * basis[j] - (betas[-1] * basis[j - 1] if j else 0)
        V = torch.stack(basis)
        w = w - V.T @ (V @ w)  # re-orthogonalize against every earlier vector (twice is enough)
        w = w - V.T @ (V @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        if j == steps - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        basis.append(w / beta)
    return np.array(alphas), np.array(betas)


def _tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The Lanczos matrix T = VᵀHV from its diagonal and off-diagonal."""
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


@dataclass
class Density:
    """The spectral density of H from stochastic Lanczos quadrature: Ritz values ``nodes`` and
    quadrature ``weights`` (each row: one starting vector; each row's weights sum to 1)."""
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    dim: int

    def at(self, grid, sigma: float | None = None) -> np.ndarray:
        """The density on ``grid``, each node smoothed by a Gaussian of width ``sigma`` (default:
        1% of the spectrum's range); it integrates to 1 over a wide enough grid."""
        grid = np.asarray(grid, dtype=float)
        lo, hi = self.range
        sigma = sigma or max(hi - lo, 1e-12) * 0.01
        total = np.zeros_like(grid)
        for th, tau in zip(self.nodes, self.weights):
            total += (tau[None, :] * np.exp(-(grid[:, None] - th[None, :]) ** 2 / (2 * sigma ** 2))).sum(1)
        return total / (len(self.nodes) * sigma * np.sqrt(2 * np.pi))

    @property
    def range(self) -> tuple[float, float]:
        return float(min(t.min() for t in self.nodes)), float(max(t.max() for t in self.nodes))

    def moment(self, k: int = 1) -> float:
        """∫ λ^k density: the mean eigenvalue for k = 1, so ``dim * moment(1)`` estimates tr H."""
        return float(np.mean([(tau * th ** k).sum() for th, tau in zip(self.nodes, self.weights)]))

    def plot(self, ax=None, bins: int = 200, label: str | None = None, log: bool = True):
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        lo, hi = self.range
        pad = 0.05 * (hi - lo or 1.0)
        grid = np.linspace(lo - pad, hi + pad, bins)
        values = self.at(grid)
        ax.plot(grid, np.maximum(values, 1e-12) if log else values, label=label)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(values.max() * 1e-8, 1e-12))
        ax.set_xlabel("eigenvalue λ of the Hessian")
        ax.set_ylabel("density" + (" (log scale)" if log else ""))
        return ax


def spectral_density(H: HessianOperator, steps: int = 40, vectors: int = 2, seed: int = 0) -> Density:
    """The spectral density of H by stochastic Lanczos quadrature over ``vectors`` random unit
    starting vectors, ``steps`` Lanczos iterations each (``steps × vectors`` HVPs)."""
    nodes, weights = [], []
    for i in range(vectors):
        alphas, betas = lanczos(H, steps, _start(H, seed + i))
        theta, Q = np.linalg.eigh(_tridiagonal(alphas, betas))
        nodes.append(theta)
        weights.append(Q[0] ** 2)
    return Density(nodes, weights, H.dim)


# -------------------------------------------------------------------- over a plane

@dataclass
class RatioMap:
    """λ_min, λ_max and |λ_min/λ_max| at every point ``(alphas[j], betas[i])`` of a plane through a
    minimum (rows: β, columns: α, as a ``Surface``'s arrays)."""
    alphas: np.ndarray
    betas: np.ndarray
    min: np.ndarray
    max: np.ndarray
    label: str = ""

    @property
    def ratio(self) -> np.ndarray:
        return np.abs(self.min / np.where(self.max == 0, np.nan, self.max))

    def plot(self, ax=None, vmax: float = 1.0):
        """Li et al.'s Fig. 8 reading: blue where the surface is convex (ratio ≈ 0), yellow where
        the negative curvature is as large as the positive one (ratio ≥ ``vmax``)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        image = ax.pcolormesh(self.alphas, self.betas, np.minimum(self.ratio, vmax), cmap="viridis",
                              vmin=0, vmax=vmax, shading="nearest")
        ax.plot(0, 0, "r*", markersize=10)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_aspect("equal")
        ax.set_title(self.label)
        return image


def eigen_ratio_map(model: nn.Module, data, directions, alphas, betas, *, steps: int = 15,
                    seed: int = 0, progress: bool | None = None, label: str = "", **options) -> RatioMap:
    """``eigen_ratio`` at ``θ* + α·δ + β·η`` for every ``α`` in ``alphas`` and ``β`` in ``betas``
    (``directions`` = (δ, η), e.g. a surface's directions; BatchNorm statistics stay those of θ*).
    ``options`` go to ``hessian`` (``split``, ``n_images``, ``batch_size``…). Each point costs one
    Lanczos run of ``steps`` HVPs: keep the grid coarse on a CPU."""
    from tqdm.auto import tqdm

    from . import combine, weights
    from ..train import _progress_enabled

    if len(directions) != 2:
        raise ValueError(f"a plane needs two directions, got {len(directions)}")
    alphas, betas = np.asarray(alphas, dtype=float), np.asarray(betas, dtype=float)
    center = weights(model)
    lo, hi = np.zeros((len(betas), len(alphas))), np.zeros((len(betas), len(alphas)))
    with tqdm(total=lo.size, desc=label or "|λmin/λmax|", unit="point", leave=True,
              disable=not _progress_enabled(progress)) as bar:
        for i, b in enumerate(betas):
            for j, a in enumerate(alphas):
                H = hessian(model, data, center=combine(center, directions, (a, b)), **options)
                r = eigen_ratio(H, steps=steps, seed=seed)
                lo[i, j], hi[i, j] = r.min, r.max
                bar.update(1)
    return RatioMap(alphas, betas, lo, hi, label)
