"""Compound scaling experiments (Tan & Le 2019): scale one dimension or all three, and compare.

* ``multipliers(kind, φ)`` — depth-only, width-only, resolution-only or compound scaling, each
  aimed at the same FLOPs growth ≈ 2^φ (depth d = 2^φ; width w = √2^φ; resolution r = √2^φ;
  compound d = α^φ, w = β^φ, r = γ^φ with α·β²·γ² ≈ 2);
* ``train_scaled`` — train the small base network (``efficientnet_mini``) scaled by (d, w, r)
  and report accuracy, multiply-adds and parameters; ``scaling_curves`` runs it over φ and
  ``grid_search`` over the (α, β, γ) grid of the paper's step 1 (ranked on a validation split
  of the training set, never on the test set); ``compare_scalings`` reads the
  curves' last points with their standard errors and costs;
* ``compound_summary(φ)`` — EfficientNet-B0 scaled by φ: stage table, resolution, parameters,
  multiply-adds (without running it), and ``show_compound_scaling(φ)``, the figure the
  lecture's φ slider redraws.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .data import ImageData
from .measure import count_params
from .models.efficientnet import (B0_STAGES, EFFICIENTNET, EfficientNet, compound_multipliers,
                                  count_macs, efficientnet_mini, flops_factor)
from .report import rate_difference
from .search import validation_split
from .train import evaluate, fit

SCALINGS = ("depth", "width", "resolution", "compound")
PAPER_COEFFICIENTS = (1.2, 1.1, 1.15)  # α, β, γ of EfficientNet-B0 (Tan & Le 2019, Sec. 4)


def multipliers(kind: str, phi: float, coefficients=PAPER_COEFFICIENTS) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers of scaling ``kind`` at ``phi``; every kind aims
    at FLOPs ≈ 2^φ times the base (FLOPs ∝ d·w²·r²)."""
    if kind == "depth":
        return 2.0 ** phi, 1.0, 1.0
    if kind == "width":
        return 1.0, 2.0 ** (phi / 2), 1.0
    if kind == "resolution":
        return 1.0, 1.0, 2.0 ** (phi / 2)
    if kind == "compound":
        return compound_multipliers(phi, *coefficients)
    raise ValueError(f"unknown scaling {kind!r}; choose one of {SCALINGS}")


def _train_mini(data: ImageData, depth: float, width: float, resolution: float, *, base_resolution: int,
                epochs: int, lr: float = 0.1, batch_size: int = 128, seed: int = 0):
    """``efficientnet_mini`` scaled by (depth, width), trained on ``data`` resampled to
    ``round(base_resolution · resolution)`` pixels: (network, size, history)."""
    size = round(base_resolution * resolution)
    torch.manual_seed(seed)
    net = efficientnet_mini(data.num_classes, data.in_channels, width=width, depth=depth)
    hist = fit(net, data.resize(size), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
               progress=False)
    return net, size, hist


def train_scaled(data: ImageData, depth: float, width: float, resolution: float, *,
                 base_resolution: int, epochs: int, lr: float = 0.1, batch_size: int = 128,
                 seed: int = 0) -> dict:
    """Train ``efficientnet_mini`` scaled by (depth, width) on ``data`` resampled to
    ``round(base_resolution · resolution)`` pixels; return the test accuracy, multiply-adds per
    image, parameters, the rounded architecture and ``n_test``, the number of test images (for
    standard errors). Training is cached by ``cnnlib.fit``."""
    net, size, hist = _train_mini(data, depth, width, resolution, base_resolution=base_resolution,
                                  epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    return {"depth": depth, "width": width, "resolution": size, "acc": hist.final["test_acc"],
            "n_test": len(data.y_test), **_architecture(net, size)}


def _architecture(net, size: int) -> dict:
    return {"macs": count_macs(net, size), "params": count_params(net),
            "blocks": sum(s.repeats for s in net.stages), "channels": tuple(s.channels for s in net.stages)}


def scaling_curves(data: ImageData, phis, *, coefficients=PAPER_COEFFICIENTS, **train) -> dict:
    """For each kind of scaling, ``train_scaled`` at φ = 0 (the shared base) and every φ in
    ``phis``; returns {kind: [result, ...]}. ``train`` goes to ``train_scaled``."""
    base = train_scaled(data, 1.0, 1.0, 1.0, **train)
    return {kind: [base] + [train_scaled(data, *multipliers(kind, phi, coefficients), **train) for phi in phis]
            for kind in SCALINGS}


def standard_error(result: dict, key: str = "acc") -> float:
    """Binomial standard error √(a(1−a)/n) of a result's accuracy ``key``: of a ``train_scaled``
    result's test accuracy; of a ``grid_search`` result's ``acc``/``val_acc`` (n = ``n_val``) or
    ``test_acc`` (n = ``n_test``)."""
    a = result[key]
    n = result["n_val"] if key == "val_acc" or (key == "acc" and "n_val" in result) else result["n_test"]
    return (a * (1 - a) / n) ** 0.5


def compare_scalings(curves: dict) -> dict:
    """Read ``scaling_curves``' largest φ: compound scaling against the best single dimension.

    The difference counts as real only beyond 2 standard errors of a difference of two
    accuracies, 2·√(se₁² + se₂²). The points are *not* at equal cost (rounding makes each kind
    miss 2^φ differently), so the result also gives every kind's multiply-adds relative to the
    shared base (φ = 0). Returns ``ranking`` (kinds, best first), ``single`` (best single
    dimension), ``gap`` and ``noise`` (accuracy, fractions), ``cost`` ({kind: multiply-adds ÷
    base}) and ``verdict``, a phrase like "within noise of resolution"."""
    final = {kind: results[-1] for kind, results in curves.items()}
    base = curves["compound"][0]["macs"]
    ranking = sorted(final, key=lambda k: final[k]["acc"], reverse=True)
    single = next(k for k in ranking if k != "compound")
    gap = final["compound"]["acc"] - final[single]["acc"]
    _, se = rate_difference(final[single]["acc"], final[single]["n_test"],
                            final["compound"]["acc"], final["compound"]["n_test"])
    noise = 2 * se
    if abs(gap) <= noise:
        verdict = f"within noise of {single}"
    else:
        verdict = f"{'better' if gap > 0 else 'worse'} than {single} by {100 * abs(gap):.1f} points"
    return {"ranking": ranking, "single": single, "gap": gap, "noise": noise, "verdict": verdict,
            "cost": {kind: r["macs"] / base for kind, r in final.items()}}


def grid_search(data: ImageData, candidates, *, val_size: int | None = None, val_seed: int = 0,
                **train) -> list[dict]:
    """Step 1 of compound scaling: with φ = 1, train the base network scaled by each candidate
    (α, β, γ) (see ``constrained_grid``) and rank the candidates by **validation** accuracy.

    Choosing an architecture on the test set tunes it to the test set (Lecture 04), so every
    candidate is trained on ``data``'s training set minus ``val_size`` held-out images
    (``search.validation_split(data, val_size, seed=val_seed)``; default: a fifth of the
    training set) and judged on those. The test set is used once per candidate, after training,
    for reporting only. Each result holds ``train_scaled``'s keys plus ``alpha``, ``beta``,
    ``gamma``, ``val_acc`` and ``n_val`` (the ranking), ``test_acc`` and ``n_test`` (reported,
    never used to choose); ``acc`` is ``val_acc``, the accuracy the ranking uses. Sorted best
    first (highest validation accuracy). ``train``: the training settings of ``train_scaled``."""
    val_size = max(1, len(data.x_train) // 5) if val_size is None else val_size
    split = validation_split(data, val_size, seed=val_seed)
    results = []
    for a, b, g in candidates:
        net, size, hist = _train_mini(split, a, b, g, **train)
        val_acc = hist.final["test_acc"]                  # the split's "test" images are the validation set
        test_acc = evaluate(net, data.resize(size))["acc"]  # reported only
        results.append({"alpha": a, "beta": b, "gamma": g, "depth": a, "width": b, "resolution": size,
                        "acc": val_acc, "val_acc": val_acc, "n_val": val_size,
                        "test_acc": test_acc, "n_test": len(data.y_test), **_architecture(net, size)})
    return sorted(results, key=lambda r: -r["val_acc"])


# --------------------------------------------------------------------------------------------
# EfficientNet-B0 scaled by φ: the numbers and the figure behind the lecture's slider
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=128)
def compound_summary(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15) -> dict:
    """EfficientNet-B0 compound-scaled by ``phi``: multipliers, resolution (224·γ^φ rounded),
    the scaled stage table, parameters and multiply-adds — counted from the shapes (meta
    device), so it takes a fraction of a second even for φ = 7."""
    d, w, r = compound_multipliers(phi, alpha, beta, gamma)
    with torch.device("meta"):
        net = EfficientNet(width=w, depth=d)
    res = round(224 * r)
    macs = count_macs(net, res)
    return {"phi": phi, "depth": d, "width": w, "resolution_factor": r, "resolution": res,
            "stages": net.stages, "params": count_params(net), "macs": macs,
            "flops_factor": flops_factor(d, w, r), "macs_vs_b0": macs / _b0_macs()}


@lru_cache(maxsize=1)
def released_macs() -> tuple[int, ...]:
    """Multiply-adds of the released EfficientNet-B0 … B7 at their own resolutions."""
    out = []
    for w, d, r, _ in EFFICIENTNET.values():
        with torch.device("meta"):
            out.append(count_macs(EfficientNet(width=w, depth=d), r))
    return tuple(out)


@lru_cache(maxsize=1)
def _b0_macs() -> int:
    with torch.device("meta"):
        return count_macs(EfficientNet(), 224)


def describe(summary: dict) -> str:
    """One paragraph of text for a ``compound_summary``."""
    s = summary
    return (f"φ = {s['phi']:g}: depth ×{s['depth']:.2f}, width ×{s['width']:.2f}, resolution "
            f"×{s['resolution_factor']:.2f} → {s['resolution']}×{s['resolution']} input, "
            f"{sum(st.repeats for st in s['stages'])} MBConv blocks, {s['params'] / 1e6:.1f}M parameters, "
            f"{s['macs'] / 1e9:.2f}B multiply-adds = {s['macs_vs_b0']:.2f}× B0 "
            f"(d·w²·r² predicts {s['flops_factor']:.2f}×)")


def plot_compound_summary(summary: dict, axes=None):
    """Left: channels and blocks per stage of the scaled network against B0's. Right:
    multiply-adds against φ (B0 scaled by the formula, and the released B0–B7) with the current
    φ marked. Returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    ax, ax2 = axes
    x = np.arange(len(B0_STAGES))
    base = [s.channels for s in B0_STAGES]
    scaled = [s.channels for s in summary["stages"]]
    ax.bar(x - 0.2, base, 0.4, color="0.75", label="B0 channels")
    ax.bar(x + 0.2, scaled, 0.4, color="tab:blue", label=f"φ = {summary['phi']:g} channels")
    for i, s in enumerate(summary["stages"]):
        ax.text(x[i] + 0.2, scaled[i], f"×{s.repeats}", ha="center", va="bottom", fontsize=8)
    ax.set(xticks=x, xticklabels=[f"stage {i + 1}\n{s.kernel}×{s.kernel}" for i, s in enumerate(B0_STAGES)],
           ylabel="output channels (label: blocks)", ylim=(0, 700),
           title=f"stage table at φ = {summary['phi']:g}, input {summary['resolution']}×{summary['resolution']}")
    ax.legend(fontsize=8, loc="upper left")
    phis = np.arange(0, 7.01, 0.5)
    curve = [compound_summary(float(p))["macs"] / 1e9 for p in phis]
    ax2.semilogy(phis, curve, "-", color="tab:blue", label=r"B0 × $(1.2, 1.1, 1.15)^{\varphi}$")
    ax2.semilogy(phis, _b0_macs() / 1e9 * 2.0 ** phis, ":", color="0.4", label=r"B0 × $2^{\varphi}$")
    ax2.semilogy(range(8), [m / 1e9 for m in released_macs()], "s", color="tab:orange", ms=5,
                 label="released B0–B7")
    ax2.semilogy([summary["phi"]], [summary["macs"] / 1e9], "o", color="tab:red", ms=10,
                 label=f"φ = {summary['phi']:g}: {summary['macs'] / 1e9:.2f}B")
    ax2.set(xlabel="φ", ylabel="multiply-adds (billions, log)", title=r"cost grows like $2^{\varphi}$")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    return axes


def show_compound_scaling(phi: float) -> dict:
    """What the lecture's slider calls: print the summary of B0 scaled by ``phi``, draw
    ``plot_compound_summary`` and return the summary."""
    import matplotlib.pyplot as plt

    summary = compound_summary(float(phi))
    print(describe(summary))
    plot_compound_summary(summary)
    plt.show()
    return summary


def plot_scaling_curves(curves: dict, ax=None, title: str | None = None):
    """Accuracy (±2 standard errors) against multiply-adds for each kind of scaling
    (``scaling_curves``' result), on a log axis with plain tick labels (thousands)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    markers = dict(depth="s", width="^", resolution="D", compound="o")
    for kind, results in curves.items():
        ax.errorbar([r["macs"] / 1e3 for r in results], [100 * r["acc"] for r in results],
                    yerr=[200 * standard_error(r) for r in results], marker=markers.get(kind, "o"),
                    capsize=3, lw=2.5 if kind == "compound" else 1.5, label=f"{kind} scaling")
    ax.set_xscale("log")  # ticks at 1, 2, 3, 5, 7 × 10^k, labelled as plain numbers
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5, 7)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="multiply-adds per image (thousands, log scale)", ylabel="test accuracy (%, ±2 s.e.)",
           title=title or "scaling one dimension vs. all three")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax
